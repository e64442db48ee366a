//! What the kernel says about a process: resident memory, CPU time, context switches.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn status_field(pid: u32, field: &str) -> Option<u64> {
    kib_field(&format!("/proc/{pid}/status"), field)
}

fn kib_field(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Proportional resident memory in MiB (`Pss` of `/proc/PID/smaps_rollup`): pages shared with
/// other processes (a library, the same binary run as three members) count in part, so the
/// members of one machine add up to what they use together.
pub(crate) fn pss_mib(pid: u32) -> Option<f64> {
    kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:").map(|kib| kib as f64 / 1024.0)
}

/// Resident memory in MiB (`VmRSS`).
pub(crate) fn rss_mib(pid: u32) -> Option<f64> {
    status_field(pid, "VmRSS:").map(|kib| kib as f64 / 1024.0)
}

/// Voluntary and involuntary context switches of every thread of the process (`/proc/PID/status`
/// counts the main thread only, so each task's are summed).
pub(crate) fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .map(|tid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
            text.lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split(':').nth(1)?.trim().parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU time the process (all its threads) has used: utime + stime.
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are plain.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second()))
}

/// CPU time of a group of processes, for measuring a window.
pub(crate) struct CpuMeter {
    pids: Vec<u32>,
    start: Duration,
    at: Instant,
}

fn total(pids: &[u32]) -> Duration {
    pids.iter().filter_map(|p| cpu_time(*p)).sum()
}

impl CpuMeter {
    pub(crate) fn start(pids: &[u32]) -> CpuMeter {
        CpuMeter { pids: pids.to_vec(), start: total(pids), at: Instant::now() }
    }

    /// CPU used since the start.
    pub(crate) fn used(&self) -> Duration {
        total(&self.pids).saturating_sub(self.start)
    }

    /// CPU used since the start as a percentage of one core over the wall-clock window.
    pub(crate) fn percent_of_core(&self) -> f64 {
        self.used().as_secs_f64() * 100.0 / self.at.elapsed().as_secs_f64()
    }
}

/// The median of `values` (NaN when empty).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
