//! Joining: the joiner's side (`join`) and the leader's side (`admit`).
//!
//! 1. The joiner checks the cluster certificate against the token's fingerprint and sends its
//!    name, address, certificate and the token's secret to any join address (forwarded to the
//!    leader).
//! 2. The leader checks the secret (constant time), expiry, name, certificate and address; in
//!    one transaction inserts the member as PENDING and deletes the token; trusts the joiner on
//!    every member; answers with the cluster certificate and the member list.
//! 3. The joiner stores all that, starts its listener and node, adds itself to dqlite as a
//!    spare and takes the role the cluster needs, opens the database and runs the hooks.
//!
//! If anything fails after step 2, the joiner resets itself and asks the cluster to remove it
//! (forced), so no row, trust entry or dqlite node is left behind.

use super::{
    OPEN_TIMEOUT, ensure_server_identity, ensure_uninitialised, fan_out, hook_failed, open_database, reset_local,
    retry_config_change, role_name, start_background, start_runtime, take_role_on_leader,
};
use crate::api::{ClusterMemberLocal, Control, JoinRequest, JoinResponse, JoinToken, NewMemberHookRequest, role};
use crate::client::{Client, ClientError};
use crate::server::db::{members, now, tokens};
use crate::server::rest::ApiError;
use crate::server::state::State;
use crate::server::state_dir::NodeInfo;
use crate::server::truststore::TrustEntry;
use crate::tls::{self, Identity};
use crate::validate;

