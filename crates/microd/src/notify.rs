//! The systemd notification protocol (`sd_notify(3)`): datagrams to `$NOTIFY_SOCKET` saying
//! `READY=1` once the control socket answers, `STATUS=` with the database status when it
//! changes, `WATCHDOG=1` while the control socket keeps answering, and `STOPPING=1` when
//! shutdown starts. Nothing is sent unless `NOTIFY_SOCKET` is set.

use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use microcluster::App;
use tokio::time::{MissedTickBehavior, timeout};

/// How often the status is read for `STATUS=` when systemd asked for no watchdog.
const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// Between attempts to reach the control socket before `READY=1`.
const READY_RETRY: Duration = Duration::from_millis(20);

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub(crate) struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    stopping: AtomicBool,
    failed: AtomicBool,
}

impl Notifier {
    /// The notifier for `$NOTIFY_SOCKET`, if set (with a warning if it names nothing usable).
    pub(crate) fn from_env() -> Option<Notifier> {
        let target = std::env::var_os("NOTIFY_SOCKET").filter(|t| !t.is_empty())?;
        Notifier::new(&target)
            .map_err(|err| tracing::warn!(error = %err, socket = ?target, "NOTIFY_SOCKET is unusable; not notifying systemd"))
            .ok()
    }

    /// A notifier for a socket path, or an abstract name written `@name`.
    fn new(target: &OsStr) -> io::Result<Notifier> {
        let bytes = target.as_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None if bytes.starts_with(b"/") => SocketAddr::from_pathname(target)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "neither an absolute path nor an @abstract name",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        // A full receive queue must not stall a runtime thread: that message is dropped, logged.
        socket.set_nonblocking(true)?;
        Ok(Notifier { socket, addr, stopping: AtomicBool::new(false), failed: AtomicBool::new(false) })
    }

    /// Sends one message (`KEY=value` lines). A failure is a warning the first time only: the
    /// watchdog would repeat it every period.
    fn send(&self, message: &str) {
        if let Err(err) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            if self.failed.swap(true, Ordering::Relaxed) {
                tracing::debug!(error = %err, ?message, "cannot notify systemd");
            } else {
                tracing::warn!(error = %err, ?message, "cannot notify systemd (further failures are logged at debug level)");
            }
        }
    }

    /// Sends `STOPPING=1` the first time it is called.
    pub(crate) fn stopping(&self) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            self.send("STOPPING=1");
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Starts notifying about `app`: readiness, status and the watchdog (when `WATCHDOG_USEC` asks
/// for one), and `STOPPING=1` on SIGTERM or SIGINT (the daemon's own shutdown starts then).
pub(crate) fn spawn(notifier: Arc<Notifier>, app: App) {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    let watchdog = watchdog_period(usec.as_deref(), pid.as_deref(), std::process::id());
    let on_signal = notifier.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        on_signal.stopping();
    });
    tokio::spawn(supervise(notifier, watchdog, move || {
        let client = app.local_client();
        async move { client.status().await.ok().map(|status| status.status) }
    }));
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, if it is set for this process.
fn watchdog_period(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec = usec?.parse::<u64>().ok().filter(|usec| *usec > 0)?;
    Some(Duration::from_micros(usec) / 2)
}

