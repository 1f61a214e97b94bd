//! A namespace records what made its embeddings and refuses another embedder's, storing
//! nothing of the batch; raw embeddings (no embedder named) are taken as they come; the
//! record survives reopening the file.

use colony_memory::{Document, Error, Memory, Namespace, Query, SqliteMemory};

fn doc(id: &str, v: [f32; 3]) -> Document {
    Document::new(id, format!("text of {id}")).embedded(v.to_vec())
}

#[test]
fn a_namespace_keeps_to_one_embedder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let ns = Namespace::parse("notes").unwrap();
    {
        let m = SqliteMemory::open(&path).unwrap();
        m.put_embedded(&ns, vec![doc("a", [0.0, 1.0, 0.0])], "lexical")
            .unwrap();
        assert_eq!(m.stats(&ns).unwrap().embedder.as_deref(), Some("lexical"));
        // Raw vectors after: taken as they come.
        m.put(&ns, vec![doc("raw", [1.0, 0.0, 0.0])]).unwrap();
        // A namespace whose first vectors came raw: what made them is not known, so a
        // labelled put later records nothing (it cannot tell them apart).
        let old = Namespace::parse("old").unwrap();
        m.put(&old, vec![doc("r", [1.0, 0.0, 0.0])]).unwrap();
        m.put_embedded(&old, vec![doc("s", [0.0, 1.0, 0.0])], "lexical")
            .unwrap();
        assert_eq!(m.stats(&old).unwrap().embedder, None);
    }
    let m = SqliteMemory::open(&path).unwrap();
    let e = m
        .put_embedded(
            &ns,
            vec![doc("b", [0.0, 0.0, 1.0]), doc("c", [1.0, 1.0, 0.0])],
            "http:text-embedding-3-small",
        )
        .unwrap_err();
    assert_eq!(
        e,
        Error::Mixed {
            namespace: "notes".into(),
            holds: "lexical".into(),
            got: "http:text-embedding-3-small".into(),
        }
    );
    assert_eq!(
        m.stats(&ns).unwrap().documents,
        2,
        "nothing of the batch stored"
    );
    // The same embedder again, and text alone from any: fine.
    m.put_embedded(&ns, vec![doc("d", [0.5, 0.5, 0.0])], "lexical")
        .unwrap();
    m.put_embedded(&ns, vec![Document::new("t", "no vector")], "http:other")
        .unwrap();
    // A search names what made its vector: another embedder's is refused, an unnamed one
    // is not checked.
    let mut q = Query::vector(vec![0.0, 1.0, 0.0], 2);
    q.embedder = Some("http:other".into());
    assert!(matches!(m.search(&ns, &q), Err(Error::Mixed { .. })));
    q.embedder = Some("lexical".into());
    assert_eq!(m.search(&ns, &q).unwrap()[0].id, "a");
    q.embedder = None;
    assert_eq!(m.search(&ns, &q).unwrap()[0].id, "a");
    // A bad name is refused as such.
    q.embedder = Some(String::new());
    assert!(matches!(m.search(&ns, &q), Err(Error::Query(_))));
    assert!(matches!(
        m.put_embedded(&ns, vec![doc("x", [0.0; 3])], "a\nb"),
        Err(Error::Query(_))
    ));
}
