//! Exact search in a namespace of 10,000 documents of 384 dimensions (issue 15's target:
//! ≤ 10 ms p50), by vector, by text and both; and storing a batch of 1,000 documents.

use colony_memory::{Document, Embedder, Lexical, Memory, Namespace, Query, SqliteMemory};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use std::hint::black_box;

const WORDS: &[&str] = &[
    "agent",
    "restart",
    "supervisor",
    "task",
    "queue",
    "journal",
    "crash",
    "vote",
    "team",
    "memory",
    "worker",
    "pool",
    "latency",
    "retry",
    "health",
    "report",
    "plan",
    "review",
];

fn text(rng: &mut SmallRng) -> String {
    (0..12)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn vector(rng: &mut SmallRng) -> Vec<f32> {
    (0..384).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn search(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let memory = SqliteMemory::open(&dir.path().join("bench.db")).unwrap();
    let ns = Namespace::parse("bench").unwrap();
    let mut rng = SmallRng::seed_from_u64(1);
    for chunk in 0..10 {
        let docs = (0..1_000)
            .map(|i| {
                Document::new(format!("d{chunk}-{i}"), text(&mut rng))
                    .with("even", i % 2 == 0)
                    .embedded(vector(&mut rng))
            })
            .collect();
        memory.put(&ns, docs).unwrap();
    }
    let mut group = c.benchmark_group("memory-10k-384");
    group.sample_size(20);
    let q = vector(&mut rng);
    group.bench_function("vector/k10", |b| {
        b.iter(|| {
            memory
                .search(&ns, black_box(&Query::vector(q.clone(), 10)))
                .unwrap()
        })
    });
    group.bench_function("vector/k10/filtered", |b| {
        let query = Query::vector(q.clone(), 10).filtered("even", true);
        b.iter(|| memory.search(&ns, black_box(&query)).unwrap())
    });
    group.bench_function("text/k10", |b| {
        b.iter(|| {
            memory
                .search(&ns, black_box(&Query::text("crash restart", 10)))
                .unwrap()
        })
    });
    let lexical = Lexical::new(384).unwrap();
    group.bench_function("hybrid/k10", |b| {
        b.iter(|| {
            let query = Query {
                text: Some("crash restart".into()),
                vector: Some(vector(&mut rng)),
                k: 10,
                ..Query::default()
            };
            memory.search(&ns, black_box(&query)).unwrap()
        })
    });
    group.bench_function("put/1000", |b| {
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            let docs: Vec<Document> = (0..1_000)
                .map(|i| Document::new(format!("p{n}-{i}"), "x").embedded(vector(&mut rng)))
                .collect();
            memory
                .put(&Namespace::parse("puts").unwrap(), docs)
                .unwrap()
        })
    });
    group.bench_function("lexical-embed/1000", |b| {
        let texts: Vec<String> = (0..1_000).map(|_| text(&mut rng)).collect();
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        b.iter(|| lexical.embed(black_box(&texts)).unwrap())
    });
    group.finish();
}

criterion_group!(benches, search);
criterion_main!(benches);
