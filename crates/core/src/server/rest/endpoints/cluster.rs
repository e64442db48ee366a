//! `GET /core/1.0/cluster`, `DELETE /core/1.0/cluster/{name}`, `PUT /core/1.0/cluster/{name}/address`,
//! `DELETE /core/1.0/tokens/{name}`.

use std::collections::HashMap;
use std::time::Duration;

use hyper::StatusCode;

use crate::api::paths;
use crate::api::{
    ClusterMember, ClusterMemberLocal, Readiness, SetAddressRequest, TransferLeaderRequest, role, status,
};
use crate::client::ClientError;
use crate::server::db::DbStatus;
use crate::server::db::{members, tokens};
use crate::server::domain::membership::{self, role_name};
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response, Trust};
use crate::server::state::State;

/// How long `cluster list` waits for each member's answer (all are asked at once), so the
/// list answers in under half a second even with dead or black-holed members.
const PROBE_TIMEOUT: Duration = Duration::from_millis(350);

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new(paths::CLUSTER).get(Action::new(list).allowed_during_upgrade()),
        Endpoint::new(paths::LEADER).post(Action::new(transfer_leader)),
        Endpoint::new(paths::CLUSTER_MEMBER).delete(Action::new(remove).allowed_during_upgrade()),
        // Before init too: a member whose old address is gone has no database until it moves.
        Endpoint::new(paths::CLUSTER_MEMBER_ADDRESS).put(Action::new(set_address).allowed_before_init()),
        Endpoint::new(paths::TOKEN).delete(Action::new(revoke_token)),
    ]
}

/// A member's status and why, from this member's probe and the database.
fn status_of(
    state: &State,
    row: &members::MemberRow,
    in_config: bool,
    probe: Option<&Result<Readiness, ClientError>>,
) -> (&'static str, String) {
    if !in_config && row.role == role::PENDING {
        return (status::PENDING, "joining: not yet part of the dqlite configuration".into());
    }
    let Some(probe) = probe else {
        // This member itself.
        let problem = state.runtime().ok().and_then(|r| r.disk.health().problem().map(str::to_owned));
        return match (state.database_status(), problem) {
            (DbStatus::WaitingUpgrade, _) => (status::UPGRADING, state.database_status_text()),
            (_, Some(problem)) => (status::DEGRADED, problem),
            _ => (status::ONLINE, String::new()),
        };
    };
    match probe {
        Ok(Readiness { raft_log_problem: Some(problem) }) => (status::DEGRADED, problem.clone()),
        Ok(_) => (status::ONLINE, String::new()),
        Err(ClientError::Api { status: code, message }) if *code == StatusCode::FORBIDDEN => {
            (status::NOT_TRUSTED, format!("it refuses this member's certificate: {message}"))
        }
        Err(ClientError::Api { message, .. }) if message.contains(DbStatus::WaitingUpgrade.text()) => {
            (status::UPGRADING, message.clone())
        }
        Err(ClientError::Api { message, .. }) => {
            (status::UNREACHABLE, format!("it answers but is not ready: {message}"))
        }
        Err(err @ ClientError::Tls { .. }) => {
            (status::NOT_TRUSTED, format!("it does not present this cluster's certificate: {err}"))
        }
        Err(err @ ClientError::Timeout { .. }) => {
            // Black-holed or just slow: the leader's last heartbeat tells which, both times in the
            // cluster's time (the leader's clock and this member's may be days apart).
            let age = humantime::parse_rfc3339_weak(&row.heartbeat)
                .ok()
                .and_then(|t| state.clock().now().duration_since(t).ok());
            let fresh = state.settings().heartbeat * 2 + Duration::from_secs(1);
            match age {
                Some(age) if age <= fresh => {
                    (status::ONLINE, format!("{err}; its last heartbeat was {:.1} s ago", age.as_secs_f64()))
                }
                Some(age) => (status::UNREACHABLE, format!("{err}; last heartbeat {:.0} s ago", age.as_secs_f64())),
                None => (status::UNREACHABLE, format!("{err}; no heartbeat yet")),
            }
        }
        Err(err) => (status::UNREACHABLE, err.to_string()),
    }
}

