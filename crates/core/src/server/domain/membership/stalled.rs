//! Joins that stopped making progress, rolled back by the leader.
//!
//! A joiner killed between its admission and its role leaves a PENDING row, trust entries on
//! every member, and maybe a spare node in dqlite's configuration. If it comes back, it carries
//! its join through itself (see `join`); if it never does, the leader undoes what the join
//! left, so that the name and address are free and the same `init` works again.
//!
//! Every heartbeat round on the leader: [`plan`] (pure) judges each PENDING row from what the
//! round read; [`apply`] rolls back those it condemned: the row deleted only if it did not
//! change since the round read it (a re-admission or an answered heartbeat moves its
//! `heartbeat` column), then the spare node removed, then the trust entries everywhere. The
//! doctor judges with the same [`judge`].
//!
//! Progress is the row's `heartbeat` column: set when the joiner is admitted or admitted again
//! (a joiner resuming after a restart), and by every heartbeat it answers. A join is never
//! rolled back while its joiner answers, nor once its node has a role: from there its row
//! records the role, and a member that stops answering is an operator's call.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use dqlite::{NodeInfo, Role};

use super::{distrust_everywhere, retry_config_change};
use crate::api::role;
use crate::server::db::{self, members};
use crate::server::error::Error;
use crate::server::state::State;
use crate::server::state::runtime::Runtime;

/// The shortest time without progress before a join counts as stalled: it covers a joiner's
/// only silent stretch, from its admission to its listener serving (files written and the
/// node started, well under a second on a healthy machine).
const MIN_STALL: Duration = Duration::from_secs(20);
/// Heartbeat rounds a joiner may miss before its join counts as stalled.
const STALL_ROUNDS: u32 = 10;

/// How long a join may go without progress before the leader rolls it back.
pub(crate) fn stall_bound(heartbeat: Duration) -> Duration {
    heartbeat.saturating_mul(STALL_ROUNDS).max(MIN_STALL)
}

/// How long ago a PENDING row last showed progress: its `heartbeat` column, or for a row of
/// older software (which left it at zero) when this member last wrote the joiner's trust
/// entry; the more recent of the two when both are known.
pub(crate) fn quiet_for(heartbeat: &str, trust_age: Option<Duration>, now: SystemTime) -> Option<Duration> {
    let stamped = (heartbeat != db::ZERO_TIME)
        .then(|| humantime::parse_rfc3339_weak(heartbeat).ok())
        .flatten()
        // A stamp in the future (another member's clock ahead) counts as now.
        .map(|t| now.duration_since(t).unwrap_or_default());
    match (stamped, trust_age) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A PENDING row, as the judgement needs it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending<'a> {
    /// Since its last sign of progress (`None`: cannot tell).
    pub(crate) quiet_for: Option<Duration>,
    /// Its node in dqlite's configuration, found by address.
    pub(crate) node: Option<&'a NodeInfo>,
    /// Whether it answered the leader just now.
    pub(crate) answers: bool,
}

/// What to do about a PENDING row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Left alone, for the reason given.
    Wait(&'static str),
    /// Its node has a role: the join is done as far as dqlite goes (the heartbeat records it).
    HasRole,
    /// Stalled: delete the row, remove the node it added (if any), distrust it everywhere.
    RollBack {
        /// The spare node its join added.
        node: Option<u64>,
    },
}

/// Judges one PENDING row against `bound` ([`stall_bound`]).
pub(crate) fn judge(row: &Pending, bound: Duration) -> Verdict {
    match row.node.map(|n| n.role) {
        Some(Some(Role::Voter | Role::StandBy)) => return Verdict::HasRole,
        Some(None) => return Verdict::Wait("dqlite reports a role this software does not know"),
        Some(Some(Role::Spare)) | None => {}
    }
    if row.answers {
        return Verdict::Wait("it answers: its own join finishes or undoes itself");
    }
    match row.quiet_for {
        None => Verdict::Wait("when it last made progress is unknown"),
        Some(quiet) if quiet < bound => Verdict::Wait("still joining"),
        Some(_) => Verdict::RollBack { node: row.node.map(|n| n.id) },
    }
}

