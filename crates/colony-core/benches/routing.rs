//! Cost of routing one task from the top tier to a supervisor, per strategy.

use colony_core::{
    hierarchy::HierarchyOptions,
    routing::{Strategy, Weights},
    tree::{LiveTree, SpecMask, TreeOptions},
};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::{SeedableRng, rngs::SmallRng};
use std::hint::black_box;

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    for workers in [10_000u32, 1_000_000] {
        let options = TreeOptions {
            hierarchy: HierarchyOptions::with_workers(workers.into()),
            queue_capacity: 64,
        };
        let mut tree = LiveTree::new(&options).unwrap();
        tree.add_workers(workers, 0, 1);
        let mut rng = SmallRng::seed_from_u64(1);
        for (name, strategy) in [
            ("least-loaded", Strategy::LeastLoaded),
            ("round-robin", Strategy::RoundRobin),
            ("weighted", Strategy::Weighted(Weights::default())),
            ("random", Strategy::Random),
        ] {
            group.bench_function(format!("{name}/{workers}"), |b| {
                b.iter(|| {
                    let s = tree
                        .route(black_box(SpecMask::ALL), strategy, &mut rng)
                        .unwrap();
                    tree.enqueue(s);
                    tree.dequeue(s);
                    s
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
