//! What `colony top` shows, without I/O: the latest poll, the history it keeps, and the
//! clock, all as plain data; times are offsets from when the view started, so that tests
//! can play any sequence of polls. The pools' samples are the server's, with its times.

use super::api::{Decision, PoolHistory, Snapshot};
use std::{collections::VecDeque, time::Duration};

/// Throughput samples kept for the sparkline: a minute at the default interval.
pub(crate) const HISTORY: usize = 60;
/// Samples kept of each pool: the server's 15 minutes at one a second.
pub(crate) const POOL_SAMPLES: usize = 900;
/// Pools followed (the server samples no more).
pub(crate) const MAX_POOLS: usize = 32;

/// One pool at one of the server's samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PoolSample {
    /// Milliseconds since the Unix epoch, by the server's clock.
    pub(crate) t: u64,
    pub(crate) agents: Option<u64>,
    pub(crate) desired: Option<u64>,
    pub(crate) waiting: Option<u64>,
    pub(crate) busy: Option<u64>,
}

/// One pool's recent past, as the server sampled it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PoolTrack {
    /// `kind/role`.
    pub(crate) name: String,
    /// Oldest first, at most [`POOL_SAMPLES`].
    pub(crate) samples: VecDeque<PoolSample>,
    /// The newest step (up, down, by hand) on its size.
    pub(crate) last_step: Option<Decision>,
    /// The newest step the autoscaler wanted and was held from, if newer than `last_step`.
    pub(crate) held: Option<Decision>,
}

impl PoolTrack {
    pub(crate) fn latest(&self) -> Option<&PoolSample> {
        self.samples.back()
    }
}

/// The pools as far as the server's history has told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pools {
    /// Whether the server keeps a history; an older one does not.
    pub(crate) served: bool,
    /// The `until` of the last answer: the next poll asks for what came after it.
    pub(crate) until: Option<u64>,
    pub(crate) tracks: Vec<PoolTrack>,
}

impl Pools {
    /// Takes in what the server recorded since the last answer.
    fn record(&mut self, history: PoolHistory) {
        self.served = true;
        // A server whose records end before ours (another server, or one restarted with its
        // clock behind) starts over: its answer holds everything it kept.
        let names: Vec<String> = history
            .pools
            .iter()
            .take(MAX_POOLS)
            .map(|p| {
                format!(
                    "{}/{}",
                    p.kind.as_deref().unwrap_or("?"),
                    p.role.as_deref().unwrap_or("?")
                )
            })
            .collect();
        let restarted = self.until.is_some_and(|until| history.until < until);
        let renamed = !self.tracks.iter().map(|t| &t.name).eq(names.iter());
        if restarted || renamed {
            self.tracks = names
                .into_iter()
                .map(|name| PoolTrack {
                    name,
                    ..PoolTrack::default()
                })
                .collect();
        }
        if restarted {
            // What it answered was after our cursor, not everything it kept: ask again.
            self.until = None;
            return;
        }
        for (track, series) in self.tracks.iter_mut().zip(&history.pools) {
            let at = |column: &Vec<Option<u64>>, i: usize| column.get(i).copied().flatten();
            for (i, &t) in history.t.iter().enumerate() {
                if track.samples.len() == POOL_SAMPLES {
                    track.samples.pop_front();
                }
                track.samples.push_back(PoolSample {
                    t,
                    agents: at(&series.agents, i),
                    desired: at(&series.desired, i),
                    waiting: at(&series.waiting, i),
                    busy: at(&series.busy, i),
                });
            }
        }
        for decision in history.events {
            let Some(track) = self.tracks.get_mut(decision.pool) else {
                continue;
            };
            if decision.kind == "scale:blocked" {
                track.held = Some(decision);
            } else {
                track.last_step = Some(decision);
                track.held = None;
            }
        }
        self.until = Some(history.until);
    }
}

/// How a view polls its server: the same for a runtime's server and a cluster's.
#[derive(Clone, Debug)]
pub(crate) struct Polling {
    /// The server's base URL.
    pub(crate) server: String,
    /// How often it is polled.
    pub(crate) interval: Duration,
    /// Whether keys work (the TUI) or this is one frame printed (`--once`).
    pub(crate) live: bool,
    /// Since the view started.
    pub(crate) watching: Duration,
    /// When the latest answer was asked for.
    pub(crate) polled_at: Option<Duration>,
    /// Why the latest poll failed, if it did.
    pub(crate) error: Option<String>,
}

