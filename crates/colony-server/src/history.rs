//! Pool size over time: every second a sampler reads each pool's load
//! ([`colony_runtime::Handle::pool_loads`], atomics the dispatcher publishes) into a ring, and
//! notes the autoscaler's decisions (`PoolScaled`, `ScaleBlocked`) and people's resizes
//! (`PUT /v1/pools/{id}`) beside it. `GET /v1/pools/history?since=` serves both, for the
//! dashboard's pools chart and `colony top`.
//!
//! ```text
//! GET /v1/pools/history             the whole window: 15 minutes, one sample a second
//! GET /v1/pools/history?since=T     what was recorded after T, the `until` of a former answer
//! ```
//!
//! Memory is bounded: [`SAMPLES`] samples of at most [`MAX_POOLS`] pools, and [`MARKS`]
//! decisions, the oldest dropped first. Times are milliseconds since the Unix epoch, read
//! once at start and then moved on by a monotonic clock, so that they never go back; each
//! record's time is later than the one before, which makes `since` an exact cursor.

use crate::{
    App, problem,
    ring::{Clock, Ring},
};
use axum::{
    Json,
    extract::{Query, State, rejection::QueryRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use colony_runtime::{
    Handle, PoolLoad,
    events::{Event, Kinds},
    spawner::Spawner,
};
use serde::{Deserialize, Serialize};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

/// Time between two samples.
pub(crate) const EVERY: Duration = Duration::from_secs(1);
/// Samples kept: 15 minutes at one a second.
pub(crate) const SAMPLES: usize = 900;
/// Pools sampled: the first ones by index. A sample costs 40 bytes a pool, so the ring holds
/// at most 900 × 32 × 40 bytes, about 1.2 MB.
pub(crate) const MAX_POOLS: usize = 32;
/// Decisions kept. The autoscaler looks every 5 s by default, so 15 minutes of every pool's
/// look being a step or a blocked step is 180 a pool; past this the oldest go first.
pub(crate) const MARKS: usize = 2_048;

/// One pool at one sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sample {
    agents: u64,
    desired: Option<u64>,
    waiting: u64,
    busy: u64,
}

impl From<&PoolLoad> for Sample {
    fn from(load: &PoolLoad) -> Self {
        Self {
            agents: load.agents,
            desired: load.desired,
            waiting: load.waiting,
            busy: load.busy,
        }
    }
}

/// A decision on a pool's size, as the API spells it (the names of `/v1/events`, and
/// `scale:manual` for a resize through the API).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub(crate) enum Change {
    #[serde(rename = "scale:up")]
    Up {
        from: u32,
        to: u32,
        reason: &'static str,
    },
    #[serde(rename = "scale:down")]
    Down {
        from: u32,
        to: u32,
        reason: &'static str,
    },
    #[serde(rename = "scale:blocked")]
    Blocked {
        wanted: &'static str,
        by: &'static str,
    },
    #[serde(rename = "scale:manual")]
    Manual { from: u64, to: u64 },
}

impl Change {
    /// The decision an event reports, if it reports one.
    pub(crate) fn of(event: &Event) -> Option<(u8, Change)> {
        Some(match event {
            Event::PoolScaled {
                pool,
                from,
                to,
                reason,
            } => {
                let (from, to, reason) = (*from, *to, reason.as_str());
                let change = if to > from {
                    Change::Up { from, to, reason }
                } else {
                    Change::Down { from, to, reason }
                };
                (*pool, change)
            }
            Event::ScaleBlocked { pool, wanted, by } => (
                *pool,
                Change::Blocked {
                    wanted: wanted.as_str(),
                    by: by.as_str(),
                },
            ),
            _ => return None,
        })
    }
}

/// A decision and when it was noted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Mark {
    t: u64,
    pool: u8,
    #[serde(flatten)]
    change: Change,
}

/// The rings, behind one lock held only to push or to copy out, stamped by one clock.
#[derive(Debug)]
struct Rings {
    clock: Clock,
    /// Every tracked pool at each sample.
    ticks: Ring<Box<[Sample]>>,
    /// Each decision, with its pool.
    marks: Ring<(u8, Change)>,
}

/// The pools' recent past. Shared by the sampler, the resize handler and the readers.
#[derive(Debug)]
pub(crate) struct History {
    rings: Mutex<Rings>,
}

impl Default for History {
    fn default() -> Self {
        Self::new(SAMPLES, MARKS)
    }
}

impl History {
    fn new(samples: usize, marks: usize) -> Self {
        Self {
            rings: Mutex::new(Rings {
                clock: Clock::new(),
                ticks: Ring::new(samples),
                marks: Ring::new(marks),
            }),
        }
    }

    fn rings(&self) -> std::sync::MutexGuard<'_, Rings> {
        // Nothing under the lock can leave the rings half changed: a poisoned lock is as good.
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in one reading of every pool's load.
    fn sample(&self, loads: &[PoolLoad]) {
        let pools: Box<[Sample]> = loads.iter().take(MAX_POOLS).map(Sample::from).collect();
        let mut rings = self.rings();
        let t = rings.clock.stamp();
        rings.ticks.push(t, pools);
        // Decisions older than the oldest sample are off the chart.
        let oldest = rings.ticks.oldest_time().unwrap_or(0);
        rings.marks.drop_before(oldest);
    }

