//! Changing a member's address while the rest of the cluster keeps its quorum (`microctl
//! cluster set-address NAME ADDRESS`, sent to member NAME's own control socket). microcluster
//! can only do this through quorum-loss recovery, with every member stopped.
//!
//! The address is the member's identity everywhere (dqlite node address, trust stores, leader
//! identity), and raft cannot change a node's address in place (libraft 0.15 keeps dialing the
//! address it first knew for a node id), so the member comes back as a new dqlite node:
//!
//! 1. The member hands its role and leadership over, as on shutdown.
//! 2. The leader ([`relocate`]) records the new address in `core_cluster_members` (so heartbeats
//!    carry it from then on), demotes and removes the old node, adds the member's new node (a
//!    spare, with the id the member chose) at the new address, and updates every trust store.
//!    A failing step undoes the ones before it.
//! 3. The member stops its runtime, empties its dqlite data, records the new id and address,
//!    starts at the new address, opens the database and takes the role the cluster needs
//!    (catching up from the leader). If it cannot start there, steps 2 and 3 run again with the
//!    old address.
//!
//! Every step is idempotent: a member left between addresses (a crash, a lost answer) is
//! brought to one of them by running the command again, and a member that restarts at its new
//! address is given its role by the leader's heartbeat. A member whose old address is gone (the
//! machine was re-addressed, so its runtime cannot start) does step 2 through any other member it
//! trusts and leaves step 3's start to the daemon's start-up loop. The only member of a cluster
//! keeps its node and forces its one-node configuration to the new address instead.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dqlite::{NodeInfo, Role};
use tokio::sync::MutexGuard;

use super::{fan_out, handover, retry_config_change};
use crate::api::{ClusterMemberLocal, MemberConfig, MoveMemberRequest, ServerAddress};
use crate::client::{Client, ClientError};
use crate::server::db::{DbStatus, members};
use crate::server::error::{Error, ErrorKind, OperationError};
use crate::server::state::runtime::Runtime;
use crate::server::state::start::{OPEN_TIMEOUT, open_database, start_runtime};
use crate::server::state::{NodeToStart, State};
use crate::state_dir;
use crate::{tls, validate};

/// How long a move waits for the member's init lock (held while it starts or joins).
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Deadline of the leader's side of a move.
const MOVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a member that was not running waits for its start-up loop to bring it up at the
/// new address.
const RESTART_WAIT: Duration = Duration::from_secs(60);

/// One move at a time on the leader: a retried request must not race its first attempt.
static MOVES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn internal(err: impl std::fmt::Display) -> Error {
    Error::internal(err.to_string())
}

/// Runs `work` in a task of its own, so it ends the same way even if the caller goes away: a
/// move abandoned halfway would leave the member between two addresses.
async fn to_the_end(work: impl Future<Output = Result<(), Error>> + Send + 'static) -> Result<(), Error> {
    tokio::spawn(work).await.unwrap_or_else(|e| Err(Error::internal(format!("the address change stopped: {e}"))))
}

/// On member `name` itself: moves it to `address`.
pub(crate) async fn set_address(state: &State, name: &str, address: &str) -> Result<(), Error> {
    validate::member_name(name).map_err(|e| Error::invalid(e.to_string()))?;
    validate::member_address(address).map_err(|e| Error::invalid(e.to_string()))?;
    let me = state.name();
    if name != me {
        return Err(Error::invalid(format!(
            "this is member {me:?}, not {name:?}: run the command on {name} itself (with its state directory)"
        )));
    }
    let (state, address) = (state.clone(), address.to_owned());
    to_the_end(async move { change(&state, &address).await }).await
}

/// What the member sees when asked to move.
#[derive(Debug, Clone)]
struct Seen {
    name: String,
    /// This member's node id in `node.toml`; none: not initialised.
    node_id: Option<u64>,
    /// Another trusted member already at the new address.
    taken_by: Option<String>,
    /// Nobody else in the trust store.
    alone_in_trust: bool,
    /// This member's runtime, if it runs.
    running: Option<Running>,
}

/// A running member's view.
#[derive(Debug, Clone)]
struct Running {
    node_id: u64,
    /// Its address in `daemon.toml`.
    address: String,
    /// Why its database is not online; none when it is.
    offline: Option<String>,
    /// Its address in `core_cluster_members`.
    recorded: Option<String>,
    /// dqlite's configuration: (id, address) of each node.
    nodes: Vec<(u64, String)>,
}