impl Polling {
    pub(crate) fn new(server: impl Into<String>, interval: Duration, live: bool) -> Self {
        Self {
            server: server.into(),
            interval,
            live,
            watching: Duration::ZERO,
            polled_at: None,
            error: None,
        }
    }

    /// Moves the clock the header shows.
    pub(crate) fn tick(&mut self, now: Duration) {
        self.watching = self.watching.max(now);
    }

    /// The poll asked for at `at` failed; the latest answer stays on screen.
    pub(crate) fn failed(&mut self, at: Duration, error: String) {
        self.tick(at);
        self.error = Some(error);
    }

    /// The poll asked for at `at` answered.
    pub(crate) fn answered(&mut self, at: Duration) {
        self.tick(at);
        self.polled_at = Some(at);
        self.error = None;
    }
}

/// Everything a frame is drawn from.
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub(crate) poll: Polling,
    /// The latest answer; it stays on screen while later polls fail.
    pub(crate) latest: Option<Snapshot>,
    /// Tasks finished per second between consecutive answers, oldest first.
    pub(crate) throughput: Vec<f64>,
    /// The pools' sizes over time, and the decisions on them.
    pub(crate) pools: Pools,
}

impl View {
    pub(crate) fn new(server: impl Into<String>, interval: Duration, live: bool) -> Self {
        Self {
            poll: Polling::new(server, interval, live),
            latest: None,
            throughput: Vec::with_capacity(HISTORY),
            pools: Pools::default(),
        }
    }

    /// Moves the clock the header shows.
    pub(crate) fn tick(&mut self, now: Duration) {
        self.poll.tick(now);
    }

    /// Takes in a poll asked for at `at`.
    pub(crate) fn record(&mut self, at: Duration, poll: Result<Snapshot, String>) {
        let mut snapshot = match poll {
            Ok(s) => s,
            Err(error) => {
                self.poll.failed(at, error);
                return;
            }
        };
        if let (Some(before), Some(then)) = (&self.latest, self.poll.polled_at) {
            let seconds = at.saturating_sub(then).as_secs_f64();
            if seconds > 0.0 {
                // A restarted server starts its counters again from zero: no negative rates.
                let done = snapshot
                    .stats
                    .finished()
                    .saturating_sub(before.stats.finished());
                if self.throughput.len() == HISTORY {
                    self.throughput.remove(0);
                }
                self.throughput.push(done as f64 / seconds);
            }
        }
        // The history is a delta, taken in here; the snapshot keeps the rest.
        match snapshot.pools.take() {
            Some(history) => self.pools.record(*history),
            None => self.pools = Pools::default(),
        }
        self.latest = Some(snapshot);
        self.poll.answered(at);
    }

    /// What the next poll asks the pools' history for: what came after the last answer.
    pub(crate) fn pools_since(&self) -> Option<u64> {
        self.pools.until
    }