async fn list(state: State, _req: Request) -> HandlerResult {
    let runtime = state.runtime()?;
    let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await?;
    // This node's own view of the configuration and leader: no round trip to a leader that
    // may be gone.
    let local = async {
        let mut conn = runtime.db.client().connect(&runtime.address).await?;
        let nodes = conn.cluster().await?;
        let leader = conn.leader().await?.map(|l| l.address);
        Ok::<_, dqlite::Error>((nodes, leader))
    };
    let (roles, leader): (HashMap<String, Option<dqlite::Role>>, Option<String>) =
        match tokio::time::timeout(PROBE_TIMEOUT, local).await {
            Ok(Ok((nodes, leader))) => (nodes.into_iter().map(|n| (n.address, n.role)).collect(), leader),
            _ => (HashMap::new(), None),
        };
    let mut probes = tokio::task::JoinSet::new();
    for row in rows.iter().filter(|r| r.address != runtime.address) {
        let client = state.member_client(&row.address)?.with_timeout(PROBE_TIMEOUT);
        let name = row.name.clone();
        probes.spawn(async move { (name, client.readiness().await) });
    }
    let mut answers = HashMap::new();
    while let Some(Ok((name, result))) = probes.join_next().await {
        answers.insert(name, result);
    }
    let clocks = crate::server::domain::heartbeat::clock_offsets(&state);
    // The newest software any member runs: members behind it need an upgrade.
    let newest = rows.iter().map(|r| (r.schema_internal, r.schema_external, r.api_extensions.len())).max();
    let members: Vec<ClusterMember> = rows
        .into_iter()
        .map(|row| {
            let in_config = roles.contains_key(&row.address);
            let role = membership::recorded_role(&row.role, roles.get(&row.address).copied()).to_owned();
            let probe = (row.address != runtime.address).then(|| answers.get(&row.name)).flatten();
            let probe = match probe {
                Some(p) => Some(p),
                None if row.address != runtime.address => Some(&NO_ANSWER),
                None => None,
            };
            let (mut status, mut reason) = status_of(&state, &row, in_config, probe);
            let software = (row.schema_internal, row.schema_external, row.api_extensions.len());
            if newest.is_some_and(|n| software < n) && matches!(status, status::ONLINE | status::UPGRADING) {
                status = status::NEEDS_UPGRADE;
                reason = format!(
                    "runs schema {}/{} with {} API extensions; other members run newer software",
                    row.schema_internal,
                    row.schema_external,
                    row.api_extensions.len()
                );
            }
            let clock = clocks.get(&row.name);
            let clock_skewed = clock.is_some_and(|c| c.skewed());
            if let Some(warning) = clock.filter(|c| c.skewed()).map(|c| c.warning(&row.name)) {
                reason = if reason.is_empty() { warning } else { format!("{reason}; {warning}") };
            }
            let is_leader = leader.as_deref() == Some(row.address.as_str());
            ClusterMember {
                fingerprint: crate::tls::fingerprint_pem(&row.certificate).unwrap_or_default(),
                certificate_days_left: crate::tls::days_left_pem(&row.certificate, std::time::SystemTime::now()).ok(),
                local: ClusterMemberLocal { name: row.name, address: row.address, certificate: row.certificate },
                role,
                schema_internal_version: row.schema_internal,
                schema_external_version: row.schema_external,
                last_heartbeat: row.heartbeat,
                status: status.to_owned(),
                status_reason: reason,
                extensions: row.api_extensions,
                leader: is_leader,
                clock_offset: clock.map(|c| c.seconds()),
                clock_skewed,
            }
        })
        .collect();
    Response::sync(members)
}

/// What a probe task that vanished counts as.
static NO_ANSWER: Result<Readiness, ClientError> =
    Err(ClientError::Timeout { target: String::new(), after: PROBE_TIMEOUT });

async fn transfer_leader(state: State, req: Request) -> HandlerResult {
    let request: TransferLeaderRequest =
        if req.body.is_empty() { TransferLeaderRequest::default() } else { req.json()? };
    let runtime = state.online_runtime()?;
    let client = runtime.db.client().clone();
    let leader = client.leader().await?;
    if leader.address != runtime.address {
        let forwarded = state.member_client(&leader.address)?.transfer_leader(&request.name).await;
        return Response::sync(forwarded.map_err(|e| match e {
            ClientError::Api { status, message } => ApiError::new(status, message),
            other => ApiError::unavailable(format!("forwarding to the leader: {other}")),
        })?);
    }
    let nodes = client.cluster().await?;
    let trusted = state.trust().snapshot();
    let target = if request.name.is_empty() {
        nodes
            .iter()
            .find(|n| n.role == Some(dqlite::Role::Voter) && n.address != runtime.address)
            .cloned()
            .ok_or_else(|| ApiError::conflict("there is no other voter to hand leadership to"))?
    } else {
        let entry = trusted
            .by_name(&request.name)
            .ok_or_else(|| ApiError::not_found(format!("no cluster member named {:?}", request.name)))?;
        let node =
            nodes.iter().find(|n| n.address == entry.member.address).cloned().ok_or_else(|| {
                ApiError::conflict(format!("{} is not in the dqlite configuration yet", request.name))
            })?;
        if node.role != Some(dqlite::Role::Voter) {
            return Err(ApiError::conflict(format!(
                "{} is a {}; only voters can lead",
                request.name,
                role_name(node.role)
            )));
        }
        node
    };
    if target.address != runtime.address {
        client.transfer(target.id).await?;
    }
    let name = trusted.by_address(&target.address).map(|e| e.member.name.clone()).unwrap_or(target.address);
    tracing::info!(to = name, "leadership transferred on request");
    Response::sync(name)
}

async fn remove(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    crate::validate::member_name(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    membership::remove(&state, &name, req.flag("force")).await?;
    Ok(Response::empty())
}

/// Moves this member (`name` must be it) to a new address. Only through the control socket:
/// the member's HTTPS listener moves with it.
async fn set_address(state: State, req: Request) -> HandlerResult {
    if req.trust != Trust::Unix {
        return Err(ApiError::forbidden(
            "a member's address is changed through its own control socket (microctl on that member)",
        ));
    }
    let name = req.param("name")?.to_owned();
    let request: SetAddressRequest = req.json()?;
    membership::set_address(&state, &name, &request.address).await?;
    Ok(Response::empty())
}

async fn revoke_token(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    let runtime = state.online_runtime()?;
    let owned_name = name.clone();
    let deleted = runtime
        .db
        .transaction(move |tx| {
            let name = owned_name;
            Box::pin(async move { tokens::delete(tx, &name).await })
        })
        .await?;
    if !deleted {
        return Err(ApiError::not_found(format!("no join token for {name:?}")));
    }
    Ok(Response::empty())
}
