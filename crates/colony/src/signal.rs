//! What stops a long-running command: Ctrl-C (SIGINT) at a terminal, SIGTERM from a service
//! manager, `docker stop` or Kubernetes. A process that handles no SIGTERM is killed by it at
//! once, without stopping cleanly; as PID 1 in a container it does not even hear it, and is
//! killed after the grace period.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Listens for SIGINT and SIGTERM from when it is made: a signal that comes while nobody
/// waits is kept for the next [`Stops::next`], never lost, so a second Ctrl-C right after the
/// first is heard. Made inside a tokio runtime.
#[derive(Debug)]
pub(crate) struct Stops {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl Stops {
    pub(crate) fn new() -> Self {
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("warning: cannot listen for {name} ({e}): it will not stop colony");
                None
            }
        };
        Self {
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// The next SIGINT or SIGTERM: the exit code a process it ends gives (130 or 143).
    /// Without a listener for either, never.
    pub(crate) async fn next(&mut self) -> i32 {
        async fn on(s: &mut Option<Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = on(&mut self.interrupt) => 130,
            () = on(&mut self.terminate) => 143,
        }
    }
}