    /// Notes a decision on pool `pool`'s size.
    pub(crate) fn mark(&self, pool: usize, change: Change) {
        let Ok(pool) = u8::try_from(pool) else {
            return;
        };
        if usize::from(pool) >= MAX_POOLS {
            return;
        }
        let mut rings = self.rings();
        let t = rings.clock.stamp();
        rings.marks.push(t, (pool, change));
    }

    /// What was recorded after `since` (everything kept, without it), as columns of the
    /// first `pools` pools (at most [`MAX_POOLS`]).
    fn read(&self, since: Option<u64>, pools: usize) -> Columns {
        let since = since.unwrap_or(0);
        let pools = pools.min(MAX_POOLS);
        let rings = self.rings();
        let ticks = rings.ticks.after(since);
        let rows = ticks.len();
        let mut columns = Columns {
            every_ms: u64::try_from(EVERY.as_millis()).unwrap_or(u64::MAX),
            samples_kept: rings.ticks.cap(),
            until: rings.clock.last(),
            t: Vec::with_capacity(rows),
            pools: (0..pools)
                .map(|pool| PoolColumns::with_capacity(pool, rows))
                .collect(),
            events: Vec::new(),
        };
        for (t, samples) in ticks {
            columns.t.push(*t);
            for (i, pool) in columns.pools.iter_mut().enumerate() {
                pool.push(samples.get(i));
            }
        }
        columns.events = rings
            .marks
            .after(since)
            .filter(|(_, (pool, _))| usize::from(*pool) < pools)
            .map(|(t, (pool, change))| Mark {
                t: *t,
                pool: *pool,
                change: change.clone(),
            })
            .collect();
        columns
    }
}

/// One pool's samples, each column aligned with [`Columns::t`]; `null` where the pool was
/// not sampled.
#[derive(Debug, Default, Serialize)]
struct PoolColumns {
    pool: usize,
    kind: Option<Arc<str>>,
    role: Option<Arc<str>>,
    agents: Vec<Option<u64>>,
    desired: Vec<Option<u64>>,
    waiting: Vec<Option<u64>>,
    busy: Vec<Option<u64>>,
}

impl PoolColumns {
    fn with_capacity(pool: usize, rows: usize) -> Self {
        Self {
            pool,
            agents: Vec::with_capacity(rows),
            desired: Vec::with_capacity(rows),
            waiting: Vec::with_capacity(rows),
            busy: Vec::with_capacity(rows),
            ..Self::default()
        }
    }

    fn push(&mut self, sample: Option<&Sample>) {
        self.agents.push(sample.map(|s| s.agents));
        self.desired.push(sample.and_then(|s| s.desired));
        self.waiting.push(sample.map(|s| s.waiting));
        self.busy.push(sample.map(|s| s.busy));
    }
}

/// The answer of `GET /v1/pools/history`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
struct Columns {
    /// Time between two samples.
    every_ms: u64,
    /// The most samples kept.
    samples_kept: usize,
    /// The time of the newest record: ask with `since` set to it for what comes next.
    until: u64,
    t: Vec<u64>,
    pools: Vec<PoolColumns>,
    events: Vec<Mark>,
}

/// `GET /v1/pools/history?since=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryQuery {
    /// Milliseconds since the Unix epoch: only what was recorded after it.
    since: Option<u64>,
}