/// Sends `READY=1` once `probe` (the control socket's status text) answers, then every period
/// `WATCHDOG=1` if a probe answered within it, and `STATUS=` when the text changes. A daemon
/// whose control socket hangs stops pinging, and systemd restarts it. Once stopping, the
/// watchdog is pinged without probing: shutdown is bounded by the daemon and `TimeoutStopSec`.
async fn supervise<P, F>(notifier: Arc<Notifier>, watchdog: Option<Duration>, mut probe: P)
where
    P: FnMut() -> F,
    F: Future<Output = Option<String>>,
{
    let period = watchdog.unwrap_or(STATUS_PERIOD);
    let limit = period * 3 / 4;
    let mut last = loop {
        if notifier.is_stopping() {
            return;
        }
        if let Ok(Some(status)) = timeout(limit, probe()).await {
            break status;
        }
        tokio::time::sleep(READY_RETRY).await;
    };
    notifier.send(&format!("READY=1\nSTATUS={last}"));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if notifier.is_stopping() {
            if watchdog.is_some() {
                notifier.send("WATCHDOG=1");
            }
            continue;
        }
        let Ok(Some(status)) = timeout(limit, probe()).await else {
            if watchdog.is_some() {
                tracing::warn!("the control socket did not answer within {limit:?}; not pinging the systemd watchdog");
            }
            continue;
        };
        let mut lines = Vec::new();
        if watchdog.is_some() {
            lines.push("WATCHDOG=1".to_owned());
        }
        if status != last {
            lines.push(format!("STATUS={status}"));
            last = status;
        }
        if !lines.is_empty() {
            notifier.send(&lines.join("\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[test]
    fn the_watchdog_period_is_half_the_timeout_and_only_for_this_process() {
        assert_eq!(watchdog_period(Some("30000000"), None, 7), Some(Duration::from_secs(15)));
        assert_eq!(watchdog_period(Some("1000000"), Some("7"), 7), Some(Duration::from_millis(500)));
        assert_eq!(watchdog_period(Some("1000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(Some("1000000"), Some("x"), 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("soon"), None, 7), None);
        assert_eq!(watchdog_period(None, None, 7), None);
    }

    #[test]
    fn a_relative_path_is_refused() {
        assert!(Notifier::new(OsStr::new("notify.sock")).is_err());
    }

    fn receiver(test: &str) -> (UnixDatagram, Arc<Notifier>) {
        let name = format!("microd-notify-{test}-{}", std::process::id());
        let receiver = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        receiver.set_nonblocking(true).unwrap();
        (receiver, Arc::new(Notifier::new(OsStr::new(&format!("@{name}"))).unwrap()))
    }

    fn received(socket: &UnixDatagram) -> Vec<String> {
        let mut buf = [0u8; 512];
        std::iter::from_fn(|| socket.recv(&mut buf).ok().map(|n| String::from_utf8_lossy(&buf[..n]).into_owned()))
            .collect()
    }

    /// Probe answers 1-3 say "starting", 4-5 "online"; from the sixth the socket hangs.
    #[tokio::test(start_paused = true)]
    async fn pings_only_follow_answers_and_a_hang_stops_them() {
        let (socket, notifier) = receiver("hang");
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let task = tokio::spawn(supervise(notifier.clone(), Some(Duration::from_millis(500)), move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match n {
                    1..=3 => Some("starting".to_owned()),
                    4..=5 => Some("online".to_owned()),
                    _ => std::future::pending().await,
                }
            }
        }));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(calls.load(Ordering::SeqCst) > 8, "probing goes on while the socket hangs");
        assert_eq!(
            received(&socket),
            ["READY=1\nSTATUS=starting", "WATCHDOG=1", "WATCHDOG=1", "WATCHDOG=1\nSTATUS=online", "WATCHDOG=1"]
        );

        notifier.stopping();
        notifier.stopping();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stopping = received(&socket);
        assert_eq!(stopping[0], "STOPPING=1");
        assert!(stopping.len() >= 3 && stopping[1..].iter().all(|m| m == "WATCHDOG=1"), "{stopping:?}");
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_watchdog_only_readiness_and_status_changes_are_sent() {
        let (socket, notifier) = receiver("status");
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        let task = tokio::spawn(supervise(notifier, None, move || {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                match n {
                    1 => None,
                    2..=4 => Some("starting".to_owned()),
                    _ => Some("online".to_owned()),
                }
            }
        }));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(received(&socket), ["READY=1\nSTATUS=starting", "STATUS=online"]);
        task.abort();
    }
}
