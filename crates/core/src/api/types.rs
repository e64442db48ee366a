//! Request and response bodies of the REST API.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

/// A list or map that Go's encoding/json writes as `null` when it is nil: read as empty, so a
/// client written in Go (microcluster's own, for example) is understood.
fn null_is_empty<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `POST /core/control`: bootstrap a new cluster or join one with a token.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    /// Start a new cluster.
    #[serde(default)]
    pub bootstrap: bool,
    /// Join the cluster this token was issued by.
    #[serde(default)]
    pub join_token: String,
    /// This member's address, `ip:port`.
    pub address: String,
    /// This member's name.
    pub name: String,
    /// Passed to the PreInit, PostBootstrap, PreJoin and PostJoin hooks.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub config: BTreeMap<String, String>,
}

/// `GET /core/1.0`: who this daemon is and whether its database is up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// Member name (empty before init).
    pub name: String,
    /// Member address (empty before init).
    pub address: String,
    /// Application version.
    pub version: String,
    /// Whether the database is open.
    pub ready: bool,
    /// API extensions this daemon supports.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub extensions: Vec<String>,
    /// Database status text, e.g. "Database is online".
    #[serde(default)]
    pub status: String,
    /// Internal schema version of this member's software.
    #[serde(default)]
    pub schema_internal_version: u64,
    /// Application schema version of this member's software.
    #[serde(default)]
    pub schema_external_version: u64,
    /// This member's clock when it answered (RFC 3339; absent from older software), which
    /// `doctor` compares with the other members'.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time: String,
}

/// `POST /core/control/tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Name of the member that may use the token.
    pub name: String,
    /// Validity in nanoseconds; 0 means the token never expires.
    #[serde(default)]
    pub expire_after: u64,
}

/// `POST /core/control/monitors`: a monitoring credential for `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorRequest {
    /// What the credential is for (e.g. `prometheus`): a host-name-like word.
    pub name: String,
}

/// A monitoring credential as issued: the only time its private key is seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorCredential {
    /// Its name.
    pub name: String,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
    /// The client certificate, PEM.
    pub certificate: String,
    /// Its private key, PEM.
    pub key: String,
}

/// A monitoring credential, as `GET /core/control/monitors` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorRecord {
    /// Its name.
    pub name: String,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
    /// When it was issued, RFC 3339 in the cluster's time.
    pub created: String,
}

/// An outstanding join token, as `GET /core/control/tokens` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Name of the member that may use it.
    pub name: String,
    /// The token string.
    pub token: String,
    /// RFC 3339 expiry time, or empty when it never expires (on the wire, Go's zero time
    /// [`NEVER_EXPIRES`], as microcluster writes it; read back as empty).
    #[serde(default, serialize_with = "never_as_zero_time", deserialize_with = "zero_time_as_never")]
    pub expires_at: String,
}

/// How microcluster (Go's zero `time.Time`) writes the expiry of a token that never expires.
pub const NEVER_EXPIRES: &str = "0001-01-01T00:00:00Z";

fn never_as_zero_time<S: serde::Serializer>(expiry: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(if expiry.is_empty() { NEVER_EXPIRES } else { expiry })
}

fn zero_time_as_never<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let expiry: Option<String> = Option::deserialize(deserializer)?;
    Ok(expiry.filter(|e| e != NEVER_EXPIRES).unwrap_or_default())
}

/// What a join token carries (base64 of this, as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinToken {
    /// 32 random bytes, hex.
    pub secret: String,
    /// SHA-256 fingerprint (hex) of the cluster certificate.
    pub fingerprint: String,
    /// Members to contact, `ip:port`.
    pub join_addresses: Vec<String>,
}

/// Why a join token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid join token: {0}")]
pub struct TokenError(String);

impl JoinToken {
    /// Most join addresses a token may carry.
    pub const MAX_ADDRESSES: usize = 1000;

