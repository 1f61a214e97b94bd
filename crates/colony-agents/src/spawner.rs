//! The one place where colony starts background work. It lives in the agents crate, the
//! lowest that runs on tokio, so that backends (the `process` backend's readers) use it too;
//! `colony_runtime::spawner` re-exports it.
//!
//! Every task and thread is named here, and what its failure means is decided here: a panic or
//! an error is logged with the task's name, never lost in a detached handle. `clippy.toml`
//! forbids `tokio::spawn` and `std::thread::spawn` everywhere else.

use futures::FutureExt;
use std::{future::Future, panic::AssertUnwindSafe};
use tokio::task::JoinHandle;

/// Starts named background work.
#[derive(Debug, Clone, Copy)]
pub struct Spawner;

impl Spawner {
    /// Runs `fut` on the current tokio runtime. A panic is caught and logged with `name`; the
    /// handle then resolves to `None`.
    #[allow(clippy::disallowed_methods)]
    pub fn spawn<F>(name: &'static str, fut: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        tokio::spawn(async move {
            match AssertUnwindSafe(fut).catch_unwind().await {
                Ok(output) => Some(output),
                Err(panic) => {
                    tracing::error!(
                        task = name,
                        panic = panic_message(&*panic),
                        "Background task panicked."
                    );
                    None
                }
            }
        })
    }

    /// Runs `f` on a named OS thread, for work that must not share tokio's workers (load
    /// generators, blocking writers).
    #[allow(clippy::disallowed_methods)]
    pub fn spawn_thread<F, T>(
        name: &'static str,
        f: F,
    ) -> std::io::Result<std::thread::JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        std::thread::Builder::new().name(name.to_owned()).spawn(f)
    }
}

/// The message of a panic payload, for logs and task errors.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else if panic.is::<crate::sim::SimCrash>() {
        "simulated crash"
    } else {
        "panic with a non-text payload"
    }
}
