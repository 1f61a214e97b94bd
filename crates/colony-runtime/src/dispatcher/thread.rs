//! The dispatcher's own thread, outside tokio's worker pool.
//!
//! On a tokio worker, the dispatcher was one long poll sharing the pool with its callers: a
//! caller it woke waited in that worker's LIFO slot, which no other worker may steal, until
//! the dispatcher's turn (and its linger) returned, and a dispatcher woken by a submitter
//! waited for a worker to be free. Here it has a thread of its own, which polls the loop,
//! spins briefly for more work after each turn, and then parks on a futex until something
//! wakes it (a command, an ended attempt, a timer). Its wakeups of callers come from outside
//! the pool, so any idle worker can take them.
//!
//! The spin yields the core on every round (`sched_yield`) rather than holding it: on a
//! machine with no idle core, the caller the dispatcher just woke is waiting for one. Measured
//! on 2 vCPUs (docs/benchmarks.md, 2026-12-03): the caller's median at 100,000 tasks/s went
//! from 0.5-0.9 ms with a plain spin to 0.06-0.19 ms with the yielding one.
//!
//! The thread enters the caller's tokio runtime: timers and I/O created by the loop and by
//! agents' attempts register with that runtime's drivers, and background tasks that agents
//! spawn go to its workers, as they did when the loop was a task there.

use crate::spawner::{Spawner, panic_message};
use std::{
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::{Pin, pin},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
    thread::Thread,
    time::{Duration, Instant},
};

/// The dispatcher's loop, ready to run.
pub(super) type Loop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts a thread that enters `runtime` and runs `run` with [`block_on`]. Hands `run` back
/// when no thread could be started, for the caller to run it elsewhere.
pub(super) fn spawn(
    run: Loop,
    runtime: tokio::runtime::Handle,
    linger: Duration,
) -> Result<(), (Loop, std::io::Error)> {
    // The loop goes over a channel once the thread exists: a failed spawn drops its closure,
    // and the loop must not be lost with it.
    let (hand_over, handed) = std::sync::mpsc::sync_channel::<Loop>(1);
    let spawned = Spawner::spawn_thread("colony-dispatcher", move || {
        let Ok(run) = handed.recv() else {
            return;
        };
        // The clock decisions taken inline read for every answer calibrates itself against
        // the system's at its first reading (0.6 ms measured here; quanta allows up to
        // 200 ms): here, not in a decision.
        let _ = quanta::Instant::now();
        let _context = runtime.enter();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| block_on(run, linger))) {
            tracing::error!(
                panic = panic_message(&*panic),
                "The dispatcher panicked; the runtime has stopped."
            );
        }
    });
    match spawned {
        Ok(_) => hand_over.send(run).map_err(|e| {
            (
                e.0,
                std::io::Error::other("the dispatcher's thread ended before it started"),
            )
        }),
        Err(error) => Err((run, error)),
    }
}

/// Ties the loop on its own thread to the tokio runtime it entered. Its task is dropped when
/// that runtime shuts down; it then tells the loop to stop and waits (a second at most) until
/// the loop has stopped and dropped its attempts, before the runtime goes on to shut down its
/// drivers. Without the wait the loop would run on for a moment: its timers would panic on a
/// driver that is gone, attempts would end as crashes instead of staying for recovery, and a
/// process that exits right after could leave agents' process groups behind.
pub(super) struct Lifeline {
    /// Dropped to tell the loop to stop.
    alive: Option<tokio::sync::oneshot::Sender<()>>,
    /// Disconnected once the loop has stopped.
    stopped: std::sync::mpsc::Receiver<()>,
    /// The loop stopped by itself (a shutdown): nothing to wait for.
    finished: bool,
}

/// What the loop holds: it polls the receiver (closed: stop) and drops the sender once it
/// has stopped.
pub(super) type Alive = tokio::sync::oneshot::Receiver<()>;
pub(super) type Stopped = std::sync::mpsc::SyncSender<()>;

/// Longest a shutting-down runtime waits for the loop to stop.
const STOP_WAIT: Duration = Duration::from_secs(1);

