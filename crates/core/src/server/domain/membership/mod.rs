//! How a member comes, lives and goes: bootstrap, join (both sides), removal and moves, and the
//! pieces they share. The order of steps in each keeps the three descriptions of the
//! membership (dqlite's configuration, `core_cluster_members`, the trust stores) in step, and
//! every step that can fail midway is undone.

mod address;
mod bootstrap;
mod fault;
mod handover;
mod join;
mod remove;
pub(crate) mod stalled;

use std::time::{Duration, Instant};

pub(crate) use address::{relocate, set_address};
pub(crate) use bootstrap::bootstrap;
pub(crate) use fault::point as fault_point;
pub(crate) use handover::handover;
pub(crate) use join::{ADMISSIONS, admit, interrupted as join_interrupted, join, resume as resume_join};
pub(crate) use remove::remove;

use crate::api::{ClusterMemberLocal, role};
use crate::certs;
use crate::client::{Client, ClientError};
use crate::server::db::members;
use crate::server::error::Error;
use crate::server::state::State;
use crate::server::state::runtime::Runtime;
use crate::tls::{self, Identity};

/// The join addresses a token issued here carries ([`join::pick_token_addresses`]), from the
/// members' rows as the database holds them.
pub(crate) async fn token_addresses(runtime: &Runtime) -> Result<Vec<String>, Error> {
    let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await?;
    Ok(join::pick_token_addresses(&runtime.address, &rows))
}

/// Fails with 409 if the member is already initialised.
pub(crate) fn ensure_uninitialised(state: &State) -> Result<(), Error> {
    let initialised = state.dir().node_info().map_err(Error::wrap)?.is_some();
    if initialised || state.runtime().is_ok() {
        return Err(Error::conflict(format!(
            "this member is already initialised as {:?} at {}; remove it from its cluster first",
            state.name(),
            state.address()
        )));
    }
    Ok(())
}

/// Sets this member's name and address (in memory and `daemon.toml`) at the start of init.
pub(crate) fn record_identity(state: &State, name: &str, address: &str) -> Result<(), Error> {
    let mut config = state.config().write().map_err(|_| Error::internal("poisoned"))?;
    config.name = name.to_owned();
    config.address = address.to_owned();
    state.dir().set_daemon_config(&config).map_err(Error::wrap)
}

/// Wraps a hook's failure.
pub(crate) fn hook_failed(hook: &str, err: crate::server::state::hooks::HookError) -> Error {
    Error::internal(format!("the {hook} hook failed: {err}"))
}

/// This member's certificate, regenerated if it does not name `name` (a joiner's name must be
/// in its certificate).
pub(crate) fn ensure_server_identity(state: &State, name: &str) -> Result<Identity, Error> {
    let current = state.server_identity().read().map(|i| i.clone()).map_err(|_| Error::internal("poisoned"))?;
    let der = tls::parse_cert(&current.cert_pem, "server.crt").map_err(Error::wrap)?;
    if tls::cert_has_dns_name(&der, name).unwrap_or(false) {
        return Ok(current);
    }
    let fresh = certs::generate(name, &[]).map_err(Error::wrap)?;
    state.dir().set_server_identity(&fresh).map_err(Error::wrap)?;
    if let Ok(mut guard) = state.server_identity().write() {
        *guard = fresh.clone();
    }
    Ok(fresh)
}

/// Stops trusting `name` here and tells every other member to do the same.
pub(crate) async fn distrust_everywhere(state: &State, runtime: &Runtime, name: &str) -> Result<(), Error> {
    state.trust().remove(name).map_err(Error::wrap)?;
    runtime.set_servers(state.trust().snapshot().addresses());
    let victim = name.to_owned();
    for (member, err) in fan_out(state.peer_clients()?, |c| {
        let victim = victim.clone();
        async move { c.remove_trust(&victim).await }
    })
    .await
    {
        tracing::warn!(member, error = %err, "could not tell a member to stop trusting {name}; the next heartbeat will");
    }
    Ok(())
}