/// The rows to roll back, with the node each added: PENDING rows other than `leader`'s that
/// [`judge`] condemns. `answered` holds the addresses that answered the round; `trust_age`
/// says when this member last wrote a member's trust entry.
pub(crate) fn plan<'r>(
    rows: &'r [members::MemberRow],
    nodes: &[NodeInfo],
    answered: &HashSet<String>,
    leader: &str,
    trust_age: impl Fn(&str) -> Option<Duration>,
    now: SystemTime,
    bound: Duration,
) -> Vec<(&'r members::MemberRow, Option<u64>)> {
    rows.iter()
        .filter(|r| r.role == role::PENDING && r.address != leader)
        .filter_map(|r| {
            let pending = Pending {
                quiet_for: quiet_for(&r.heartbeat, trust_age(&r.name), now),
                node: nodes.iter().find(|n| n.address == r.address),
                answers: answered.contains(&r.address),
            };
            match judge(&pending, bound) {
                Verdict::RollBack { node } => Some((r, node)),
                Verdict::Wait(_) | Verdict::HasRole => None,
            }
        })
        .collect()
}

/// The leader's part of a heartbeat round: rolls back the joins that [`plan`] condemns from
/// what the round read. Failures are logged; the next round tries again.
pub(crate) async fn apply(
    state: &State,
    runtime: &Runtime,
    rows: &[members::MemberRow],
    nodes: &[NodeInfo],
    answered: &HashSet<String>,
) {
    let bound = stall_bound(state.settings().heartbeat);
    let store = state.trust();
    // The rows' stamps are in the cluster's time; trust entries' ages by this member's clock.
    let now = state.clock().now();
    let stalled = plan(rows, nodes, answered, &runtime.address, |n| store.age(n), now, bound);
    for (row, node) in stalled {
        match roll_back(state, runtime, row, node).await {
            Ok(true) => tracing::warn!(
                member = row.name,
                address = row.address,
                quiet_secs = bound.as_secs(),
                "rolled back a join that made no progress: its row, node and trust entries are gone, and the \
                 same init works again"
            ),
            Ok(false) => tracing::debug!(member = row.name, "a stalled join moved meanwhile; left alone"),
            Err(err) => {
                tracing::warn!(member = row.name, error = %err, "rolling back a stalled join; retrying next round")
            }
        }
    }
}