    /// Decodes a token as `microctl tokens add` prints it, and checks every field's form.
    pub fn decode(text: &str) -> Result<JoinToken, TokenError> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|e| TokenError(format!("not base64 ({e})")))?;
        let token: JoinToken = serde_json::from_slice(&bytes).map_err(|e| TokenError(format!("not a token ({e})")))?;
        let is_hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex64(&token.secret) {
            return Err(TokenError("malformed secret".into()));
        }
        if !is_hex64(&token.fingerprint) {
            return Err(TokenError("malformed fingerprint".into()));
        }
        if token.join_addresses.is_empty() || token.join_addresses.len() > Self::MAX_ADDRESSES {
            return Err(TokenError("no join addresses".into()));
        }
        for address in &token.join_addresses {
            crate::validate::member_address(address).map_err(|e| TokenError(e.to_string()))?;
        }
        Ok(token)
    }

    /// Encodes the token for people to pass around (base64 of its JSON).
    pub fn encode(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// A member's identity: name, address and certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterMemberLocal {
    /// Member name.
    pub name: String,
    /// Member address, `ip:port`.
    pub address: String,
    /// PEM of the member's `server.crt`.
    pub certificate: String,
}

/// A member as `GET /core/1.0/cluster` reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// Name, address and certificate.
    #[serde(flatten)]
    pub local: ClusterMemberLocal,
    /// `voter`, `stand-by`, `spare` or `PENDING`.
    pub role: String,
    /// Internal schema version the member runs.
    #[serde(default)]
    pub schema_internal_version: u64,
    /// Application schema version the member runs.
    #[serde(default)]
    pub schema_external_version: u64,
    /// Last heartbeat, RFC 3339 (the zero time before the first one).
    #[serde(default)]
    pub last_heartbeat: String,
    /// `ONLINE`, `UNREACHABLE`, ...
    #[serde(default)]
    pub status: String,
    /// Why the status was assigned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_reason: String,
    /// API extensions the member runs.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub extensions: Vec<String>,
    /// SHA-256 fingerprint of the certificate.
    #[serde(default)]
    pub fingerprint: String,
    /// Whether it is the dqlite leader (as the answering member sees it).
    #[serde(default)]
    pub leader: bool,
    /// Its clock minus the cluster's time (the median of the members' clocks), in seconds, as
    /// the leader last measured it; absent while unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset: Option<f64>,
    /// Whether that offset is beyond the bound (5 s) even at the near end of the measurement's
    /// uncertainty; `status_reason` then says so and what to do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clock_skewed: bool,
    /// Whole days until its certificate expires (negative once it has), by the answering
    /// member's clock; absent if it cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_days_left: Option<i64>,
}

/// `POST /core/internal/cluster`: a new member asks to join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The joiner's name (must be the token's name and in its certificate).
    pub name: String,
    /// The joiner's address.
    pub address: String,
    /// PEM of the joiner's `server.crt`.
    pub certificate: String,
    /// The token's secret.
    pub secret: String,
    /// Internal schema version of the joiner's binary.
    #[serde(default)]
    pub schema_internal_version: u64,
    /// Application schema version of the joiner's binary.
    #[serde(default)]
    pub schema_external_version: u64,
    /// API extensions of the joiner's binary.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub extensions: Vec<String>,
}

/// The answer to a join request: what the joiner needs to become a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinResponse {
    /// PEM of the cluster certificate.
    pub cluster_cert: String,
    /// PEM of the cluster certificate's key (every member serves the cluster certificate).
    pub cluster_key: String,
    /// Every current member.
    pub cluster_members: Vec<ClusterMemberLocal>,
    /// The member that admitted the joiner (the leader).
    pub trusted_member: ClusterMemberLocal,
}

/// `POST /core/internal/sql`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlQuery {
    /// One or more SQL statements.
    pub query: String,
    /// How sure reads must be to see every write acknowledged before the request (absent:
    /// linearizable). Writes always go through the leader's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ReadConsistency>,
}

impl SqlQuery {
    /// A query with the default consistency.
    pub fn new(query: impl Into<String>) -> SqlQuery {
        SqlQuery { query: query.into(), consistency: None }
    }
}

/// How sure a read must be to see every write acknowledged before it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// The node that answers was named leader by a majority of the voters after the request
    /// arrived: no acknowledged write is ever missing (the default).
    #[default]
    Linearizable,
    /// Whichever node believes it leads answers, without asking the voters (one round trip
    /// less): a leader that froze or was cut off and was replaced without knowing it yet
    /// answers from its old state, missing writes acknowledged by its successor.
    Weak,
}

