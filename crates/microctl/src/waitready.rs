//! `microctl waitready`: poll the control socket until the daemon says it is ready, with a
//! progress line on a terminal, and a [`TimedOut`] failure (exit code 4) past `--timeout`.
//! Also the wait of `microctl shutdown` for the daemon to be gone.

use std::path::Path;
use std::time::{Duration, Instant};

use microcluster::client::{Client, ClientError};

use crate::exit::TimedOut;

/// Polling interval.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Deadline of one probe, so a hung daemon does not stall the loop.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until the daemon at `dir` is ready, for at most `timeout` (zero: forever).
pub(crate) async fn run(client: &Client, dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = (!timeout.is_zero()).then(|| start + timeout);
    let progress = crate::progress::on_terminal();
    let clear = || {
        if progress {
            eprint!("\r\x1b[2K");
        }
    };
    loop {
        let budget = deadline.map_or(PROBE_TIMEOUT, |d| {
            d.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(100), PROBE_TIMEOUT)
        });
        let err = match client.clone().with_timeout(budget).ready().await {
            Ok(()) => {
                clear();
                return Ok(());
            }
            Err(err) => err,
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            clear();
            let what = format!(
                "timed out after {} waiting for the daemon at {} to be ready",
                humantime::format_duration(timeout),
                dir.display()
            );
            return Err(TimedOut { what, last: err }.into());
        }
        if progress {
            let elapsed = start.elapsed().as_secs();
            // The line already names the directory: the root cause is enough.
            let why = match &err {
                ClientError::Connect { source, .. } => source.to_string(),
                other => other.to_string(),
            };
            eprint!("\r\x1b[2Kwaiting for the daemon at {} ({elapsed} s): {why:.60}", dir.display());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until no daemon holds the state directory's lock (it exited), so that a `microd`
/// started right after `microctl shutdown` does not find the old one still there.
pub(crate) async fn stopped(dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let path = dir.join("microd.lock");
    let deadline = Instant::now() + timeout;
    loop {
        let free = match std::fs::File::open(&path) {
            Ok(file) => file.try_lock().is_ok(),
            // No lock file: nothing holds the directory.
            Err(_) => true,
        };
        if free {
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "the daemon at {} accepted the shutdown but still runs after {} (it holds {})",
                dir.display(),
                humantime::format_duration(timeout),
                path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
