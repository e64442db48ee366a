//! Quorum-loss recovery, the applying half (the planning half is [`crate::recovery_planning`]).
//!
//! A plan in `STATE/recovery.json` is applied when the member's node starts: the database
//! directory is copied aside, the dropped members leave the trust store, and the node's raft
//! configuration is forced to the survivors before it starts. The member that planned the
//! recovery then hands the plan to the other survivors (`POST /core/internal/recovery`), which
//! restart their node the same way, and once the database answers the dropped members' rows go,
//! before it is marked online.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dqlite::{NodeInfo, Role, Value};

use crate::api::{RecoveryPlan, RecoveryStatus, role};
use crate::recovery_planning::PLAN_FILE;
use crate::server::db::DbStatus;
use crate::server::error::{Error, ErrorKind, OperationError};
use crate::server::state::runtime::Runtime;
use crate::server::state::{NodeToStart, State};

/// Where an applied plan is kept (a record, and so that a restart does not apply it again).
const APPLIED_FILE: &str = "recovery.applied.json";
/// How long the planning member keeps offering the plan to survivors that do not answer yet.
const HANDOUT_PERIOD: Duration = Duration::from_secs(600);
/// Pause between two rounds of offers.
const HANDOUT_RETRY: Duration = Duration::from_secs(1);

fn plan_path(state: &State) -> PathBuf {
    state.state_dir().join(PLAN_FILE)
}

fn read_plan(path: &Path) -> Result<Option<RecoveryPlan>, Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::invalid(format!("{} is not a recovery plan: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::internal(format!("reading {}: {e}", path.display()))),
    }
}

/// Checks that `plan` keeps this member, as the node it is, and is otherwise well formed.
fn check(state: &State, plan: &RecoveryPlan, node_id: u64) -> Result<(), Error> {
    Ok(judge(plan, &state.name(), &state.address(), node_id)?)
}

/// Why a member refuses a recovery plan it was handed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecoveryRefused {
    #[error("the recovery plan {plan} does not keep this member ({name})")]
    NotKept { plan: String, name: String },
    #[error(
        "the recovery plan {plan} names {name} as node {planned_id} at {planned_address}, but this member is node {id} at {address}"
    )]
    OtherNode { plan: String, name: String, planned_id: u64, planned_address: String, id: u64, address: String },
    #[error("the recovery plan {plan} has no voter")]
    NoVoter { plan: String },
    #[error("the recovery plan {plan} gives {name} an invalid address: {source}")]
    Address { plan: String, name: String, source: crate::validate::InvalidInput },
    #[error("the recovery plan {plan} lists {name} twice")]
    Twice { plan: String, name: String },
    #[error("the recovery plan gives {name} the role {role:?}")]
    Role { name: String, role: String },
    #[error("{sender} is not a survivor of recovery {plan}")]
    NotSurvivor { sender: String, plan: String },
    #[error("this member's cluster has a leader and its database is online: it has not lost its quorum")]
    NotLost,
}

impl OperationError for RecoveryRefused {
    fn kind(&self) -> ErrorKind {
        match self {
            RecoveryRefused::NotSurvivor { .. } => ErrorKind::Forbidden,
            RecoveryRefused::NotLost => ErrorKind::Conflict,
            _ => ErrorKind::Invalid,
        }
    }
}

/// Whether `plan` can be applied by the member `name` at `address`, node `node_id`: it keeps
/// this member as it is, has a voter, lists nobody twice, gives only the roles a recovery may
/// give, and every address is one.
fn judge(plan: &RecoveryPlan, name: &str, address: &str, node_id: u64) -> Result<(), RecoveryRefused> {
    let id = || plan.id.clone();
    let me = plan
        .members
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| RecoveryRefused::NotKept { plan: id(), name: name.to_owned() })?;
    if me.id != node_id || me.address != address {
        return Err(RecoveryRefused::OtherNode {
            plan: id(),
            name: me.name.clone(),
            planned_id: me.id,
            planned_address: me.address.clone(),
            id: node_id,
            address: address.to_owned(),
        });
    }
    if !plan.members.iter().any(|m| m.role == role::VOTER) {
        return Err(RecoveryRefused::NoVoter { plan: id() });
    }
    for (i, m) in plan.members.iter().enumerate() {
        crate::validate::member_address(&m.address).map_err(|source| RecoveryRefused::Address {
            plan: id(),
            name: m.name.clone(),
            source,
        })?;
        if plan.members[..i].iter().any(|o| o.id == m.id || o.address == m.address || o.name == m.name) {
            return Err(RecoveryRefused::Twice { plan: id(), name: m.name.clone() });
        }
        if m.role != role::VOTER && m.role != role::STAND_BY {
            return Err(RecoveryRefused::Role { name: m.name.clone(), role: m.role.clone() });
        }
    }
    Ok(())
}

/// The plan waiting in the state directory, if any (checked against this member).
pub(crate) fn pending(state: &State, node_id: u64) -> Result<Option<RecoveryPlan>, Error> {
    let Some(plan) = read_plan(&plan_path(state))? else { return Ok(None) };
    check(state, &plan, node_id)?;
    Ok(Some(plan))
}