/// Deadline for the join request to the cluster.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Compares secrets without leaking where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Joins the cluster that issued `control.join_token`.
pub(crate) async fn join(state: &State, control: &Control) -> Result<(), ApiError> {
    let _init = state.0.init_lock.lock().await;
    ensure_uninitialised(state)?;
    validate::member_name(&control.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    validate::member_address(&control.address).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let token = JoinToken::decode(&control.join_token).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let hooks = state.0.settings.hooks.clone();
    super::record_identity(state, &control.name, &control.address)?;
    let (response, trusted_client, server) = match ask_to_join(state, control, &token).await {
        Ok(admitted) => admitted,
        Err(err) => {
            // Nothing was admitted: forget the name and address again.
            let _ = reset_local(state).await;
            return Err(err);
        }
    };

    super::fault_point("join:after-admit", &control.name);
    match join_steps(state, control, &token, &server, &response).await {
        Ok(()) => {
            tracing::info!(name = control.name, via = response.trusted_member.address, "joined the cluster");
            Ok(())
        }
        Err(err) => {
            tracing::warn!(error = %err, "join failed; undoing it");
            let _ = hooks.pre_remove(state, true).await;
            if let Err(reset) = reset_local(state).await {
                tracing::error!(error = %reset, "resetting after the failed join");
            }
            let trusted_client = trusted_client.with_timeout(std::time::Duration::from_secs(60));
            if let Err(remove) = trusted_client.remove_member(&control.name, true).await {
                tracing::error!(error = %remove, "asking the cluster to forget this member after the failed join");
            }
            Err(err)
        }
    }
}

async fn join_steps(
    state: &State,
    control: &Control,
    token: &JoinToken,
    server: &Identity,
    response: &JoinResponse,
) -> Result<(), ApiError> {
    let internal = |e: &dyn std::fmt::Display| ApiError::internal(e.to_string());
    let cluster_fp = tls::fingerprint_pem(&response.cluster_cert).map_err(|e| internal(&e))?;
    if !cluster_fp.eq_ignore_ascii_case(&token.fingerprint) {
        return Err(ApiError::forbidden("the cluster sent a certificate that does not match the token"));
    }
    let dir = &state.0.dir;
    dir.set_cluster_identity(&Identity {
        cert_pem: response.cluster_cert.clone(),
        key_pem: response.cluster_key.clone(),
    })
    .map_err(|e| internal(&e))?;
    let me = ClusterMemberLocal {
        name: control.name.clone(),
        address: control.address.clone(),
        certificate: server.cert_pem.clone(),
    };
    for member in response.cluster_members.iter().chain(std::iter::once(&me)) {
        state.0.truststore.add(member.clone()).map_err(|e| internal(&e))?;
    }
    let node_id = dqlite::generate_id(&control.address);
    dir.set_node_info(&NodeInfo { id: node_id }).map_err(|e| internal(&e))?;
    super::fault_point("join:after-files", &control.name);

    let runtime = start_runtime(state, node_id).await?;
    let client = runtime.db.client().clone();
    retry_config_change("adding this member to dqlite", || client.add(node_id, &control.address)).await?;
    super::fault_point("join:after-add", &control.name);
    let role = take_role_on_leader(state, &runtime, &control.name, node_id).await?;
    open_database(state, &runtime, OPEN_TIMEOUT).await?;
    let (name, role_text) = (control.name.clone(), role_name(Some(role)).to_owned());
    runtime
        .db
        .transaction(move |tx| {
            let (name, role_text) = (name.clone(), role_text.clone());
            Box::pin(async move { members::set_heartbeat(tx, &name, &role_text, &now()).await })
        })
        .await?;

    let hooks = state.0.settings.hooks.clone();
    hooks.pre_join(state, &control.config).await.map_err(|e| hook_failed("PreJoin", e))?;
    let notice = NewMemberHookRequest { new_member: me };
    let failures = fan_out(state.peer_clients()?, |c| {
        let notice = notice.clone();
        async move { c.run_hook("on-new-member", &notice).await }
    })
    .await;
    for (name, err) in failures {
        tracing::warn!(member = name, error = %err, "the OnNewMember hook failed");
    }
    super::fault_point("join:before-post-join", &control.name);
    if let Err(err) = hooks.post_join(state, &control.config).await {
        tracing::warn!(error = %err, "the PostJoin hook failed");
    }
    hooks.on_start(state).await.map_err(|e| hook_failed("OnStart", e))?;
    start_background(state, &runtime);
    Ok(())
}

/// PreInit, then asks the cluster (any join address) to admit this member.
async fn ask_to_join(
    state: &State,
    control: &Control,
    token: &JoinToken,
) -> Result<(JoinResponse, Client, Identity), ApiError> {
    let hooks = state.0.settings.hooks.clone();
    hooks.pre_init(state, false, &control.config).await.map_err(|e| hook_failed("PreInit", e))?;
    let server = ensure_server_identity(state, &control.name)?;
    let tls = tls::client_config(Some(&server), vec![token.fingerprint.clone()])
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let settings = &state.0.settings;
    let request = JoinRequest {
        name: control.name.clone(),
        address: control.address.clone(),
        certificate: server.cert_pem.clone(),
        secret: token.secret.clone(),
        schema_internal_version: settings.internal_schema.len() as u64,
        schema_external_version: settings.external_schema.len() as u64,
        extensions: settings.api_extensions.clone(),
    };

    // Try every join address; a member that cannot serve the request right now (no leader
    // during an election, shutting down) counts like an unreachable one, and the whole list is
    // retried until the deadline.
    super::fault_point("join:before-admit", &control.name);
    let deadline = std::time::Instant::now() + JOIN_TIMEOUT;
    let mut unreachable = Vec::new();
    loop {
        unreachable.clear();
        for address in &token.join_addresses {
            let client = Client::https(address.clone(), tls.clone()).with_timeout(JOIN_TIMEOUT);
            match client.join(&request).await {
                Ok(response) => return Ok((response, client, server)),
                Err(ClientError::Api { status, message }) if status != hyper::StatusCode::SERVICE_UNAVAILABLE => {
                    // The cluster answered and refused: any member would say the same.
                    return Err(ApiError::new(status, message));
                }
                Err(err) => unreachable.push(format!("{address}: {err}")),
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(ApiError::unavailable(format!(
                "could not reach the cluster at any join address: {}",
                unreachable.join("; ")
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// On any member: admits a joiner that presents a valid token (forwarded to the leader).
pub(crate) async fn admit(state: &State, request: JoinRequest) -> Result<JoinResponse, ApiError> {
    let runtime = state.db()?;
    let member = ClusterMemberLocal {
        name: request.name.clone(),
        address: request.address.clone(),
        certificate: request.certificate.clone(),
    };
    let entry = TrustEntry::new(member.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let cert =
        tls::parse_cert(&request.certificate, "certificate").map_err(|e| ApiError::bad_request(e.to_string()))?;
    if !tls::cert_has_dns_name(&cert, &request.name).map_err(|e| ApiError::bad_request(e.to_string()))? {
        return Err(ApiError::forbidden(format!("the joiner's certificate does not name {:?}", request.name)));
    }

    let leader = runtime.db.client().leader().await?;
    if leader.address != runtime.address {
        let client = state.member_client(&leader.address)?;
        return client.join(&request).await.map_err(|e| match e {
            ClientError::Api { status, message } => ApiError::new(status, message),
            other => ApiError::unavailable(format!("forwarding the join request to the leader: {other}")),
        });
    }

    let settings = &state.0.settings;
    if request.extensions != settings.api_extensions {
        return Err(ApiError::bad_request(format!(
            "the joiner's API extensions {:?} differ from the cluster's {:?}; run the same software version",
            request.extensions, settings.api_extensions
        )));
    }
    let ours = (settings.internal_schema.len() as u64, settings.external_schema.len() as u64);
    if (request.schema_internal_version, request.schema_external_version) != ours {
        return Err(ApiError::bad_request(format!(
            "the joiner's schema versions {:?} differ from the cluster's {:?}; run the same software version",
            (request.schema_internal_version, request.schema_external_version),
            ours
        )));
    }
    let trusted = state.0.truststore.snapshot();
    if trusted.by_name(&request.name).is_some() {
        return Err(ApiError::conflict(format!("a member named {:?} already exists", request.name)));
    }
    if let Some(other) = trusted.by_address(&request.address) {
        return Err(ApiError::conflict(format!(
            "address {} is already used by member {:?}",
            request.address, other.member.name
        )));
    }

    let mut row = super::own_row(
        state,
        &Identity { cert_pem: request.certificate.clone(), key_pem: String::new() },
        role::PENDING,
    );
    row.name = request.name.clone();
    row.address = request.address.clone();
    let secret = request.secret.clone();
    let refused = runtime
        .db
        .transaction(move |tx| {
            let (row, secret) = (row.clone(), secret.clone());
            Box::pin(async move {
                let existing = members::list(tx).await?;
                if existing.iter().any(|m| m.name == row.name || m.address == row.address) {
                    return Ok(Some(ApiError::conflict(format!("member {:?} or address {} already exists", row.name, row.address))));
                }
                let token = tokens::list(tx).await?.into_iter().find(|t| t.name == row.name);
                let Some(token) = token.filter(|t| same_secret(&t.secret, &secret)) else {
                    return Ok(Some(ApiError::forbidden(
                        "invalid join token: no valid token was issued for this name (it may have been used or revoked)",
                    )));
                };
                if token.is_expired(std::time::SystemTime::now()) {
                    return Ok(Some(ApiError::forbidden("the join token has expired; issue a new one")));
                }
                members::insert(tx, &row).await?;
                tokens::delete(tx, &row.name).await?;
                Ok(None)
            })
        })
        .await?;
    if let Some(err) = refused {
        return Err(err);
    }
    super::fault_point("admit:after-insert", &request.name);

    state.0.truststore.add(entry.member.clone()).map_err(|e| ApiError::internal(e.to_string()))?;
    runtime.set_servers(state.0.truststore.snapshot().addresses());
    let others: Vec<_> = state.peer_clients()?.into_iter().filter(|(m, _)| m.name != request.name).collect();
    let failures = fan_out(others, |c| {
        let member = member.clone();
        async move { c.add_trust(&member).await }
    })
    .await;
    for (name, err) in failures {
        tracing::warn!(member = name, error = %err, "could not tell a member to trust the joiner; the next heartbeat will");
    }
    let trusted_member = state
        .0
        .truststore
        .snapshot()
        .by_name(&state.name())
        .map(|e| e.member.clone())
        .ok_or_else(|| ApiError::internal("this member is missing from its own trust store"))?;
    tracing::info!(name = request.name, address = request.address, "admitted a new member");
    super::fault_point("admit:before-answer", &request.name);
    Ok(JoinResponse {
        cluster_cert: runtime.cluster_identity.cert_pem.clone(),
        cluster_key: runtime.cluster_identity.key_pem.clone(),
        cluster_members: state.members(),
        trusted_member,
    })
}
