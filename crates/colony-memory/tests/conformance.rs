//! Every conformance case on the SQLite store, in memory and in a file; and what a file
//! holds survives the process that wrote it.

use colony_memory::{Document, Memory, Namespace, Query, SqliteMemory, testing};

#[test]
fn the_sqlite_store_in_memory_passes_every_case() {
    testing::all(&|| Box::new(SqliteMemory::in_memory().unwrap()));
}

#[test]
fn the_sqlite_store_in_a_file_passes_every_case() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::cell::Cell::new(0);
    testing::all(&|| {
        n.set(n.get() + 1);
        Box::new(SqliteMemory::open(&dir.path().join(format!("m{}.db", n.get()))).unwrap())
    });
}

#[test]
fn documents_acknowledged_are_in_the_file_when_it_is_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("memory.db");
    let shared = Namespace::parse("shared").unwrap();
    {
        let m = SqliteMemory::open(&path).unwrap();
        let docs = (0..200)
            .map(|i| {
                Document::new(format!("d{i}"), format!("note {i} about agents"))
                    .embedded(vec![i as f32, 1.0])
            })
            .collect();
        m.put(&shared, docs).unwrap();
    }
    let m = SqliteMemory::open(&path).unwrap();
    assert_eq!(m.stats(&shared).unwrap().documents, 200);
    assert_eq!(
        m.get(&shared, "d42").unwrap().unwrap().embedding,
        Some(vec![42.0, 1.0])
    );
    assert_eq!(
        m.search(&shared, &Query::text("agents", 500))
            .unwrap()
            .len(),
        200
    );
}

/// A namespace dumped and restored into an empty store is the same namespace: its
/// documents, the dimension it kept after its documents were deleted, the embedder it
/// recorded (so it refuses what the first refuses), and its searches.
#[test]
fn a_namespace_dumped_and_restored_is_the_same() {
    let (a, b) = (
        SqliteMemory::in_memory().unwrap(),
        SqliteMemory::in_memory().unwrap(),
    );
    let notes = Namespace::parse("team/notes").unwrap();
    let emptied = Namespace::parse("team/emptied").unwrap();
    let docs: Vec<Document> = (0..250)
        .map(|i| {
            Document::new(format!("d{i}"), format!("note {i} about agents restarting"))
                .with("n", i)
                .embedded(vec![i as f32, 1.0, 0.5])
        })
        .collect();
    a.put_embedded(&notes, docs, "lexical").unwrap();
    a.put(
        &emptied,
        vec![Document::new("x", "x").embedded(vec![1.0, 2.0])],
    )
    .unwrap();
    a.delete(&emptied, &["x".into()]).unwrap();
    for ns in [&notes, &emptied] {
        b.restore(ns, a.dump(ns).unwrap(), &mut || {}).unwrap();
        assert_eq!(a.stats(ns).unwrap(), b.stats(ns).unwrap());
        assert_eq!(a.dump(ns).unwrap(), b.dump(ns).unwrap());
    }
    assert!(
        b.restore(&notes, a.dump(&notes).unwrap(), &mut || {})
            .is_err()
    );
    let q = Query::text("agents restarting 17", 5);
    let (ha, hb) = (a.search(&notes, &q).unwrap(), b.search(&notes, &q).unwrap());
    assert_eq!(ha, hb);
    // What the first refuses, the restored refuses.
    let three = vec![Document::new("y", "y").embedded(vec![1.0, 2.0, 3.0])];
    assert!(a.put(&emptied, three.clone()).is_err());
    assert!(b.put(&emptied, three).is_err());
    let other = vec![Document::new("z", "z").embedded(vec![1.0, 2.0, 3.0])];
    assert!(a.put_embedded(&notes, other.clone(), "http:m").is_err());
    assert!(b.put_embedded(&notes, other, "http:m").is_err());
}
