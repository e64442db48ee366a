//! `POST /core/1.0/doctor[?repair=0]`: forwarded to the dqlite leader, which compares the three
//! views of the membership and repairs provable drift (`server::doctor`).

use std::time::Duration;

use crate::api::paths;
use crate::client::ClientError;
use crate::server::domain::doctor;
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};
use crate::server::state::State;

/// How long a member waits for the leader's report: the leader asks every member within
/// seconds, but a repair in dqlite's configuration is retried for up to 30 s.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(100);

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(paths::DOCTOR).post(Action::new(run))]
}

async fn run(state: State, req: Request) -> HandlerResult {
    let repair = !matches!(req.query("repair"), Some("0" | "false" | "no"));
    let runtime = state.online_runtime()?;
    let leader = runtime.db.client().leader().await?;
    if leader.address == runtime.address {
        return Response::sync(doctor::run(&state, repair).await?);
    }
    // Forwarded once: a member that gets a forwarded run but does not lead (leadership moved
    // meanwhile) refuses it rather than pass it around during an election.
    if req.is_notification() {
        return Err(ApiError::unavailable("this member is no longer the dqlite leader; run the doctor again"));
    }
    let client = state.member_client(&leader.address)?.with_timeout(FORWARD_TIMEOUT).as_notification();
    let report = client.doctor(repair).await.map_err(|e| match e {
        ClientError::Api { status, message } => ApiError::new(status, message),
        other => ApiError::unavailable(format!("forwarding to the leader at {}: {other}", leader.address)),
    })?;
    Response::sync(report)
}
