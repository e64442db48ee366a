//! Replacing certificates: `POST /core/1.0/cluster/certificates` (new ones),
//! `PUT /core/1.0/cluster/certificates/{name}` (a supplied pair, as microcluster's), and the
//! steps each member takes under `/core/internal/certificates`.

use crate::api::{CertificatesPrepare, CertificatesRotate, KeyPair, paths};
use crate::client::ClientError;
use crate::server::domain::rotation;
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response, Trust};
use crate::server::state::State;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(paths::CLUSTER_CERTIFICATES).post(Action::new(rotate)),
        Endpoint::new(paths::CLUSTER_CERTIFICATE).put(Action::new(install)),
        Endpoint::new(paths::INTERNAL_CERTIFICATES).get(Action::new(current)).post(Action::new(prepare)),
        Endpoint::new(paths::INTERNAL_CERTIFICATES_SWITCH).post(Action::new(switch)),
        Endpoint::new(paths::INTERNAL_CERTIFICATES_FINISH).post(Action::new(finish)),
    ]
}

async fn rotate(state: State, req: Request) -> HandlerResult {
    let request: CertificatesRotate = req.json()?;
    on_the_leader(&state, &req, request).await
}

/// How long a member waits for the leader to finish a rotation it passed on.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Rotates on the dqlite leader, whose heartbeat rounds wait for it (a round's list of
/// members, read before a step, must not reach a trust store after it); passed on once.
async fn on_the_leader(state: &State, req: &Request, request: CertificatesRotate) -> HandlerResult {
    let runtime = state.online_runtime()?;
    let leader = runtime.db.client().leader().await?;
    if leader.address == runtime.address {
        let _rounds = state.lock_trust().await;
        return Response::sync(rotation::rotate(state, request).await?);
    }
    if req.is_notification() {
        return Err(ApiError::unavailable("this member is no longer the dqlite leader; run it again"));
    }
    let client = state.member_client(&leader.address)?.with_timeout(FORWARD_TIMEOUT).as_notification();
    let rotated = client.rotate_certificates(&request).await.map_err(|e| match e {
        ClientError::Api { status, message } => ApiError::new(status, message),
        other => ApiError::unavailable(format!("passing the rotation on to the leader at {}: {other}", leader.address)),
    })?;
    Response::sync(rotated)
}

/// `name`: `cluster` (its `ca`, if any, is then required of members, as microcluster does), a
/// member's name, or `ca` (only its `ca`: required from now on, or, empty, no longer).
async fn install(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    let pair: KeyPair = req.json()?;
    let request = match name.as_str() {
        "ca" if pair.cert.is_empty() && pair.key.is_empty() => {
            CertificatesRotate { ca: Some(pair.ca), ..CertificatesRotate::default() }
        }
        "ca" => return Err(ApiError::bad_request("`ca` takes only a CA (`ca`), no certificate or key")),
        "cluster" => CertificatesRotate { supplied: [(name, pair)].into(), ..CertificatesRotate::default() },
        _ if !pair.ca.is_empty() => {
            return Err(ApiError::bad_request(
                "a CA comes with the cluster's certificate (`cluster`) or on its own (`ca`), not with a member's",
            ));
        }
        _ => CertificatesRotate { supplied: [(name, pair)].into(), ..CertificatesRotate::default() },
    };
    on_the_leader(&state, &req, request).await
}

/// The steps below are a rotation's, asked by the member that coordinates it.
fn from_a_member(req: &Request) -> Result<(), ApiError> {
    match req.trust {
        Trust::Member(_) | Trust::Unix => Ok(()),
        _ => Err(ApiError::forbidden("only members take part in a certificate rotation")),
    }
}

async fn current(state: State, req: Request) -> HandlerResult {
    from_a_member(&req)?;
    let runtime = state.runtime()?;
    Response::sync(rotation::current(&state, &runtime)?)
}

async fn prepare(state: State, req: Request) -> HandlerResult {
    from_a_member(&req)?;
    let request: CertificatesPrepare = req.json()?;
    let runtime = state.runtime()?;
    Response::sync(rotation::prepare(&state, &runtime, request)?)
}

async fn switch(state: State, req: Request) -> HandlerResult {
    from_a_member(&req)?;
    let runtime = state.runtime()?;
    rotation::switch(&state, &runtime).await?;
    Ok(Response::empty())
}

async fn finish(state: State, req: Request) -> HandlerResult {
    from_a_member(&req)?;
    let runtime = state.runtime()?;
    rotation::finish(&state, &runtime)?;
    Ok(Response::empty())
}
