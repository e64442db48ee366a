//! Joining: the joiner's side (`join`, and `resume` after a restart) and the cluster's side
//! (`admit`).
//!
//! 1. The joiner writes its journal (`join.toml`: name, address, token, hook config), checks
//!    the cluster certificate against the token's fingerprint and sends its name, address,
//!    certificate and the token's secret to any join address (forwarded to the leader).
//! 2. The leader checks the secret (constant time), expiry, name, certificate and address,
//!    inserts the member as PENDING stamped with the time (its progress), trusts the joiner on
//!    every member and answers with the cluster certificate and the member list. The token
//!    stays: it is used up when the join completes.
//! 3. The joiner stores all that (`node.toml` last), starts its listener and node, adds itself
//!    to dqlite as a spare and takes the role the cluster needs, opens the database, records its
//!    role and deletes its token in one transaction, runs the hooks and removes its journal.
//!
//! A join cut short never stays half done:
//! - A step failing after step 2 undoes it on both sides: this member resets itself and asks
//!   the cluster to remove it (forced), so no row, trust entry or dqlite node is left behind.
//! - A joiner that starts again with its journal carries the join through ([`resume`]): it asks
//!   to be admitted again, which any member answers at once when the joiner proves it holds the
//!   certificate its row records (whatever the row's role: a join cut after its last
//!   transaction still runs its hooks), then repeats every step, each idempotent. Refused, it
//!   resets itself; while the cluster cannot be reached and it holds `node.toml`, it retries.
//! - A joiner that never comes back is rolled back by the leader ([`super::stalled`]); the
//!   token is still valid then, so the same `init` works again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{
    ensure_server_identity, ensure_uninitialised, fan_out, fault_point, hook_failed, hook_on_members,
    retry_config_change, role_name, stalled, take_role_on_leader,
};
use crate::api::{ClusterMemberLocal, Control, JoinRequest, JoinResponse, JoinToken, NewMemberHookRequest, role};
use crate::client::{Client, ClientError};
use crate::server::db::{DbStatus, members, tokens};
use crate::server::error::{Error, ErrorKind, OperationError};
use crate::server::state::State;
use crate::server::state::clock;
use crate::server::state::runtime::Runtime;
use crate::server::state::start::{OPEN_TIMEOUT, clean_slate, open_database, reset_local, start_runtime};
use crate::state_dir::{NodeInfo, read_toml, remove_durable, write_toml};
use crate::tls::{self, Identity};
use crate::truststore::TrustEntry;
use crate::validate;
use hyper::StatusCode;

/// How long a joiner goes on trying its join addresses while none answers.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one join request may wait for its answer: the leader admits [`ADMISSIONS`] at a
/// time, and hundreds of members started together queue for a minute or more on a small
/// machine. Connecting is bounded apart ([`CONNECT_TIMEOUT`]), so an unreachable address
/// still gives way to the next at once.
const ADMISSION_WAIT: Duration = Duration::from_secs(120);
/// How long the leader keeps a join request waiting for its turn before answering that it
/// is busy: less than the joiner waits, so the joiner hears why.
const ADMISSION_QUEUE: Duration = Duration::from_secs(100);
/// How long a joiner retries recording its role while the database is locked by other
/// writers, beyond the write queue's own retries.
const BUSY_PATIENCE: Duration = Duration::from_secs(60);
/// Connecting to a join address (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts to finish an interrupted join while the cluster cannot be reached.
const RESUME_RETRY: Duration = Duration::from_secs(2);

/// Compares secrets without leaking where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The journal of a join under way (`join.toml`, 0600: it holds the token's secret). It exists
/// from before the join request until the join completed or was undone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Journal {
    name: String,
    address: String,
    token: String,
    #[serde(default)]
    config: BTreeMap<String, String>,
}

impl Journal {
    fn of(control: &Control) -> Journal {
        Journal {
            name: control.name.clone(),
            address: control.address.clone(),
            token: control.join_token.clone(),
            config: control.config.clone(),
        }
    }

    fn control(&self) -> Control {
        Control {
            join_token: self.token.clone(),
            name: self.name.clone(),
            address: self.address.clone(),
            config: self.config.clone(),
            ..Control::default()
        }
    }

    fn read(state: &State) -> Result<Option<Journal>, Error> {
        let path = state.dir().join_path();
        read_toml(&path).map_err(|e| {
            Error::internal(format!(
                "{e}; it records a join that was interrupted: delete {} and run `microctl init` again (if the \
                 cluster lists this member, remove it there first with `microctl cluster remove NAME --force`)",
                path.display()
            ))
        })
    }

    fn write(&self, state: &State) -> Result<(), Error> {
        write_toml(&state.dir().join_path(), self, 0o600).map_err(Error::wrap)
    }

    fn remove(state: &State) -> Result<(), Error> {
        remove_durable(&state.dir().join_path()).map_err(Error::wrap)
    }
}

/// Whether a join was under way when the daemon last stopped.
pub(crate) fn interrupted(state: &State) -> bool {
    state.dir().join_path().exists()
}

/// How a join that did not complete ended.
enum Cut {
    /// Undone here: this member is uninitialised again, its journal gone.
    RolledBack(Error),
    /// Left for another attempt: this member holds `node.toml` and the cluster could not be
    /// reached, or could not do a step.
    Pending(Error),
}

/// Where a join stood when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Reading `node.toml`, which says whether this is a resumed join.
    ReadNode,
    /// Decoding the token.
    Token,
    /// Recording this member's name and address.
    Identity,
    /// Asking the cluster to admit this member.
    Admission,
    /// The steps after the admission: files, node, role, database, hooks (`refused`: a hook
    /// refused, or the cluster answered what no retry changes).
    Steps { refused: bool },
}

