//! Leaving gracefully: before a voter or stand-by stops, another online member takes its role
//! (and, for the leader, leadership), so a planned stop costs writers a few milliseconds instead
//! of an election. Every step has a short deadline: when quorum is already gone (every member
//! stopping at once), the handover gives up quickly and the member just stops.

use std::time::Duration;

use dqlite::Role;

use super::Error;
use crate::server::state::State;

/// Deadline of each dqlite request during handover.
const STEP: Duration = Duration::from_millis(1500);
/// Deadline of the whole handover.
const TOTAL: Duration = Duration::from_secs(5);

async fn step<T>(what: &str, f: impl std::future::Future<Output = dqlite::Result<T>>) -> Result<T, Error> {
    match tokio::time::timeout(STEP, f).await {
        Ok(result) => result.map_err(|e| Error::from(e).context(what)),
        Err(_) => Err(Error::unavailable(format!("{what}: no answer within {STEP:?}"))),
    }
}

/// Hands this member's role (and leadership) over, if it has any; bounded in time.
pub(crate) async fn handover(state: &State) {
    if let Err(err) = step_down(state).await {
        tracing::warn!(error = %err, "handover skipped or incomplete; stopping anyway");
    }
}

/// [`handover`], failing if it could not be completed in time (before changing the address).
pub(crate) async fn step_down(state: &State) -> Result<(), Error> {
    match tokio::time::timeout(TOTAL, steps(state)).await {
        Ok(result) => result,
        Err(_) => Err(Error::unavailable(format!("the handover took longer than {TOTAL:?}"))),
    }
}

/// The nodes whose members answer right now (all asked at once, briefly).
pub(super) async fn answering(
    state: &State,
    nodes: impl IntoIterator<Item = dqlite::NodeInfo>,
) -> Result<Vec<dqlite::NodeInfo>, Error> {
    let mut probes = tokio::task::JoinSet::new();
    for node in nodes {
        let member = state.member_client(&node.address)?.with_timeout(Duration::from_millis(500));
        probes.spawn(async move { member.ready().await.is_ok().then_some(node) });
    }
    let mut online = Vec::new();
    while let Some(joined) = probes.join_next().await {
        if let Ok(Some(node)) = joined {
            online.push(node);
        }
    }
    Ok(online)
}

async fn steps(state: &State) -> Result<(), Error> {
    let runtime = state.online_runtime()?;
    let client = runtime.db.client().clone();
    let nodes = step("reading the dqlite configuration", client.cluster()).await?;
    let Some(me) = nodes.iter().find(|n| n.address == runtime.address).cloned() else {
        return Ok(());
    };
    let Some(role) = me.role.filter(|r| *r != Role::Spare) else {
        return Ok(());
    };
    // Leadership first: it is what writers wait for.
    let leader = step("finding the leader", client.leader()).await?;
    if leader.address == runtime.address {
        let target = nodes
            .iter()
            .find(|n| n.role == Some(Role::Voter) && n.address != runtime.address)
            .ok_or_else(|| Error::conflict("no other voter can take over leadership"))?;
        step("transferring leadership", client.transfer(target.id)).await?;
        tracing::info!(to = target.address, "transferred leadership before stopping");
    }
    // Then the role: to a member that answers right now.
    let online = answering(state, nodes.iter().filter(|n| n.address != runtime.address).cloned()).await?;
    let lower = |r: Option<Role>| match role {
        Role::Voter => r == Some(Role::StandBy) || r == Some(Role::Spare),
        _ => r == Some(Role::Spare),
    };
    // Stand-bys replicate already, so they are the quickest voters; then spares.
    let candidate = online
        .iter()
        .filter(|n| lower(n.role))
        .min_by_key(|n| (n.role != Some(Role::StandBy), n.address.clone()))
        .cloned();
    if let Some(candidate) = &candidate {
        step("promoting a replacement", client.assign(candidate.id, role)).await?;
        tracing::info!(member = candidate.address, %role, "handed this member's role over");
        step("demoting this member", client.assign(me.id, Role::Spare)).await?;
    }
    Ok(())
}