/// Readies the member for the plan: copies the database directory aside (once per plan) and
/// drops the removed members from the trust store. Returns the configuration to force.
pub(crate) fn prepare(state: &State, plan: &RecoveryPlan) -> Result<Vec<NodeInfo>, Error> {
    let database = state.dir().database_dir();
    let copy = state.state_dir().join(format!("database.before-recovery-{}", plan.id));
    if !copy.exists() {
        copy_dir(&database, &copy)
            .map_err(|e| Error::internal(format!("copying {} to {}: {e}", database.display(), copy.display())))?;
    }
    for name in &plan.removed {
        if let Err(err) = state.trust().remove(name) {
            tracing::warn!(member = %name, error = %err, "removing a dropped member from the trust store");
        }
    }
    tracing::warn!(
        plan = %plan.id,
        survivors = ?plan.members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
        removed = ?plan.removed,
        "recovering from quorum loss: forcing the raft configuration"
    );
    Ok(plan
        .members
        .iter()
        .map(|m| NodeInfo {
            id: m.id,
            address: m.address.clone(),
            role: Some(if m.role == role::VOTER { Role::Voter } else { Role::StandBy }),
        })
        .collect())
}

/// Copies the files of `from` into a new directory `to`, durably. The copy is made in a
/// hidden directory and renamed when whole: it is made once per plan, so a copy cut short by a
/// crash would otherwise pass for the whole one.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let name = to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = to.with_file_name(format!(".{name}.partial"));
    match std::fs::remove_dir_all(&partial) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::DirBuilder::new().mode(0o700).create(&partial)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            let copy = partial.join(entry.file_name());
            std::fs::copy(entry.path(), &copy)?;
            std::fs::File::open(&copy)?.sync_all()?;
        }
    }
    crate::state_dir::sync_dir(&partial).map_err(std::io::Error::other)?;
    crate::state_dir::rename_durable(&partial, to).map_err(std::io::Error::other)
}

/// Records that the node started with the plan's configuration.
pub(crate) fn applied(state: &State, plan: &RecoveryPlan) {
    let from = plan_path(state);
    let to = state.state_dir().join(APPLIED_FILE);
    // Durably: a plan whose move is lost in a power cut would be forced on the node again.
    if let Err(err) = crate::state_dir::rename_durable(&from, &to) {
        tracing::warn!(plan = %plan.id, error = %err, "moving {} to {}", from.display(), to.display());
    }
}

/// After the node started with `plan`: the planning member hands it to the other survivors.
pub(crate) fn hand_out_later(state: &State, runtime: &Runtime, plan: RecoveryPlan) {
    if plan.initiator != state.name() {
        return;
    }
    let state = state.clone();
    runtime.adopt(tokio::spawn(async move { hand_out(&state, &plan).await }));
}