/// What becomes of a join that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// Nothing: this member keeps what it has for another attempt.
    Retry,
    /// Undone on this member only: the cluster holds nothing that is this member's.
    Here,
    /// Undone here and in the cluster (its row, dqlite node and trust entries, by a forced
    /// removal), so no half-joined member is left anywhere.
    Everywhere,
}

/// Decides what a join that failed at `stage`, with an error of `kind`, leaves behind. A
/// `resumed` join (this member holds `node.toml`: the cluster may already count it as a node)
/// is retried while the failure is the cluster's or this member's passing state; a refusal, or
/// any failure of a fresh join, undoes it as far as it got.
fn undo(stage: Stage, kind: ErrorKind, resumed: bool) -> Undo {
    match stage {
        Stage::ReadNode => Undo::Retry,
        Stage::Token => Undo::Here,
        Stage::Identity if resumed => Undo::Retry,
        Stage::Identity => Undo::Here,
        // Refused, the cluster holds no row with this member's certificate.
        Stage::Admission if resumed && kind.is_member_side() => Undo::Retry,
        Stage::Admission => Undo::Here,
        Stage::Steps { refused: false } if resumed && !kind.is_refusal() => Undo::Retry,
        Stage::Steps { .. } => Undo::Everywhere,
    }
}

/// Why the steps after the admission stopped.
enum StepError {
    /// The cluster or this member could not do a step now: worth another attempt.
    Transient(Error),
    /// A hook refused, or the cluster answered what no retry changes.
    Final(Error),
}

impl From<Error> for StepError {
    fn from(err: Error) -> StepError {
        if err.kind().is_refusal() { StepError::Final(err) } else { StepError::Transient(err) }
    }
}

/// Joins the cluster that issued `control.join_token` (`microctl init NAME ADDRESS --token`).
pub(crate) async fn join(state: &State, control: &Control) -> Result<(), Error> {
    let _init = state.lock_init().await;
    if let Some(journal) = Journal::read(state)? {
        // An earlier join of this member was cut short: it is carried through first, so that it
        // ends joined or undone before anything else happens.
        let earlier = journal.control();
        match carry_through(state, &earlier).await {
            Ok(()) if journal.name == control.name && journal.address == control.address => return Ok(()),
            Ok(()) => {}
            Err(Cut::Pending(err)) => {
                return Err(err.context(format!(
                    "this member's join as {} was interrupted and cannot be finished yet (it is tried again in the \
                     background; `microctl waitready` waits for it)",
                    journal.name
                )));
            }
            Err(Cut::RolledBack(err)) if earlier == *control => return Err(err),
            Err(Cut::RolledBack(err)) => {
                tracing::warn!(name = journal.name, error = %err, "an interrupted join was undone");
            }
        }
    }
    let token = JoinToken::decode(&control.join_token);
    if token.as_ref().is_ok_and(|token| joined_as(state, control, token)) {
        // The same init again (its first run cut short, then finished after a restart): done.
        return Ok(());
    }
    ensure_uninitialised(state)?;
    validate::member_name(&control.name).map_err(|e| Error::invalid(e.to_string()))?;
    validate::member_address(&control.address).map_err(|e| Error::invalid(e.to_string()))?;
    token.map_err(|e| Error::invalid(e.to_string()))?;
    clean_slate(state).await?;
    Journal::of(control).write(state)?;
    carry_through(state, control).await.map_err(|cut| match cut {
        Cut::RolledBack(err) | Cut::Pending(err) => err,
    })
}

/// Whether this member already is `control.name` at `control.address` in the cluster that
/// issued `token`.
fn joined_as(state: &State, control: &Control, token: &JoinToken) -> bool {
    let dir = state.dir();
    let initialised = matches!(dir.node_info(), Ok(Some(_)));
    let cluster = dir.cluster_identity().ok().flatten().and_then(|c| c.fingerprint().ok());
    initialised
        && state.name() == control.name
        && state.address() == control.address
        && cluster.is_some_and(|fp| fp.eq_ignore_ascii_case(&token.fingerprint))
}

/// Carries an interrupted join through after a start (the daemon found `join.toml`), until it
/// completes or is undone; while this member holds `node.toml` and the cluster cannot be
/// reached, it tries again every [`RESUME_RETRY`].
pub(crate) async fn resume(state: State) {
    loop {
        let init = state.lock_init().await;
        let journal = match Journal::read(&state) {
            Ok(Some(journal)) => journal,
            Ok(None) => return,
            // An initialised member cannot finish its join without it: stop, naming the file.
            Err(err) if matches!(state.dir().node_info(), Ok(Some(_))) => return state.fail(err.message().to_owned()),
            Err(err) => {
                // Nothing here is part of a cluster yet: the next init starts from a clean slate.
                tracing::warn!(error = %err, "ignoring the unreadable journal of a join that never got far");
                let _ = Journal::remove(&state);
                return;
            }
        };
        tracing::info!(name = journal.name, "carrying through a join that was interrupted");
        match carry_through(&state, &journal.control()).await {
            Ok(()) => return,
            Err(Cut::RolledBack(err)) => {
                tracing::error!(
                    name = journal.name,
                    error = %err,
                    "the interrupted join could not be finished and was undone: this member is not initialised; \
                     run `microctl init` again (with a new token if the cluster says this one is used up or expired)"
                );
                return;
            }
            Err(Cut::Pending(err)) => {
                tracing::warn!(name = journal.name, error = %err, "the interrupted join cannot be finished yet; retrying");
            }
        }
        drop(init);
        if state.is_shutting_down() {
            return;
        }
        tokio::time::sleep(RESUME_RETRY).await;
    }
}

