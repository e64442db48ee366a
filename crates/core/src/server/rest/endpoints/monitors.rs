//! Monitoring credentials: issued, listed and revoked on the control socket
//! (`/core/control/monitors`), and `POST /core/internal/monitors`, by which a member tells the
//! others that they changed.

use crate::api::MonitorRequest;
use crate::api::paths;
use crate::server::domain::monitors;
use crate::server::rest::{Action, Endpoint, HandlerResult, Request, Response};
use crate::server::state::State;

/// Served on the control socket only.
pub(super) fn control() -> Vec<Endpoint> {
    vec![
        Endpoint::new(paths::CONTROL_MONITORS).post(Action::new(add)).get(Action::new(list)),
        Endpoint::new(paths::CONTROL_MONITOR).delete(Action::new(revoke)),
    ]
}

/// Served to members too.
pub(super) fn internal() -> Vec<Endpoint> {
    vec![Endpoint::new(paths::INTERNAL_MONITORS).post(Action::new(refresh))]
}

async fn add(state: State, req: Request) -> HandlerResult {
    let request: MonitorRequest = req.json()?;
    Response::sync(monitors::add(&state, &request.name).await?)
}

async fn list(state: State, _req: Request) -> HandlerResult {
    Response::sync(monitors::list(&state).await?)
}

async fn revoke(state: State, req: Request) -> HandlerResult {
    monitors::revoke(&state, req.param("name")?).await?;
    Ok(Response::empty())
}

async fn refresh(state: State, _req: Request) -> HandlerResult {
    monitors::refresh(&state).await?;
    Ok(Response::empty())
}