/// Why a member refuses to move.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum MoveRefused {
    #[error("this member is not initialised; give it its address with `init` instead")]
    NotInitialised,
    #[error("address {address} is already used by member {member:?}")]
    AddressTaken { address: String, member: String },
    #[error("changing the address needs this member's database online: {0}")]
    Offline(String),
}

impl OperationError for MoveRefused {
    fn kind(&self) -> ErrorKind {
        match self {
            MoveRefused::NotInitialised | MoveRefused::AddressTaken { .. } => ErrorKind::Conflict,
            MoveRefused::Offline(_) => ErrorKind::Unavailable,
        }
    }
}

/// What a move comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Move {
    Refuse(MoveRefused),
    /// Already at the new address everywhere (a repeated command).
    AlreadyThere,
    /// The cluster's only node moves alone: the same node, its configuration forced to the new
    /// address; `running`: restarted here, otherwise by the start-up loop.
    Alone {
        node_id: u64,
        running: bool,
    },
    /// Through the cluster (which adds a new node at the new address); `running`: the member
    /// steps down and restarts there, otherwise the start-up loop starts it there.
    ThroughCluster {
        running: bool,
    },
}

/// Decides a move of the member to `new` from what it sees.
fn plan(seen: &Seen, new: &str) -> Move {
    let Some(node_id) = seen.node_id else { return Move::Refuse(MoveRefused::NotInitialised) };
    if let Some(member) = &seen.taken_by {
        return Move::Refuse(MoveRefused::AddressTaken { address: new.to_owned(), member: member.clone() });
    }
    let Some(running) = &seen.running else {
        return match seen.alone_in_trust {
            true => Move::Alone { node_id, running: false },
            false => Move::ThroughCluster { running: false },
        };
    };
    if let Some(status) = &running.offline {
        return Move::Refuse(MoveRefused::Offline(status.clone()));
    }
    let mine = |(id, address): &(u64, String)| *id == running.node_id && address == new;
    if running.address == new && running.recorded.as_deref() == Some(new) && running.nodes.iter().any(mine) {
        return Move::AlreadyThere;
    }
    match running.nodes.iter().all(|(id, _)| *id == running.node_id) {
        true => Move::Alone { node_id: running.node_id, running: true },
        false => Move::ThroughCluster { running: true },
    }
}

/// Reads what [`plan`] decides from.
async fn gather(state: &State, new: &str) -> Result<Seen, Error> {
    let name = state.name();
    let trusted = state.trust().snapshot();
    let mut seen = Seen {
        node_id: state.dir().node_info().map_err(internal)?.map(|info| info.id),
        taken_by: trusted.by_address(new).filter(|e| e.member.name != name).map(|e| e.member.name.clone()),
        alone_in_trust: trusted.iter().all(|e| e.member.name == name),
        running: None,
        name,
    };
    if seen.node_id.is_none() || seen.taken_by.is_some() {
        return Ok(seen);
    }
    let Ok(runtime) = state.runtime() else { return Ok(seen) };
    let mut running = Running {
        node_id: runtime.node_id,
        address: state.address(),
        offline: state.require_database().err().map(|_| state.database_status_text()),
        recorded: None,
        nodes: Vec::new(),
    };
    if running.offline.is_none() {
        running.nodes = runtime.db.client().cluster().await?.into_iter().map(|n| (n.id, n.address)).collect();
        let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await?;
        running.recorded = rows.into_iter().find(|r| r.name == seen.name).map(|r| r.address);
    }
    seen.running = Some(running);
    Ok(seen)
}

async fn change(state: &State, new: &str) -> Result<(), Error> {
    let init = tokio::time::timeout(LOCK_WAIT, state.lock_init()).await.map_err(|_| {
        Error::unavailable("this member is busy starting or changing its membership; try again in a moment")
    })?;
    let seen = gather(state, new).await?;
    let old = state.address();
    let alone = match plan(&seen, new) {
        Move::Refuse(refused) => return Err(refused.into()),
        Move::AlreadyThere => return Ok(()),
        Move::Alone { node_id, running: false } => {
            return move_stopped(state, init, NextNode::Recovered(node_id), new).await;
        }
        Move::ThroughCluster { running: false } => {
            return move_stopped(state, init, NextNode::Fresh(dqlite::generate_id(new)), new).await;
        }
        Move::Alone { running: true, .. } => true,
        Move::ThroughCluster { running: true } => false,
    };
    let runtime = state.runtime()?;
    let moved = move_running(state, init, &runtime, &old, new, alone).await;
    let restarted = !state.runtime().is_ok_and(|now| Arc::ptr_eq(&now, &runtime));
    if moved.is_err() && restarted && state.database_status() != DbStatus::Online && !state.is_shutting_down() {
        // A restart that failed left the member without its database: the start-up loop
        // retries (at the address its files name) until it runs.
        keep_trying(state);
    }
    moved
}