/// The role a member's row should record, given its row's role and its node in dqlite's
/// configuration (`None`: no node at its address). A PENDING member whose node is a spare is
/// still joining (it takes its role next): recording "spare" would make a join that stopped
/// there look like a member that is a spare, which nobody rolls back.
pub(crate) fn recorded_role(row_role: &str, node: Option<Option<dqlite::Role>>) -> &str {
    match node {
        None => row_role,
        Some(Some(dqlite::Role::Spare)) if row_role == role::PENDING => role::PENDING,
        Some(node_role) => role_name(node_role),
    }
}

/// The role a newly added node should get: voters first (up to 3), then stand-bys (up to 3).
pub(crate) fn role_for_new_node(nodes: &[dqlite::NodeInfo], new_id: u64) -> dqlite::Role {
    let count = |role| nodes.iter().filter(|n| n.id != new_id && n.role == Some(role)).count();
    if count(dqlite::Role::Voter) < 3 {
        dqlite::Role::Voter
    } else if count(dqlite::Role::StandBy) < 3 {
        dqlite::Role::StandBy
    } else {
        dqlite::Role::Spare
    }
}

/// Gives node `id`, added as a spare, the role the cluster needs ([`role_for_new_node`]);
/// returns its role (a node a heartbeat promoted meanwhile keeps its role).
pub(crate) async fn take_role(client: &dqlite::Client, id: u64) -> Result<dqlite::Role, Error> {
    let promoted = |nodes: &[dqlite::NodeInfo]| {
        nodes.iter().find(|n| n.id == id).and_then(|n| n.role).filter(|r| *r != dqlite::Role::Spare)
    };
    let nodes = client.cluster().await?;
    if let Some(role) = promoted(&nodes) {
        return Ok(role);
    }
    let role = role_for_new_node(&nodes, id);
    if role != dqlite::Role::Spare
        && let Err(err) = retry_config_change("assigning this member's role", || client.assign(id, role)).await
    {
        return promoted(&client.cluster().await?).ok_or(err);
    }
    Ok(role)
}

/// [`take_role`] decided on the leader (`POST /core/internal/cluster/{name}/role`, under its
/// role lock), so that members joining at once do not each fill the same gap. Decides here
/// when the leader cannot be asked (or runs software without the endpoint).
pub(crate) async fn take_role_on_leader(
    state: &State,
    runtime: &Runtime,
    name: &str,
    id: u64,
) -> Result<dqlite::Role, Error> {
    let client = runtime.db.client();
    if let Ok(leader) = client.leader().await
        && leader.address != runtime.address
        && let Ok(http) = state.member_client(&leader.address)
    {
        match http.with_timeout(Duration::from_secs(45)).take_role(name, id).await {
            Ok(role) => match role_from_name(&role) {
                Some(role) => return Ok(role),
                None => tracing::warn!(role, "the leader answered an unknown role; choosing here"),
            },
            Err(err) => tracing::debug!(error = %err, "the leader did not choose this member's role; choosing here"),
        }
    }
    let _serial = state.lock_roles().await;
    take_role(client, id).await
}

fn role_from_name(name: &str) -> Option<dqlite::Role> {
    [dqlite::Role::Voter, dqlite::Role::StandBy, dqlite::Role::Spare].into_iter().find(|r| role_name(Some(*r)) == name)
}

/// Runs a dqlite membership request, retrying while raft is busy with another change.
pub(crate) async fn retry_config_change<F, Fut>(what: &str, mut request: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = dqlite::Result<()>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut backoff = dqlite::Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    loop {
        match request().await {
            Ok(()) => return Ok(()),
            Err(err) if (err.is_busy() || err.is_not_leader()) && Instant::now() < deadline => {
                tracing::debug!(error = %err, "{what}: retrying");
                backoff.wait().await;
            }
            Err(err) => return Err(Error::from(err).context(what)),
        }
    }
}

/// Most requests one fan-out has under way at once. Each opens (or takes from the pool) a
/// connection to its member; with hundreds of members all at once cost a TLS handshake each
/// and starved the raft threads on a small machine. Members answer in milliseconds, so 256
/// still take well under a second.
pub(crate) const FAN_OUT_CONCURRENCY: usize = 16;

