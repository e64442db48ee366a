//! The REST API's contract: paths, the JSON response envelope and the request/response bodies.
//!
//! Only this module derives `Serialize`/`Deserialize`; everything else converts to and from
//! these types explicitly, so a change here is an API change. Field names follow microcluster's
//! wire format so its clients and ours can talk to either daemon.

mod envelope;
mod types;

pub use envelope::{Envelope, ResponseType};
pub use types::*;

/// Paths of the core API: the one description of its routes. The server registers each
/// pattern here as it is (`{name}` marks a parameter) and the client fills them in
/// ([`paths::fill`]), so the two cannot drift apart; [`paths::ALL`] lists every route.
pub mod paths {
    /// The API versions (`["/1.0"]`, as microcluster answers; untrusted allowed).
    pub const ROOT: &str = "/";
    /// Bootstrap or join (unix socket only).
    pub const CONTROL: &str = "/core/control";
    /// Stop the daemon (unix socket only).
    pub const SHUTDOWN: &str = "/core/control/shutdown";
    /// Issue and list join tokens (unix socket only).
    pub const CONTROL_TOKENS: &str = "/core/control/tokens";
    /// Daemon status (untrusted allowed).
    pub const STATUS: &str = "/core/1.0";
    /// Readiness.
    pub const READY: &str = "/core/1.0/ready";
    /// Cluster members.
    pub const CLUSTER: &str = "/core/1.0/cluster";
    /// One member (remove).
    pub const CLUSTER_MEMBER: &str = "/core/1.0/cluster/{name}";
    /// Move member `name` to a new address, on its own control socket.
    pub const CLUSTER_MEMBER_ADDRESS: &str = "/core/1.0/cluster/{name}/address";
    /// Leadership transfer.
    pub const LEADER: &str = "/core/1.0/cluster/leader";
    /// A join token by name (revoke).
    pub const TOKEN: &str = "/core/1.0/tokens/{name}";
    /// Additional listeners' addresses.
    pub const DAEMON_SERVERS: &str = "/core/1.0/daemon/servers";
    /// This member's metrics in the Prometheus text format (trusted callers).
    pub const METRICS: &str = "/core/1.0/metrics";
    /// A backup of the database (GET: an SQLite file; `?verify=1` proves it restores first).
    pub const DATABASE_BACKUP: &str = "/core/1.0/database/backup";
    /// Restore a backup into this cluster (POST the file; `?replace=1` replaces existing rows).
    pub const DATABASE_RESTORE: &str = "/core/1.0/database/restore";
    /// Prove that a backup file restores, into a scratch node (POST the file).
    pub const DATABASE_VERIFY: &str = "/core/1.0/database/verify";
    /// Compare the three views of the membership and repair provable drift (`?repair=0`: only
    /// report); run by the dqlite leader.
    pub const DOCTOR: &str = "/core/1.0/doctor";
    /// Join requests from new members (secret-gated, untrusted allowed).
    pub const INTERNAL_CLUSTER: &str = "/core/internal/cluster";
    /// Reset a member that was removed (on the removed member).
    pub const INTERNAL_CLUSTER_MEMBER: &str = "/core/internal/cluster/{name}";
    /// The leader's side of moving member `name` to a new address.
    pub const INTERNAL_MEMBER_ADDRESS: &str = "/core/internal/cluster/{name}/address";
    /// The leader chooses a joining member's role.
    pub const INTERNAL_MEMBER_ROLE: &str = "/core/internal/cluster/{name}/role";
    /// The dqlite tunnel (HTTP upgrade to `dqlite`).
    pub const INTERNAL_DATABASE: &str = "/core/internal/database";
    /// SQL queries and dumps.
    pub const INTERNAL_SQL: &str = "/core/internal/sql";
    /// Trust store fan-out.
    pub const INTERNAL_TRUSTSTORE: &str = "/core/internal/truststore";
    /// One trust store entry (remove).
    pub const INTERNAL_TRUST: &str = "/core/internal/truststore/{name}";
    /// Remote hook calls.
    pub const INTERNAL_HOOK: &str = "/core/internal/hooks/{hook}";
    /// A hook run on the member asked and, by it, on every other member but the caller.
    pub const INTERNAL_HOOK_MEMBERS: &str = "/core/internal/hooks/{hook}/members";
    /// Heartbeats from the leader.
    pub const INTERNAL_HEARTBEAT: &str = "/core/internal/heartbeat";
    /// Quorum recovery between members: GET a member's log position, POST it a plan.
    pub const INTERNAL_RECOVERY: &str = "/core/internal/recovery";
    /// Issue (POST) and list (GET) monitoring credentials (unix socket only).
    pub const CONTROL_MONITORS: &str = "/core/control/monitors";
    /// Revoke a monitoring credential by name (unix socket only).
    pub const CONTROL_MONITOR: &str = "/core/control/monitors/{name}";
    /// Tells a member that the monitoring credentials changed (it reads them again).
    pub const INTERNAL_MONITORS: &str = "/core/internal/monitors";
    /// Replace certificates (`POST`).
    pub const CLUSTER_CERTIFICATES: &str = "/core/1.0/cluster/certificates";
    /// Install a supplied certificate (`PUT`, microcluster's): `cluster` or a member's name.
    pub const CLUSTER_CERTIFICATE: &str = "/core/1.0/cluster/certificates/{name}";
    /// A rotation's first step on each member (`POST`), and what a member that missed one
    /// catches up from (`GET`).
    pub const INTERNAL_CERTIFICATES: &str = "/core/internal/certificates";
    /// A rotation's switch to the next certificates (`POST`).
    pub const INTERNAL_CERTIFICATES_SWITCH: &str = "/core/internal/certificates/switch";
    /// A rotation's end: accept only the current cluster certificate (`POST`).
    pub const INTERNAL_CERTIFICATES_FINISH: &str = "/core/internal/certificates/finish";
    /// Header of a backup download carrying its summary (JSON).
    pub const BACKUP_SUMMARY_HEADER: &str = "x-microcluster-backup";
    /// Header of a refusal given before any handler ran: the request did nothing, so it is
    /// safe to send again. Its value says why: [`NOT_RUN_STOPPING`] or [`NOT_RUN_NOT_READY`].
    pub const NOT_RUN_HEADER: &str = "x-microcluster-not-run";
    /// [`NOT_RUN_HEADER`]: the member is stopping (a leader hands its leadership over).
    pub const NOT_RUN_STOPPING: &str = "stopping";
    /// [`NOT_RUN_HEADER`]: the member's database is not ready (starting, waiting for an
    /// upgrade).
    pub const NOT_RUN_NOT_READY: &str = "not-ready";

