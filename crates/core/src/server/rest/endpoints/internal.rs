//! Member-to-member endpoints: join requests, reset after removal, trust store fan-out (and
//! reading, for the doctor) and remote hook calls.

use crate::api::paths;
use crate::api::{
    ClusterMemberLocal, HeartbeatRequest, JoinRequest, MemberConfig, NewMemberHookRequest, RemoveHookRequest,
};
use crate::server::domain::heartbeat as beat;
use crate::server::domain::membership::{self, fan_out};
use crate::server::rest::Trust;
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};
use crate::server::state::State;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        // Untrusted: the joiner is not a member yet; the token's secret is checked instead.
        Endpoint::new(paths::INTERNAL_CLUSTER).post(Action::new(join).allow_untrusted()),
        Endpoint::new(paths::INTERNAL_CLUSTER_MEMBER).put(Action::new(reset).allowed_before_init()),
        Endpoint::new(paths::INTERNAL_MEMBER_ADDRESS).put(Action::new(move_member)),
        Endpoint::new(paths::INTERNAL_MEMBER_ROLE).post(Action::new(assign_role)),
        Endpoint::new(paths::INTERNAL_TRUSTSTORE)
            .get(Action::new(list_trust).allowed_before_init().allowed_during_upgrade())
            .post(Action::new(add_trust).allowed_before_init()),
        Endpoint::new(paths::INTERNAL_TRUST).delete(Action::new(remove_trust).allowed_before_init()),
        Endpoint::new(paths::INTERNAL_HOOK).post(Action::new(run_hook).proxy_target()),
        Endpoint::new(paths::INTERNAL_HOOK_MEMBERS).post(Action::new(run_hook_on_members)),
        Endpoint::new(paths::INTERNAL_HEARTBEAT).post(Action::new(heartbeat).allowed_before_init()),
    ]
}

/// The leader chooses and gives a joiner's role, one joiner at a time (see
/// [`membership::take_role_on_leader`]). Only the member itself may ask.
async fn assign_role(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    if !matches!(&req.trust, Trust::Member(member) if *member == name) && req.trust != Trust::Unix {
        return Err(ApiError::forbidden(format!("only {name} may ask for its own role")));
    }
    let request: crate::api::RoleRequest = req.json()?;
    let runtime = state.runtime()?;
    let _serial = state.lock_roles().await;
    membership::fault_point("role:before-assign", &name);
    let role = membership::take_role(runtime.db.client(), request.id).await?;
    membership::fault_point("role:after-assign", &name);
    Response::sync(membership::role_name(Some(role)))
}

/// The leader's side of a member's address change (forwarded to the leader).
async fn move_member(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    let request: crate::api::MoveMemberRequest = req.json()?;
    membership::relocate(&state, &name, &request).await?;
    Ok(Response::empty())
}

async fn join(state: State, req: Request) -> HandlerResult {
    let request: JoinRequest = req.json()?;
    // The certificate the caller proved it holds (a joiner coming back is known by it).
    let proven = match &req.trust {
        Trust::Member(name) => state.trust().snapshot().by_name(name).map(|e| e.fingerprint.clone()),
        Trust::Untrusted(fingerprint) => fingerprint.clone(),
        Trust::Unix | Trust::Monitor(_) => None,
    };
    Response::sync(membership::admit(&state, request, proven.as_deref()).await?)
}

/// Resets this member after the leader removed it. Answers first and resets afterwards (the
/// removal may have been requested through this very member and still await its answer).
async fn reset(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    if name != state.name() {
        return Err(ApiError::not_found(format!("this member is {:?}, not {name:?}", state.name())));
    }
    let epoch = state.epoch();
    // Logged as the request's doing (its caller: the member that removed this one).
    let reset = state.lifecycle().reset(state.clone(), name, epoch);
    tokio::spawn(tracing::Instrument::in_current_span(reset));
    Ok(Response::empty())
}

/// This member's trust store, for `microctl doctor` on the leader.
async fn list_trust(state: State, _req: Request) -> HandlerResult {
    Response::sync(state.members())
}