/// Runs `call` against every client, [`FAN_OUT_CONCURRENCY`] at a time, and returns the
/// failures.
pub(crate) async fn fan_out<F, Fut>(clients: Vec<(ClusterMemberLocal, Client)>, call: F) -> Vec<(String, ClientError)>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>> + Send + 'static,
{
    let mut set = tokio::task::JoinSet::new();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(FAN_OUT_CONCURRENCY));
    for (member, client) in clients {
        let fut = call(client);
        let permits = permits.clone();
        set.spawn(async move {
            // Never closed: the permit always comes.
            let _permit = permits.acquire_owned().await.ok();
            (member.name, fut.await)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((name, Err(err))) = joined {
            failures.push((name, err));
        }
    }
    failures
}

/// Runs hook `hook` (its wire name, e.g. `on-new-member`) on each of `clients` at once. A
/// member whose hook ran and failed (it answers `500` with the hook's error) fails the call,
/// naming it. A member that could not run it is only logged: one that cannot be reached or is
/// not ready (`503`), or that does not trust this member yet (`403`: itself still joining,
/// it learns of newer members from the next heartbeat); a member that is down or behind must
/// not stop the cluster from changing.
pub(crate) async fn hook_on_members<B>(
    clients: Vec<(ClusterMemberLocal, Client)>,
    hook: &'static str,
    body: &B,
) -> Result<(), Error>
where
    B: serde::Serialize + Clone + Send + Sync + 'static,
{
    let mut failed = Vec::new();
    for (member, err) in fan_out(clients, |c| {
        let body = body.clone();
        async move { c.run_hook(hook, &body).await }
    })
    .await
    {
        match err.status() {
            Some(hyper::StatusCode::INTERNAL_SERVER_ERROR) => failed.push(format!("{member}: {err}")),
            _ => tracing::warn!(member, error = %err, hook, "a member could not run a hook; going on without it"),
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => Err(Error::internal(format!("the {hook} hook failed on {}", failed.join("; ")))),
    }
}

/// The role string stored for a dqlite role.
pub(crate) fn role_name(role: Option<dqlite::Role>) -> &'static str {
    match role {
        Some(dqlite::Role::Voter) => role::VOTER,
        Some(dqlite::Role::StandBy) => role::STAND_BY,
        Some(dqlite::Role::Spare) => role::SPARE,
        None => role::PENDING,
    }
}

/// This member's row as first inserted.
pub(crate) fn own_row(state: &State, identity: &Identity, role: &str) -> members::MemberRow {
    let settings = state.settings();
    members::MemberRow {
        name: state.name(),
        address: state.address(),
        certificate: identity.cert_pem.clone(),
        schema_internal: settings.internal_schema.len() as u64,
        schema_external: settings.external_schema.len() as u64,
        heartbeat: crate::server::db::ZERO_TIME.to_owned(),
        role: role.to_owned(),
        api_extensions: settings.api_extensions.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dqlite::{NodeInfo, Role};

    fn node(id: u64, role: Role) -> NodeInfo {
        NodeInfo { id, address: format!("n{id}"), role: Some(role) }
    }

    #[test]
    fn a_joiner_added_as_a_spare_stays_pending_until_it_takes_its_role() {
        use crate::api::role::{PENDING, SPARE, STAND_BY, VOTER};
        for (row, node, recorded) in [
            (PENDING, None, PENDING),
            (PENDING, Some(Some(Role::Spare)), PENDING),
            (PENDING, Some(Some(Role::Voter)), VOTER),
            (PENDING, Some(Some(Role::StandBy)), STAND_BY),
            (VOTER, Some(Some(Role::Spare)), SPARE),
            (SPARE, Some(Some(Role::Voter)), VOTER),
            (VOTER, None, VOTER),
        ] {
            assert_eq!(recorded_role(row, node), recorded, "{row} with {node:?}");
        }
    }

    #[test]
    fn new_nodes_fill_voters_then_stand_bys() {
        let mut nodes = vec![node(1, Role::Voter), node(9, Role::Spare)];
        assert_eq!(role_for_new_node(&nodes, 9), Role::Voter);
        nodes.extend([node(2, Role::Voter), node(3, Role::Voter)]);
        assert_eq!(role_for_new_node(&nodes, 9), Role::StandBy);
        nodes.extend([node(4, Role::StandBy), node(5, Role::StandBy), node(6, Role::StandBy)]);
        assert_eq!(role_for_new_node(&nodes, 9), Role::Spare);
    }
}