    /// Tasks finished per second over the latest interval; `None` before two answers.
    pub(crate) fn rate(&self) -> Option<f64> {
        self.throughput.last().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::top::api::Stats;

    fn finished(succeeded: u64) -> Snapshot {
        Snapshot {
            stats: Stats {
                succeeded,
                ..Stats::default()
            },
            ..Snapshot::default()
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn throughput_comes_from_deltas_between_answers() {
        let mut view = View::new("http://h", secs(1), true);
        view.record(secs(0), Ok(finished(100)));
        assert_eq!(view.rate(), None);
        view.record(secs(2), Ok(finished(300)));
        assert_eq!(view.rate(), Some(100.0));
        // A failed poll keeps the data and the history, and says why.
        view.record(secs(3), Err("down".into()));
        assert_eq!(view.poll.error.as_deref(), Some("down"));
        assert_eq!(view.latest, Some(finished(300)));
        // The next answer spans the gap.
        view.record(secs(4), Ok(finished(500)));
        assert_eq!(view.rate(), Some(100.0));
        assert_eq!(view.poll.error, None);
        assert_eq!(view.throughput.len(), 2);
        // A restarted server does not give a negative rate.
        view.record(secs(5), Ok(finished(7)));
        assert_eq!(view.rate(), Some(0.0));
    }

    fn history(until: u64, t: &[u64], agents: &[u64], events: Vec<Decision>) -> PoolHistory {
        use crate::commands::top::api::PoolSeries;
        PoolHistory {
            until,
            t: t.to_vec(),
            pools: vec![PoolSeries {
                pool: 0,
                kind: Some("sim".into()),
                role: Some("worker".into()),
                agents: agents.iter().map(|&a| Some(a)).collect(),
                desired: vec![None; agents.len()],
                waiting: vec![Some(0); agents.len()],
                busy: vec![Some(1); agents.len()],
            }],
            events,
        }
    }

    fn decision(t: u64, kind: &str) -> Decision {
        Decision {
            t,
            pool: 0,
            kind: kind.into(),
            ..Decision::default()
        }
    }

    fn with_pools(h: PoolHistory) -> Snapshot {
        Snapshot {
            pools: Some(Box::new(h)),
            ..Snapshot::default()
        }
    }

    #[test]
    fn pool_samples_accumulate_from_the_deltas_and_keep_their_bound() {
        let mut view = View::new("http://h", secs(1), true);
        assert_eq!(view.pools_since(), None);
        view.record(
            secs(0),
            Ok(with_pools(history(10, &[9, 10], &[4, 4], vec![]))),
        );
        assert_eq!(view.pools_since(), Some(10));
        assert_eq!(view.pools.tracks[0].name, "sim/worker");
        let steps = vec![decision(11, "scale:up"), decision(12, "scale:blocked")];
        view.record(secs(1), Ok(with_pools(history(13, &[13], &[6], steps))));
        let track = &view.pools.tracks[0];
        let agents: Vec<_> = track.samples.iter().map(|s| s.agents).collect();
        assert_eq!(agents, [Some(4), Some(4), Some(6)]);
        assert_eq!(track.latest().unwrap().busy, Some(1));
        assert_eq!(track.last_step.as_ref().unwrap().kind, "scale:up");
        assert_eq!(track.held.as_ref().unwrap().kind, "scale:blocked");
        // A step after a blocked one clears it.
        let manual = vec![decision(14, "scale:manual")];
        view.record(secs(2), Ok(with_pools(history(15, &[15], &[2], manual))));
        assert_eq!(view.pools.tracks[0].held, None);
        assert_eq!(
            view.latest.as_ref().unwrap().pools,
            None,
            "taken in, not kept"
        );
        // The snapshot is not the store: the ring is bounded.
        for i in 0..POOL_SAMPLES as u64 + 50 {
            view.record(
                secs(3),
                Ok(with_pools(history(100 + i, &[100 + i], &[i], vec![]))),
            );
        }
        let samples = &view.pools.tracks[0].samples;
        assert_eq!(samples.len(), POOL_SAMPLES);
        assert_eq!(
            samples.back().unwrap().agents,
            Some(POOL_SAMPLES as u64 + 49)
        );
    }

    #[test]
    fn a_server_behind_our_cursor_starts_the_pools_over() {
        let mut view = View::new("http://h", secs(1), true);
        view.record(
            secs(0),
            Ok(with_pools(history(1_000, &[1_000], &[4], vec![]))),
        );
        view.record(secs(1), Ok(with_pools(history(50, &[], &[], vec![]))));
        assert_eq!(
            view.pools_since(),
            None,
            "the next poll asks for everything"
        );
        assert!(view.pools.tracks[0].samples.is_empty());
        // A server without the history route: nothing to show, and nothing asked.
        view.record(secs(2), Ok(Snapshot::default()));
        assert!(!view.pools.served);
        assert_eq!(view.pools_since(), None);
    }

    #[test]
    fn history_keeps_the_last_samples() {
        let mut view = View::new("http://h", secs(1), true);
        for i in 0..=(HISTORY as u64 + 10) {
            view.record(secs(i), Ok(finished(i * i)));
        }
        assert_eq!(view.throughput.len(), HISTORY);
        assert_eq!(view.rate(), Some((2 * (HISTORY as u64 + 10) - 1) as f64));
        assert_eq!(view.poll.watching, secs(HISTORY as u64 + 10));
    }
}
