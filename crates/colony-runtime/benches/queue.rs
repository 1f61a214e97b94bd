//! Cost of a push and a pop on a supervisor's priority queue.

use colony_core::task::Priority;
use colony_runtime::queue::PriorityQueue;
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn queue(c: &mut Criterion) {
    let mut q = PriorityQueue::new(1024);
    for i in 0..512u64 {
        q.push(Priority::new((i % 10) as u8).unwrap(), i).unwrap();
    }
    c.bench_function("queue/push-pop", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            q.push(Priority::new((i % 10) as u8).unwrap(), black_box(i))
                .unwrap();
            q.pop()
        })
    });
}

criterion_group!(benches, queue);
criterion_main!(benches);
