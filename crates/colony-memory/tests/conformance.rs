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
