//! `GET /core/1.0/metrics`: this member's metrics in the Prometheus text format, for trusted
//! callers (the control socket, or a trusted certificate over HTTPS). It answers before init,
//! while waiting for an upgrade and during shutdown, with whatever exists then.
//!
//! The counters and histograms come from [`crate::server::metrics::Metrics`]; the gauges are
//! read at scrape time from what the member knows cheaply: its own status, the leader its
//! node last reported, the write queue, and one read of `core_cluster_members`. No other
//! member is asked anything.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::api::paths;
use crate::api::{role, status};
use crate::server::db::DbStatus;
use crate::server::metrics::{CONTENT_TYPE, Exposition, Kind};
use crate::server::rest::{Action, Endpoint, HandlerResult, Request, Response};
use crate::server::state::State;

/// A label value as every label value here is spelled: lower case, words joined by `_` (the
/// API's `stand-by` and `ONLINE` become `stand_by` and `online`).
fn label(value: &str) -> String {
    value.to_ascii_lowercase().replace('-', "_")
}

/// Longest the members gauge waits for the database (e.g. during an election): a scrape
/// without it is better than a scrape that times out.
const MEMBERS_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(paths::METRICS).get(
            Action::new(metrics)
                .allowed_before_init()
                .allowed_during_upgrade()
                .allowed_during_shutdown()
                .readable_by_monitors(),
        ),
    ]
}

async fn metrics(state: State, _req: Request) -> HandlerResult {
    let mut out = Exposition::default();
    out.family("microcluster_build_info", Kind::Gauge, "Always 1; the application's version as a label.");
    out.sample("microcluster_build_info", &[("version", state.version())], 1u64);

    let current = state.database_status();
    out.family(
        "microcluster_database_status",
        Kind::Gauge,
        "1 for the status this member's database is in, 0 for the others.",
    );
    for (label, status) in [
        ("not_initialized", DbStatus::NotInitialized),
        ("starting", DbStatus::Starting),
        ("waiting_upgrade", DbStatus::WaitingUpgrade),
        ("online", DbStatus::Online),
        ("offline", DbStatus::Offline),
    ] {
        out.sample("microcluster_database_status", &[("status", label)], status == current);
    }

    let runtime = state.runtime().ok();
    out.family("microcluster_is_leader", Kind::Gauge, "1 if this member's node reports itself as the dqlite leader.");
    let leader = runtime.as_ref().is_some_and(|r| r.db.leader().as_deref() == Some(r.address.as_str()));
    out.sample("microcluster_is_leader", &[], leader);
    out.family("microcluster_write_queue_depth", Kind::Gauge, "Write requests waiting in this member's write queue.");
    out.sample("microcluster_write_queue_depth", &[], runtime.as_ref().map_or(0, |r| r.db.queue_depth()));
    if let Some(runtime) = runtime.as_ref() {
        let health = runtime.disk.health();
        out.family(
            "microcluster_raft_log_writable",
            Kind::Gauge,
            "1 while this member can write its raft log, 0 when it cannot (a full, read-only or failing disk; \
             `cluster list` says why): it then takes no part in committing.",
        );
        out.sample("microcluster_raft_log_writable", &[], health.problem().is_none());
        out.family(
            "microcluster_state_free_bytes",
            Kind::Gauge,
            "Bytes free for the daemon on the file system of this member's raft log (raft needs a whole log \
             segment's worth to go on).",
        );
        out.sample("microcluster_state_free_bytes", &[], runtime.disk.free());
    }
    out.family(
        "microcluster_read_confirmations_total",
        Kind::Counter,
        "Rounds in which this member asked every voter who leads before linearizable reads (one round serves every \
         read waiting when it starts): a majority named the same leader (outcome=\"confirmed\"), or not \
         (outcome=\"failed\", during an election or while a majority cannot be reached).",
    );
    let (rounds, failed) = runtime.as_ref().map_or((0, 0), |r| r.db.confirmation_rounds());
    out.sample("microcluster_read_confirmations_total", &[("outcome", "confirmed")], rounds.saturating_sub(failed));
    out.sample("microcluster_read_confirmations_total", &[("outcome", "failed")], failed);
    out.family(
        "microcluster_checkpoint_threshold_frames",
        Kind::Gauge,
        "WAL frames at which this member's node checkpoints (1000 while it leads, 200 otherwise). Absent when \
         libdqlite is not 1.11, whose default then applies.",
    );
    if let Some(frames) = runtime.as_ref().and_then(|r| r.checkpoint_threshold()) {
        out.sample("microcluster_checkpoint_threshold_frames", &[], u64::from(frames));
    }

    out.family(
        "microcluster_members",
        Kind::Gauge,
        "Cluster members by role (voter, stand_by, spare, pending) and status, from the database: the role the \
         leader last recorded, and online if the leader's last heartbeat reached the member within two intervals \
         and a second (in the cluster's time), unreachable if not, pending while joining. Absent when the \
         database cannot be read.",
    );
    if let Some(runtime) = runtime.filter(|_| matches!(current, DbStatus::Online | DbStatus::WaitingUpgrade)) {
        let read = runtime.db.query("SELECT role, heartbeat FROM core_cluster_members", &[]);
        match tokio::time::timeout(MEMBERS_TIMEOUT, read).await {
            Ok(Ok(rows)) => {
                let fresh = state.settings().heartbeat * 2 + Duration::from_secs(1);
                let now = state.clock().now();
                let mut counts: BTreeMap<(String, &str), u64> = BTreeMap::new();
                for row in &rows.rows {
                    let member_role = crate::server::db::text(row.get(0));
                    let heartbeat = crate::server::db::text(row.get(1));
                    let status = member_status(&member_role, &heartbeat, now, fresh);
                    *counts.entry((member_role, status)).or_default() += 1;
                }
                for ((member_role, status), count) in counts {
                    let labels = [("role", label(&member_role)), ("status", label(status))];
                    out.sample("microcluster_members", &labels.each_ref().map(|(k, v)| (*k, v.as_str())), count);
                }
            }
            Ok(Err(err)) => tracing::debug!(error = %err, "metrics: cannot read the members"),
            Err(_) => tracing::debug!("metrics: reading the members timed out"),
        }
    }

    out.family(
        "microcluster_member_clock_offset_seconds",
        Kind::Gauge,
        &format!(
            "Each member's clock minus the cluster's time (the median of the members' clocks), as the leader last \
             measured it; beyond {} s (plus the measurement's uncertainty) it is reported as skewed. Absent while \
             unknown.",
            crate::server::state::clock::SKEW_BOUND.as_secs()
        ),
    );
    for (name, offset) in crate::server::domain::heartbeat::clock_offsets(&state) {
        out.sample("microcluster_member_clock_offset_seconds", &[("member", &name)], offset.seconds());
    }

    state.metrics().render(&mut out);

    out.family(
        "microcluster_certificate_expiry_timestamp_seconds",
        Kind::Gauge,
        "When this member's certificates expire, in seconds since the Unix epoch: its own (server) and, once \
         initialised, the cluster's.",
    );
    for (label, pem) in
        [("server", Some(state.server_cert().cert_pem)), ("cluster", state.cluster_cert().ok().map(|c| c.cert_pem))]
    {
        let expiry = pem.and_then(|pem| crate::tls::not_after_pem(&pem).ok());
        if let Some(seconds) = expiry.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()) {
            out.sample(
                "microcluster_certificate_expiry_timestamp_seconds",
                &[("certificate", label)],
                seconds.as_secs(),
            );
        }
    }

    // The process's own, under the names Prometheus's client libraries give them.
    use crate::server::memory;
    if let Some(bytes) = memory::resident_bytes() {
        out.family("process_resident_memory_bytes", Kind::Gauge, "Resident memory size in bytes.");
        out.sample("process_resident_memory_bytes", &[], bytes);
    }
    if let Some(seconds) = memory::cpu_seconds() {
        out.family("process_cpu_seconds_total", Kind::Counter, "Total user and system CPU time spent in seconds.");
        out.sample("process_cpu_seconds_total", &[], seconds);
    }
    if let Some(seconds) = memory::start_time_seconds() {
        out.family("process_start_time_seconds", Kind::Gauge, "Start time of the process since unix epoch in seconds.");
        out.sample("process_start_time_seconds", &[], seconds);
    }
    if let Some(fds) = memory::open_fds() {
        out.family("process_open_fds", Kind::Gauge, "Number of open file descriptors.");
        out.sample("process_open_fds", &[], fds);
    }
    Ok(Response::raw(CONTENT_TYPE, out.finish()))
}

