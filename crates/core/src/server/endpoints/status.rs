//! `GET /core/1.0` (who is this) and `GET /core/1.0/ready`.

use crate::api::ServerStatus;
use crate::server::State;
use crate::server::db::DbStatus;
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new("").get(
            Action::new(status)
                .allow_untrusted()
                .allowed_before_init()
                .allowed_during_shutdown(),
        ),
        Endpoint::new("ready").get(Action::new(ready).allowed_before_init()),
    ]
}

async fn status(state: State, _req: Request) -> HandlerResult {
    let db = state.database_status();
    Response::sync(ServerStatus {
        name: state.name(),
        address: state.address(),
        version: state.version().to_owned(),
        ready: db == DbStatus::Online,
        extensions: state.0.settings.api_extensions.clone(),
        status: db.text().to_owned(),
    })
}

/// Ready means: the API serves, and an initialised member's database is online.
async fn ready(state: State, _req: Request) -> HandlerResult {
    match state.database_status() {
        DbStatus::Online | DbStatus::NotInitialized => Ok(Response::empty()),
        other => Err(ApiError::unavailable(format!(
            "not ready yet: {}",
            other.text()
        ))),
    }
}