async fn add_trust(state: State, req: Request) -> HandlerResult {
    let member: ClusterMemberLocal = req.json()?;
    state.trust().add(member.clone()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Ok(runtime) = state.runtime() {
        runtime.set_servers(state.trust().snapshot().addresses());
    }
    if !req.is_notification() {
        let others: Vec<_> = state.peer_clients()?.into_iter().filter(|(m, _)| m.name != member.name).collect();
        for (name, err) in fan_out(others, |c| {
            let member = member.clone();
            async move { c.add_trust(&member).await }
        })
        .await
        {
            tracing::warn!(member = name, error = %err, "could not pass a trust store addition on");
        }
    }
    Ok(Response::empty())
}

async fn remove_trust(state: State, req: Request) -> HandlerResult {
    let name = req.param("name")?.to_owned();
    if name == state.name() {
        return Err(ApiError::bad_request("a member cannot stop trusting itself; remove it from the cluster instead"));
    }
    state.trust().remove(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Ok(runtime) = state.runtime() {
        runtime.set_servers(state.trust().snapshot().addresses());
    }
    if !req.is_notification() {
        for (member, err) in fan_out(state.peer_clients()?, |c| {
            let name = name.clone();
            async move { c.remove_trust(&name).await }
        })
        .await
        {
            tracing::warn!(member, error = %err, "could not pass a trust store removal on");
        }
    }
    Ok(Response::empty())
}

async fn run_hook(state: State, req: Request) -> HandlerResult {
    let hook = remote_hook(req.param("hook")?)?;
    // `500` says the hook ran and failed, which the caller tells apart from not running it.
    run_hook_here(&state, hook, &req).await.map_err(ApiError::internal)?;
    Ok(Response::empty())
}

/// The hooks other members may run here, by wire name.
fn remote_hook(name: &str) -> Result<&'static str, ApiError> {
    ["pre-remove", "post-remove", "on-new-member", "on-daemon-config-update"]
        .into_iter()
        .find(|h| *h == name)
        .ok_or_else(|| ApiError::not_found(format!("no remotely callable hook named {name:?}")))
}

/// Runs `hook` on this member with the request's body; the error says which hook failed.
async fn run_hook_here(state: &State, hook: &'static str, req: &Request) -> Result<(), String> {
    let hooks = state.settings().hooks.clone();
    let bad = |e: ApiError| format!("the {hook} hook's request: {}", e.message);
    let result = match hook {
        "pre-remove" => hooks.pre_remove(state, req.json::<RemoveHookRequest>().map_err(bad)?.force).await,
        "post-remove" => hooks.post_remove(state, req.json::<RemoveHookRequest>().map_err(bad)?.force).await,
        "on-new-member" => {
            hooks.on_new_member(state, &req.json::<NewMemberHookRequest>().map_err(bad)?.new_member).await
        }
        _ => hooks.on_daemon_config_update(state, &req.json::<MemberConfig>().map_err(bad)?).await,
    };
    result.map_err(|e| format!("the {hook} hook failed: {e}"))
}

/// Runs a hook here and on every other member but the caller, answering once all have. A
/// joiner asks this of the member that admitted it for OnNewMember: that member's connections
/// to every other are kept open, where the joiner would open one to each, and when hundreds
/// join at once those handshakes (hundreds per join) starved the raft threads.
async fn run_hook_on_members(state: State, req: Request) -> HandlerResult {
    let hook = remote_hook(req.param("hook")?)?;
    let Trust::Member(caller) = &req.trust else {
        return Err(ApiError::forbidden("only a member may run a hook on every member"));
    };
    let body: serde_json::Value = req.json()?;
    let me = state.name();
    let others: Vec<_> = state.peer_clients()?.into_iter().filter(|(m, _)| m.name != *caller && m.name != me).collect();
    let (here, there) =
        tokio::join!(run_hook_here(&state, hook, &req), membership::hook_on_members(others, hook, &body));
    // Worded as when the caller asks each member itself: the hook, then each member.
    let here = here.err().map(|e| format!("the {hook} hook failed on {me}: {e}"));
    let failed: Vec<String> = [here, there.err().map(|e| e.message().to_owned())].into_iter().flatten().collect();
    if !failed.is_empty() {
        return Err(ApiError::internal(failed.join("; ")));
    }
    Ok(Response::empty())
}

/// A leader's heartbeat: sync the trust store from it and report what this member runs.
async fn heartbeat(state: State, req: Request) -> HandlerResult {
    state.runtime()?.hear_from_leader();
    let request: HeartbeatRequest = req.json()?;
    if let Trust::Member(sender) = &req.trust
        && *sender != request.leader
    {
        return Err(ApiError::forbidden(format!("heartbeat sent by {sender} claims to come from {}", request.leader)));
    }
    beat::sync_truststore(&state, &request.leader, &request.members);
    beat::learn_clocks(&state, &request.clocks);
    if let Some(monitors) = &request.monitors {
        crate::server::domain::monitors::check(&state, monitors);
    }
    Response::sync(beat::answer(&state))
}