/// Results of the statements of one SQL query, in order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SqlBatch {
    /// One result per statement.
    #[serde(rename = "Results")]
    pub results: Vec<SqlResult>,
}

/// The result of one statement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlResult {
    /// `select` (columns and rows) or `exec` (rows affected).
    #[serde(rename = "type")]
    pub kind: String,
    /// The statement.
    #[serde(default)]
    pub statement: String,
    /// Column names (reads).
    #[serde(default, deserialize_with = "null_is_empty")]
    pub columns: Vec<String>,
    /// Rows (reads): integers and floats as numbers, text as strings, NULL as null, blobs as
    /// `x'..'` hex strings.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Rows changed (writes).
    #[serde(default)]
    pub rows_affected: u64,
}

/// `GET /core/internal/sql`: an SQL dump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SqlDump {
    /// The SQL text.
    pub text: String,
}

/// What a database backup holds: the application's tables with their row counts, and a
/// SHA-256 over every row (in a fixed order), which a restore must reproduce.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// Application tables, in the backup's order.
    pub tables: Vec<TableRows>,
    /// Rows in all of them.
    pub rows: u64,
    /// SHA-256 (hex) over the tables' names, columns and rows.
    pub checksum: String,
    /// Internal schema version of the backed-up database.
    pub schema_internal: u64,
    /// Application schema version of the backed-up database.
    pub schema_external: u64,
    /// Size of the backup file in bytes.
    pub size: u64,
    /// Whether the backup was restored (into a scratch node, or the cluster) and compared.
    pub verified: bool,
}

/// One table of a backup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    /// Table name.
    pub name: String,
    /// Rows.
    pub rows: u64,
}

/// A quorum recovery: the raft configuration the survivors force on themselves, and the
/// members dropped. Written by `microctl cluster recover` into `STATE/recovery.json` of a
/// stopped member, applied when its daemon starts, and handed by it to the other survivors.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryPlan {
    /// Random id of this recovery.
    pub id: String,
    /// The member where it was planned (it hands the plan to the other survivors).
    pub initiator: String,
    /// When it was planned (RFC 3339).
    pub created: String,
    /// The new configuration: every survivor with its node id and role.
    pub members: Vec<RecoveryMember>,
    /// Members no longer in the cluster.
    pub removed: Vec<String>,
}

/// A survivor in a [`RecoveryPlan`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryMember {
    /// Member name.
    pub name: String,
    /// Member address.
    pub address: String,
    /// dqlite node id.
    pub id: u64,
    /// `voter` or `stand-by`.
    pub role: String,
}

/// `GET /core/internal/recovery`: what a running member knows that a recovery needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryStatus {
    /// Member name.
    pub name: String,
    /// Member address.
    pub address: String,
    /// dqlite node id.
    pub id: u64,
    /// Index of its last raft log entry.
    pub last_index: u64,
    /// Term of that entry.
    pub last_term: u64,
    /// The leader its node follows (empty: none).
    pub leader: String,
    /// Its database status text.
    pub database: String,
}

/// `POST /core/internal/cluster/{name}/role`: a joiner, added to dqlite as a spare, asks the
/// leader for the role the cluster needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRequest {
    /// The joiner's dqlite node id.
    pub id: u64,
}

/// Body of the pre-remove and post-remove hook calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoveHookRequest {
    /// Whether the removal is forced.
    #[serde(default)]
    pub force: bool,
}

/// A member's role before and after a heartbeat round, as the OnHeartbeat hook sees it (the
/// same when the round changed nothing for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleStatus {
    /// The role recorded before the round.
    pub old: String,
    /// The role after the round.
    pub new: String,
}

impl RoleStatus {
    /// Whether the round changed this member's role.
    pub fn changed(&self) -> bool {
        self.old != self.new
    }
}

/// Body of the on-new-member hook call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewMemberHookRequest {
    /// The member that joined.
    pub new_member: ClusterMemberLocal,
}

/// A member state change fanned out by the leader (trust store add/remove).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustStoreEntry {
    /// The member.
    #[serde(flatten)]
    pub member: ClusterMemberLocal,
}