async fn hand_out(state: &State, plan: &RecoveryPlan) {
    let mut waiting: Vec<_> = plan.members.iter().filter(|m| m.name != state.name()).collect();
    let until = Instant::now() + HANDOUT_PERIOD;
    while !waiting.is_empty() && Instant::now() < until {
        let mut still = Vec::new();
        for member in waiting {
            let sent = match state.member_client(&member.address) {
                Ok(client) => {
                    client.with_timeout(Duration::from_secs(5)).send_recovery(plan).await.map_err(|e| e.to_string())
                }
                Err(err) => Err(err.to_string()),
            };
            match sent {
                Ok(()) => tracing::info!(member = %member.name, plan = %plan.id, "handed the recovery plan over"),
                Err(err) => {
                    tracing::debug!(member = %member.name, error = %err, "survivor not ready for the recovery plan yet");
                    still.push(member);
                }
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(HANDOUT_RETRY).await;
        }
    }
    for member in waiting {
        tracing::error!(
            member = %member.name,
            plan = %plan.id,
            "gave up handing over the recovery plan; copy {PLAN_FILE} into its state directory and start it"
        );
    }
}

/// Deletes the removed members' rows, once the database answers and before it is marked
/// online (so nobody sees the dropped members listed). Idempotent: every survivor does it.
pub(crate) async fn forget_removed(state: &State, runtime: &Runtime, plan: &RecoveryPlan) -> Result<(), Error> {
    if plan.removed.is_empty() {
        return Ok(());
    }
    let marks = vec!["?"; plan.removed.len()].join(", ");
    let names: Vec<Value> = plan.removed.iter().map(|n| Value::Text(n.clone())).collect();
    let sql = format!("DELETE FROM core_cluster_members WHERE name IN ({marks})");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        match runtime.db.exec(&sql, &names).await {
            Ok(_) => {
                tracing::info!(removed = ?plan.removed, "dropped members removed from the database");
                return Ok(());
            }
            Err(err) if Instant::now() < until && !state.is_shutting_down() => {
                tracing::debug!(error = %err, "removing dropped members; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => return Err(Error::from(err).context("removing the dropped members' rows")),
        }
    }
}

/// `GET /core/internal/recovery`: this member's log position and the leader its node sees.
pub(crate) async fn status(state: &State) -> Result<RecoveryStatus, Error> {
    let runtime = state.runtime()?;
    let dir = state.dir().database_dir();
    // The node appends while this reads: a batch half written is simply not counted.
    let log = tokio::task::spawn_blocking(move || crate::raftlog::read(&dir))
        .await
        .map_err(Error::wrap)?
        .map_err(|e| Error::internal(format!("reading the raft log: {e}")))?;
    Ok(RecoveryStatus {
        name: state.name(),
        address: state.address(),
        id: runtime.node_id,
        last_index: log.last_index,
        last_term: log.last_term,
        leader: runtime.db.leader().unwrap_or_default(),
        database: state.database_status_text(),
    })
}

/// `POST /core/internal/recovery`: a survivor was handed the plan. Stores it and restarts the
/// node with it; answers before the restart. `sender` names the member that sent it (none
/// over the control socket).
pub(crate) async fn receive(state: &State, sender: Option<&str>, plan: RecoveryPlan) -> Result<(), Error> {
    let runtime = state.runtime()?;
    if let Some(sender) = sender
        && !plan.members.iter().any(|m| m.name == sender)
    {
        return Err(RecoveryRefused::NotSurvivor { sender: sender.to_owned(), plan: plan.id.clone() }.into());
    }
    check(state, &plan, runtime.node_id)?;
    if read_plan(&state.state_dir().join(APPLIED_FILE))?.is_some_and(|p| p.id == plan.id) {
        return Ok(());
    }
    if state.database_status() == DbStatus::Online && runtime.db.leader().is_some() {
        return Err(RecoveryRefused::NotLost.into());
    }
    let text = serde_json::to_vec_pretty(&plan).map_err(Error::wrap)?;
    crate::state_dir::write_atomic(&plan_path(state), &text, 0o600)
        .map_err(|e| Error::internal(format!("storing the recovery plan: {e}")))?;
    tracing::warn!(plan = %plan.id, from = sender.unwrap_or("the control socket"), "received a recovery plan; restarting the node with it");
    // Let this answer reach the sender before the listener it travels on stops (a sender that
    // misses it asks again, and a plan already applied is acknowledged).
    state.restart("a recovery plan arrived", NodeToStart::Id(runtime.node_id), Duration::from_millis(200));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RecoveryMember;

    fn member(name: &str, address: &str, id: u64, role: &str) -> RecoveryMember {
        RecoveryMember { name: name.into(), address: address.into(), id, role: role.into() }
    }

    fn plan(members: Vec<RecoveryMember>) -> RecoveryPlan {
        RecoveryPlan {
            id: "r1".into(),
            initiator: "m1".into(),
            created: String::new(),
            members,
            removed: vec!["m3".into()],
        }
    }

    #[test]
    fn a_received_plan_is_applied_only_if_it_keeps_this_member_and_makes_sense() {
        let m1 = || member("m1", "10.0.0.1:7000", 1, role::VOTER);
        let m2 = || member("m2", "10.0.0.2:7000", 2, role::STAND_BY);
        let cases: Vec<(&str, RecoveryPlan, Option<&str>)> = vec![
            ("a good plan", plan(vec![m1(), m2()]), None),
            (
                "without this member",
                plan(vec![member("m2", "10.0.0.2:7000", 2, role::VOTER)]),
                Some("the recovery plan r1 does not keep this member (m1)"),
            ),
            (
                "this member under another node id",
                plan(vec![member("m1", "10.0.0.1:7000", 9, role::VOTER)]),
                Some(
                    "the recovery plan r1 names m1 as node 9 at 10.0.0.1:7000, but this member is node 1 at 10.0.0.1:7000",
                ),
            ),
            (
                "this member at another address",
                plan(vec![member("m1", "10.0.0.9:7000", 1, role::VOTER)]),
                Some(
                    "the recovery plan r1 names m1 as node 1 at 10.0.0.9:7000, but this member is node 1 at 10.0.0.1:7000",
                ),
            ),
            (
                "no voter",
                plan(vec![member("m1", "10.0.0.1:7000", 1, role::STAND_BY)]),
                Some("the recovery plan r1 has no voter"),
            ),
            (
                "a member twice",
                plan(vec![m1(), m2(), member("m4", "10.0.0.2:7000", 4, role::VOTER)]),
                Some("the recovery plan r1 lists m4 twice"),
            ),
            (
                "a spare",
                plan(vec![m1(), member("m2", "10.0.0.2:7000", 2, role::SPARE)]),
                Some("the recovery plan gives m2 the role \"spare\""),
            ),
        ];
        for (what, plan, want) in cases {
            let got = judge(&plan, "m1", "10.0.0.1:7000", 1).map_err(Error::from);
            assert_eq!(got.as_ref().err().map(Error::message), want, "{what}");
            assert!(got.err().is_none_or(|e| e.kind() == ErrorKind::Invalid), "{what}");
        }
        let bad_address = plan(vec![m1(), member("m2", "not an address", 2, role::VOTER)]);
        assert!(
            matches!(judge(&bad_address, "m1", "10.0.0.1:7000", 1), Err(RecoveryRefused::Address { ref name, .. }) if name == "m2")
        );
    }
}