/// The whole join from the admission on, for a fresh join or one resumed with `node.toml`.
async fn carry_through(state: &State, control: &Control) -> Result<(), Cut> {
    let resumed = match state.dir().node_info() {
        Ok(info) => info.map(|i| i.id),
        Err(err) => return Err(cut_before_admission(state, Stage::ReadNode, Error::wrap(err), false).await),
    };
    let token = match JoinToken::decode(&control.join_token) {
        Ok(token) => token,
        Err(err) => {
            let err = Error::invalid(err.to_string());
            return Err(cut_before_admission(state, Stage::Token, err, resumed.is_some()).await);
        }
    };
    if let Err(err) = super::record_identity(state, &control.name, &control.address) {
        return Err(cut_before_admission(state, Stage::Identity, err, resumed.is_some()).await);
    }
    let (response, trusted_client, server) = match ask_to_join(state, control, &token, resumed.is_none()).await {
        Ok(admitted) => admitted,
        Err(err) => return Err(cut_before_admission(state, Stage::Admission, err, resumed.is_some()).await),
    };
    fault_point("join:after-admit", &control.name);

    match join_steps(state, control, &token, &server, &response, resumed).await {
        Ok(()) => {
            if let Err(err) = Journal::remove(state) {
                // The next start carries the completed join through again, which changes nothing.
                tracing::error!(error = %err, "removing the journal of a completed join");
            }
            tracing::info!(name = control.name, via = response.trusted_member.address, "joined the cluster");
            Ok(())
        }
        Err(failed) => {
            let (err, refused) = match failed {
                StepError::Transient(err) => (err, false),
                StepError::Final(err) => (err, true),
            };
            match undo(Stage::Steps { refused }, err.kind(), resumed.is_some()) {
                Undo::Retry => {
                    let runtime = state.take_runtime();
                    if let Some(runtime) = runtime {
                        runtime.stop().await;
                    }
                    let reason = format!("finishing an interrupted join: {}", err.message());
                    state.set_db_status_with(DbStatus::Starting, reason);
                    return Err(Cut::Pending(err));
                }
                Undo::Here | Undo::Everywhere => {}
            }
            tracing::warn!(error = %err, "join failed; undoing it");
            let _ = state.settings().hooks.pre_remove(state, true).await;
            // The cluster forgets this member while its node still runs: a joiner that became a
            // voter of a cluster of one must be there to vote its own removal through.
            let trusted_client = trusted_client.with_timeout(Duration::from_secs(60));
            if let Err(remove) = trusted_client.remove_member(&control.name, true).await {
                tracing::error!(error = %remove, "asking the cluster to forget this member after the failed join");
            }
            if let Err(reset) = reset_local(state).await {
                tracing::error!(error = %reset, "resetting after the failed join");
            }
            Err(Cut::RolledBack(err))
        }
    }
}

/// Ends a join that failed before this member was admitted: left for another attempt, or
/// undone here (nothing in the cluster is this member's yet).
async fn cut_before_admission(state: &State, stage: Stage, err: Error, resumed: bool) -> Cut {
    match undo(stage, err.kind(), resumed) {
        Undo::Retry => Cut::Pending(err),
        Undo::Here | Undo::Everywhere => roll_back_here(state, err).await,
    }
}

/// Undoes a join on this member only, and says so.
async fn roll_back_here(state: &State, err: Error) -> Cut {
    if let Err(reset) = reset_local(state).await {
        tracing::error!(error = %reset, "undoing the join on this member");
    }
    Cut::RolledBack(err)
}

async fn join_steps(
    state: &State,
    control: &Control,
    token: &JoinToken,
    server: &Identity,
    response: &JoinResponse,
    resumed: Option<u64>,
) -> Result<(), StepError> {
    let cluster_fp = tls::fingerprint_pem(&response.cluster_cert).map_err(Error::wrap)?;
    if !cluster_fp.eq_ignore_ascii_case(&token.fingerprint) {
        return Err(Error::forbidden("the cluster sent a certificate that does not match the token").into());
    }
    let dir = state.dir();
    dir.set_cluster_identity(&Identity {
        cert_pem: response.cluster_cert.clone(),
        key_pem: response.cluster_key.clone(),
    })
    .map_err(Error::wrap)?;
    let me = ClusterMemberLocal {
        name: control.name.clone(),
        address: control.address.clone(),
        certificate: server.cert_pem.clone(),
    };
    for member in response.cluster_members.iter().chain(std::iter::once(&me)) {
        state.trust().add(member.clone()).map_err(Error::wrap)?;
    }
    // A resumed join keeps its node id: dqlite may hold that node already.
    let node_id = match resumed {
        Some(id) => id,
        None => {
            let id = dqlite::generate_id(&control.address);
            dir.set_node_info(&NodeInfo { id }).map_err(Error::wrap)?;
            id
        }
    };
    fault_point("join:after-files", &control.name);

    let runtime = start_runtime(state, node_id).await?;
    // The member that admitted this one is the leader: asked first, the search for the leader
    // needs no round over every member (hundreds, in a large cluster).
    runtime.db.client().suggest_leader(&response.trusted_member.address);
    add_node(&runtime, node_id, &control.address).await?;
    fault_point("join:after-add", &control.name);
    let role = take_role_on_leader(state, &runtime, &control.name, node_id).await?;
    open_database(state, &runtime, OPEN_TIMEOUT).await?;
    // The role and the token's end in one transaction: until it commits the token can admit this
    // member again, should the join have to be rolled back.
    let role_text = role_name(Some(role)).to_owned();
    // Hundreds of members joining at once contend for SQLite's write lock on the leader for
    // longer than the write queue retries "database is locked" (one join in 255 ran out in
    // a run on two cores): a join waits longer rather than be undone.
    let busy_until = Instant::now() + BUSY_PATIENCE;
    loop {
        let (name, role_text) = (control.name.clone(), role_text.clone());
        let stamp = clock::format(state.clock().now());
        let recorded = runtime
            .db
            .transaction(move |tx| {
                let (name, role_text, stamp) = (name.clone(), role_text.clone(), stamp.clone());
                Box::pin(async move {
                    members::set_heartbeat(tx, &name, &role_text, &stamp).await?;
                    tokens::delete(tx, &name).await.map(drop)
                })
            })
            .await;
        match recorded {
            Ok(()) => break,
            Err(err) if err.is_busy() && Instant::now() < busy_until => {
                tracing::debug!(error = %err, "recording this member's role: retrying");
            }
            Err(err) => return Err(Error::from(err).context("recording this member's role").into()),
        }
    }

    let hooks = state.settings().hooks.clone();
    hooks.pre_join(state, &control.config).await.map_err(|e| StepError::Final(hook_failed("PreJoin", e)))?;
    // A member that refuses the newcomer undoes the join, as a failing PostJoin does.
    let notice = NewMemberHookRequest { new_member: me };
    new_member_hooks(state, &response.trusted_member, &notice).await.map_err(StepError::Final)?;
    fault_point("join:before-post-join", &control.name);
    hooks.post_join(state, &control.config).await.map_err(|e| StepError::Final(hook_failed("PostJoin", e)))?;
    hooks.on_start(state).await.map_err(|e| StepError::Final(hook_failed("OnStart", e)))?;
    state.start_background(&runtime);
    Ok(())
}

