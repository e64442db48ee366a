//! Removing a member, from any member (forwarded to the leader), including the member itself.
//!
//! On the leader, gather → plan → run: [`plan`] decides from what the leader sees (the
//! members' rows, its trust store, dqlite's configuration) whether the removal is refused, is
//! handed to another voter (the leader itself is leaving), or goes ahead; [`steps`] says in
//! which order the removal's steps run and what a failure of each does: PreRemove on the
//! member leaving, delete its row, remove its dqlite node, stop trusting it everywhere, tell it
//! to reset, then PostRemove on the members left.

use std::time::Duration;

use super::role_name;
use crate::api::{RemoveHookRequest, role};
use crate::client::ClientError;
use crate::server::db::members;
use crate::server::error::{Error, ErrorKind, OperationError};
use crate::server::state::State;

pub(super) fn from_client(what: &str, err: ClientError) -> Error {
    match err {
        ClientError::Api { status, message } => Error::new(ErrorKind::Peer(status.as_u16()), message),
        other => Error::unavailable(format!("{what}: {other}")),
    }
}

/// What the leader sees of the cluster when asked to remove a member.
#[derive(Debug, Clone)]
struct Seen {
    /// The leader's own address.
    leader: String,
    /// `core_cluster_members`: (name, address) of each row.
    rows: Vec<(String, String)>,
    /// The address the leader's trust store has for the member, if any.
    trusted: Option<String>,
    /// dqlite's configuration.
    nodes: Vec<dqlite::NodeInfo>,
}

/// What a removal comes to.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    /// Refused before anything changed.
    Refuse(RemoveRefused),
    /// The leader itself is leaving: leadership goes to this voter, which does the removal.
    HandOver(dqlite::NodeInfo),
    /// Removed here: the member at `address`, and its dqlite node if it has one.
    Remove { address: String, node: Option<u64> },
}

/// Why the leader refuses to remove a member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RemoveRefused {
    #[error("no cluster member named {0:?}")]
    NoSuchMember(String),
    #[error("{0:?} is the last member; a cluster cannot remove its last member")]
    LastMember(String),
    #[error("{0:?} is still joining (PENDING) and the cluster has fewer than 2 voters; wait for the join to finish")]
    StillJoining(String),
    #[error("no other voter can take over leadership; add or promote a member first")]
    NoOtherVoter,
}

impl OperationError for RemoveRefused {
    fn kind(&self) -> ErrorKind {
        match self {
            RemoveRefused::NoSuchMember(_) => ErrorKind::NotFound,
            RemoveRefused::LastMember(_) | RemoveRefused::StillJoining(_) | RemoveRefused::NoOtherVoter => {
                ErrorKind::Conflict
            }
        }
    }
}

/// Decides a removal of `name` (`force`: the member is gone for good) from what the leader
/// sees.
fn plan(seen: &Seen, name: &str, force: bool) -> Plan {
    let address = match (seen.rows.iter().find(|(n, _)| n == name), &seen.trusted) {
        (Some((_, address)), _) | (None, Some(address)) => address.clone(),
        (None, None) => return Plan::Refuse(RemoveRefused::NoSuchMember(name.to_owned())),
    };
    if !seen.rows.iter().any(|(n, _)| n != name) {
        return Plan::Refuse(RemoveRefused::LastMember(name.to_owned()));
    }
    let node = seen.nodes.iter().find(|n| n.address == address);
    let voters = seen.nodes.iter().filter(|n| n.role == Some(dqlite::Role::Voter)).count();
    let role_now = node.map_or(role::PENDING, |n| role_name(n.role));
    // A forced removal of a joiner is how a failed join undoes itself, whatever the voters.
    if role_now == role::PENDING && voters < 2 && !force {
        return Plan::Refuse(RemoveRefused::StillJoining(name.to_owned()));
    }
    if address == seen.leader {
        return match seen.nodes.iter().find(|n| n.role == Some(dqlite::Role::Voter) && n.address != seen.leader) {
            Some(target) => Plan::HandOver(target.clone()),
            None => Plan::Refuse(RemoveRefused::NoOtherVoter),
        };
    }
    Plan::Remove { address, node: node.map(|n| n.id) }
}

/// One step of a removal, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The PreRemove hook on the member leaving.
    PreRemove,
    /// Its row in `core_cluster_members`.
    DeleteRow,
    /// Its dqlite node.
    RemoveNode,
    /// Every trust store, this one first.
    Distrust,
    /// The member itself goes back to an uninitialised daemon.
    ResetMember,
    /// The PostRemove hook here and on every member left.
    PostRemove,
}