    /// Every route of the core API.
    pub const ALL: &[&str] = &[
        ROOT,
        CONTROL,
        SHUTDOWN,
        CONTROL_TOKENS,
        STATUS,
        READY,
        CLUSTER,
        CLUSTER_MEMBER,
        CLUSTER_MEMBER_ADDRESS,
        LEADER,
        TOKEN,
        DAEMON_SERVERS,
        METRICS,
        DATABASE_BACKUP,
        DATABASE_RESTORE,
        DATABASE_VERIFY,
        DOCTOR,
        INTERNAL_CLUSTER,
        INTERNAL_CLUSTER_MEMBER,
        INTERNAL_MEMBER_ADDRESS,
        INTERNAL_MEMBER_ROLE,
        INTERNAL_DATABASE,
        INTERNAL_SQL,
        INTERNAL_TRUSTSTORE,
        INTERNAL_TRUST,
        INTERNAL_HOOK,
        INTERNAL_HOOK_MEMBERS,
        INTERNAL_HEARTBEAT,
        INTERNAL_RECOVERY,
        CONTROL_MONITORS,
        CONTROL_MONITOR,
        INTERNAL_MONITORS,
        CLUSTER_CERTIFICATES,
        CLUSTER_CERTIFICATE,
        INTERNAL_CERTIFICATES,
        INTERNAL_CERTIFICATES_SWITCH,
        INTERNAL_CERTIFICATES_FINISH,
    ];

    /// `pattern` with each `{parameter}` replaced, in order, by the next of `params`,
    /// percent-encoded as one segment; a parameter without a value is left empty.
    pub fn fill(pattern: &str, params: &[&str]) -> String {
        let mut params = params.iter();
        pattern
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') && segment.ends_with('}') {
                    params.next().map(|p| encode_segment(p)).unwrap_or_default()
                } else {
                    segment.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Percent-encodes a path segment (everything but unreserved characters).
    pub fn encode_segment(segment: &str) -> String {
        let mut out = String::with_capacity(segment.len());
        for b in segment.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn patterns_fill_in_order_and_encode() {
            assert_eq!(fill(CLUSTER_MEMBER_ADDRESS, &["m 1/x"]), "/core/1.0/cluster/m%201%2Fx/address");
            assert_eq!(fill(INTERNAL_HOOK, &["on-new-member"]), "/core/internal/hooks/on-new-member");
            assert_eq!(fill(CLUSTER, &[]), CLUSTER);
        }
    }
}

/// The `Upgrade` protocol name of the dqlite tunnel.
pub const DQLITE_UPGRADE: &str = "dqlite";
