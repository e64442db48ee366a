//! Whether this member can write its raft log, watched from outside libraft.
//!
//! libraft writes entries into segment files it creates ahead of time (`open-N`, preallocated
//! at the segment size). When creating one fails (no space, a read-only or failing disk), it
//! fails the appends waiting for it: the node keeps running, answers heartbeats, keeps its vote
//! and its place in the configuration, and persists nothing more, silently, until the file
//! system has room for a whole segment again (freeing less than that changes nothing). A voter
//! in that state is a voter the cluster cannot count on, and a leadership transfer to it fails.
//!
//! Every second [`watch`] gathers what can be seen from outside (free space on the state
//! directory's file system, whether libraft holds an open segment, and a small write with
//! fsync), [`judge`] (pure) decides the member's [`Health`] and what to do, and the watch applies
//! it: an error in the log when the member cannot persist, the health in heartbeat answers
//! (so role changes move its vote to another member), in `cluster list` and the metrics. Once
//! the disk has had room again for [`RESTART_AFTER`], the node is restarted: libraft's next
//! append would create a segment by itself, but a node that failed writes was seen to hang on
//! reads once it led (`crates/dqlite/tests/full_disk.rs`); a restarted one catches up from the
//! leader.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::server::state::{NodeToStart, State};

/// How often the disk is looked at.
const PERIOD: Duration = Duration::from_secs(1);
/// How often the write probe runs while the member is healthy (every [`PERIOD`] otherwise).
const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How long libraft may go without an open segment before its absence counts: it creates
/// them in the background, and a fresh node only creates its first at its first append.
const NO_SEGMENT_GRACE: Duration = Duration::from_secs(3);
/// How long the disk must look writable again before a node that could not write its log is
/// restarted (so a disk on the edge does not restart it at every flicker).
const RESTART_AFTER: Duration = Duration::from_secs(3);

/// What the watch saw once.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Observation {
    /// Bytes an unprivileged writer may still use on the file system of the raft log.
    pub(crate) free: u64,
    /// Whether libraft holds at least one open segment file.
    pub(crate) open_segment: bool,
    /// How long it has held none (zero while it holds one).
    pub(crate) without_segment: Duration,
    /// How long the disk has looked writable without a break: the probe passing, and raft
    /// holding a segment or the file system having room for one.
    pub(crate) recovered_for: Duration,
    /// The write probe's failure, if it ran and failed.
    pub(crate) probe_error: Option<String>,
    /// Bytes libraft needs to create its next segment.
    pub(crate) segment_size: u64,
}

/// Whether this member can write its raft log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum Health {
    /// It can.
    #[default]
    Writable,
    /// It can now, but the file system cannot hold libraft's next segment.
    Low {
        /// Why, for the log and the metrics' readers.
        reason: String,
    },
    /// It cannot: libraft has stopped persisting entries, or the disk refuses writes.
    Failing {
        /// Why, with what to do.
        reason: String,
    },
}

impl Health {
    /// The reason the member cannot write its raft log, if it cannot.
    pub(crate) fn problem(&self) -> Option<&str> {
        match self {
            Health::Failing { reason } => Some(reason),
            _ => None,
        }
    }
}

/// What the watch should do after judging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing.
    None,
    /// Restart the node: the disk takes writes again, but libraft gave up on its log.
    RestartNode,
}