/// How the member's next dqlite node comes about.
#[derive(Debug, Clone, Copy)]
enum NextNode {
    /// A new node with this id and empty data (the cluster has added it at the new address).
    Fresh(u64),
    /// The same node (the cluster's only one), its configuration forced to the new address.
    Recovered(u64),
}

/// A running member: step down, have the cluster record the move, restart at the new address.
async fn move_running(
    state: &State,
    _init: MutexGuard<'_, ()>,
    runtime: &Arc<Runtime>,
    old: &str,
    new: &str,
    alone: bool,
) -> Result<(), Error> {
    if new != runtime.address {
        can_listen(new)?;
    }
    if alone {
        let node = NextNode::Recovered(runtime.node_id);
        let moved = match restart(state, new, node).await {
            Ok(moved) => moved,
            Err(err) => return Err(move_back(state, old, err, true).await),
        };
        return come_online(state, &moved).await;
    }

    handover::step_down(state).await.map_err(|e| e.context("handing this member's role over before moving it"))?;
    let node_id = dqlite::generate_id(new);
    if let Err(err) = ask_cluster(state, new, node_id).await {
        // The leader refuses before changing anything, and undoes a move that failed; this
        // covers an answer that was lost (putting this node back is a no-op if nothing changed).
        if err.kind().is_member_side()
            && let Err(undo) = ask_cluster(state, &runtime.address, runtime.node_id).await
        {
            tracing::error!(error = %undo, "making sure the cluster still has this member at its old address");
            return Err(Error::new(
                err.kind(),
                format!("{err}; the cluster may have recorded part of the move: run the command again"),
            ));
        }
        return Err(err);
    }
    tracing::info!(from = old, to = new, "the cluster expects this member at its new address; restarting there");
    let moved = match restart(state, new, NextNode::Fresh(node_id)).await {
        Ok(moved) => moved,
        Err(err) => return Err(move_back(state, old, err, false).await),
    };
    come_online(state, &moved).await?;
    notify(state).await;
    Ok(())
}

/// After failing to start at the new address: moves back to `old` (a member of a larger
/// cluster through the cluster first); returns the error to report.
async fn move_back(state: &State, old: &str, err: Error, alone: bool) -> Error {
    tracing::warn!(error = %err, "could not start at the new address; moving back to {old}");
    let back = async {
        let node = match state.dir().node_info().map_err(internal)? {
            Some(info) if alone => NextNode::Recovered(info.id),
            _ => {
                let node_id = dqlite::generate_id(old);
                ask_cluster(state, old, node_id).await?;
                NextNode::Fresh(node_id)
            }
        };
        let runtime = restart(state, old, node).await?;
        come_online(state, &runtime).await
    };
    match back.await {
        Ok(()) => err.context(format!("stayed at {old}")),
        Err(undo) => Error::new(
            err.kind(),
            format!(
                "{err}; moving back to {old} failed too: {undo}. This member keeps trying to start at the \
                     address in its daemon.toml; run the command again once the cause is fixed"
            ),
        ),
    }
}

/// A member whose runtime is not running (its start-up loop cannot bind its address): records
/// the move and lets the start-up loop start it at the new address.
async fn move_stopped(state: &State, init: MutexGuard<'_, ()>, node: NextNode, new: &str) -> Result<(), Error> {
    can_listen(new)?;
    if let NextNode::Fresh(node_id) = node {
        ask_cluster(state, new, node_id).await?;
    }
    prepare(state, new, node).await.map_err(|e| {
        e.context(format!(
            "the cluster expects this member at {new} now, but it could not switch; run the command again"
        ))
    })?;
    tracing::info!(to = new, "moved this member while it was not running; its start-up continues there");
    drop(init);
    let runtime = wait_started(state, new).await?;
    settle(state, &runtime).await?;
    notify(state).await;
    Ok(())
}

