//! One reading shared while it is fresh: the cluster's status costs several NATS requests
//! (the stream, every consumer, every node's heartbeat), and each dashboard viewer asks for
//! it three times every 2 s, besides `/v1/cluster`, `/metrics` and the roles' sampler. A
//! reading is shared for [`FRESH`]; while one is being taken, others asking wait for it
//! rather than take their own. A failure is shared as well, whole (its kind decides the
//! answer's status), so that NATS out of reach is not asked again by every waiter in turn.

use std::{future::Future, sync::Arc, time::Duration};
use tokio::time::Instant;

/// How long a reading serves.
pub(crate) const FRESH: Duration = Duration::from_secs(1);

/// A reading, or why it failed.
type Reading<T, E> = Result<Arc<T>, E>;

/// The latest reading of a `T`, or its failure `E`, and when it was taken.
#[derive(Debug)]
pub(crate) struct Fresh<T, E> {
    latest: tokio::sync::Mutex<Option<(Instant, Reading<T, E>)>>,
}

impl<T, E> Default for Fresh<T, E> {
    fn default() -> Self {
        Self {
            latest: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T, E: Clone> Fresh<T, E> {
    /// The latest reading if it is fresh, else one taken now by `read`.
    pub(crate) async fn get<F: Future<Output = Result<T, E>>>(
        &self,
        read: impl FnOnce() -> F,
    ) -> Reading<T, E> {
        // Held while reading: the callers meanwhile wait for this reading.
        let mut latest = self.latest.lock().await;
        if let Some((at, reading)) = latest.as_ref()
            && at.elapsed() < FRESH
        {
            return reading.clone();
        }
        let reading = read().await.map(Arc::new);
        *latest = Some((Instant::now(), reading.clone()));
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn readers_share_a_fresh_reading_and_wait_for_one_being_taken() {
        let fresh: Fresh<u32, &str> = Fresh::default();
        let reads = AtomicU32::new(0);
        let read = || async {
            let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if n == 3 { Err("NATS is away") } else { Ok(n) }
        };
        // Five at once: one reading.
        let all = futures::future::join_all((0..5).map(|_| fresh.get(read))).await;
        assert!(all.iter().all(|r| r.as_deref() == Ok(&1)), "{all:?}");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Stale after FRESH: read again.
        tokio::time::sleep(FRESH).await;
        assert_eq!(fresh.get(read).await.as_deref(), Ok(&2));
        tokio::time::sleep(FRESH).await;
        // A failure is shared while fresh, then read again.
        let failed = futures::future::join_all((0..3).map(|_| fresh.get(read))).await;
        assert!(
            failed
                .iter()
                .all(|r| r.as_ref().err() == Some(&"NATS is away")),
            "{failed:?}"
        );
        assert_eq!(reads.load(Ordering::SeqCst), 3);
        tokio::time::sleep(FRESH).await;
        assert_eq!(fresh.get(read).await.as_deref(), Ok(&4));
    }
}
