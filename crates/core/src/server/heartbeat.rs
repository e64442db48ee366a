//! The heartbeat: every interval the dqlite leader probes every member, records who answered
//! and the roles dqlite reports (replacing PENDING), and prunes expired tokens.

use std::collections::HashMap;
use std::time::Duration;

use super::db::{members, now, tokens};
use super::membership::role_name;
use super::rest::ShutdownSignal;
use super::state::State;

/// Runs heartbeat rounds until `stop` fires.
pub(crate) async fn run(state: State, mut stop: ShutdownSignal) {
    let interval = state.0.settings.heartbeat;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.fired() => return,
        }
        if let Err(err) = round(&state).await {
            tracing::debug!(error = %err, "heartbeat round skipped");
        }
    }
}

/// One round, if this member is the leader.
pub(crate) async fn round(state: &State) -> Result<(), super::rest::ApiError> {
    let runtime = state.db()?;
    let client = runtime.db.client().clone();
    if client.leader().await?.address != runtime.address {
        return Ok(());
    }
    let nodes = client.cluster().await?;
    let roles: HashMap<String, Option<dqlite::Role>> =
        nodes.into_iter().map(|n| (n.address, n.role)).collect();
    let rows = runtime
        .db
        .transaction(|tx| Box::pin(members::list(tx)))
        .await?;
    let probe_timeout = state.0.settings.heartbeat.min(Duration::from_secs(2));
    let mut probes = tokio::task::JoinSet::new();
    for row in rows.iter().filter(|r| r.address != runtime.address) {
        let client = state
            .member_client(&row.address)?
            .with_timeout(probe_timeout);
        let name = row.name.clone();
        probes.spawn(async move { (name, client.ready().await.is_ok()) });
    }
    let mut alive: HashMap<String, bool> = HashMap::new();
    while let Some(Ok((name, ok))) = probes.join_next().await {
        alive.insert(name, ok);
    }
    let me = state.name();
    let time = now();
    runtime
        .db
        .transaction(|tx| {
            let (rows, roles, alive, me, time) = (
                rows.clone(),
                roles.clone(),
                alive.clone(),
                me.clone(),
                time.clone(),
            );
            Box::pin(async move {
                for row in &rows {
                    let role = match roles.get(&row.address) {
                        Some(role) => role_name(*role),
                        None => row.role.as_str(),
                    };
                    let answered = row.name == me || alive.get(&row.name).copied().unwrap_or(false);
                    let heartbeat = if answered {
                        time.as_str()
                    } else {
                        row.heartbeat.as_str()
                    };
                    if role != row.role || heartbeat != row.heartbeat {
                        members::set_heartbeat(tx, &row.name, role, heartbeat).await?;
                    }
                }
                tokens::delete_expired(tx).await?;
                Ok(())
            })
        })
        .await?;
    let hooks = state.0.settings.hooks.clone();
    if let Err(err) = hooks.on_heartbeat(state).await {
        tracing::warn!(error = %err, "the OnHeartbeat hook failed");
    }
    Ok(())
}
