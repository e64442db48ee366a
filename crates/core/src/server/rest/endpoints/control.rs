//! Control-socket-only endpoints: init (bootstrap or join), shutdown, and issuing tokens.

use std::time::Duration;

use crate::api::paths;
use crate::api::{Control, JoinToken, TokenRecord, TokenRequest, role};
use crate::server::db::{members, tokens};
use crate::server::domain::membership;
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};
use crate::server::state::State;
use crate::validate;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(paths::CONTROL).post(Action::new(init).allowed_before_init()),
        Endpoint::new(paths::SHUTDOWN).post(Action::new(shutdown).allowed_before_init().allowed_during_shutdown()),
        Endpoint::new(paths::CONTROL_TOKENS).post(Action::new(add_token)).get(Action::new(list_tokens)),
    ]
}

async fn init(state: State, req: Request) -> HandlerResult {
    let control: Control = req.json()?;
    let lifecycle = state.lifecycle().clone();
    lifecycle.init(&state, &control).await?;
    Ok(Response::empty())
}

async fn shutdown(state: State, _req: Request) -> HandlerResult {
    tracing::info!("shutdown requested through the API");
    state.request_shutdown();
    Ok(Response::empty())
}

fn token_string(join_addresses: &[String], secret: &str, fingerprint: &str) -> String {
    JoinToken {
        secret: secret.to_owned(),
        fingerprint: fingerprint.to_owned(),
        join_addresses: join_addresses.to_vec(),
    }
    .encode()
}

async fn add_token(state: State, req: Request) -> HandlerResult {
    let request: TokenRequest = req.json()?;
    validate::member_name(&request.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let runtime = state.online_runtime()?;
    if state.trust().snapshot().by_name(&request.name).is_some() {
        let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await.unwrap_or_default();
        if rows.iter().any(|r| r.name == request.name && r.role == role::PENDING) {
            let bound = membership::stalled::stall_bound(state.settings().heartbeat);
            return Err(ApiError::conflict(format!(
                "a member named {name:?} already exists and is still joining; its token stays valid until the join \
                 completes. If that join was interrupted, run `microctl init` on {name} again; if {name} is gone, \
                 the cluster rolls its join back after {} s without progress",
                bound.as_secs(),
                name = request.name
            )));
        }
        return Err(ApiError::conflict(format!("a member named {:?} already exists", request.name)));
    }
    let secret = crate::tls::hex(
        &crate::server::state::runtime::random_bytes::<32>().map_err(|e| ApiError::internal(e.to_string()))?,
    );
    // In the cluster's time: whichever member leads judges it, by the same time.
    let now = state.clock().now();
    let expiry = (request.expire_after > 0).then(|| {
        let at = now.checked_add(Duration::from_nanos(request.expire_after)).unwrap_or(now);
        crate::server::state::clock::format(at)
    });
    let (name, owned_secret) = (request.name.clone(), secret.clone());
    let stored = runtime
        .db
        .transaction(move |tx| {
            let secret = owned_secret;
            Box::pin(async move {
                match tokens::list(tx).await?.into_iter().find(|t| t.name == name) {
                    Some(t) if !t.is_expired(now) => return Ok(false),
                    Some(_) => {
                        tokens::delete(tx, &name).await?;
                    }
                    None => {}
                }
                tokens::insert(tx, &name, &secret, expiry.as_deref()).await?;
                Ok(true)
            })
        })
        .await?;
    if !stored {
        return Err(ApiError::conflict(format!(
            "a join token for {:?} already exists; revoke it first or use it",
            request.name
        )));
    }
    let addresses = membership::token_addresses(&runtime).await?;
    Response::sync(token_string(&addresses, &secret, &runtime.cluster_fingerprint()))
}

async fn list_tokens(state: State, _req: Request) -> HandlerResult {
    let runtime = state.online_runtime()?;
    let rows = runtime.db.read(|tx| Box::pin(tokens::list(tx))).await?;
    let addresses = membership::token_addresses(&runtime).await?;
    let now = state.clock().now();
    let records: Vec<TokenRecord> = rows
        .into_iter()
        .filter(|t| !t.is_expired(now))
        .map(|t| TokenRecord {
            token: token_string(&addresses, &t.secret, &runtime.cluster_fingerprint()),
            name: t.name,
            expires_at: t.expiry,
        })
        .collect();
    Response::sync(records)
}