pub(crate) async fn history(
    State(app): State<Arc<App>>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Response {
    let since = match query {
        Ok(Query(q)) => q.since,
        Err(e) => return problem(StatusCode::BAD_REQUEST, "bad-query", e.body_text()),
    };
    let specs = app.handle.pools();
    let mut columns = app.history.read(since, specs.len());
    for (pool, (spec, _)) in columns.pools.iter_mut().zip(specs) {
        pool.kind = Some(spec.kind);
        pool.role = Some(spec.role);
    }
    Json(columns).into_response()
}

/// The sampler's task; it stops when this is dropped (with the server's task that holds it).
#[derive(Debug)]
pub(crate) struct Sampler(tokio::task::JoinHandle<Option<()>>);

impl Drop for Sampler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Sampler {
    /// Samples `handle`'s pools into `history` every [`EVERY`], the first at once, and notes
    /// the autoscaler's decisions as they come.
    pub(crate) fn start(handle: Handle, history: Arc<History>) -> Self {
        let scaling = handle.subscribe(Kinds::SCALING);
        Self(Spawner::spawn("pool-history", async move {
            let mut scaling = scaling;
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => history.sample(&handle.pool_loads()),
                    event = scaling.recv() => match event {
                        Some(event) => {
                            if let Some((pool, change)) = Change::of(&event) {
                                history.mark(usize::from(pool), change);
                            }
                        }
                        // The bus outlives every handle, this one included: not while we
                        // run, but stop rather than spin if it ever closes.
                        None => return,
                    },
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(agents: u64, desired: Option<u64>) -> PoolLoad {
        PoolLoad {
            agents,
            desired,
            waiting: agents * 2,
            busy: agents / 2,
            ..PoolLoad::default()
        }
    }

    #[test]
    fn the_rings_keep_their_bounds_and_drop_the_oldest_first() {
        let history = History::new(5, 3);
        for n in 0..12 {
            history.sample(&[load(n, None), load(100 + n, Some(7))]);
        }
        let all = history.read(None, 2);
        assert_eq!(all.t.len(), 5);
        assert_eq!(all.pools.len(), 2);
        let agents: Vec<_> = all.pools[0].agents.iter().map(|a| a.unwrap()).collect();
        assert_eq!(agents, [7, 8, 9, 10, 11], "the newest five");
        assert_eq!(all.pools[1].desired, [Some(7); 5]);
        assert_eq!(all.pools[0].desired, [None; 5]);
        assert_eq!(all.pools[1].waiting[4], Some(222));
        assert_eq!(all.pools[1].busy[4], Some(55));
        for to in 0..5 {
            history.mark(0, Change::Manual { from: 1, to });
        }
        let marks = history.read(None, 2).events;
        let tos: Vec<_> = marks
            .iter()
            .map(|m| match m.change {
                Change::Manual { to, .. } => to,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(tos, [2, 3, 4], "the newest three decisions");
    }

    #[test]
    fn pools_past_the_cap_are_not_tracked() {
        let history = History::new(3, 3);
        let loads: Vec<_> = (0..MAX_POOLS as u64 + 5).map(|n| load(n, None)).collect();
        history.sample(&loads);
        assert_eq!(history.read(None, loads.len()).pools.len(), MAX_POOLS);
        history.mark(MAX_POOLS, Change::Manual { from: 1, to: 2 });
        history.mark(300, Change::Manual { from: 1, to: 2 });
        assert!(history.read(None, loads.len()).events.is_empty());
    }

    #[test]
    fn since_is_an_exact_cursor() {
        let history = History::new(100, 100);
        history.sample(&[load(1, None)]);
        let first = history.read(None, 2);
        assert_eq!(first.t.len(), 1);
        // Records within the same millisecond still come after the cursor.
        history.mark(0, Change::Manual { from: 1, to: 4 });
        history.sample(&[load(4, None)]);
        history.sample(&[load(4, None)]);
        let next = history.read(Some(first.until), 1);
        assert_eq!(next.t.len(), 2, "{next:?}");
        assert_eq!(next.pools[0].agents, [Some(4), Some(4)]);
        assert_eq!(next.events.len(), 1);
        assert!(next.t.windows(2).all(|w| w[0] < w[1]));
        assert!(next.events[0].t > first.until && next.events[0].t < next.t[0]);
        let nothing = history.read(Some(next.until), 1);
        assert!(nothing.t.is_empty() && nothing.events.is_empty());
        assert_eq!(nothing.until, next.until);
        assert_eq!(
            nothing.pools.len(),
            1,
            "the pools are listed, with no samples"
        );
        assert!(nothing.pools[0].agents.is_empty());
    }

    #[test]
    fn decisions_older_than_the_samples_are_dropped() {
        let history = History::new(2, 10);
        history.sample(&[load(1, None)]);
        history.mark(0, Change::Manual { from: 1, to: 2 });
        history.sample(&[load(2, None)]);
        assert_eq!(history.read(None, 2).events.len(), 1);
        history.sample(&[load(2, None)]);
        history.sample(&[load(2, None)]);
        assert!(history.read(None, 2).events.is_empty());
    }

    #[test]
    fn decisions_read_as_the_event_stream_names_them() {
        use colony_core::scaling::{Blocked, Reason};
        let up = Event::PoolScaled {
            pool: 1,
            from: 2,
            to: 5,
            reason: Reason::HighUtilisation,
        };
        let down = Event::PoolScaled {
            pool: 1,
            from: 5,
            to: 4,
            reason: Reason::LowUtilisation,
        };
        let blocked = Event::ScaleBlocked {
            pool: 0,
            wanted: Reason::Forecast,
            by: Blocked::ForecastInaccurate,
        };
        let json = |e: &Event| {
            let (pool, change) = Change::of(e).unwrap();
            serde_json::to_value(Mark { t: 9, pool, change }).unwrap()
        };
        assert_eq!(
            json(&up),
            serde_json::json!({"t": 9, "pool": 1, "kind": "scale:up", "from": 2, "to": 5, "reason": "high-utilisation"})
        );
        assert_eq!(json(&down)["kind"], "scale:down");
        assert_eq!(
            json(&blocked),
            serde_json::json!({"t": 9, "pool": 0, "kind": "scale:blocked", "wanted": "forecast", "by": "forecast-inaccurate"})
        );
        assert_eq!(
            Change::of(&Event::AgentIdle {
                agent: colony_core::AgentId(0)
            }),
            None
        );
    }
}