/// OnNewMember on every other member, asked of `via` (the member that admitted this one),
/// which runs it and passes it on over its kept connections. Where nothing ran (`via` is
/// unreachable, not ready, or older software without that endpoint), each member is asked
/// from here.
async fn new_member_hooks(state: &State, via: &ClusterMemberLocal, notice: &NewMemberHookRequest) -> Result<(), Error> {
    let hook = "on-new-member";
    let err = match state.member_client(&via.address)?.run_hook_on_members(hook, notice).await {
        Ok(()) => return Ok(()),
        Err(err) => err,
    };
    match (&err, err.status()) {
        (_, Some(StatusCode::INTERNAL_SERVER_ERROR)) => Err(Error::internal(err.to_string())),
        (ClientError::Connect { .. } | ClientError::Tls { .. }, _)
        | (_, Some(StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::SERVICE_UNAVAILABLE)) => {
            tracing::debug!(member = via.name, error = %err, "asking every member to run {hook} from here");
            hook_on_members(state.peer_clients()?, hook, notice).await
        }
        // It may have run on some: asking again could run it twice there.
        _ => {
            tracing::warn!(member = via.name, error = %err, "{hook} may not have run on every member");
            Ok(())
        }
    }
}

/// Adds node `id` to dqlite as a spare, unless an earlier attempt of this join did. A node an
/// earlier attempt left at this address under another id (its `node.toml` was lost with a
/// reset) is removed first: it is this member's, and gone.
async fn add_node(runtime: &Runtime, id: u64, address: &str) -> Result<(), Error> {
    let client = runtime.db.client().clone();
    let nodes = client.cluster().await?;
    if nodes.iter().any(|n| n.id == id) {
        return Ok(());
    }
    if let Some(stale) = nodes.iter().find(|n| n.address == address) {
        let stale = stale.id;
        tracing::info!(node = stale, "removing this address's node from an earlier attempt to join");
        retry_config_change("removing this member's node from an earlier attempt", || client.remove(stale)).await?;
    }
    retry_config_change("adding this member to dqlite", || client.add(id, address)).await
}

