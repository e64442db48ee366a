//! Removing a member, from any member (forwarded to the leader), including the member itself.
//!
//! On the leader: PreRemove on the member leaving, delete its row, remove its dqlite node,
//! stop trusting it everywhere, tell it to reset, then PostRemove on the members left. If the
//! leader itself is leaving, it first hands leadership to another voter and forwards there.

use std::time::Duration;

use super::{fan_out, role_name};
use crate::api::{RemoveHookRequest, role};
use crate::client::ClientError;
use crate::server::db::members;
use crate::server::error::{Error, ErrorKind};
use crate::server::state::State;

pub(super) fn from_client(what: &str, err: ClientError) -> Error {
    match err {
        ClientError::Api { status, message } => Error::new(ErrorKind::Peer(status.as_u16()), message),
        other => Error::unavailable(format!("{what}: {other}")),
    }
}

/// Removes member `name`; with `force`, failures to reach it are tolerated.
pub(crate) async fn remove(state: &State, name: &str, force: bool) -> Result<(), Error> {
    let runtime = state.db()?;
    let client = runtime.db.client().clone();
    let leader = client.leader().await?;
    if leader.address != runtime.address {
        return state
            .member_client(&leader.address)?
            .with_timeout(Duration::from_secs(120))
            .remove_member(name, force)
            .await
            .map_err(|e| from_client("forwarding the removal to the leader", e));
    }

    let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await?;
    let trusted = state.0.truststore.snapshot();
    let address = match (rows.iter().find(|m| m.name == name), trusted.by_name(name)) {
        (Some(row), _) => row.address.clone(),
        (None, Some(entry)) => entry.member.address.clone(),
        (None, None) => {
            return Err(Error::not_found(format!("no cluster member named {name:?}")));
        }
    };
    let nodes = client.cluster().await?;
    let node = nodes.iter().find(|n| n.address == address).cloned();
    let others = rows.iter().filter(|m| m.name != name).count();
    if others == 0 {
        return Err(Error::conflict(format!("{name:?} is the last member; a cluster cannot remove its last member")));
    }
    let voters = nodes.iter().filter(|n| n.role == Some(dqlite::Role::Voter)).count();
    let role_now = node.as_ref().map_or(role::PENDING, |n| role_name(n.role));
    // A forced removal of a joiner is how a failed join undoes itself, whatever the voters.
    if role_now == role::PENDING && voters < 2 && !force {
        return Err(Error::conflict(format!(
            "{name:?} is still joining (PENDING) and the cluster has fewer than 2 voters; wait for the join to finish"
        )));
    }

    if address == runtime.address {
        // The leader is leaving: hand over first, then let the new leader do the removal.
        let target = nodes
            .iter()
            .find(|n| n.role == Some(dqlite::Role::Voter) && n.address != runtime.address)
            .ok_or_else(|| Error::conflict("no other voter can take over leadership; add or promote a member first"))?;
        client.transfer(target.id).await?;
        tracing::info!(to = target.address, "transferred leadership before removing this member");
        return state
            .member_client(&target.address)?
            .with_timeout(Duration::from_secs(120))
            .remove_member(name, force)
            .await
            .map_err(|e| from_client("forwarding the removal to the new leader", e));
    }

    let body = RemoveHookRequest { force };
    // A forced removal is for members that are gone: do not wait long for them.
    let victim_timeout = Duration::from_secs(if force { 5 } else { 30 });
    let target = state.member_client(&address)?.with_timeout(victim_timeout);
    if let Err(err) = target.run_hook("pre-remove", &body).await {
        if !force {
            return Err(from_client(&format!("the PreRemove hook on {name}"), err)
                .context("removal refused (use --force if the member is gone for good)"));
        }
        tracing::warn!(member = name, error = %err, "PreRemove failed; continuing because of --force");
    }

    let victim = name.to_owned();
    runtime
        .db
        .transaction(move |tx| {
            let victim = victim.clone();
            Box::pin(async move { members::delete(tx, &victim).await.map(drop) })
        })
        .await?;
    if let Some(node) = node
        && let Err(err) = super::retry_config_change("removing the dqlite node", || client.remove(node.id)).await
    {
        if !force {
            return Err(err);
        }
        tracing::warn!(member = name, error = %err, "removing the dqlite node failed; continuing because of --force");
    }

    super::distrust_everywhere(state, &runtime, name).await?;
    let remaining = state.peer_clients()?;

    // The member itself (still trusting us) resets to an uninitialised daemon.
    if let Err(err) = target.reset_member(name, force).await {
        tracing::warn!(member = name, error = %err, "could not reset the removed member; it must be reset by hand");
    }

    let hooks = state.0.settings.hooks.clone();
    if let Err(err) = hooks.post_remove(state, force).await {
        tracing::warn!(error = %err, "the PostRemove hook failed");
    }
    for (member, err) in fan_out(remaining, |c| {
        let body = body.clone();
        async move { c.run_hook("post-remove", &body).await }
    })
    .await
    {
        tracing::warn!(member, error = %err, "the PostRemove hook failed on a member");
    }
    tracing::info!(member = name, force, "removed a member");
    Ok(())
}