impl Lifeline {
    pub(super) fn new() -> (Self, Alive, Stopped) {
        let (alive_tx, alive_rx) = tokio::sync::oneshot::channel();
        let (stopped_tx, stopped_rx) = std::sync::mpsc::sync_channel(1);
        let lifeline = Self {
            alive: Some(alive_tx),
            stopped: stopped_rx,
            finished: false,
        };
        (lifeline, alive_rx, stopped_tx)
    }

    /// The lifeline's task: it ends when the loop lets go of [`Alive`] (a shutdown of the
    /// runtime); if the runtime drops it first, its `Drop` stops the loop.
    pub(super) async fn watch(mut self) {
        if let Some(alive) = self.alive.as_mut() {
            alive.closed().await;
        }
        self.finished = true;
    }
}

impl Drop for Lifeline {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // The runtime is shutting down (this runs on one of its threads, which serves no
        // task any more): the loop is told to stop, and its drivers wait until it has.
        drop(self.alive.take());
        let _ = self.stopped.recv_timeout(STOP_WAIT);
    }
}

/// Misses in a row after which the spin is as short as it gets: each miss halves it.
const MAX_MISSES: u32 = 6;

/// Wakes the dispatcher's thread, and tells its spin that work came.
struct Unparker {
    thread: Thread,
    woken: AtomicBool,
}

impl Wake for Unparker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        // A syscall only when the thread is parked: std's parker swaps a state first.
        self.thread.unpark();
    }
}

/// Runs `future` to completion on this thread. After each poll it watches for a wakeup for up
/// to `linger`, yielding the core meanwhile (halved after every watch that saw none, back to `linger` after one that saw
/// one: a trickle of work stops costing CPU, a stream of it keeps the thread awake) and then
/// parks. An idle dispatcher is parked: no CPU.
pub(super) fn block_on<F: Future>(future: F, linger: Duration) -> F::Output {
    let unparker = Arc::new(Unparker {
        thread: std::thread::current(),
        woken: AtomicBool::new(false),
    });
    let waker = Waker::from(unparker.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    let mut misses = 0;
    loop {
        // Cleared before the poll, so that a wakeup during it is seen after it.
        unparker.woken.store(false, Ordering::Release);
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        let spin = linger / (1 << misses);
        if !spin.is_zero() {
            let until = Instant::now() + spin;
            while !unparker.woken.load(Ordering::Acquire) && Instant::now() < until {
                // Gives the core to any thread waiting for it (a caller just woken, on a
                // machine with no idle core) instead of holding it until preempted.
                std::thread::yield_now();
            }
        }
        if unparker.woken.load(Ordering::Acquire) {
            misses = 0;
            // The unpark left a token: the next park would return at once. Poll instead.
            continue;
        }
        misses = (misses + 1).min(MAX_MISSES);
        // Returns on an unpark, including one that came after the check above, or
        // spuriously: either way the loop polls again.
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_future_woken_from_another_thread_completes() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = futures::channel::oneshot::channel::<u32>();
        let waker_thread = crate::spawner::Spawner::spawn_thread("test-waker", move || {
            // Waits until the future is parked (or about to be), then completes it.
            rx.recv().unwrap();
            std::thread::sleep(Duration::from_millis(20));
            done_tx.send(7).unwrap();
        })
        .unwrap();
        let mut told = Some(tx);
        let future = async move {
            std::future::poll_fn(|_| {
                if let Some(tx) = told.take() {
                    tx.send(()).unwrap();
                }
                Poll::Ready(())
            })
            .await;
            done_rx.await.unwrap()
        };
        assert_eq!(block_on(future, Duration::from_micros(50)), 7);
        waker_thread.join().unwrap();
    }

    #[test]
    fn without_linger_it_parks_at_once_and_still_completes() {
        let (done_tx, done_rx) = futures::channel::oneshot::channel::<&str>();
        let sender = crate::spawner::Spawner::spawn_thread("test-sender", move || {
            std::thread::sleep(Duration::from_millis(5));
            done_tx.send("done").unwrap();
        })
        .unwrap();
        assert_eq!(block_on(done_rx, Duration::ZERO).unwrap(), "done");
        sender.join().unwrap();
    }
}