/// `POST /core/internal/heartbeat`: the leader's round, sent to every member. It carries the
/// membership the member must trust (the database's view, joining members included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Name of the leader sending the round.
    pub leader: String,
    /// Every member of the cluster; empty when the member's last answer showed it trusts
    /// exactly these already (an empty list changes nothing).
    pub members: Vec<ClusterMemberLocal>,
    /// Every member's clock offset from the cluster's time by name, as the leader measured it
    /// (in an earlier round). Sent only to members whose answers carry their time: older
    /// software refuses fields it does not know.
    #[serde(default, deserialize_with = "null_is_empty", skip_serializing_if = "BTreeMap::is_empty")]
    pub clocks: BTreeMap<String, ClockOffset>,
    /// The monitoring credentials' fingerprints by name, as the leader read them: a member
    /// that holds others reads them again from the database. Absent from leaders whose
    /// database has no credentials table yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitors: Option<BTreeMap<String, String>>,
}

/// A member's clock minus the cluster's time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockOffset {
    /// Nanoseconds; positive: ahead.
    pub offset_ns: i64,
    /// The true offset is within `offset_ns` ± this (half the measuring round trip and the
    /// reference's own).
    pub uncertainty_ns: u64,
}

/// A member's answer to a heartbeat: what it runs and how it is placed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Member name.
    pub name: String,
    /// Member address.
    pub address: String,
    /// Application version.
    pub version: String,
    /// Internal schema version of its software.
    pub schema_internal_version: u64,
    /// Application schema version of its software.
    pub schema_external_version: u64,
    /// API extensions of its software.
    pub extensions: Vec<String>,
    /// Its database status text.
    pub status: String,
    /// Failure domain (from its daemon.toml).
    pub failure_domain: u64,
    /// Weight (lower is preferred for roles).
    pub weight: u64,
    /// Why it cannot write its raft log (absent: it can). Such a member is not counted on as
    /// a voter: role changes give its vote to another member while this lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_log_problem: Option<String>,
    /// Its clock when it answered (RFC 3339; absent from older software): the leader measures
    /// every member's offset from it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub time: String,
    /// A digest of the members its trust store holds, once synced (absent from older
    /// software): while it equals the digest of the leader's list, the leader's next heartbeat
    /// leaves the list out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_digest: Option<String>,
}

/// `GET /core/1.0/ready` once ready: what may still be wrong with a member that serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    /// Why it cannot write its raft log (absent: it can).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_log_problem: Option<String>,
}

/// `POST /core/1.0/cluster/leader`: hand leadership over.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeaderRequest {
    /// The member that should lead (empty: any other voter).
    #[serde(default)]
    pub name: String,
}

/// An additional listener's address (`GET|PUT /core/1.0/daemon/servers` maps server names to
/// these).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerAddress {
    /// Listen address `ip:port` (empty: the listener is off).
    #[serde(default)]
    pub address: String,
}

/// A member's own settings, as the OnDaemonConfigUpdate hook receives them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberConfig {
    /// Member name.
    pub name: String,
    /// Member address.
    pub address: String,
    /// Additional listeners' addresses.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub servers: BTreeMap<String, ServerAddress>,
}

/// Role strings as microcluster prints them.
pub mod role {
    /// Votes and replicates.
    pub const VOTER: &str = "voter";
    /// Replicates, promoted first.
    pub const STAND_BY: &str = "stand-by";
    /// Neither votes nor replicates.
    pub const SPARE: &str = "spare";
    /// Admitted but not yet seen in the dqlite configuration.
    pub const PENDING: &str = "PENDING";
}

/// Member status strings.
pub mod status {
    /// Answers and is part of the cluster.
    pub const ONLINE: &str = "ONLINE";
    /// Did not answer.
    pub const UNREACHABLE: &str = "UNREACHABLE";
    /// Answered with a certificate this member does not trust.
    pub const NOT_TRUSTED: &str = "NOT TRUSTED";
    /// Runs an older version than the cluster is upgrading to.
    pub const NEEDS_UPGRADE: &str = "NEEDS UPGRADE";
    /// Waiting for the other members to upgrade.
    pub const UPGRADING: &str = "UPGRADING";
    /// Admitted, still joining (not yet in the dqlite configuration).
    pub const PENDING: &str = "PENDING";
    /// Answers, but cannot write its raft log (a full, read-only or failing disk): it takes
    /// no part in committing, and role changes give its vote to another member.
    pub const DEGRADED: &str = "DEGRADED";
}

