//! What a turn of the loop tells the world, and when: the journal records, events, counters
//! and completions every part adds to during a turn, handed out at its end. Records go to the
//! journal in one call; the permits, counts and completions of the tasks that ended wait until
//! those records are durable, so nobody hears of a result the journal could still lose.

use super::command::{Job, due_back};
use crate::{
    events::{Event, Kinds},
    metrics::Metrics,
    shared::{Completion, Latencies, PoolCounters, Shared, Waiter},
};
use bytes::Bytes;
use colony_core::{AgentId, task::TaskState, tree::LiveTree};
use colony_journal::{Durable, Record};
use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

type Flushing = Pin<Box<dyn Future<Output = Result<(), colony_journal::Error>> + Send>>;

/// What one turn changed, published at its end.
#[derive(Debug, Default)]
pub(super) struct Turn {
    pub(super) succeeded: u64,
    pub(super) failed: u64,
    pub(super) dead_lettered: u64,
    pub(super) cancelled: u64,
    /// Tasks ended this turn, by latency bucket.
    latency: [u64; crate::shared::LATENCY_BUCKETS],
    pub(super) attempts: u64,
    pub(super) retries: u64,
    pub(super) restarts_crash: u64,
    pub(super) restarts_timeout: u64,
    pub(super) escalations: u64,
    pub(super) quarantined: u64,
    pub(super) health_failures: u64,
    pub(super) alerts: u64,
    /// Workers whose breaker opened.
    pub(super) sidelined: u64,
    /// Ended tasks that held an admission permit.
    permits: u64,
    pub(super) steals: u64,
    /// Tasks moved by rebalancing.
    pub(super) rebalanced: u64,
}

/// The turn's outgoing records, events and completions, and the journal writes of earlier
/// turns still on their way to disk.
pub(super) struct Outbox {
    records: Vec<Record>,
    events: Vec<Event>,
    /// Completions of this turn, sent once its records are durable.
    completions: Vec<(Waiter, Completion)>,
    flushing: FuturesUnordered<Flushing>,
    pub(super) turn: Turn,
    pub(super) metrics: Metrics,
    pub(super) pools: Vec<PoolTally>,
    /// Per tier, agents out of service and due back, as the metric last said.
    down_published: Vec<u64>,
    shared: Arc<Shared>,
}

/// Per pool, the work its agents took on and ended, and the tasks that arrived for it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct PoolTally {
    pub(super) busy: u64,
    pub(super) ended: u64,
    /// Microseconds the pool's ended attempts ran outside `handle`, summed.
    pub(super) busy_micros: u64,
    arrivals: u64,
}

/// What the rest of the runtime reads of the loop's state at the end of a turn.
pub(super) struct Gauges<'a> {
    /// Per pool, tasks waiting that it may run.
    pub(super) waiting: &'a [u64],
    pub(super) queued: u64,
    pub(super) running: u64,
    pub(super) capacity: u64,
    pub(super) retired: usize,
}

impl Outbox {
    pub(super) fn new(shared: Arc<Shared>, tiers: usize, pools: usize) -> Self {
        Self {
            records: Vec::new(),
            events: Vec::new(),
            completions: Vec::new(),
            flushing: FuturesUnordered::new(),
            turn: Turn::default(),
            metrics: Metrics::register(),
            pools: vec![PoolTally::default(); pools],
            down_published: vec![0; tiers],
            shared,
        }
    }

    /// A task was accepted: it counts in the arrivals of every pool that may run it.
    pub(super) fn arrived(&mut self, job: &Job) {
        let mut bits = job.eligible.0;
        while bits != 0 {
            if let Some(tally) = self.pools.get_mut(bits.trailing_zeros() as usize) {
                tally.arrivals += 1;
            }
            bits &= bits - 1;
        }
    }

    pub(super) fn record(&mut self, record: Record) {
        self.records.push(record);
    }

    /// Whether anyone listens for events of `kinds`: events nobody wants are not even built.
    pub(super) fn wants(&self, kinds: Kinds) -> bool {
        self.shared.bus.wants(kinds)
    }

    /// Adds the event `make` builds, if anyone listens for `kinds`.
    pub(super) fn event(&mut self, kinds: Kinds, make: impl FnOnce() -> Event) {
        if self.shared.bus.wants(kinds) {
            self.events.push(make());
        }
    }