/// What a failed step does to the removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnFailure {
    /// The removal stops with the step's error.
    Stop,
    /// Logged; the removal goes on.
    Warn,
    /// The removal goes on and is done, then the step's error is returned (the caller learns
    /// that, say, an application hook failed, with nothing left to undo).
    Report,
}

/// The steps of a removal and what a failure of each does. Without `force`, the removal stops
/// at a failure until the member is out of the trust stores; with it (the member is gone for
/// good), only a failure to change the database or the trust stores stops it.
fn steps(force: bool) -> [(Step, OnFailure); 6] {
    let unless_forced = if force { OnFailure::Warn } else { OnFailure::Stop };
    [
        (Step::PreRemove, unless_forced),
        (Step::DeleteRow, OnFailure::Stop),
        (Step::RemoveNode, unless_forced),
        (Step::Distrust, OnFailure::Stop),
        (Step::ResetMember, OnFailure::Warn),
        (Step::PostRemove, OnFailure::Report),
    ]
}

/// Removes member `name`; with `force`, failures to reach it are tolerated.
pub(crate) async fn remove(state: &State, name: &str, force: bool) -> Result<(), Error> {
    let runtime = state.online_runtime()?;
    let client = runtime.db.client().clone();
    let leader = client.leader().await?;
    if leader.address != runtime.address {
        return forward(state, &leader.address, name, force, "forwarding the removal to the leader").await;
    }
    let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await?;
    let seen = Seen {
        leader: runtime.address.clone(),
        rows: rows.into_iter().map(|r| (r.name, r.address)).collect(),
        trusted: state.trust().snapshot().by_name(name).map(|e| e.member.address.clone()),
        nodes: client.cluster().await?,
    };
    let (address, node) = match plan(&seen, name, force) {
        Plan::Refuse(refused) => return Err(refused.into()),
        Plan::HandOver(target) => {
            client.transfer(target.id).await?;
            tracing::info!(to = target.address, "transferred leadership before removing this member");
            return forward(state, &target.address, name, force, "forwarding the removal to the new leader").await;
        }
        Plan::Remove { address, node } => (address, node),
    };

    let body = RemoveHookRequest { force };
    // A forced removal is for members that are gone: do not wait long for them.
    let victim_timeout = Duration::from_secs(if force { 5 } else { 30 });
    let target = state.member_client(&address)?.with_timeout(victim_timeout);
    let mut reported = None;
    for (step, on_failure) in steps(force) {
        let outcome = match step {
            Step::PreRemove => target.run_hook("pre-remove", &body).await.map_err(|err| {
                from_client(&format!("the PreRemove hook on {name}"), err)
                    .context("removal refused (use --force if the member is gone for good)")
            }),
            Step::DeleteRow => {
                let victim = name.to_owned();
                runtime
                    .db
                    .transaction(move |tx| {
                        let victim = victim.clone();
                        Box::pin(async move { members::delete(tx, &victim).await.map(drop) })
                    })
                    .await
                    .map_err(Error::from)
            }
            Step::RemoveNode => match node {
                Some(id) => super::retry_config_change("removing the dqlite node", || client.remove(id)).await,
                None => Ok(()),
            },
            Step::Distrust => super::distrust_everywhere(state, &runtime, name).await,
            Step::ResetMember => target
                .reset_member(name, force)
                .await
                .map_err(|err| from_client("could not reset the removed member; it must be reset by hand", err)),
            Step::PostRemove => post_remove(state, &body).await,
        };
        match (outcome, on_failure) {
            (Ok(()), _) => {}
            (Err(err), OnFailure::Stop) => return Err(err),
            (Err(err), OnFailure::Warn) => {
                tracing::warn!(member = name, ?step, error = %err, "a removal step failed; going on")
            }
            (Err(err), OnFailure::Report) => reported = reported.or(Some(err)),
        }
    }
    tracing::info!(member = name, force, "removed a member");
    match reported {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Asks the member at `address` (the leader) to do the removal.
async fn forward(state: &State, address: &str, name: &str, force: bool, what: &str) -> Result<(), Error> {
    state
        .member_client(address)?
        .with_timeout(Duration::from_secs(120))
        .remove_member(name, force)
        .await
        .map_err(|e| from_client(what, e))
}

/// PostRemove here, then on every member left; a failure (here first, then the others') is
/// returned after all ran. The member stays removed: the removal is done by then.
async fn post_remove(state: &State, body: &RemoveHookRequest) -> Result<(), Error> {
    let remaining = state.peer_clients()?;
    let hooks = state.settings().hooks.clone();
    let here = hooks.post_remove(state, body.force).await.map_err(|err| super::hook_failed("PostRemove", err));
    let there = super::hook_on_members(remaining, "post-remove", body).await;
    here.and(there).map_err(|e| e.context("the member was removed, but"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, address: &str, role: Option<dqlite::Role>) -> dqlite::NodeInfo {
        dqlite::NodeInfo { id, address: address.into(), role }
    }

    fn three_voters() -> Seen {
        Seen {
            leader: "a:1".into(),
            rows: vec![("a".into(), "a:1".into()), ("b".into(), "b:1".into()), ("c".into(), "c:1".into())],
            trusted: None,
            nodes: vec![
                node(1, "a:1", Some(dqlite::Role::Voter)),
                node(2, "b:1", Some(dqlite::Role::Voter)),
                node(3, "c:1", Some(dqlite::Role::Voter)),
            ],
        }
    }

    #[test]
    fn each_removal_is_planned_from_what_the_leader_sees() {
        let refuse = Plan::Refuse;
        let alone = Seen {
            rows: vec![("a".into(), "a:1".into())],
            nodes: vec![node(1, "a:1", Some(dqlite::Role::Voter))],
            ..three_voters()
        };
        let joining = Seen {
            rows: vec![("a".into(), "a:1".into()), ("j".into(), "j:1".into())],
            nodes: vec![node(1, "a:1", Some(dqlite::Role::Voter))],
            ..three_voters()
        };
        let trusted_only = Seen { trusted: Some("t:1".into()), ..three_voters() };
        let only_leader_votes = Seen {
            nodes: vec![
                node(1, "a:1", Some(dqlite::Role::Voter)),
                node(2, "b:1", Some(dqlite::Role::StandBy)),
                node(3, "c:1", Some(dqlite::Role::Spare)),
            ],
            ..three_voters()
        };
        let cases: Vec<(&str, Seen, &str, bool, Plan)> = vec![
            ("a follower", three_voters(), "b", false, Plan::Remove { address: "b:1".into(), node: Some(2) }),
            ("nobody by that name", three_voters(), "x", false, refuse(RemoveRefused::NoSuchMember("x".into()))),
            (
                "a member only the trust store knows",
                trusted_only,
                "t",
                false,
                Plan::Remove { address: "t:1".into(), node: None },
            ),
            ("the last member", alone.clone(), "a", false, refuse(RemoveRefused::LastMember("a".into()))),
            ("the last member, forced", alone, "a", true, refuse(RemoveRefused::LastMember("a".into()))),
            ("a joiner with one voter", joining.clone(), "j", false, refuse(RemoveRefused::StillJoining("j".into()))),
            (
                "a joiner with one voter, forced (a failed join undone)",
                joining,
                "j",
                true,
                Plan::Remove { address: "j:1".into(), node: None },
            ),
            ("the leader", three_voters(), "a", false, Plan::HandOver(node(2, "b:1", Some(dqlite::Role::Voter)))),
            ("the leader, the only voter", only_leader_votes, "a", false, refuse(RemoveRefused::NoOtherVoter)),
        ];
        for (what, seen, name, force, want) in cases {
            assert_eq!(plan(&seen, name, force), want, "{what}");
        }
    }

    #[test]
    fn a_refused_removal_says_why_and_what_to_do() {
        let cases = [
            (RemoveRefused::NoSuchMember("x".into()), ErrorKind::NotFound, "no cluster member named \"x\""),
            (
                RemoveRefused::LastMember("a".into()),
                ErrorKind::Conflict,
                "\"a\" is the last member; a cluster cannot remove its last member",
            ),
            (
                RemoveRefused::StillJoining("j".into()),
                ErrorKind::Conflict,
                "\"j\" is still joining (PENDING) and the cluster has fewer than 2 voters; wait for the join to finish",
            ),
            (
                RemoveRefused::NoOtherVoter,
                ErrorKind::Conflict,
                "no other voter can take over leadership; add or promote a member first",
            ),
        ];
        for (refused, kind, message) in cases {
            let err = Error::from(refused);
            assert_eq!((err.kind(), err.message()), (kind, message));
        }
    }

    #[test]
    fn a_failed_step_stops_the_removal_unless_forced_until_the_member_is_distrusted() {
        use OnFailure::{Report, Stop, Warn};
        let order =
            [Step::PreRemove, Step::DeleteRow, Step::RemoveNode, Step::Distrust, Step::ResetMember, Step::PostRemove];
        let cases = [(false, [Stop, Stop, Stop, Stop, Warn, Report]), (true, [Warn, Stop, Warn, Stop, Warn, Report])];
        for (force, policy) in cases {
            let steps = steps(force);
            assert_eq!(steps.map(|(s, _)| s), order, "the order, force={force}");
            assert_eq!(steps.map(|(_, p)| p), policy, "the policy, force={force}");
        }
    }
}