/// The member's health and what to do about it, from one observation and the health before.
pub(crate) fn judge(now: &Observation, before: &Health) -> (Health, Action) {
    let room = now.free >= now.segment_size;
    let stuck = !now.open_segment && now.without_segment >= NO_SEGMENT_GRACE;
    if stuck && !room {
        let reason = format!(
            "cannot write its raft log: {} free on its state directory's file system, raft's next log segment needs \
             {}; free some space and it resumes by itself",
            bytes(now.free),
            bytes(now.segment_size)
        );
        return (Health::Failing { reason }, Action::None);
    }
    if let Some(err) = &now.probe_error {
        let reason = format!(
            "cannot write its raft log: writing to its state directory fails ({err}); free space, or repair the \
             disk or its mount: the member resumes once it can write"
        );
        return (Health::Failing { reason }, Action::None);
    }
    if matches!(before, Health::Failing { .. }) {
        // The disk takes writes and has room again. libraft's next append would create a
        // segment, but a node that failed writes is not to be trusted further: a follower that
        // resumed so was seen to hang on reads once it led (`crates/dqlite/tests/full_disk.rs`).
        // So once the room has lasted, the node restarts and catches up from the leader. (The
        // restarted node is watched afresh, from a healthy start.)
        if now.recovered_for >= RESTART_AFTER {
            let reason = "cannot write its raft log: the disk has room again; its node restarts".to_owned();
            return (Health::Failing { reason }, Action::RestartNode);
        }
        let reason = "cannot write its raft log: the disk has room again; its node restarts shortly".to_owned();
        return (Health::Failing { reason }, Action::None);
    }
    if !room {
        let reason = format!(
            "{} free on its state directory's file system, less than raft's next log segment needs ({})",
            bytes(now.free),
            bytes(now.segment_size)
        );
        return (Health::Low { reason }, Action::None);
    }
    (Health::Writable, Action::None)
}

/// `n` bytes for a person: whole MiB above one, else KiB.
fn bytes(n: u64) -> String {
    if n >= 1 << 20 { format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)) } else { format!("{} KiB", n >> 10) }
}

/// The member's raft log health as the watch last judged it, shared with the heartbeat,
/// `cluster list` and the metrics.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    health: Mutex<Health>,
    free: std::sync::atomic::AtomicU64,
}