    /// Waits for a journal write that did not complete at once, logging its failure.
    pub(super) fn flush(&mut self, mut durable: Durable, what: &'static str) {
        match durable.try_result() {
            Some(Ok(())) => {}
            Some(Err(error)) => tracing::error!(%error, "{what} failed."),
            None => self.flushing.push(Box::pin(durable)),
        }
    }

    /// Whether journal writes of earlier turns are still on their way.
    pub(super) fn is_flushing(&self) -> bool {
        !self.flushing.is_empty()
    }

    /// The next journal write of an earlier turn to land.
    pub(super) async fn flushed(&mut self) -> Option<Result<(), colony_journal::Error>> {
        self.flushing.next().await
    }

    /// Takes the writes that have landed meanwhile, logging those that failed.
    pub(super) fn drain_flushed(&mut self) {
        while let Some(Some(result)) = self.flushing.next().now_or_never() {
            log_flushed(result);
        }
    }

    /// A task reached a terminal state. Whoever waits for it hears so once the turn's records
    /// are durable.
    pub(super) fn complete(
        &mut self,
        job: Job,
        state: TaskState,
        output: Option<Bytes>,
        error: Option<Arc<str>>,
        agent: Option<AgentId>,
    ) {
        let latency = job.submitted.elapsed();
        self.metrics.latency.record(latency);
        self.turn.latency[Latencies::bucket(latency)] += 1;
        self.turn.permits += u64::from(job.permit);
        if let Some(waiter) = job.waiter {
            let completion = Completion {
                id: job.id,
                state,
                output,
                error,
                attempts: job.attempt,
                agent,
                latency,
            };
            self.completions.push((waiter, completion));
        }
    }

    /// Ends the turn: hands its records to the journal, then, once they are durable, returns
    /// the permits of ended tasks, counts them and tells their waiters.
    pub(super) fn publish(&mut self, tree: &LiveTree, gauges: Gauges<'_>) {
        if !self.events.is_empty() {
            self.shared.bus.publish(std::mem::take(&mut self.events));
        }
        let t = std::mem::take(&mut self.turn);
        let c = &self.shared.counters;
        let m = &self.metrics;
        for (bucket, n) in c.latency.iter().zip(t.latency) {
            if n > 0 {
                bucket.fetch_add(n, Relaxed);
            }
        }
        bump(&c.attempts, &m.attempts, t.attempts);
        bump(&c.retries, &m.retries, t.retries);
        bump(&c.steals, &m.steals, t.steals);
        bump(&c.rebalanced, &m.rebalanced, t.rebalanced);
        let restarts = t.restarts_crash + t.restarts_timeout;
        if restarts > 0 {
            c.restarts.fetch_add(restarts, Relaxed);
            m.restarts_crash.increment(t.restarts_crash);
            m.restarts_timeout.increment(t.restarts_timeout);
        }
        bump(&c.escalations, &m.escalations, t.escalations);
        bump(&c.health_failures, &m.health_failures, t.health_failures);
        bump(&c.sidelined, &m.sidelined, t.sidelined);
        if t.quarantined > 0 {
            c.quarantined.fetch_add(t.quarantined, Relaxed);
        }
        if t.alerts > 0 {
            m.alerts.increment(t.alerts);
        }
        c.queued.store(gauges.queued, Relaxed);
        c.running.store(gauges.running, Relaxed);
        c.agents.store(tree.len() as u64, Relaxed);
        c.capacity.store(gauges.capacity, Relaxed);
        m.queued.set(gauges.queued as f64);
        m.running.set(gauges.running as f64);
        m.succeeded.increment(t.succeeded);
        m.failed.increment(t.failed);
        m.dead_lettered.increment(t.dead_lettered);
        m.cancelled.increment(t.cancelled);
        self.publish_down(tree, gauges.retired, false);
        self.publish_pools(gauges.waiting);
        let release = Release {
            shared: self.shared.clone(),
            succeeded: t.succeeded,
            failed: t.failed,
            dead_lettered: t.dead_lettered,
            cancelled: t.cancelled,
            permits: t.permits,
            completions: std::mem::take(&mut self.completions),
        };
        if self.records.is_empty() {
            release.run(&Ok(()));
            return;
        }
        let mut durable = self
            .shared
            .journal
            .record(std::mem::take(&mut self.records));
        match durable.try_result() {
            Some(result) => release.run(&result),
            None => {
                let (commit, started) = (self.metrics.commit.clone(), Instant::now());
                self.flushing.push(Box::pin(async move {
                    let result = durable.await;
                    commit.record(started.elapsed());
                    release.run(&result);
                    result
                }));
            }
        }
    }