/// Stops the runtime and switches this member to `address` and `node` (files and memory).
async fn prepare(state: &State, address: &str, node: NextNode) -> Result<u64, Error> {
    let runtime = state.take_runtime();
    if let Some(runtime) = runtime {
        state.set_db_status(DbStatus::Starting);
        runtime.stop().await;
    }
    let id = match node {
        NextNode::Fresh(id) => {
            fresh_node(state, id)?;
            id
        }
        NextNode::Recovered(id) => {
            recover_alone(state, id, address).await?;
            id
        }
    };
    super::record_identity(state, &state.name(), address)?;
    let own = state.trust().snapshot().by_name(&state.name()).map(|e| e.member.clone());
    if let Some(own) = own {
        let moved = ClusterMemberLocal { address: address.to_owned(), ..own };
        state.trust().add(moved).map_err(internal)?;
    }
    Ok(id)
}

/// [`prepare`], then starts the runtime at `address`.
async fn restart(state: &State, address: &str, node: NextNode) -> Result<Arc<Runtime>, Error> {
    let id = prepare(state, address, node).await?;
    start_runtime(state, id).await
}

/// Opens the database of a restarted runtime, then [`settle`]s.
async fn come_online(state: &State, runtime: &Arc<Runtime>) -> Result<(), Error> {
    if let Err(err) = open_database(state, runtime, OPEN_TIMEOUT).await {
        return Err(err.context(format!(
            "this member runs at {} but its database is not online yet; it keeps trying",
            runtime.address
        )));
    }
    state.start_background(runtime);
    settle(state, runtime).await
}

/// Once the member runs at its new address: the role the cluster needs (the leader's heartbeat
/// gives it one later if this fails) and its own row (already right unless it is alone).
async fn settle(state: &State, runtime: &Runtime) -> Result<(), Error> {
    if let Err(err) = super::take_role_on_leader(state, runtime, &state.name(), runtime.node_id).await {
        tracing::warn!(error = %err, "taking a role at the new address; the leader's heartbeat will give one");
    }
    let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await?;
    if rows.iter().any(|r| r.name == state.name() && r.address != runtime.address) {
        set_row_address(runtime, &state.name(), &runtime.address).await?;
    }
    tracing::info!(address = runtime.address, "this member is settled at its address");
    Ok(())
}

/// Hands starting to the daemon's start-up loop, which retries until the member runs.
fn keep_trying(state: &State) {
    let Ok(Some(info)) = state.dir().node_info() else { return };
    state.restart("moving to a new address", NodeToStart::Id(info.id), Duration::ZERO);
}