/// PreInit (for a member not initialised yet), then asks the cluster (any join address, or
/// any member this one already trusts) to admit this member.
async fn ask_to_join(
    state: &State,
    control: &Control,
    token: &JoinToken,
    pre_init: bool,
) -> Result<(JoinResponse, Client, Identity), Error> {
    if pre_init {
        let hooks = state.settings().hooks.clone();
        hooks.pre_init(state, false, &control.config).await.map_err(|e| hook_failed("PreInit", e))?;
    }
    let server = ensure_server_identity(state, &control.name)?;
    let tls = tls::client_config(Some(&server), vec![token.fingerprint.clone()]).map_err(Error::wrap)?;
    let settings = state.settings();
    let request = JoinRequest {
        name: control.name.clone(),
        address: control.address.clone(),
        certificate: server.cert_pem.clone(),
        secret: token.secret.clone(),
        schema_internal_version: settings.internal_schema.len() as u64,
        schema_external_version: settings.external_schema.len() as u64,
        extensions: settings.api_extensions.clone(),
    };
    let mut addresses = token.join_addresses.clone();
    for known in state.trust().snapshot().addresses() {
        if known != control.address && !addresses.contains(&known) {
            addresses.push(known);
        }
    }

    // Try every address; a member that cannot serve the request right now (no leader during an
    // election, shutting down, its leader killed under the request) counts like an unreachable
    // one, and the whole list is retried until the deadline.
    fault_point("join:before-admit", &control.name);
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut unreachable = Vec::new();
    loop {
        unreachable.clear();
        for address in &addresses {
            let client = Client::https(address.clone(), tls.clone())
                .with_timeout(ADMISSION_WAIT)
                .with_connect_timeout(CONNECT_TIMEOUT);
            match client.join(&request).await {
                Ok(response) => return Ok((response, client, server)),
                Err(ClientError::Api { status, message }) if status.is_client_error() => {
                    // The cluster answered and refused: any member would say the same.
                    return Err(Error::new(ErrorKind::Peer(status.as_u16()), message));
                }
                Err(err) => unreachable.push(format!("{address}: {err}")),
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::unavailable(format!(
                "could not reach the cluster at any join address: {}",
                unreachable.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Admissions a leader makes at once; more wait for a turn. Each is a write and a fan-out,
/// so a few at once keep the pooled connections to every member busy without opening more.
pub(crate) const ADMISSIONS: usize = 4;

/// Most join addresses a token carries, so that a token stays short (under 1 KB) whatever the
/// cluster's size. A join is admitted by the dqlite leader, which is always a voter, and any
/// member passes the request on to it; the voters and the stand-bys (3 and 3 by default, the
/// stand-bys promoted first when a voter fails) are the members worth carrying. When every one
/// of them is unreachable the cluster has no quorum, and no member could admit a joiner anyway.
pub(crate) const TOKEN_ADDRESSES: usize = 8;

/// The join addresses of a token issued by the member at `me`, from the members' rows: its own
/// first (it answered, so it is up), then the voters', the stand-bys' and the spares', at most
/// [`TOKEN_ADDRESSES`]. Members still joining are left out.
pub(crate) fn pick_token_addresses(me: &str, rows: &[members::MemberRow]) -> Vec<String> {
    let rank = |role: &str| match role {
        role::VOTER => 0,
        role::STAND_BY => 1,
        _ => 2,
    };
    let mut others: Vec<&members::MemberRow> =
        rows.iter().filter(|r| r.address != me && r.role != role::PENDING).collect();
    others.sort_by(|a, b| rank(&a.role).cmp(&rank(&b.role)).then_with(|| a.name.cmp(&b.name)));
    std::iter::once(me.to_owned()).chain(others.into_iter().map(|r| r.address.clone())).take(TOKEN_ADDRESSES).collect()
}

/// The software a cluster runs, which a joiner must run too.
struct Software<'a> {
    extensions: &'a [String],
    /// (internal, application) schema versions.
    schema: (u64, u64),
}

/// Why the leader refuses to admit a joiner.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum JoinRefused {
    #[error("the joiner's API extensions {theirs:?} differ from the cluster's {ours:?}; run the same software version")]
    Extensions { theirs: Vec<String>, ours: Vec<String> },
    #[error(
        "the joiner's schema versions {theirs:?} differ from the cluster's {ours:?}; run the same software version"
    )]
    Schema { theirs: (u64, u64), ours: (u64, u64) },
    /// A trusted member has the name (told apart: it may be this joiner's own stalled join).
    #[error("a member named {0:?} already exists")]
    NameTaken(String),
    #[error("address {address} is already used by member {member:?}")]
    AddressTaken { address: String, member: String },
    /// Found inside the admission's transaction (joined meanwhile).
    #[error("member {name:?} or address {address} already exists")]
    Exists { name: String, address: String },
    #[error("invalid join token: no valid token was issued for this name (it may have been used or revoked)")]
    NoToken,
    #[error("the join token has expired; issue a new one")]
    TokenExpired,
}

impl OperationError for JoinRefused {
    fn kind(&self) -> ErrorKind {
        match self {
            JoinRefused::Extensions { .. } | JoinRefused::Schema { .. } => ErrorKind::Invalid,
            JoinRefused::NameTaken(_) | JoinRefused::AddressTaken { .. } | JoinRefused::Exists { .. } => {
                ErrorKind::Conflict
            }
            JoinRefused::NoToken | JoinRefused::TokenExpired => ErrorKind::Forbidden,
        }
    }
}

/// Judges a join request against the cluster's software and the members the leader trusts
/// (name, address).
fn judge_request(request: &JoinRequest, ours: &Software<'_>, trusted: &[(&str, &str)]) -> Result<(), JoinRefused> {
    if request.extensions != ours.extensions {
        return Err(JoinRefused::Extensions { theirs: request.extensions.clone(), ours: ours.extensions.to_vec() });
    }
    let theirs = (request.schema_internal_version, request.schema_external_version);
    if theirs != ours.schema {
        return Err(JoinRefused::Schema { theirs, ours: ours.schema });
    }
    if trusted.iter().any(|(name, _)| *name == request.name) {
        return Err(JoinRefused::NameTaken(request.name.clone()));
    }
    if let Some((other, _)) = trusted.iter().find(|(_, address)| *address == request.address) {
        return Err(JoinRefused::AddressTaken { address: request.address.clone(), member: (*other).to_owned() });
    }
    Ok(())
}

/// Judges, inside the admission's transaction, whether `row` may be inserted: its name and
/// address are free, and a token issued for its name has this secret and has not expired by
/// `now` (the cluster's time).
fn judge_admission(
    row: &members::MemberRow,
    existing: &[members::MemberRow],
    tokens: &[tokens::TokenRow],
    secret: &str,
    now: std::time::SystemTime,
) -> Result<(), JoinRefused> {
    if existing.iter().any(|m| m.name == row.name || m.address == row.address) {
        return Err(JoinRefused::Exists { name: row.name.clone(), address: row.address.clone() });
    }
    let token = tokens.iter().find(|t| t.name == row.name);
    let Some(token) = token.filter(|t| same_secret(&t.secret, secret)) else {
        return Err(JoinRefused::NoToken);
    };
    if token.is_expired(now) {
        return Err(JoinRefused::TokenExpired);
    }
    Ok(())
}

/// On any member: admits a joiner that presents a valid token (forwarded to the leader), or
/// answers a joiner admitted before that comes back. `proven` is the fingerprint of the
/// certificate the caller presented over TLS, when it reached this member directly.
pub(crate) async fn admit(state: &State, request: JoinRequest, proven: Option<&str>) -> Result<JoinResponse, Error> {
    let runtime = state.online_runtime()?;
    let member = ClusterMemberLocal {
        name: request.name.clone(),
        address: request.address.clone(),
        certificate: request.certificate.clone(),
    };
    let entry = TrustEntry::new(member.clone()).map_err(|e| Error::invalid(e.to_string()))?;
    let cert = tls::parse_cert(&request.certificate, "certificate").map_err(|e| Error::invalid(e.to_string()))?;
    if !tls::cert_has_dns_name(&cert, &request.name).map_err(|e| Error::invalid(e.to_string()))? {
        return Err(Error::forbidden(format!("the joiner's certificate does not name {:?}", request.name)));
    }
    // Admitted, it would be refused by everyone: say why now.
    if let Some(ca) = state.trust().snapshot().ca()
        && !crate::cert_check::chains_to(
            &request.certificate,
            ca,
            crate::cert_check::Purpose::Member(&request.name),
            std::time::SystemTime::now(),
        )
    {
        return Err(Error::forbidden(format!(
            "this cluster requires members' certificates issued by its CA (cluster.ca), and {:?}'s is not: put a \
             certificate and key the CA issued for it in its state directory (server.crt, server.key) before it joins",
            request.name
        )));
    }

    // The same joiner again (restarted, or its answer lost): it proved over TLS that it holds
    // the key of the certificate its row records, which is all its first admission
    // established, so no token is needed and any member can answer.
    if proven.is_some_and(|fp| entry.holds(fp))
        && let Some(answer) = readmit(state, &runtime, &member).await?
    {
        return Ok(answer);
    }

    let leader = runtime.db.client().leader().await?;
    if leader.address != runtime.address {
        let client = state.member_client(&leader.address)?.with_timeout(ADMISSION_WAIT);
        return client.join(&request).await.map_err(|e| match e {
            ClientError::Api { status, message } => Error::new(ErrorKind::Peer(status.as_u16()), message),
            other => Error::unavailable(format!("forwarding the join request to the leader: {other}")),
        });
    }

    // The rest waits its turn: each admission writes a row and tells every member, and
    // hundreds at once (a fleet started together) starved the leader's raft thread.
    // The semaphore is never closed: the permit comes, or the wait ends.
    let Ok(_turn) = tokio::time::timeout(ADMISSION_QUEUE, state.admissions().acquire()).await else {
        return Err(Error::unavailable(format!(
            "the leader is admitting other members and this join waited {} s for its turn: try again",
            ADMISSION_QUEUE.as_secs()
        )));
    };
    let settings = state.settings();
    let ours = Software {
        extensions: &settings.api_extensions,
        schema: (settings.internal_schema.len() as u64, settings.external_schema.len() as u64),
    };
    let snapshot = state.trust().snapshot();
    let trusted: Vec<(&str, &str)> =
        snapshot.iter().map(|e| (e.member.name.as_str(), e.member.address.as_str())).collect();
    match judge_request(&request, &ours, &trusted) {
        Ok(()) => {}
        Err(JoinRefused::NameTaken(name)) => return Err(name_taken(state, &runtime, &name).await),
        Err(refused) => return Err(refused.into()),
    }

    let mut row = super::own_row(
        state,
        &Identity { cert_pem: request.certificate.clone(), key_pem: String::new() },
        role::PENDING,
    );
    row.name = request.name.clone();
    row.address = request.address.clone();
    // Progress, in the cluster's time as the heartbeat stamps it: a PENDING row whose stamp ages
    // past the stall bound is rolled back.
    row.heartbeat = clock::format(state.clock().now());
    let secret = request.secret.clone();
    // The cluster's time, as the token's expiry was stamped (this leader's clock may be off).
    let now = state.clock().now();
    let refused = runtime
        .db
        .transaction(move |tx| {
            let (row, secret) = (row.clone(), secret.clone());
            Box::pin(async move {
                let existing = members::list(tx).await?;
                let tokens = tokens::list(tx).await?;
                match judge_admission(&row, &existing, &tokens, &secret, now) {
                    // The token stays until the join completes (the joiner deletes it with its
                    // role), so that a join rolled back can be made again with it.
                    Ok(()) => members::insert(tx, &row).await.map(|()| None),
                    Err(refused) => Ok(Some(refused)),
                }
            })
        })
        .await?;
    if let Some(refused) = refused {
        return Err(refused.into());
    }
    fault_point("admit:after-insert", &request.name);
    let answer = trust_and_answer(state, &runtime, &member).await?;
    tracing::info!(name = request.name, address = request.address, "admitted a new member");
    fault_point("admit:before-answer", &request.name);
    Ok(answer)
}

/// The answer to a joiner whose row (name, address and certificate) already exists, or `None`.
/// A PENDING row is stamped: the joiner is back, its join makes progress.
async fn readmit(state: &State, runtime: &Runtime, member: &ClusterMemberLocal) -> Result<Option<JoinResponse>, Error> {
    // A member between leaders cannot tell yet: the joiner asks again, here or elsewhere.
    let unavailable = |e: Error| Error::unavailable(format!("reading the membership: {}", e.message()));
    let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await.map_err(|e| unavailable(Error::from(e)))?;
    let Some(row) = rows
        .iter()
        .find(|r| r.name == member.name && r.address == member.address && r.certificate == member.certificate)
    else {
        return Ok(None);
    };
    if row.role == role::PENDING {
        let sql = "UPDATE core_cluster_members SET heartbeat = ? WHERE name = ? AND role = ?";
        let stamp = clock::format(state.clock().now());
        let params = [stamp.into(), member.name.as_str().into(), role::PENDING.into()];
        runtime.db.exec(sql, &params).await.map_err(|e| unavailable(Error::from(e)))?;
    }
    let answer = trust_and_answer(state, runtime, member).await?;
    tracing::info!(name = member.name, role = row.role, "admitted again: the joiner is back to finish its join");
    Ok(Some(answer))
}

/// Trusts `member` here and on every other member, and answers it with the cluster's
/// certificate and members.
async fn trust_and_answer(
    state: &State,
    runtime: &Runtime,
    member: &ClusterMemberLocal,
) -> Result<JoinResponse, Error> {
    state.trust().add(member.clone()).map_err(Error::wrap)?;
    runtime.set_servers(state.trust().snapshot().addresses());
    let others: Vec<_> = state.peer_clients()?.into_iter().filter(|(m, _)| m.name != member.name).collect();
    let failures = fan_out(others, |c| {
        let member = member.clone();
        async move { c.add_trust(&member).await }
    })
    .await;
    for (name, err) in failures {
        tracing::warn!(member = name, error = %err, "could not tell a member to trust the joiner; the next heartbeat will");
    }
    let trusted_member = state
        .trust()
        .snapshot()
        .by_name(&state.name())
        .map(|e| e.member.clone())
        .ok_or_else(|| Error::internal("this member is missing from its own trust store"))?;
    Ok(JoinResponse {
        cluster_cert: runtime.cluster_identity().cert_pem.clone(),
        cluster_key: runtime.cluster_identity().key_pem.clone(),
        cluster_members: state.members(),
        trusted_member,
    })
}

/// The refusal for a name that is taken, saying what to do when its holder is still joining.
async fn name_taken(state: &State, runtime: &Runtime, name: &str) -> Error {
    let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await.unwrap_or_default();
    if rows.iter().any(|r| r.name == name && r.role == role::PENDING) {
        let bound = stalled::stall_bound(state.settings().heartbeat);
        return Error::conflict(format!(
            "a member named {name:?} already exists and is still joining, with another certificate: if that \
             join was abandoned, the cluster rolls it back after {} s without progress and this init then works; \
             or remove it now with `microctl cluster remove {name} --force`",
            bound.as_secs()
        ));
    }
    Error::conflict(format!("a member named {name:?} already exists"))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn request(name: &str, address: &str) -> JoinRequest {
        JoinRequest {
            name: name.into(),
            address: address.into(),
            certificate: String::new(),
            secret: "s3cret".into(),
            schema_internal_version: 7,
            schema_external_version: 2,
            extensions: vec!["notes".into()],
        }
    }

    #[test]
    fn a_token_carries_this_member_then_voters_then_stand_bys_at_most_eight() {
        let with_role =
            |name: &str, address: &str, role: &str| members::MemberRow { role: role.into(), ..row(name, address) };
        let cases: Vec<(&str, Vec<members::MemberRow>, Vec<&str>)> = vec![
            // Alone: itself.
            ("10.0.0.1:1", vec![with_role("a", "10.0.0.1:1", role::VOTER)], vec!["10.0.0.1:1"]),
            // A spare issuing it: itself, then voters, stand-bys, spares; a joiner left out.
            (
                "10.0.0.5:1",
                vec![
                    with_role("e", "10.0.0.5:1", role::SPARE),
                    with_role("d", "10.0.0.4:1", role::STAND_BY),
                    with_role("c", "10.0.0.3:1", role::VOTER),
                    with_role("b", "10.0.0.2:1", role::SPARE),
                    with_role("a", "10.0.0.1:1", role::VOTER),
                    with_role("f", "10.0.0.6:1", role::PENDING),
                ],
                vec!["10.0.0.5:1", "10.0.0.1:1", "10.0.0.3:1", "10.0.0.4:1", "10.0.0.2:1"],
            ),
            // 256 members: eight addresses, and every voter and stand-by among them.
            (
                "10.0.1.0:1",
                (0..256)
                    .map(|i| {
                        let role = match i {
                            200..203 => role::VOTER,
                            100..103 => role::STAND_BY,
                            _ => role::SPARE,
                        };
                        with_role(&format!("m{i:03}"), &format!("10.0.{}.{}:1", i / 256 + 1, i % 256), role)
                    })
                    .collect(),
                vec![
                    "10.0.1.0:1",
                    "10.0.1.200:1",
                    "10.0.1.201:1",
                    "10.0.1.202:1",
                    "10.0.1.100:1",
                    "10.0.1.101:1",
                    "10.0.1.102:1",
                    "10.0.1.1:1",
                ],
            ),
        ];
        for (me, rows, expected) in cases {
            assert_eq!(pick_token_addresses(me, &rows), expected, "issued by {me}");
        }
    }

    fn row(name: &str, address: &str) -> members::MemberRow {
        members::MemberRow {
            name: name.into(),
            address: address.into(),
            certificate: String::new(),
            schema_internal: 7,
            schema_external: 2,
            heartbeat: String::new(),
            role: role::PENDING.into(),
            api_extensions: Vec::new(),
        }
    }

    fn token(name: &str, secret: &str, expiry: &str) -> tokens::TokenRow {
        tokens::TokenRow { id: 1, name: name.into(), secret: secret.into(), expiry: expiry.into() }
    }

    /// What the leader's transaction sees, and what it should refuse.
    type AdmissionCase<'a> = (&'a str, Vec<members::MemberRow>, Vec<tokens::TokenRow>, Result<(), JoinRefused>);

    #[test]
    fn a_join_request_is_judged_against_the_clusters_software_and_members() {
        let extensions = vec!["notes".to_owned()];
        let ours = Software { extensions: &extensions, schema: (7, 2) };
        let trusted = [("m1", "10.0.0.1:7000"), ("m2", "10.0.0.2:7000")];
        let other_software = JoinRequest { extensions: vec![], ..request("m3", "10.0.0.3:7000") };
        let older_schema = JoinRequest { schema_external_version: 1, ..request("m3", "10.0.0.3:7000") };
        let cases: Vec<(&str, JoinRequest, Result<(), JoinRefused>)> = vec![
            ("a newcomer", request("m3", "10.0.0.3:7000"), Ok(())),
            (
                "other API extensions",
                other_software,
                Err(JoinRefused::Extensions { theirs: vec![], ours: vec!["notes".into()] }),
            ),
            ("another schema", older_schema, Err(JoinRefused::Schema { theirs: (7, 1), ours: (7, 2) })),
            ("a trusted name", request("m2", "10.0.0.3:7000"), Err(JoinRefused::NameTaken("m2".into()))),
            (
                "a trusted address",
                request("m3", "10.0.0.2:7000"),
                Err(JoinRefused::AddressTaken { address: "10.0.0.2:7000".into(), member: "m2".into() }),
            ),
        ];
        for (what, request, want) in cases {
            assert_eq!(judge_request(&request, &ours, &trusted), want, "{what}");
        }
    }

    #[test]
    fn a_failed_join_is_retried_only_when_resumed_and_not_refused_and_otherwise_undone_as_far_as_it_got() {
        use ErrorKind::{Conflict, Forbidden, Internal, Peer, Unavailable};
        use Stage::{Admission, Identity, ReadNode, Steps, Token};
        use Undo::{Everywhere, Here, Retry};
        // (stage, kind of the failure, resumed, what is undone)
        let cases = [
            (ReadNode, Internal, false, Retry),
            (Token, Internal, false, Here),
            (Token, Internal, true, Here),
            (Identity, Internal, false, Here),
            (Identity, Internal, true, Retry),
            (Admission, Unavailable, false, Here),
            (Admission, Unavailable, true, Retry),
            (Admission, Peer(503), true, Retry),
            (Admission, Forbidden, true, Here),
            (Admission, Peer(403), true, Here),
            (Admission, Conflict, false, Here),
            (Steps { refused: false }, Unavailable, true, Retry),
            (Steps { refused: false }, Internal, true, Retry),
            (Steps { refused: false }, Unavailable, false, Everywhere),
            (Steps { refused: false }, Forbidden, true, Everywhere),
            (Steps { refused: false }, Conflict, true, Everywhere),
            (Steps { refused: true }, Internal, true, Everywhere),
            (Steps { refused: true }, Internal, false, Everywhere),
        ];
        for (stage, kind, resumed, want) in cases {
            assert_eq!(undo(stage, kind, resumed), want, "{stage:?} {kind:?} resumed={resumed}");
        }
    }

    #[test]
    fn a_refusal_says_what_to_do_and_has_its_kind() {
        let cases = [
            (
                JoinRefused::Extensions { theirs: vec![], ours: vec!["notes".into()] },
                ErrorKind::Invalid,
                "the joiner's API extensions [] differ from the cluster's [\"notes\"]; run the same software version",
            ),
            (
                JoinRefused::Schema { theirs: (7, 1), ours: (7, 2) },
                ErrorKind::Invalid,
                "the joiner's schema versions (7, 1) differ from the cluster's (7, 2); run the same software version",
            ),
            (
                JoinRefused::AddressTaken { address: "10.0.0.2:7000".into(), member: "m2".into() },
                ErrorKind::Conflict,
                "address 10.0.0.2:7000 is already used by member \"m2\"",
            ),
            (
                JoinRefused::Exists { name: "m3".into(), address: "10.0.0.3:7000".into() },
                ErrorKind::Conflict,
                "member \"m3\" or address 10.0.0.3:7000 already exists",
            ),
            (
                JoinRefused::NoToken,
                ErrorKind::Forbidden,
                "invalid join token: no valid token was issued for this name (it may have been used or revoked)",
            ),
            (JoinRefused::TokenExpired, ErrorKind::Forbidden, "the join token has expired; issue a new one"),
        ];
        for (refused, kind, message) in cases {
            let err = Error::from(refused.clone());
            assert_eq!((err.kind(), err.message()), (kind, message));
            let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<JoinRefused>());
            assert_eq!(source, Some(&refused), "the typed refusal stays the source");
        }
    }

    #[test]
    fn an_admission_needs_a_free_name_and_address_and_a_live_token_with_its_secret() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let later = clock::format(now + Duration::from_secs(60));
        let earlier = clock::format(now - Duration::from_secs(60));
        let newcomer = row("m3", "10.0.0.3:7000");
        let members = [row("m1", "10.0.0.1:7000")];
        let exists = || Err(JoinRefused::Exists { name: "m3".into(), address: "10.0.0.3:7000".into() });
        let cases: Vec<AdmissionCase> = vec![
            ("a live token", members.to_vec(), vec![token("m3", "s3cret", &later)], Ok(())),
            ("a token that never expires", members.to_vec(), vec![token("m3", "s3cret", "")], Ok(())),
            ("no token", members.to_vec(), vec![token("m4", "s3cret", &later)], Err(JoinRefused::NoToken)),
            ("another secret", members.to_vec(), vec![token("m3", "s3cre7", &later)], Err(JoinRefused::NoToken)),
            (
                "an expired token",
                members.to_vec(),
                vec![token("m3", "s3cret", &earlier)],
                Err(JoinRefused::TokenExpired),
            ),
            (
                "a row with the name (joined meanwhile)",
                vec![row("m3", "10.0.0.9:7000")],
                vec![token("m3", "s3cret", &later)],
                exists(),
            ),
            ("a row with the address", vec![row("m9", "10.0.0.3:7000")], vec![token("m3", "s3cret", &later)], exists()),
        ];
        for (what, existing, tokens, want) in cases {
            let got = judge_admission(&newcomer, &existing, &tokens, "s3cret", now);
            assert_eq!(got, want, "{what}");
        }
    }
}