/// Rolls back one join; `false` if its row changed since it was read (the joiner is back).
async fn roll_back(
    state: &State,
    runtime: &Runtime,
    row: &members::MemberRow,
    node: Option<u64>,
) -> Result<bool, Error> {
    // The row first, and only as it was read: a joiner that made progress meanwhile keeps it.
    // Without its row nobody admits it again by its certificate, and the heartbeat stops
    // listing it.
    let sql = "DELETE FROM core_cluster_members WHERE name = ? AND role = ? AND heartbeat = ?";
    let params = [row.name.as_str().into(), role::PENDING.into(), row.heartbeat.as_str().into()];
    if runtime.db.exec(sql, &params).await?.rows_affected == 0 {
        return Ok(false);
    }
    if let Some(id) = node {
        let client = runtime.db.client().clone();
        // Still a spare: only then is it the join's own node, which no quorum depends on.
        if client.cluster().await?.iter().any(|n| n.id == id && n.role == Some(Role::Spare)) {
            retry_config_change("removing the node of a stalled join", || client.remove(id)).await?;
        }
    }
    distrust_everywhere(state, runtime, &row.name).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(30);

    fn node(role: Option<Role>) -> NodeInfo {
        NodeInfo { id: 7, address: "10.0.0.7:9000".into(), role }
    }

    #[test]
    fn the_bound_follows_the_heartbeat_with_a_floor() {
        assert_eq!(stall_bound(Duration::from_secs(1)), MIN_STALL);
        assert_eq!(stall_bound(Duration::from_secs(10)), Duration::from_secs(100));
    }

    #[test]
    fn progress_is_the_latest_stamp() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |secs_ago: u64| humantime::format_rfc3339(now - Duration::from_secs(secs_ago)).to_string();
        let ahead = humantime::format_rfc3339(now + Duration::from_secs(5)).to_string();
        let s = Duration::from_secs;
        for (heartbeat, trust_age, expected) in [
            (at(40), None, Some(s(40))),
            (at(40), Some(s(10)), Some(s(10))),
            (at(5), Some(s(10)), Some(s(5))),
            (db::ZERO_TIME.to_owned(), Some(s(60)), Some(s(60))),
            (db::ZERO_TIME.to_owned(), None, None),
            ("garbage".to_owned(), None, None),
            (ahead, None, Some(s(0))),
        ] {
            assert_eq!(quiet_for(&heartbeat, trust_age, now), expected, "{heartbeat} {trust_age:?}");
        }
    }

    #[test]
    fn stalled_joins_are_rolled_back_and_live_ones_left_alone() {
        let (absent, spare, voter, stand_by, unknown) = (
            None,
            Some(node(Some(Role::Spare))),
            Some(node(Some(Role::Voter))),
            Some(node(Some(Role::StandBy))),
            Some(node(None)),
        );
        let (quiet, recent) = (Some(Duration::from_secs(31)), Some(Duration::from_secs(29)));
        let roll_back = |node: Option<u64>| Verdict::RollBack { node };
        let cases: Vec<(Option<NodeInfo>, Option<Duration>, bool, Verdict)> = vec![
            // Never added, or added as a spare, silent past the bound: undone.
            (absent.clone(), quiet, false, roll_back(None)),
            (spare.clone(), quiet, false, roll_back(Some(7))),
            // Silent, but not for long enough.
            (absent.clone(), recent, false, Verdict::Wait("still joining")),
            (spare.clone(), recent, false, Verdict::Wait("still joining")),
            // It answers: alive, whatever the time.
            (absent.clone(), quiet, true, Verdict::Wait("it answers: its own join finishes or undoes itself")),
            (spare.clone(), quiet, true, Verdict::Wait("it answers: its own join finishes or undoes itself")),
            // No telling how long it has been quiet.
            (absent.clone(), None, false, Verdict::Wait("when it last made progress is unknown")),
            // Its node has a role: past what a rollback may undo.
            (voter, quiet, false, Verdict::HasRole),
            (stand_by, quiet, false, Verdict::HasRole),
            (unknown, quiet, false, Verdict::Wait("dqlite reports a role this software does not know")),
        ];
        for (node, quiet_for, answers, expected) in cases {
            let row = Pending { quiet_for, node: node.as_ref(), answers };
            assert_eq!(judge(&row, BOUND), expected, "{row:?}");
        }
    }

    #[test]
    fn the_plan_takes_pending_rows_but_the_leaders() {
        let now = SystemTime::now();
        let old = humantime::format_rfc3339(now - Duration::from_secs(300)).to_string();
        let row = |name: &str, address: &str, role: &str| members::MemberRow {
            name: name.into(),
            address: address.into(),
            certificate: String::new(),
            schema_internal: 0,
            schema_external: 0,
            heartbeat: old.clone(),
            role: role.into(),
            api_extensions: Vec::new(),
        };
        let rows = [
            row("m1", "10.0.0.1:9000", role::VOTER),
            row("gone", "10.0.0.2:9000", role::PENDING),
            row("spare", "10.0.0.7:9000", role::PENDING),
            row("alive", "10.0.0.3:9000", role::PENDING),
            row("leader", "10.0.0.9:9000", role::PENDING),
            row("member", "10.0.0.4:9000", role::SPARE),
        ];
        let nodes = [node(Some(Role::Spare))];
        let answered: HashSet<String> = ["10.0.0.3:9000".to_owned()].into();
        let planned = plan(&rows, &nodes, &answered, "10.0.0.9:9000", |_| None, now, BOUND);
        let planned: Vec<(&str, Option<u64>)> = planned.iter().map(|(r, n)| (r.name.as_str(), *n)).collect();
        assert_eq!(planned, [("gone", None), ("spare", Some(7))]);
        // A trust entry written just now is progress too.
        let planned = plan(&rows, &nodes, &answered, "10.0.0.9:9000", |_| Some(Duration::ZERO), now, BOUND);
        assert!(planned.is_empty());
    }
}