/// `POST /core/1.0/doctor[?repair=0]`: the leader's comparison of dqlite's configuration,
/// `core_cluster_members` and every member's trust store, with what it repaired.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DoctorReport {
    /// The member that ran the checks (the dqlite leader).
    pub leader: String,
    /// Whether provable drift was repaired (`false`: only reported).
    pub repair: bool,
    /// Every check's result, in order.
    pub checks: Vec<DoctorCheck>,
    /// Results left as `PROBLEM` (unresolved).
    pub problems: u64,
    /// Results `REPAIRED`.
    pub repaired: u64,
    /// Results `SKIPPED` (a member could not be asked, or is still joining).
    pub skipped: u64,
}

/// One result of `microctl doctor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorCheck {
    /// Which check, e.g. `trust-store`.
    pub check: String,
    /// The member (or dqlite node address) it is about.
    pub member: String,
    /// `OK`, `REPAIRED`, `PROBLEM` or `SKIPPED` (see [`doctor_status`]).
    pub status: String,
    /// What was found, and what was done or should be done.
    pub detail: String,
}

/// Status strings of [`DoctorCheck`].
pub mod doctor_status {
    /// Consistent.
    pub const OK: &str = "OK";
    /// Drifted, and repaired.
    pub const REPAIRED: &str = "REPAIRED";
    /// Drifted and left as it is (not provably safe to repair, `--check`, or the repair failed).
    pub const PROBLEM: &str = "PROBLEM";
    /// Not checked (a member could not be asked, or is still joining).
    pub const SKIPPED: &str = "SKIPPED";
}

/// `PUT /core/1.0/cluster/{name}/address`, sent to member `name` itself (its control socket):
/// move it to a new address while the rest of the cluster keeps its quorum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetAddressRequest {
    /// The new address, `ip:port` in canonical form.
    pub address: String,
}

/// `PUT /core/internal/cluster/{name}/address`, from the moving member to the leader: record
/// the new address and swap the member's dqlite node for a new one (`node_id`) at that address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveMemberRequest {
    /// The new address, `ip:port` in canonical form.
    pub address: String,
    /// The id of the member's new dqlite node.
    pub node_id: u64,
}

/// A certificate and its private key, as PEM (microcluster's `KeyPair`), and the CA that
/// issued it, if it should be required of members from now on.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    /// The certificate, PEM.
    pub cert: String,
    /// Its private key, PEM.
    pub key: String,
    /// PEM of the CA certificate(s): with the cluster's pair, every member's certificate must
    /// be issued by it from then on, besides being pinned. Empty: no CA.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ca: String,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("cert", &self.cert).field("ca", &self.ca).finish_non_exhaustive()
    }
}

/// `POST /core/1.0/cluster/certificates`: which certificates to replace. Nothing named means
/// every one: the cluster's, every member's own and every extension server's dedicated one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesRotate {
    /// The cluster certificate (what every member's listener presents).
    #[serde(default)]
    pub cluster: bool,
    /// Members whose own certificate to replace.
    #[serde(default)]
    pub members: Vec<String>,
    /// Extension servers whose dedicated certificate to replace, on every member.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Pairs to install instead of new ones, by what they replace: `cluster` or a member's
    /// name (each also counts as named above).
    #[serde(default)]
    pub supplied: BTreeMap<String, KeyPair>,
    /// A CA (PEM) that every member's certificate must be issued by from now on, besides being
    /// pinned; empty: stop requiring one. Every member's certificate (as it will be) must be
    /// issued by it already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// What a rotation replaced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CertificatesRotated {
    /// The new cluster certificate's fingerprint, if it was replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Each member whose own certificate was replaced, with the new fingerprint.
    #[serde(default)]
    pub members: BTreeMap<String, String>,
    /// Each `member/server` whose dedicated certificate was replaced, with the new fingerprint.
    #[serde(default)]
    pub servers: BTreeMap<String, String>,
    /// Members that took no part (unreachable, or they failed a step), with why: each catches up
    /// by itself once it can reach the others again.
    #[serde(default)]
    pub skipped: BTreeMap<String, String>,
    /// Whether members' certificates must now be issued by a CA (set when it changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<bool>,
    /// How long the rotation took, in milliseconds.
    pub duration_ms: u64,
}

