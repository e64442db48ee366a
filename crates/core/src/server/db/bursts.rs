//! Whether this member's writes are streaming in or come one now and then, as its write queue
//! sees them. The leader checkpoints its WAL rarely while writes stream (each checkpoint stalls
//! the next write) and often when they do not (a long WAL is memory an idle member keeps): see
//! `Runtime::checkpoints_follow_role`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Batches that start this close together are a stream: sequential writes come ~1.5 ms apart,
/// concurrent ones back to back, an idle member's heartbeat rounds seconds apart.
const STREAM_GAP: Duration = Duration::from_millis(50);

/// The write queue's batches, seen as streams or not.
#[derive(Debug)]
pub(crate) struct Bursts {
    epoch: Instant,
    /// When the last batch started, in milliseconds after `epoch` plus one (0: none yet).
    last_batch: AtomicU64,
    /// When the last batch of a stream started, likewise.
    last_stream: AtomicU64,
    /// Whether someone waits in [`Bursts::stream_started`] for the next stream.
    listening: AtomicBool,
    wake: Notify,
}

impl Bursts {
    pub(crate) fn new() -> Bursts {
        Bursts {
            epoch: Instant::now(),
            last_batch: AtomicU64::new(0),
            last_stream: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// The write queue starts a batch. A clock read and one atomic per batch, two more for a
    /// stream's, and a wake-up only for the first batch of a stream that someone listens for.
    pub(crate) fn batch(&self) {
        let now = self.now();
        let previous = self.last_batch.swap(now, Ordering::Relaxed);
        if previous == 0 || now.saturating_sub(previous) > STREAM_GAP.as_millis() as u64 {
            return;
        }
        self.last_stream.store(now, Ordering::Relaxed);
        if self.listening.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// How long ago the last batch of a stream started; `None` if none ever did.
    pub(crate) fn since_stream(&self) -> Option<Duration> {
        match self.last_stream.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(self.now().saturating_sub(at))),
        }
    }

    /// Resolves when the next stream starts (at its second batch). A stream that started since
    /// the last call may resolve it at once: the caller looks again, it does not count.
    pub(crate) async fn stream_started(&self) {
        let woken = self.wake.notified();
        self.listening.store(true, Ordering::Release);
        woken.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_is_two_batches_close_together_and_wakes_the_listener_once() {
        let bursts = std::sync::Arc::new(Bursts::new());
        bursts.batch();
        assert_eq!(bursts.since_stream(), None, "one batch is no stream");
        std::thread::sleep(STREAM_GAP + Duration::from_millis(20));
        bursts.batch();
        assert_eq!(bursts.since_stream(), None, "batches far apart are no stream");

        let listener = tokio::spawn({
            let bursts = bursts.clone();
            async move { bursts.stream_started().await }
        });
        while !bursts.listening.load(Ordering::Acquire) {
            tokio::task::yield_now().await;
        }
        bursts.batch();
        assert!(bursts.since_stream().is_some_and(|d| d < STREAM_GAP), "{:?}", bursts.since_stream());
        tokio::time::timeout(Duration::from_secs(5), listener).await.expect("woken by the stream").unwrap();
        assert!(!bursts.listening.load(Ordering::Acquire), "a wake-up per listen");
    }
}
