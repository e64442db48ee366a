//! `/core/internal/recovery`: what quorum recovery asks of a running member (its raft log
//! position and the leader it sees) and hands to a survivor (the plan to restart its node with).
//! Trusted members only; both work while the database is down, which is the point.

use crate::api::RecoveryPlan;
use crate::api::paths;
use crate::server::domain::recovery;
use crate::server::rest::{Action, Endpoint, HandlerResult, Request, Response, Trust};
use crate::server::state::State;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(paths::INTERNAL_RECOVERY)
            .get(Action::new(status).allowed_before_init())
            .post(Action::new(receive).allowed_before_init()),
    ]
}

async fn status(state: State, _req: Request) -> HandlerResult {
    Response::sync(recovery::status(&state).await?)
}

async fn receive(state: State, req: Request) -> HandlerResult {
    let plan: RecoveryPlan = req.json()?;
    let sender = match &req.trust {
        Trust::Member(name) => Some(name.as_str()),
        Trust::Unix | Trust::Monitor(_) | Trust::Untrusted(_) => None,
    };
    recovery::receive(&state, sender, plan).await?;
    Ok(Response::empty())
}
