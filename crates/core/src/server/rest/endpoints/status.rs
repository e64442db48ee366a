//! `GET /` (the API versions), `GET /core/1.0` (who is this) and `GET /core/1.0/ready`.

use crate::api::paths;
use crate::api::{Readiness, ServerStatus};
use crate::server::db::DbStatus;
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};
use crate::server::state::State;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(paths::ROOT)
            .get(Action::new(versions).allow_untrusted().allowed_before_init().allowed_during_shutdown()),
        Endpoint::new(paths::STATUS)
            .get(Action::new(status).allow_untrusted().allowed_before_init().allowed_during_shutdown()),
        Endpoint::new(paths::READY).get(Action::new(ready).allowed_before_init()),
    ]
}

/// What microcluster answers on every listener, for clients that ask before anything else.
async fn versions(_state: State, _req: Request) -> HandlerResult {
    Response::sync(["/1.0"])
}

async fn status(state: State, _req: Request) -> HandlerResult {
    Response::sync(ServerStatus {
        name: state.name(),
        address: state.address(),
        version: state.version().to_owned(),
        ready: state.database_status() == DbStatus::Online,
        extensions: state.settings().api_extensions.clone(),
        status: state.database_status_text(),
        schema_internal_version: state.settings().internal_schema.len() as u64,
        schema_external_version: state.settings().external_schema.len() as u64,
        time: crate::server::state::clock::format(std::time::SystemTime::now()),
    })
}

/// Ready means: the API serves, and an initialised member's database is online. A ready
/// member also says whether it can write its raft log (it serves either way: its reads and
/// writes go to the leader).
async fn ready(state: State, _req: Request) -> HandlerResult {
    match state.database_status() {
        DbStatus::NotInitialized => Ok(Response::empty()),
        DbStatus::Online => {
            let raft_log_problem = state.runtime().ok().and_then(|r| r.disk.health().problem().map(str::to_owned));
            Response::sync(Readiness { raft_log_problem })
        }
        _ => Err(ApiError::unavailable(format!("not ready yet: {}", state.database_status_text()))),
    }
}
