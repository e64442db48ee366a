//! `GET|PUT /core/1.0/daemon/servers`: where this member's additional listeners are, changed
//! while the daemon runs.

use std::collections::{BTreeMap, HashSet};

use crate::api::paths;
use crate::api::{MemberConfig, ServerAddress};
use crate::server::domain::membership::hook_on_members;
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};
use crate::server::state::State;
use crate::state_dir::ServerConfig;
use crate::validate;

pub(super) fn endpoints() -> Vec<Endpoint> {
    // Listeners run whenever the member is initialised, so these work during upgrades too.
    vec![
        Endpoint::new(paths::DAEMON_SERVERS)
            .get(Action::new(get).allowed_before_init())
            .put(Action::new(put).allowed_before_init()),
    ]
}

fn view(state: &State) -> BTreeMap<String, ServerAddress> {
    state.http().wanted_servers(state).into_iter().map(|(name, address)| (name, ServerAddress { address })).collect()
}

async fn get(state: State, _req: Request) -> HandlerResult {
    state.runtime()?;
    Response::sync(view(&state))
}

async fn put(state: State, req: Request) -> HandlerResult {
    let runtime = state.runtime()?;
    let wanted: BTreeMap<String, ServerAddress> = req.json()?;
    let known = state.http().wanted_servers(&state);
    let mut seen = HashSet::new();
    for (name, entry) in &wanted {
        if !known.contains_key(name) {
            return Err(ApiError::bad_request(format!("no server named {name:?} has a listener of its own")));
        }
        if entry.address.is_empty() {
            continue;
        }
        validate::member_address(&entry.address).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if entry.address == state.address() || !seen.insert(entry.address.clone()) {
            return Err(ApiError::conflict(format!("address {} is already in use by this member", entry.address)));
        }
    }
    let previous = state.config().read().map(|c| c.clone()).map_err(|_| ApiError::internal("poisoned"))?;
    let mut config = previous.clone();
    config.servers = wanted.iter().map(|(n, e)| (n.clone(), ServerConfig { address: e.address.clone() })).collect();
    save(&state, &config)?;
    if let Err(err) = state.http().apply_servers(&state, &runtime.cluster_identity()).await {
        // Put back what ran before, so a typo cannot leave the member without its listeners.
        save(&state, &previous)?;
        let _ = state.http().apply_servers(&state, &runtime.cluster_identity()).await;
        return Err(err.into());
    }
    if !req.is_notification() {
        let update = MemberConfig { name: config.name.clone(), address: config.address.clone(), servers: view(&state) };
        hook_on_members(state.peer_clients()?, "on-daemon-config-update", &update)
            .await
            .map_err(|e| e.context("the listeners changed here, but"))?;
    }
    Ok(Response::empty())
}

fn save(state: &State, config: &crate::state_dir::DaemonConfig) -> Result<(), ApiError> {
    state.dir().set_daemon_config(config).map_err(|e| ApiError::internal(e.to_string()))?;
    if let Ok(mut current) = state.config().write() {
        *current = config.clone();
    }
    Ok(())
}
