//! Cost of forming a team on a large live tree, and of replacing a failed member: both run
//! inside the dispatcher's turn, so they must stay small however many agents there are.

use colony_core::{
    AgentId,
    hierarchy::HierarchyOptions,
    team::{self, Need, WALK_BOUND},
    tree::{LiveTree, SpecMask, TreeOptions},
};
use criterion::{Criterion, criterion_group, criterion_main};
use std::{collections::HashSet, hint::black_box};

/// `workers` workers, a third of each of specs 0, 1 and 2, added pool after pool.
fn tree(workers: u32) -> LiveTree {
    let options = TreeOptions {
        hierarchy: HierarchyOptions::with_workers(workers.into()),
        queue_capacity: 64,
    };
    let mut tree = LiveTree::new(&options).unwrap();
    for spec in 0..3 {
        tree.add_workers(workers / 3, spec, 1);
    }
    tree
}

fn teams(c: &mut Criterion) {
    let mut group = c.benchmark_group("team");
    let workers = 999_999;
    let tree = tree(workers);
    let one_pool = [
        Need {
            mask: SpecMask::of(0),
            count: 1,
        },
        Need {
            mask: SpecMask::of(0),
            count: 3,
        },
        Need {
            mask: SpecMask::of(0),
            count: 1,
        },
    ];
    // Three pools whose workers never share a supervisor: the team is spread after a walk.
    let three_pools = [
        Need {
            mask: SpecMask::of(0),
            count: 1,
        },
        Need {
            mask: SpecMask::of(1),
            count: 3,
        },
        Need {
            mask: SpecMask::of(2),
            count: 1,
        },
    ];
    group.bench_function("form/one-pool/1M", |b| {
        b.iter(|| team::form(&tree, black_box(&one_pool), WALK_BOUND).unwrap())
    });
    group.bench_function("form/three-pools-spread/1M", |b| {
        b.iter(|| team::form(&tree, black_box(&three_pools), WALK_BOUND).unwrap())
    });
    let f = team::form(&tree, &one_pool, WALK_BOUND).unwrap();
    let members: HashSet<AgentId> = f.members.iter().map(|m| m.agent).collect();
    let failed = f.members[1].agent;
    group.bench_function("replace/1M", |b| {
        b.iter(|| {
            team::replace(
                &tree,
                black_box(failed),
                f.supervisor,
                SpecMask::of(0),
                &members,
                WALK_BOUND,
            )
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, teams);
criterion_main!(benches);
