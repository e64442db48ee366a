//! `GET /core/1.0/cluster`, `DELETE /core/1.0/cluster/{name}`, `DELETE /core/1.0/tokens/{name}`.

use std::collections::HashMap;
use std::time::Duration;

use crate::api::{ClusterMember, ClusterMemberLocal, status};
use crate::server::State;
use crate::server::db::{members, tokens};
use crate::server::membership::{self, role_name};
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};

/// How long `cluster list` waits for each member's answer (all are asked at once).
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint::new("cluster").get(Action::new(list)),
        Endpoint::new("cluster/{name}").delete(Action::new(remove)),
        Endpoint::new("tokens/{name}").delete(Action::new(revoke_token)),
    ]
}

async fn list(state: State, _req: Request) -> HandlerResult {
    let runtime = state.db()?;
    let rows = runtime
        .db
        .transaction(|tx| Box::pin(members::list(tx)))
        .await?;
    let roles: HashMap<String, Option<dqlite::Role>> = match runtime.db.client().cluster().await {
        Ok(nodes) => nodes.into_iter().map(|n| (n.address, n.role)).collect(),
        Err(err) => {
            tracing::debug!(error = %err, "reading the dqlite configuration for cluster list");
            HashMap::new()
        }
    };
    let mut probes = tokio::task::JoinSet::new();
    for row in rows.iter().filter(|r| r.address != runtime.address) {
        let client = state
            .member_client(&row.address)?
            .with_timeout(PROBE_TIMEOUT);
        let name = row.name.clone();
        probes.spawn(async move { (name, client.ready().await) });
    }
    let mut answers = HashMap::new();
    while let Some(Ok((name, result))) = probes.join_next().await {
        answers.insert(name, result);
    }
    let members: Vec<ClusterMember> = rows
        .into_iter()
        .map(|row| {
            let role = roles
                .get(&row.address)
                .map_or(row.role.clone(), |r| role_name(*r).to_owned());
            let (status, reason) = if row.address == runtime.address {
                (status::ONLINE, String::new())
            } else {
                match answers.get(&row.name) {
                    Some(Ok(())) => (status::ONLINE, String::new()),
                    Some(Err(err)) => (status::UNREACHABLE, err.to_string()),
                    None => (status::UNREACHABLE, "no answer".to_owned()),
                }
            };
            ClusterMember {
                fingerprint: crate::tls::fingerprint_pem(&row.certificate).unwrap_or_default(),
                local: ClusterMemberLocal {
                    name: row.name,
                    address: row.address,
                    certificate: row.certificate,
                },
                role,
                schema_internal_version: row.schema_internal,
                schema_external_version: row.schema_external,
                last_heartbeat: row.heartbeat,
                status: status.to_owned(),
                status_reason: reason,
                extensions: row.api_extensions,
            }
        })
        .collect();
    Response::sync(members)
}

async fn remove(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    crate::validate::member_name(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    membership::remove(&state, &name, req.flag("force")).await?;
    Ok(Response::empty())
}

async fn revoke_token(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    let runtime = state.db()?;
    let deleted = runtime
        .db
        .transaction(|tx| {
            let name = name.clone();
            Box::pin(async move { tokens::delete(tx, &name).await })
        })
        .await?;
    if !deleted {
        return Err(ApiError::not_found(format!("no join token for {name:?}")));
    }
    Ok(Response::empty())
}
