//! Heartbeats: how an agent busy with a long attempt says it is alive.
//!
//! The runtime keeps one [`Beats`] board: a slot per agent holding when it was last heard
//! from, written by the agent ([`Heartbeat::beat`], a relaxed store) and read by the health
//! sweep of the agent's supervisor. No timer, channel or allocation per agent or per beat; the
//! board's memory comes in chunks of 65,536 slots, allocated when an agent in the chunk first
//! runs an attempt outside `handle`.

use colony_core::AgentId;
use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::time::Instant;

const CHUNK_BITS: u32 = 16;
const CHUNK: usize = 1 << CHUNK_BITS;
/// Chunks for ids below 2^26 (67 M), above every id a tree of 50 M workers hands out; beats
/// of higher ids are not kept.
const CHUNKS: usize = 1 << (26 - CHUNK_BITS);

/// When each agent was last heard from, as time since the board's epoch. Time is tokio's, so
/// tests with a paused clock see beats in virtual time.
pub struct Beats {
    epoch: Instant,
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl std::fmt::Debug for Beats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Beats").field("epoch", &self.epoch).finish()
    }
}

impl Beats {
    pub fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }

    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Records that `agent` was heard from now.
    pub fn beat(&self, agent: AgentId) {
        self.beat_at(agent, self.epoch.elapsed());
    }

    /// Records that `agent` was heard from at `at` (time since the epoch).
    pub fn beat_at(&self, agent: AgentId, at: Duration) {
        let Some(slot) = self.chunks.get((agent.0 >> CHUNK_BITS) as usize) else {
            return;
        };
        let chunk = slot.get_or_init(|| (0..CHUNK).map(|_| AtomicU64::new(0)).collect());
        // 0 means never: a beat at the epoch itself is stored as 1 ns.
        let nanos = (at.as_nanos() as u64).max(1);
        chunk[agent.0 as usize & (CHUNK - 1)].fetch_max(nanos, Relaxed);
    }

    /// When `agent` was last heard from, if ever.
    pub fn last(&self, agent: AgentId) -> Option<Duration> {
        let chunk = self.chunks.get((agent.0 >> CHUNK_BITS) as usize)?.get()?;
        match chunk[agent.0 as usize & (CHUNK - 1)].load(Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }
}

/// An attempt's line to the board: cheap to clone, cheap to beat.
#[derive(Clone, Debug, Default)]
pub struct Heartbeat(Option<(Arc<Beats>, AgentId)>);

impl Heartbeat {
    pub fn new(beats: Arc<Beats>, agent: AgentId) -> Self {
        Self(Some((beats, agent)))
    }

    /// A heartbeat no one listens to.
    pub fn detached() -> Self {
        Self(None)
    }

    /// Tells the runtime the agent is alive and working.
    pub fn beat(&self) {
        if let Some((beats, agent)) = &self.0 {
            beats.beat(*agent);
        }
    }
}

/// Runs `work`, beating `heartbeat` every second until it is done: for backends whose work
/// is alive as long as it runs (a process, a request in flight).
pub async fn beating<F: std::future::Future>(heartbeat: &Heartbeat, work: F) -> F::Output {
    heartbeat.beat();
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => heartbeat.beat(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beats_are_kept_per_agent_and_never_go_back() {
        let beats = Arc::new(Beats::new(Instant::now()));
        let (a, far) = (AgentId(7), AgentId(3_000_000));
        assert_eq!(beats.last(a), None);
        beats.beat_at(a, Duration::from_secs(2));
        beats.beat_at(far, Duration::from_secs(1));
        beats.beat_at(a, Duration::from_secs(1));
        assert_eq!(
            beats.last(a),
            Some(Duration::from_secs(2)),
            "the latest wins"
        );
        assert_eq!(beats.last(far), Some(Duration::from_secs(1)));
        assert_eq!(beats.last(AgentId(8)), None);
        let h = Heartbeat::new(beats.clone(), AgentId(9));
        h.beat();
        assert!(beats.last(AgentId(9)).is_some());
        Heartbeat::detached().beat();
    }
}