/// A member's status from its row, by the rule `cluster list` uses for a member it cannot
/// probe in time (the last heartbeat's age).
fn member_status(member_role: &str, heartbeat: &str, now: SystemTime, fresh: Duration) -> &'static str {
    if member_role == role::PENDING {
        return status::PENDING;
    }
    let Ok(time) = humantime::parse_rfc3339_weak(heartbeat) else { return status::UNREACHABLE };
    match now.duration_since(time) {
        Ok(age) if age > fresh => status::UNREACHABLE,
        // A heartbeat stamped slightly in the future (clock skew) is fresh too.
        _ => status::ONLINE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_follows_the_last_heartbeat() {
        let fresh = Duration::from_secs(3);
        let now = SystemTime::now();
        let stamp = crate::server::state::clock::format(now);
        assert_eq!(member_status(role::VOTER, &stamp, now, fresh), status::ONLINE);
        assert_eq!(member_status(role::PENDING, &stamp, now, fresh), status::PENDING);
        assert_eq!(member_status(role::VOTER, crate::server::db::ZERO_TIME, now, fresh), status::UNREACHABLE);
        assert_eq!(member_status(role::STAND_BY, "not a time", now, fresh), status::UNREACHABLE);
        let ahead = humantime::format_rfc3339(now + Duration::from_secs(60)).to_string();
        assert_eq!(member_status(role::VOTER, &ahead, now, fresh), status::ONLINE);
        // Judged by the cluster's time, not the reading member's clock 2 days ahead.
        let skewed_now = now + Duration::from_secs(2 * 24 * 3600);
        assert_eq!(member_status(role::VOTER, &stamp, skewed_now, fresh), status::UNREACHABLE);
    }
}
