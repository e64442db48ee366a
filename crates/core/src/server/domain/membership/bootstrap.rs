//! Bootstrap: the first member creates the cluster.

use super::{ensure_server_identity, ensure_uninitialised, hook_failed, own_row};
use crate::api::{ClusterMemberLocal, Control, role};
use crate::certs;
use crate::server::db::{members, now};
use crate::server::error::Error;
use crate::server::state::State;
use crate::server::state::start::{OPEN_TIMEOUT, clean_slate, open_database, reset_local, start_runtime};
use crate::state_dir::NodeInfo;
use crate::validate;

/// Creates a new cluster with this member as its only voter.
pub(crate) async fn bootstrap(state: &State, control: &Control) -> Result<(), Error> {
    let _init = state.lock_init().await;
    ensure_uninitialised(state)?;
    validate::member_name(&control.name).map_err(|e| Error::invalid(e.to_string()))?;
    validate::member_address(&control.address).map_err(|e| Error::invalid(e.to_string()))?;
    clean_slate(state).await?;
    let hooks = state.settings().hooks.clone();
    // The hooks see the member's name and address from PreInit on, as microcluster's do.
    super::record_identity(state, &control.name, &control.address)?;
    if let Err(err) = hooks.pre_init(state, true, &control.config).await {
        let _ = reset_local(state).await;
        return Err(hook_failed("PreInit", err));
    }
    match bootstrap_steps(state, control).await {
        Ok(()) => {
            tracing::info!(name = control.name, address = control.address, "bootstrapped a new cluster");
            Ok(())
        }
        Err(err) => {
            tracing::warn!(error = %err, "bootstrap failed; undoing it");
            if let Err(reset) = reset_local(state).await {
                tracing::error!(error = %reset, "undoing the failed bootstrap");
            }
            Err(err)
        }
    }
}

async fn bootstrap_steps(state: &State, control: &Control) -> Result<(), Error> {
    let server = ensure_server_identity(state, &control.name)?;
    let cluster = certs::generate(&control.name, &[]).map_err(Error::wrap)?;
    let dir = state.dir();
    dir.set_cluster_identity(&cluster).map_err(Error::wrap)?;
    state
        .trust()
        .add(ClusterMemberLocal {
            name: control.name.clone(),
            address: control.address.clone(),
            certificate: server.cert_pem.clone(),
        })
        .map_err(Error::wrap)?;
    dir.set_node_info(&NodeInfo { id: dqlite::BOOTSTRAP_ID }).map_err(Error::wrap)?;

    let runtime = start_runtime(state, dqlite::BOOTSTRAP_ID).await?;
    open_database(state, &runtime, OPEN_TIMEOUT).await?;
    let mut row = own_row(state, &server, role::VOTER);
    row.heartbeat = now();
    runtime
        .db
        .transaction(move |tx| {
            let row = row.clone();
            Box::pin(async move { members::insert(tx, &row).await })
        })
        .await?;
    let hooks = state.settings().hooks.clone();
    hooks.post_bootstrap(state, &control.config).await.map_err(|e| hook_failed("PostBootstrap", e))?;
    hooks.on_start(state).await.map_err(|e| hook_failed("OnStart", e))?;
    state.start_background(&runtime);
    Ok(())
}