    /// Publishes each pool's load, and since when its tasks have waited without a break.
    fn publish_pools(&self, waiting: &[u64]) {
        let mut now = None;
        for ((counters, tally), &waiting) in
            self.shared.pool_load.iter().zip(&self.pools).zip(waiting)
        {
            counters.waiting.store(waiting, Relaxed);
            counters.busy.store(tally.busy, Relaxed);
            counters.arrivals.store(tally.arrivals, Relaxed);
            counters.ended.store(tally.ended, Relaxed);
            counters.busy_micros.store(tally.busy_micros, Relaxed);
            let since = counters.waiting_since.load(Relaxed);
            if waiting == 0 {
                if since != PoolCounters::NONE_WAITING {
                    counters
                        .waiting_since
                        .store(PoolCounters::NONE_WAITING, Relaxed);
                }
            } else if since == PoolCounters::NONE_WAITING {
                let at = *now.get_or_insert_with(|| {
                    let micros = self.shared.epoch.elapsed().as_micros();
                    u64::try_from(micros).unwrap_or(u64::MAX - 1)
                });
                counters.waiting_since.store(at, Relaxed);
            }
        }
    }

    /// Sets the gauge of agents out of service and due back, per tier: where it changed, or
    /// everywhere (`all`, so that every tier has the series).
    pub(super) fn publish_down(&mut self, tree: &LiveTree, retired: usize, all: bool) {
        for (tier, name) in tree.tier_names().iter().enumerate() {
            let down = due_back(tree, retired, tier);
            if let Some(published) = self.down_published.get_mut(tier)
                && (all || *published != down)
            {
                Metrics::tier_down(name, down);
                *published = down;
            }
        }
    }
}

/// Logs a journal write of an earlier turn that failed.
pub(super) fn log_flushed(result: Result<(), colony_journal::Error>) {
    if let Err(error) = result {
        tracing::error!(%error, "Journal write failed.");
    }
}

/// What a turn tells the outside once its records are durable.
struct Release {
    shared: Arc<Shared>,
    succeeded: u64,
    failed: u64,
    dead_lettered: u64,
    cancelled: u64,
    permits: u64,
    completions: Vec<(Waiter, Completion)>,
}

impl Release {
    /// `journaled` is how the turn's records fared. If the journal could not record them,
    /// waiters still hear how their tasks ended (the work did happen) and why the journal
    /// does not say so: it will recover those tasks at the next start.
    fn run(self, journaled: &Result<(), colony_journal::Error>) {
        let finished = self.succeeded + self.failed + self.dead_lettered + self.cancelled;
        if let Err(error) = journaled {
            tracing::error!(%error, "The journal could not record a turn's transitions.");
        }
        // A decision's ballots ended in this turn wake its reader once, after the last.
        let mut batches: Vec<Arc<crate::shared::Batch>> = Vec::new();
        for (waiter, mut completion) in self.completions {
            if let Err(error) = journaled {
                completion.error = Some(format!("not recorded in the journal: {error}").into());
            }
            if let Some(batch) = waiter.send(completion)
                && !batches.iter().any(|b| Arc::ptr_eq(b, &batch))
            {
                batches.push(batch);
            }
        }
        for batch in batches {
            batch.wake();
        }
        if finished == 0 {
            return;
        }
        let c = &self.shared.counters;
        c.succeeded.fetch_add(self.succeeded, Relaxed);
        c.failed.fetch_add(self.failed, Relaxed);
        c.dead_lettered.fetch_add(self.dead_lettered, Relaxed);
        c.cancelled.fetch_add(self.cancelled, Relaxed);
        self.shared.return_permits(self.permits as usize);
        self.shared.drained.notify_waiters();
    }
}

/// Adds a turn's count to a counter callers read and to its metric.
fn bump(counter: &AtomicU64, metric: &metrics::Counter, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Relaxed);
        metric.increment(n);
    }
}
