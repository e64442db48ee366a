//! The REST API's contract: paths, the JSON response envelope and the request/response bodies.
//!
//! Only this module derives `Serialize`/`Deserialize`; everything else converts to and from
//! these types explicitly, so a change here is an API change. Field names follow microcluster's
//! wire format so its clients and ours can talk to either daemon.

mod envelope;
mod types;

pub use envelope::{Envelope, ResponseType};
pub use types::*;

/// Paths of the core API.
pub mod paths {
    /// Bootstrap or join (unix socket only).
    pub const CONTROL: &str = "/core/control";
    /// Stop the daemon (unix socket only).
    pub const SHUTDOWN: &str = "/core/control/shutdown";
    /// Issue and list join tokens (unix socket only).
    pub const CONTROL_TOKENS: &str = "/core/control/tokens";
    /// Daemon status (untrusted allowed).
    pub const STATUS: &str = "/core/1.0";
    /// Cluster members.
    pub const CLUSTER: &str = "/core/1.0/cluster";
    /// Join tokens by name (revoke).
    pub const TOKENS: &str = "/core/1.0/tokens";
    /// Readiness.
    pub const READY: &str = "/core/1.0/ready";
    /// Join requests from new members (secret-gated, untrusted allowed).
    pub const INTERNAL_CLUSTER: &str = "/core/internal/cluster";
    /// Last segment of `CLUSTER/{name}/address` (move member `name`, on its own control socket)
    /// and of `INTERNAL_CLUSTER/{name}/address` (the leader's side of the move).
    pub const MEMBER_ADDRESS: &str = "address";
    /// The dqlite tunnel (HTTP upgrade to `dqlite`).
    pub const INTERNAL_DATABASE: &str = "/core/internal/database";
    /// SQL queries and dumps.
    pub const INTERNAL_SQL: &str = "/core/internal/sql";
    /// Trust store fan-out.
    pub const INTERNAL_TRUSTSTORE: &str = "/core/internal/truststore";
    /// Remote hook calls.
    pub const INTERNAL_HOOKS: &str = "/core/internal/hooks";
    /// Heartbeats from the leader.
    pub const INTERNAL_HEARTBEAT: &str = "/core/internal/heartbeat";
    /// Additional listeners' addresses.
    pub const DAEMON_SERVERS: &str = "/core/1.0/daemon/servers";
    /// A backup of the database (GET: an SQLite file; `?verify=1` proves it restores first).
    pub const DATABASE_BACKUP: &str = "/core/1.0/database/backup";
    /// Restore a backup into this cluster (POST the file; `?replace=1` replaces existing rows).
    pub const DATABASE_RESTORE: &str = "/core/1.0/database/restore";
    /// Prove that a backup file restores, into a scratch node (POST the file).
    pub const DATABASE_VERIFY: &str = "/core/1.0/database/verify";
    /// Header of a backup download carrying its summary (JSON).
    pub const BACKUP_SUMMARY_HEADER: &str = "x-microcluster-backup";
    /// Quorum recovery between members: GET a member's log position, POST it a plan.
    pub const INTERNAL_RECOVERY: &str = "/core/internal/recovery";
    /// Leadership transfer.
    pub const LEADER: &str = "/core/1.0/cluster/leader";
    /// This member's metrics in the Prometheus text format (trusted callers).
    pub const METRICS: &str = "/core/1.0/metrics";
    /// Compare the three views of the membership and repair provable drift (`?repair=0`: only
    /// report); run by the dqlite leader.
    pub const DOCTOR: &str = "/core/1.0/doctor";
}

/// The `Upgrade` protocol name of the dqlite tunnel.
pub const DQLITE_UPGRADE: &str = "dqlite";