/// Waits until the start-up loop runs this member at `address` with its database online.
async fn wait_started(state: &State, address: &str) -> Result<Arc<Runtime>, Error> {
    let deadline = Instant::now() + RESTART_WAIT;
    loop {
        if let Ok(runtime) = state.runtime()
            && runtime.address == address
            && state.database_status() == DbStatus::Online
        {
            return Ok(runtime);
        }
        if state.is_shutting_down() {
            return Err(Error::unavailable("the daemon is shutting down"));
        }
        if Instant::now() >= deadline {
            return Err(Error::unavailable(format!(
                "the cluster expects this member at {address} now, but it has not come up there within \
                 {RESTART_WAIT:?} ({}); it keeps trying (see its log)",
                state.database_status_text()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fails unless this machine can listen on `address` right now (checked before anything changes).
fn can_listen(address: &str) -> Result<(), Error> {
    std::net::TcpListener::bind(address).map(drop).map_err(|e| {
        Error::conflict(format!("cannot listen on {address}: {e}; give an address of this machine that is free"))
    })
}

/// Empties the dqlite data directory for a new node `id`. `node.toml` is rewritten in place,
/// never missing, so the member counts as initialised throughout.
fn fresh_node(state: &State, id: u64) -> Result<(), Error> {
    let dir = state.dir();
    let (data, keep) = (dir.database_dir(), dir.node_info_path());
    let entries = std::fs::read_dir(&data).map_err(|e| internal(format!("reading {}: {e}", data.display())))?;
    for entry in entries {
        let path = entry.map_err(|e| internal(format!("reading {}: {e}", data.display())))?.path();
        if path == keep {
            continue;
        }
        let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.map_err(|e| internal(format!("removing {}: {e}", path.display())))?;
    }
    dir.set_node_info(&state_dir::NodeInfo { id }).map_err(internal)
}

/// Forces the one-node configuration of the stopped node `id` to `address`.
async fn recover_alone(state: &State, id: u64, address: &str) -> Result<(), Error> {
    let (data, address) = (state.dir().database_dir(), address.to_owned());
    let recovered = tokio::task::spawn_blocking(move || -> Result<(), dqlite::NodeError> {
        // Never started, so nothing binds: "@" only because libdqlite cannot bind IPv6 addresses.
        let mut node = dqlite::Node::builder(id, address.clone(), data).bind_address("@").build()?;
        node.recover(&[NodeInfo { id, address, role: Some(Role::Voter) }])
    })
    .await
    .map_err(internal)?;
    recovered.map_err(|e| Error::internal(format!("moving the one-node configuration: {e}")))
}

/// Client TLS to the other members: the runtime's, or (not running) built from the state
/// directory.
fn peer_tls(state: &State) -> Result<Arc<rustls::ClientConfig>, Error> {
    if let Ok(runtime) = state.runtime() {
        return Ok(runtime.peer_tls.clone());
    }
    let cluster =
        state.dir().cluster_identity().map_err(internal)?.ok_or_else(|| internal("cluster.crt is missing"))?;
    let server = state.server_identity().read().map(|i| i.clone()).map_err(|_| internal("poisoned"))?;
    tls::client_config(Some(&server), vec![cluster.fingerprint().map_err(internal)?]).map_err(internal)
}

/// Has the leader make `node_id` at `address` this member's dqlite node, through the leader
/// or, failing that, any other member that answers (it forwards to the leader).
async fn ask_cluster(state: &State, address: &str, node_id: u64) -> Result<(), Error> {
    let (tls, me) = (peer_tls(state)?, state.name());
    let mut targets = Vec::new();
    if let Ok(runtime) = state.runtime()
        && let Ok(Ok(leader)) = tokio::time::timeout(Duration::from_secs(2), runtime.db.client().leader()).await
        && leader.address != runtime.address
    {
        targets.push(leader.address);
    }
    for entry in state.trust().snapshot().iter().filter(|e| e.member.name != me) {
        if !targets.contains(&entry.member.address) {
            targets.push(entry.member.address.clone());
        }
    }
    let request = MoveMemberRequest { address: address.to_owned(), node_id };
    let mut failures = Vec::new();
    for target in targets {
        let client = Client::https(target.clone(), tls.clone()).with_timeout(MOVE_TIMEOUT);
        match client.move_member(&me, &request).await {
            Ok(()) => return Ok(()),
            // The cluster answered and refused: any member would say the same.
            Err(ClientError::Api { status, message }) if status != hyper::StatusCode::SERVICE_UNAVAILABLE => {
                return Err(Error::new(ErrorKind::Peer(status.as_u16()), message));
            }
            Err(err) => failures.push(format!("{target}: {err}")),
        }
    }
    Err(Error::unavailable(format!(
        "no other member could record the new address: {}",
        if failures.is_empty() { "this member trusts no other".to_owned() } else { failures.join("; ") }
    )))
}

/// Tells the other members' applications where this member is now (OnDaemonConfigUpdate).
async fn notify(state: &State) {
    let update = MemberConfig {
        name: state.name(),
        address: state.address(),
        servers: state
            .http()
            .wanted_servers(state)
            .into_iter()
            .map(|(name, address)| (name, ServerAddress { address }))
            .collect(),
    };
    let Ok(peers) = state.peer_clients() else { return };
    for (member, err) in fan_out(peers, |c| {
        let update = update.clone();
        async move { c.run_hook("on-daemon-config-update", &update).await }
    })
    .await
    {
        tracing::warn!(member, error = %err, "the OnDaemonConfigUpdate hook failed on a member");
    }
}

/// Records member `name`'s address in `core_cluster_members`, unless another member has it.
async fn set_row_address(runtime: &Runtime, name: &str, address: &str) -> Result<(), Error> {
    let (owned_name, owned_address) = (name.to_owned(), address.to_owned());
    let taken = runtime
        .db
        .transaction(move |tx| {
            let (name, address) = (owned_name.clone(), owned_address.clone());
            Box::pin(async move {
                let rows = members::list(tx).await?;
                if let Some(other) = rows.iter().find(|r| r.name != name && r.address == address) {
                    return Ok(Some(other.name.clone()));
                }
                members::set_address(tx, &name, &address).await?;
                Ok(None)
            })
        })
        .await?;
    match taken {
        Some(other) => Err(Error::conflict(format!("address {address} is already used by member {other:?}"))),
        None => Ok(()),
    }
}

/// On any member (forwarded to the leader): makes `request.node_id` at `request.address`
/// member `name`'s only dqlite node, and `request.address` its address in the database and
/// every trust store.
pub(crate) async fn relocate(state: &State, name: &str, request: &MoveMemberRequest) -> Result<(), Error> {
    validate::member_name(name).map_err(|e| Error::invalid(e.to_string()))?;
    validate::member_address(&request.address).map_err(|e| Error::invalid(e.to_string()))?;
    if request.node_id == 0 {
        return Err(Error::invalid("0 is not a dqlite node id"));
    }
    let runtime = state.online_runtime()?;
    let leader = runtime.db.client().leader().await?;
    if leader.address != runtime.address {
        return state
            .member_client(&leader.address)?
            .with_timeout(MOVE_TIMEOUT)
            .move_member(name, request)
            .await
            .map_err(|e| super::remove::from_client("forwarding the address change to the leader", e));
    }
    let (state, name, request) = (state.clone(), name.to_owned(), request.clone());
    to_the_end(async move {
        let _one = MOVES.lock().await;
        relocate_here(&state, &name, &request).await
    })
    .await
}

/// A step of [`relocate`] to undo if a later one fails.
#[derive(Debug)]
enum Undo {
    Address { name: String, address: String },
    Role(u64, Role),
    Removed(NodeInfo),
    Added(u64),
}

async fn relocate_here(state: &State, name: &str, request: &MoveMemberRequest) -> Result<(), Error> {
    let runtime = state.online_runtime()?;
    let client = runtime.db.client().clone();
    let new = request.address.as_str();
    let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await?;
    let row = rows
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| Error::not_found(format!("no cluster member named {name:?}")))?;
    let trusted = state.trust().snapshot();
    let other = rows
        .iter()
        .find(|r| r.name != name && r.address == new)
        .map(|r| r.name.clone())
        .or_else(|| trusted.by_address(new).filter(|e| e.member.name != name).map(|e| e.member.name.clone()));
    if let Some(other) = other {
        return Err(Error::conflict(format!("address {new} is already used by member {other:?}")));
    }
    if row.address == runtime.address {
        return Err(Error::conflict(format!(
            "{name} leads the cluster; hand leadership to another voter first (`microctl cluster transfer-leader`)"
        )));
    }
    let nodes = client.cluster().await?;
    if nodes.iter().any(|n| n.id == request.node_id && n.address != new) {
        return Err(Error::conflict(format!("dqlite node id {} is already in use", request.node_id)));
    }
    let stale = stale_nodes(&nodes, &row.address, new, request.node_id);
    let present = nodes.iter().any(|n| n.id == request.node_id);
    if row.address == new && stale.is_empty() && present {
        return Ok(());
    }
    check_quorum(state, &runtime, &nodes, &stale).await?;

    let mut undo = Vec::new();
    if let Err(err) = relocate_steps(&runtime, name, &row.address, request, &stale, present, &mut undo).await {
        tracing::warn!(member = name, error = %err, "changing a member's address failed; undoing it");
        for step in undo.into_iter().rev() {
            if let Err(failed) = undo_step(&runtime, &step).await {
                tracing::error!(member = name, ?step, error = %failed, "undoing part of an address change");
            }
        }
        return Err(err);
    }

    let member =
        ClusterMemberLocal { name: name.to_owned(), address: new.to_owned(), certificate: row.certificate.clone() };
    // A trust store that misses this is brought in line by the next heartbeat.
    if let Err(err) = state.trust().add(member.clone()) {
        tracing::warn!(member = name, error = %err, "trust store: cannot record the new address");
    }
    runtime.set_servers(state.trust().snapshot().addresses());
    let others: Vec<_> = state.peer_clients()?.into_iter().filter(|(m, _)| m.name != name).collect();
    for (peer, err) in fan_out(others, |c| {
        let member = member.clone();
        // One that is down learns it from the next heartbeat; do not wait for it long.
        async move { c.with_timeout(Duration::from_secs(5)).add_trust(&member).await }
    })
    .await
    {
        tracing::warn!(member = peer, error = %err, "could not pass a member's new address on; the next heartbeat will");
    }
    tracing::info!(member = name, from = row.address, to = new, node = request.node_id, "changed a member's address");
    Ok(())
}

/// Refuses a move that would leave the voters (now, or once the member's old node is gone)
/// without a quorum of members that answer.
async fn check_quorum(state: &State, runtime: &Runtime, nodes: &[NodeInfo], stale: &[NodeInfo]) -> Result<(), Error> {
    if !stale.iter().any(|n| n.role == Some(Role::Voter)) {
        return Ok(());
    }
    let others = nodes.iter().filter(|n| n.role == Some(Role::Voter) && n.address != runtime.address).cloned();
    let mut online: Vec<u64> = handover::answering(state, others).await?.iter().map(|n| n.id).collect();
    online.push(runtime.node_id);
    match quorum_shortfall(nodes, stale, &online) {
        None => Ok(()),
        Some((answering, remaining)) => Err(Error::conflict(format!(
            "moving this member would leave the cluster without a quorum: {answering} of the {remaining} other \
             voters answer; bring the missing members back first"
        ))),
    }
}

/// The member's dqlite nodes other than `node_id`: at its `recorded` address, or left at the
/// `new` one by an earlier attempt.
fn stale_nodes(nodes: &[NodeInfo], recorded: &str, new: &str, node_id: u64) -> Vec<NodeInfo> {
    nodes.iter().filter(|n| (n.address == recorded || n.address == new) && n.id != node_id).cloned().collect()
}

/// With the nodes in `online` answering: `None` if the voters keep a quorum both now and
/// without the `stale` nodes, else how many of the remaining voters answer and how many remain.
fn quorum_shortfall(nodes: &[NodeInfo], stale: &[NodeInfo], online: &[u64]) -> Option<(usize, usize)> {
    let voters: Vec<&NodeInfo> = nodes.iter().filter(|n| n.role == Some(Role::Voter)).collect();
    let remaining: Vec<&&NodeInfo> = voters.iter().filter(|n| !stale.iter().any(|s| s.id == n.id)).collect();
    let online_now = voters.iter().filter(|n| online.contains(&n.id)).count();
    let online_after = remaining.iter().filter(|n| online.contains(&n.id)).count();
    let short = online_now < voters.len() / 2 + 1 || online_after < remaining.len() / 2 + 1;
    short.then_some((online_after, remaining.len()))
}

async fn relocate_steps(
    runtime: &Runtime,
    name: &str,
    old: &str,
    request: &MoveMemberRequest,
    stale: &[NodeInfo],
    present: bool,
    undo: &mut Vec<Undo>,
) -> Result<(), Error> {
    let client = runtime.db.client();
    let new = request.address.as_str();
    if old != new {
        set_row_address(runtime, name, new).await?;
        undo.push(Undo::Address { name: name.to_owned(), address: old.to_owned() });
    }
    for node in stale {
        // A spare neither votes nor campaigns, so the old node stays quiet once removed.
        if let Some(role) = node.role.filter(|r| *r != Role::Spare) {
            retry_config_change("demoting the member's old node", || client.assign(node.id, Role::Spare)).await?;
            undo.push(Undo::Role(node.id, role));
        }
        retry_config_change("removing the member's old node", || client.remove(node.id)).await?;
        undo.push(Undo::Removed(node.clone()));
    }
    if !present {
        // A spare: it takes its role once it runs and can catch up.
        retry_config_change("adding the member's new node", || client.add(request.node_id, new)).await?;
        undo.push(Undo::Added(request.node_id));
    }
    Ok(())
}

async fn undo_step(runtime: &Runtime, step: &Undo) -> Result<(), Error> {
    let client = runtime.db.client();
    match step {
        Undo::Address { name, address } => set_row_address(runtime, name, address).await,
        Undo::Role(id, role) => retry_config_change("restoring a role", || client.assign(*id, *role)).await,
        Undo::Removed(node) => retry_config_change("adding back a node", || client.add(node.id, &node.address)).await,
        Undo::Added(id) => retry_config_change("removing an added node", || client.remove(*id)).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, role: Role) -> NodeInfo {
        NodeInfo { id, address: format!("127.0.0.1:{id}"), role: Some(role) }
    }

    fn seen() -> Seen {
        Seen {
            name: "m2".into(),
            node_id: Some(2),
            taken_by: None,
            alone_in_trust: false,
            running: Some(Running {
                node_id: 2,
                address: "10.0.0.2:7000".into(),
                offline: None,
                recorded: Some("10.0.0.2:7000".into()),
                nodes: vec![(1, "10.0.0.1:7000".into()), (2, "10.0.0.2:7000".into())],
            }),
        }
    }

    fn running(change: impl FnOnce(&mut Running)) -> Seen {
        let mut seen = seen();
        if let Some(running) = seen.running.as_mut() {
            change(running);
        }
        seen
    }

    #[test]
    fn each_move_is_planned_from_what_the_member_sees() {
        let new = "10.0.0.9:7000";
        let here = "10.0.0.2:7000";
        let stopped = Seen { running: None, ..seen() };
        let cases: Vec<(&str, Seen, &str, Move)> = vec![
            ("a running member of two", seen(), new, Move::ThroughCluster { running: true }),
            ("not initialised", Seen { node_id: None, ..seen() }, new, Move::Refuse(MoveRefused::NotInitialised)),
            (
                "an address another member has",
                Seen { taken_by: Some("m1".into()), ..seen() },
                new,
                Move::Refuse(MoveRefused::AddressTaken { address: new.into(), member: "m1".into() }),
            ),
            (
                "the database offline",
                running(|r| r.offline = Some("Database is waiting for a leader".into())),
                new,
                Move::Refuse(MoveRefused::Offline("Database is waiting for a leader".into())),
            ),
            ("already there (the same command again)", seen(), here, Move::AlreadyThere),
            (
                "its row still at another address (a move cut short)",
                running(|r| r.recorded = Some("10.0.0.8:7000".into())),
                here,
                Move::ThroughCluster { running: true },
            ),
            (
                "its node still at another address",
                running(|r| r.nodes = vec![(1, "10.0.0.1:7000".into()), (2, "10.0.0.8:7000".into())]),
                here,
                Move::ThroughCluster { running: true },
            ),
            (
                "the cluster's only node",
                running(|r| r.nodes = vec![(2, here.into())]),
                new,
                Move::Alone { node_id: 2, running: true },
            ),
            ("stopped, with others", stopped.clone(), new, Move::ThroughCluster { running: false }),
            (
                "stopped and alone",
                Seen { alone_in_trust: true, ..stopped },
                new,
                Move::Alone { node_id: 2, running: false },
            ),
        ];
        for (what, seen, to, want) in cases {
            assert_eq!(plan(&seen, to), want, "{what}");
        }
        let offline = Error::from(MoveRefused::Offline("Database is offline".into()));
        assert_eq!(offline.kind(), ErrorKind::Unavailable);
        assert_eq!(offline.message(), "changing the address needs this member's database online: Database is offline");
    }

    #[test]
    fn stale_nodes_are_the_members_other_nodes() {
        let nodes = [node(1, Role::Voter), node(2, Role::Voter), node(9, Role::Spare)];
        let moving = stale_nodes(&nodes, "127.0.0.1:2", "127.0.0.1:7", 7);
        assert_eq!(moving.iter().map(|n| n.id).collect::<Vec<_>>(), [2]);
        // Retried after the new node was added: nothing left to remove.
        let added = [node(1, Role::Voter), NodeInfo { id: 7, address: "127.0.0.1:7".into(), role: Some(Role::Spare) }];
        assert!(stale_nodes(&added, "127.0.0.1:7", "127.0.0.1:7", 7).is_empty());
        // A node an earlier attempt left at the new address goes too.
        let left = NodeInfo { id: 5, address: "127.0.0.1:7".into(), role: Some(Role::Spare) };
        let nodes = [node(1, Role::Voter), node(2, Role::Voter), left];
        let ids: Vec<u64> = stale_nodes(&nodes, "127.0.0.1:2", "127.0.0.1:7", 8).iter().map(|n| n.id).collect();
        assert_eq!(ids, [2, 5]);
    }

    #[test]
    fn a_move_keeps_a_quorum_of_voters_that_answer() {
        let three = [node(1, Role::Voter), node(2, Role::Voter), node(3, Role::Voter)];
        let moving = [three[1].clone()];
        assert_eq!(quorum_shortfall(&three, &moving, &[1, 2, 3]), None);
        // The moving member is down (its address is gone): the two others suffice.
        assert_eq!(quorum_shortfall(&three, &moving, &[1, 3]), None);
        // Another voter is down: the one left would be no quorum of two.
        assert_eq!(quorum_shortfall(&three, &moving, &[1, 2]), Some((1, 2)));
        // Two voters of four, then three of the five others answering out of five.
        let four: Vec<NodeInfo> = (1..=4).map(|id| node(id, Role::Voter)).collect();
        assert_eq!(quorum_shortfall(&four, &[four[3].clone()], &[1, 2]), Some((2, 3)));
        let five: Vec<NodeInfo> = (1..=5).map(|id| node(id, Role::Voter)).collect();
        assert_eq!(quorum_shortfall(&five, &[five[4].clone()], &[1, 2, 3]), None);
        // Stand-bys and spares do not count.
        let mixed = [node(1, Role::Voter), node(2, Role::StandBy), node(3, Role::Spare)];
        assert_eq!(quorum_shortfall(&mixed, &[mixed[1].clone()], &[1]), None);
    }
}
