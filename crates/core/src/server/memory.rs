//! Giving back, once a member is quiet again, the memory its node freed during a burst of
//! writes (see [`dqlite::release_free_memory`] for why glibc keeps it).
//!
//! The release takes the allocator's locks, so it runs only after a period in which the
//! process used little CPU, and once per such lull: an idle member does not repeat it, a busy
//! one is never stalled by it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::metrics::Metrics;

/// How often the process's CPU use is looked at.
const PERIOD: Duration = Duration::from_secs(5);
/// CPU time per [`PERIOD`] below which the member counts as quiet: 5 % of one core (an idle
/// leader of three uses ~1 %, one taking writes tens of per cent).
const QUIET: Duration = Duration::from_millis(250);
/// Milliseconds in the kernel's unit for a process's CPU times in `/proc` (`USER_HZ`, 100 on
/// Linux).
const TICK_MS: u64 = 10;

/// Decides, one period at a time, when to release: in the first quiet period after a busy one,
/// start-up counting as busy.
#[derive(Debug)]
struct Lulls {
    last: Option<Duration>,
    busy_since_release: bool,
}

impl Lulls {
    fn new() -> Lulls {
        Lulls { last: None, busy_since_release: true }
    }

    /// Takes the process's CPU time at the end of a period; whether to release now.
    fn release_now(&mut self, cpu: Option<Duration>) -> bool {
        let used = match (self.last, cpu) {
            (Some(last), Some(now)) => Some(now.saturating_sub(last)),
            _ => None,
        };
        self.last = cpu;
        match used {
            // Unknown use (the first period, or /proc unreadable): wait for a known quiet one.
            None => false,
            Some(used) if used >= QUIET => {
                self.busy_since_release = true;
                false
            }
            Some(_) => std::mem::replace(&mut self.busy_since_release, false),
        }
    }

    /// Starts the next period from `cpu`, so that the release's own CPU time does not count
    /// as activity.
    fn restart(&mut self, cpu: Option<Duration>) {
        self.last = cpu;
    }
}

/// The CPU time this process has used, user and system, from `/proc/self/stat`.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    // utime and stime are fields 14 and 15: the 12th and 13th after the name.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_millis(utime.saturating_add(stime).saturating_mul(TICK_MS)))
}

/// The CPU time this process has used, for the metrics endpoint.
pub(crate) fn cpu_seconds() -> Option<f64> {
    cpu_time().map(|t| t.as_secs_f64())
}

/// When this process started, in seconds since the Unix epoch: its start in clock ticks after
/// boot (`/proc/self/stat`, field 22) plus the boot time (`/proc/stat`, `btime`).
pub(crate) fn start_time_seconds() -> Option<f64> {
    from_proc_stat().or_else(|| STARTED.get().copied())
}

/// When [`note_start`] was called: the start time where `/proc/stat` is hidden (systemd's
/// `ProcSubset=pid`).
static STARTED: std::sync::OnceLock<f64> = std::sync::OnceLock::new();

/// Notes the time now as this process's start, for [`start_time_seconds`] (the first call wins).
pub(crate) fn note_start() {
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        let _ = STARTED.set(now.as_secs_f64());
    }
}

fn from_proc_stat() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks: u64 = stat.get(stat.rfind(')')? + 1..)?.split_whitespace().nth(19)?.parse().ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot as f64 + (ticks.saturating_mul(TICK_MS)) as f64 / 1000.0)
}

/// How many file descriptors this process has open (`/proc/self/fd`).
pub(crate) fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

/// The process's resident set size, from `/proc/self/status` (`VmRSS: N kB`).
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs until aborted (with the member's other background tasks).
pub(crate) async fn release_when_quiet(metrics: Arc<Metrics>) {
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lulls = Lulls::new();
    loop {
        ticks.tick().await;
        if !lulls.release_now(cpu_time()) {
            continue;
        }
        let (before, started) = (resident_bytes(), Instant::now());
        let Ok(released) = tokio::task::spawn_blocking(dqlite::release_free_memory).await else { continue };
        metrics.memory_releases.inc();
        tracing::debug!(
            released,
            took = ?started.elapsed(),
            resident_bytes_before = before,
            resident_bytes_after = resident_bytes(),
            "gave freed memory back to the kernel"
        );
        lulls.restart(cpu_time());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Option<Duration> {
        Some(Duration::from_millis(n))
    }

    #[test]
    fn releases_once_per_lull_after_activity() {
        let mut lulls = Lulls::new();
        assert!(!lulls.release_now(ms(1000)), "the first look has nothing to compare with");
        assert!(lulls.release_now(ms(1010)), "start-up's allocations, then quiet");
        assert!(!lulls.release_now(ms(1020)), "still quiet: nothing new to give back");
        assert!(!lulls.release_now(ms(3000)), "busy: not now");
        assert!(!lulls.release_now(ms(5000)), "still busy");
        assert!(lulls.release_now(ms(5100)), "the first quiet period after the burst");
        assert!(!lulls.release_now(ms(5110)), "once per lull");
        assert!(!lulls.release_now(None), "unknown use");
        assert!(!lulls.release_now(ms(9000)), "no baseline after an unknown period");
    }

    #[test]
    fn resident_memory_is_read() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn reads_this_process_start_time_and_open_files() {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        let started = start_time_seconds().expect("the start time of this process");
        assert!(started > 1.5e9 && started <= now + 1.0, "started at {started}, now is {now}");
        assert!(open_fds().is_some_and(|n| n >= 3));
    }

    #[test]
    fn reads_this_process_cpu_time() {
        // Works until the process's CPU time moved on 30 ms: on a loaded machine the wall
        // time that takes is not known, so a deadline only stops a reading that never moves.
        let first = cpu_time().expect("the CPU time of this process");
        let started = Instant::now();
        let mut x = 0u64;
        let mut second = first;
        while second < first + Duration::from_millis(30) && started.elapsed() < Duration::from_secs(30) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            second = cpu_time().expect("the CPU time of this process");
        }
        assert!(second >= first + Duration::from_millis(30), "{first:?} then {second:?} after 30 s of work");
    }
}
