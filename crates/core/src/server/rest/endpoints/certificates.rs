//! Replacing certificates: `POST /core/1.0/cluster/certificates` (new ones),
//! `PUT /core/1.0/cluster/certificates/{name}` (a supplied pair, as microcluster's), and the
//! steps each member takes under `/core/internal/certificates`.

use crate::api::{CertificatesPrepare, CertificatesRotate, KeyPair, paths};
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
    Response::sync(rotation::rotate(&state, request).await?)
}

/// `name`: `cluster` or a member's name.
async fn install(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    let pair: KeyPair = req.json()?;
    if !pair.ca.is_empty() {
        return Err(ApiError::bad_request(
            "a CA is not set with a certificate here: set it on its own (`microctl cluster certificates ca set FILE`)",
        ));
    }
    let request = CertificatesRotate { supplied: [(name, pair)].into(), ..CertificatesRotate::default() };
    Response::sync(rotation::rotate(&state, request).await?)
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
