//! Cost of the decision engine tallying 10,000 ballots and closing the round, as
//! `colony bench vote` measures it (40/30/30 %, so the round closes without a majority).

use colony_core::{
    AgentId,
    decision::{Ballot, Decision, DecisionOptions, Participant, Progress},
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use std::{hint::black_box, sync::Arc, time::Duration};

const BALLOTS: u32 = 10_000;

fn tally(c: &mut Criterion) {
    let participants: Vec<Participant> =
        (0..BALLOTS).map(|i| Participant::new(AgentId(i))).collect();
    let values: [Arc<str>; 3] = ["alpha".into(), "beta".into(), "gamma".into()];
    let at = Duration::from_millis(1);
    c.bench_function("decision/tally-10k", |b| {
        b.iter_batched_ref(
            || Decision::new(DecisionOptions::default(), &participants).unwrap(),
            |decision| {
                for i in 0..BALLOTS {
                    let value = &values[match i % 10 {
                        0..=3 => 0,
                        4..=6 => 1,
                        _ => 2,
                    }];
                    let progress = decision.cast(Ballot::output(AgentId(i), value.clone()), at);
                    debug_assert_eq!(progress, Ok(Progress::Pending));
                }
                black_box(decision.close(at))
            },
            BatchSize::PerIteration,
        )
    });
}

criterion_group!(benches, tally);
criterion_main!(benches);