/// `POST /core/internal/certificates`: make ready to switch (keep the next pairs, and accept
/// the next cluster certificate besides the current one).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatesPrepare {
    /// The next cluster certificate and key, with the current key's endorsement of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<NextCluster>,
    /// Whether the member replaces its own certificate.
    #[serde(default)]
    pub server: bool,
    /// The pair to replace it with (none: the member makes one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_pair: Option<KeyPair>,
    /// Extension servers whose dedicated certificate the member replaces.
    #[serde(default)]
    pub servers: Vec<String>,
    /// The CA members' certificates must be issued by from now on (empty: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
}

/// The next cluster certificate as passed to every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextCluster {
    /// Certificate and key (and the CA members' certificates must come from, if any).
    pub pair: KeyPair,
    /// The current cluster key's signature of the certificate.
    pub endorsement: crate::tls::Endorsement,
}

/// A member's answer to [`CertificatesPrepare`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CertificatesPrepared {
    /// The certificate it presents now, PEM (what it is known by until the switch, whatever its
    /// row says after a rotation that did not finish).
    #[serde(default)]
    pub current: String,
    /// Its next certificate, PEM, if it replaces its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The next dedicated certificates' fingerprints, by server.
    #[serde(default)]
    pub servers: BTreeMap<String, String>,
}

/// `GET /core/internal/certificates`: what a member that missed a rotation needs to catch up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatesCurrent {
    /// The cluster certificate and key.
    pub cluster: KeyPair,
    /// How the cluster certificate got there: each replacement signed by the key it replaced.
    #[serde(default)]
    pub endorsements: Vec<crate::tls::Endorsement>,
    /// The trusted members, with their certificates.
    pub members: Vec<ClusterMemberLocal>,
    /// The CA members' certificates must be issued by (empty: none).
    #[serde(default)]
    pub ca: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn what_a_go_client_sends_is_understood() {
        // Go's encoding/json writes a nil map as null (microcluster's `NewCluster(.., nil)`).
        let control: Control = serde_json::from_str(
            r#"{"bootstrap":true,"config":null,"join_token":"","address":"10.0.0.1:9000","name":"m1"}"#,
        )
        .unwrap();
        assert!(control.config.is_empty() && control.bootstrap);
        let request: JoinRequest = serde_json::from_value(serde_json::json!({
            "name": "m2", "address": "10.0.0.2:9000", "certificate": "", "secret": "s",
            "schema_internal_version": 1, "schema_external_version": 0, "extensions": null,
        }))
        .unwrap();
        assert!(request.extensions.is_empty());
    }

    #[test]
    fn a_token_that_never_expires_is_written_as_go_writes_it_and_read_back_as_never() {
        let never = TokenRecord { name: "m2".into(), token: "t".into(), expires_at: String::new() };
        let wire = serde_json::to_value(&never).unwrap();
        assert_eq!(wire["expires_at"], NEVER_EXPIRES);
        assert_eq!(serde_json::from_value::<TokenRecord>(wire).unwrap(), never);
        let dated = TokenRecord { expires_at: "2026-12-07T10:00:00Z".into(), ..never.clone() };
        assert_eq!(serde_json::from_value::<TokenRecord>(serde_json::to_value(&dated).unwrap()).unwrap(), dated);
        // Older members wrote an empty string; null is read as never too.
        let old: TokenRecord = serde_json::from_str(r#"{"name":"m2","token":"t","expires_at":""}"#).unwrap();
        assert_eq!(old, never);
        let null: TokenRecord = serde_json::from_str(r#"{"name":"m2","token":"t","expires_at":null}"#).unwrap();
        assert_eq!(null, never);
    }
}
