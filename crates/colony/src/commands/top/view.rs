//! What `colony top` shows, without I/O: the latest poll, the history it keeps, and the
//! clock, all as plain data; times are offsets from when the view started, so that tests
//! can play any sequence of polls.

use super::api::Snapshot;
use std::time::Duration;

/// Throughput samples kept for the sparkline: a minute at the default interval.
pub(crate) const HISTORY: usize = 60;

/// Everything a frame is drawn from.
#[derive(Clone, Debug)]
pub(crate) struct View {
    /// The server's base URL.
    pub(crate) server: String,
    /// How often it is polled.
    pub(crate) interval: Duration,
    /// Whether keys work (the TUI) or this is one frame printed (`--once`).
    pub(crate) live: bool,
    /// Since the view started.
    pub(crate) watching: Duration,
    /// The latest answer; it stays on screen while later polls fail.
    pub(crate) latest: Option<Snapshot>,
    /// When `latest` was asked for.
    pub(crate) polled_at: Option<Duration>,
    /// Tasks finished per second between consecutive answers, oldest first.
    pub(crate) throughput: Vec<f64>,
    /// Why the latest poll failed, if it did.
    pub(crate) error: Option<String>,
}

impl View {
    pub(crate) fn new(server: impl Into<String>, interval: Duration, live: bool) -> Self {
        Self {
            server: server.into(),
            interval,
            live,
            watching: Duration::ZERO,
            latest: None,
            polled_at: None,
            throughput: Vec::with_capacity(HISTORY),
            error: None,
        }
    }

    /// Moves the clock the header shows.
    pub(crate) fn tick(&mut self, now: Duration) {
        self.watching = self.watching.max(now);
    }

    /// Takes in a poll asked for at `at`.
    pub(crate) fn record(&mut self, at: Duration, poll: Result<Snapshot, String>) {
        self.tick(at);
        let snapshot = match poll {
            Ok(s) => s,
            Err(error) => {
                self.error = Some(error);
                return;
            }
        };
        if let (Some(before), Some(then)) = (&self.latest, self.polled_at) {
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
        self.latest = Some(snapshot);
        self.polled_at = Some(at);
        self.error = None;
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
        assert_eq!(view.error.as_deref(), Some("down"));
        assert_eq!(view.latest, Some(finished(300)));
        // The next answer spans the gap.
        view.record(secs(4), Ok(finished(500)));
        assert_eq!(view.rate(), Some(100.0));
        assert_eq!(view.error, None);
        assert_eq!(view.throughput.len(), 2);
        // A restarted server does not give a negative rate.
        view.record(secs(5), Ok(finished(7)));
        assert_eq!(view.rate(), Some(0.0));
    }

    #[test]
    fn history_keeps_the_last_samples() {
        let mut view = View::new("http://h", secs(1), true);
        for i in 0..=(HISTORY as u64 + 10) {
            view.record(secs(i), Ok(finished(i * i)));
        }
        assert_eq!(view.throughput.len(), HISTORY);
        assert_eq!(view.rate(), Some((2 * (HISTORY as u64 + 10) - 1) as f64));
        assert_eq!(view.watching, secs(HISTORY as u64 + 10));
    }
}
