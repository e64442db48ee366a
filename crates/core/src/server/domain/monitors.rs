//! Monitoring credentials: client certificates that may read every member's metrics and status
//! over HTTPS, and nothing else (`microctl monitoring add|list|revoke`). Issued on the member
//! whose control socket is asked (the key travels only over that socket, once), recorded in
//! `core_monitors`, and known to each member as a set of fingerprints that it reads from the
//! database again whenever it is told of a change, or a heartbeat shows its set is not the
//! leader's; a revocation is refused by every member it reached as soon as the answer returns.

use std::collections::BTreeMap;

use crate::api::{MonitorCredential, MonitorRecord};
use crate::certs;
use crate::server::db::monitors;
use crate::server::domain::membership::fan_out;
use crate::server::error::Error;
use crate::server::state::{State, clock};

/// Issues a credential named `name`.
pub(crate) async fn add(state: &State, name: &str) -> Result<MonitorCredential, Error> {
    crate::validate::member_name(name).map_err(|e| Error::invalid(e.to_string()))?;
    let runtime = state.online_runtime()?;
    let identity = certs::generate(name, &[]).map_err(Error::wrap)?;
    let fingerprint = identity.fingerprint().map_err(Error::wrap)?;
    let created = clock::format(state.clock().now());
    let (row_name, row_fingerprint) = (name.to_owned(), fingerprint.clone());
    runtime
        .db
        .transaction(move |tx| {
            Box::pin(async move { monitors::insert(tx, &row_name, &row_fingerprint, &created).await })
        })
        .await
        .map_err(|e| match Error::from(e) {
            err if err.kind() == crate::server::error::ErrorKind::Conflict => {
                Error::conflict(format!("a monitoring credential named {name:?} exists; revoke it first"))
            }
            err => err,
        })?;
    tracing::info!(target: "audit", monitor = name, %fingerprint, "issued a monitoring credential");
    spread(state).await;
    Ok(MonitorCredential { name: name.to_owned(), fingerprint, certificate: identity.cert_pem, key: identity.key_pem })
}

/// Every credential.
pub(crate) async fn list(state: &State) -> Result<Vec<MonitorRecord>, Error> {
    let runtime = state.online_runtime()?;
    let rows = runtime.db.read(|tx| Box::pin(monitors::list(tx))).await?;
    Ok(rows
        .into_iter()
        .map(|r| MonitorRecord { name: r.name, fingerprint: r.fingerprint, created: r.created })
        .collect())
}

/// Revokes the credential named `name`: refused from then on by every member that answered.
pub(crate) async fn revoke(state: &State, name: &str) -> Result<(), Error> {
    let runtime = state.online_runtime()?;
    let victim = name.to_owned();
    let existed =
        runtime.db.transaction(move |tx| Box::pin(async move { monitors::delete(tx, &victim).await })).await?;
    if !existed {
        return Err(Error::not_found(format!("no monitoring credential named {name:?}")));
    }
    tracing::info!(target: "audit", monitor = name, "revoked a monitoring credential");
    spread(state).await;
    Ok(())
}

/// Reads the credentials again here, then has every other member do the same; a member that
/// cannot be told now learns it from the next heartbeat.
async fn spread(state: &State) {
    if let Err(err) = refresh(state).await {
        tracing::warn!(error = %err, "reading the monitoring credentials");
    }
    let Ok(peers) = state.peer_clients() else { return };
    for (member, err) in fan_out(peers, |c| async move { c.refresh_monitors().await }).await {
        tracing::warn!(member, error = %err, "could not tell a member that the monitoring credentials changed; its next heartbeat will");
    }
}

/// Replaces this member's set with what the database holds now. Serialised, so a set read
/// earlier is never applied over one read later.
pub(crate) async fn refresh(state: &State) -> Result<(), Error> {
    let _serial = state.lock_monitors().await;
    let runtime = state.online_runtime()?;
    let rows = runtime.db.read(|tx| Box::pin(monitors::list(tx))).await?;
    state.set_monitors(rows.into_iter().map(|r| (r.fingerprint, r.name)).collect());
    Ok(())
}

/// What a heartbeat says the credentials are (name → fingerprint): read again if this member
/// holds others.
pub(crate) fn check(state: &State, leader_view: &BTreeMap<String, String>) {
    let ours: BTreeMap<String, String> = state.monitors().into_iter().map(|(fp, name)| (name, fp)).collect();
    if ours != *leader_view {
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(err) = refresh(&state).await {
                tracing::debug!(error = %err, "reading the monitoring credentials after a heartbeat");
            }
        });
    }
}
