//! `POST /core/internal/database` with `Upgrade: dqlite`: the inbound end of the dqlite tunnel.

use hyper::header::UPGRADE;

use crate::api::DQLITE_UPGRADE;
use crate::api::paths;
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};
use crate::server::state::State;
use crate::server::state::tunnel;

pub(super) fn endpoints() -> Vec<Endpoint> {
    // Raft needs the tunnel before the database is online and while a member hands over.
    vec![
        Endpoint::new(paths::INTERNAL_DATABASE)
            .post(Action::new(upgrade).allowed_before_init().allowed_during_shutdown()),
    ]
}

async fn upgrade(state: State, mut req: Request) -> HandlerResult {
    let wants_dqlite =
        req.headers.get(UPGRADE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(DQLITE_UPGRADE.as_bytes()));
    if !wants_dqlite {
        return Err(ApiError::new(hyper::StatusCode::UPGRADE_REQUIRED, "this endpoint needs `Upgrade: dqlite`"));
    }
    let runtime = state.runtime()?;
    let on_upgrade = req.take_upgrade().ok_or_else(|| ApiError::bad_request("the connection cannot be upgraded"))?;
    let (bind_name, stop) = (runtime.bind_name.clone(), runtime.stop.clone());
    tokio::spawn(async move {
        match on_upgrade.connection().await {
            Ok(upgraded) => {
                if let Err(err) = tunnel::serve_inbound(upgraded, &bind_name, stop).await {
                    tracing::debug!(error = %err, "dqlite tunnel closed");
                }
            }
            Err(err) => tracing::debug!(error = %err, "dqlite tunnel upgrade failed"),
        }
    });
    Ok(Response::upgrade(DQLITE_UPGRADE))
}