impl Watched {
    /// The health last judged.
    pub(crate) fn health(&self) -> Health {
        self.health.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Bytes free on the raft log's file system when last looked at.
    pub(crate) fn free(&self) -> u64 {
        self.free.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What [`watch`] looks at.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    /// libraft's directory (the node's data directory).
    pub(crate) raft: PathBuf,
    /// Where the write probe writes (the state directory: same file system, not libraft's).
    pub(crate) probe: PathBuf,
}

/// Bytes an unprivileged writer may still use on `path`'s file system.
fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(path)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Whether libraft holds an open segment in `dir`.
fn has_open_segment(dir: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        if entry?.file_name().as_encoded_bytes().starts_with(b"open-") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Writes a block, syncs it and removes it: fails as the raft log's writes would on a disk
/// that is full, read-only or failing.
fn probe(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".disk-probe");
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&path)?;
        file.write_all(&[0u8; 4096])?;
        file.sync_data()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// Watches the raft log's disk until the runtime stops (or restarts it).
pub(crate) async fn watch(state: State, paths: Paths, watched: Arc<Watched>, segment_size: u64) {
    let mut last_segment = Instant::now();
    let mut last_probe: Option<Instant> = None;
    let mut recovered_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(PERIOD).await;
        let before = watched.health();
        let probe_due =
            matches!(before, Health::Failing { .. }) || last_probe.is_none_or(|t| t.elapsed() >= PROBE_EVERY);
        let (paths2, now) = (paths.clone(), Instant::now());
        let gathered = tokio::task::spawn_blocking(move || {
            let free = free_bytes(&paths2.raft);
            let open = has_open_segment(&paths2.raft);
            let probed = probe_due.then(|| probe(&paths2.probe));
            (free, open, probed)
        })
        .await;
        let Ok((free, open, probed)) = gathered else { continue };
        if probe_due {
            last_probe = Some(now);
        }
        let open_segment = open.unwrap_or(true);
        if open_segment {
            last_segment = now;
        }
        let free = free.unwrap_or(u64::MAX);
        watched.free.store(free, std::sync::atomic::Ordering::Relaxed);
        let probe_error = probed.and_then(Result::err).map(|e| e.to_string());
        let recovered = probe_error.is_none() && (open_segment || free >= segment_size);
        recovered_since = if recovered { Some(recovered_since.unwrap_or(now)) } else { None };
        let observation = Observation {
            free,
            open_segment,
            without_segment: now.duration_since(last_segment),
            recovered_for: recovered_since.map_or(Duration::ZERO, |since| now.duration_since(since)),
            probe_error,
            segment_size,
        };
        let (health, action) = judge(&observation, &before);
        // Logged when the kind of health changes, not at every new free-space figure.
        if std::mem::discriminant(&health) != std::mem::discriminant(&before) {
            match &health {
                Health::Failing { reason } => tracing::error!(%reason, "this member cannot persist its raft log"),
                Health::Low { reason } => tracing::warn!(%reason, "this member's disk is almost full"),
                Health::Writable => tracing::info!("this member writes its raft log again"),
            }
        }
        if let Ok(mut h) = watched.health.lock() {
            *h = health;
        }
        if action == Action::RestartNode {
            // A new segment pool only comes with a new node; the starting runtime watches again.
            state.metrics().raft_log_restarts.inc();
            state.restart("raft stopped writing its log", NodeToStart::Running, Duration::ZERO);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: u64 = 32 << 20;

    fn seen(free: u64, open_segment: bool, without: u64, probe_error: Option<&str>) -> Observation {
        Observation {
            free,
            open_segment,
            without_segment: Duration::from_secs(without),
            // Writable for as long as there has been no segment, when it is.
            recovered_for: if probe_error.is_none() && (open_segment || free >= SEGMENT) {
                Duration::from_secs(without)
            } else {
                Duration::ZERO
            },
            probe_error: probe_error.map(str::to_owned),
            segment_size: SEGMENT,
        }
    }

    fn failing() -> Health {
        Health::Failing { reason: String::new() }
    }

    #[test]
    fn health_follows_the_disk() {
        use Action::{None as Nothing, RestartNode};
        // (what was seen, health before) -> (kind of health after, action)
        let cases: Vec<(Observation, Health, &str, Action)> = vec![
            // Room for the next segment, segments open: fine, whatever came before.
            (seen(SEGMENT * 3, true, 0, None), Health::Writable, "writable", Nothing),
            // After failing, room again: a restart once the room has lasted, segment or not.
            (seen(SEGMENT * 3, true, 0, None), failing(), "failing", Nothing),
            (
                Observation { recovered_for: RESTART_AFTER, ..seen(SEGMENT * 3, true, 0, None) },
                failing(),
                "failing",
                RestartNode,
            ),
            // Raft took the room back for its segments: recovered all the same.
            (
                Observation { recovered_for: RESTART_AFTER, ..seen(SEGMENT / 2, true, 0, None) },
                failing(),
                "failing",
                RestartNode,
            ),
            // A fresh node without a segment yet, with room: fine.
            (seen(SEGMENT * 3, false, 60, None), Health::Writable, "writable", Nothing),
            // Segments open but no room for the next one: a warning only.
            (seen(SEGMENT / 2, true, 0, None), Health::Writable, "low", Nothing),
            // No segment for a moment while space is short: libraft is creating one.
            (seen(SEGMENT / 2, false, 1, None), Health::Writable, "low", Nothing),
            // No segment for long and no room for one: it cannot persist.
            (seen(0, false, 5, None), Health::Writable, "failing", Nothing),
            (seen(SEGMENT - 1, false, 5, None), Health::Low { reason: String::new() }, "failing", Nothing),
            // Room again after failing: wait a moment for it to last...
            (seen(SEGMENT * 2, false, 1, None), failing(), "failing", Nothing),
            // ... then restart the node, segment or not.
            (seen(SEGMENT * 2, false, 30, None), failing(), "failing", RestartNode),
            // The disk refuses writes: failing at once, segments or not.
            (
                seen(SEGMENT * 3, true, 0, Some("Read-only file system (os error 30)")),
                Health::Writable,
                "failing",
                Nothing,
            ),
        ];
        for (observation, before, kind, action) in cases {
            let (health, got) = judge(&observation, &before);
            let got_kind = match &health {
                Health::Writable => "writable",
                Health::Low { .. } => "low",
                Health::Failing { .. } => "failing",
            };
            assert_eq!((got_kind, &got), (kind, &action), "{observation:?} after {before:?}: {health:?}");
        }
    }

    #[test]
    fn reasons_say_what_to_do() {
        let (health, _) = judge(&seen(2 << 10, false, 5, None), &Health::Writable);
        let reason = health.problem().unwrap();
        assert!(
            reason.contains("2 KiB free") && reason.contains("32.0 MiB") && reason.contains("free some space"),
            "{reason}"
        );
    }
}
