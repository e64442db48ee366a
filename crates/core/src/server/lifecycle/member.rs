//! [`MemberLifecycle`]: the one owner of how this member becomes initialised (bootstrap or
//! join), comes back up (at start, after a restart of its runtime, after a recovery plan
//! arrived) and goes back to uninitialised (after its removal). Handlers and the domain reach
//! it through [`State::lifecycle`]; the steps it is made of are the domain's (bootstrap, join)
//! and the state's (start, open and reset the runtime).

use std::sync::Arc;
use std::time::Duration;

use crate::api::Control;
use crate::server::db::DbStatus;
use crate::server::domain::{membership, recovery};
use crate::server::error::Error;
use crate::server::state::State;
use crate::server::state::http::BoxFuture;
use crate::server::state::lifecycle::Lifecycle;
use crate::server::state::runtime::Runtime;
use crate::server::state::start::{OPEN_TIMEOUT_FOREVER, open_schema, reset_local, start_runtime_with};
use crate::state_dir::NodeInfo;

/// The member's life cycle, installed in the daemon at start.
pub(crate) struct MemberLifecycle;

impl MemberLifecycle {
    /// What a daemon starting with this state directory does first: runs the OnDaemonStart
    /// hook, then carries a join cut short through to its end (joined or undone) before
    /// anything else, resumes an initialised member, or waits for `init`.
    pub(crate) async fn boot(state: &State, initialised: Option<NodeInfo>) -> Result<(), Error> {
        let hooks = state.settings().hooks.clone();
        hooks
            .on_daemon_start(state)
            .await
            .map_err(|e| Error::internal(format!("the OnDaemonStart hook failed: {e}")))?;
        if membership::join_interrupted(state) {
            if initialised.is_some() {
                state.set_db_status(DbStatus::Starting);
            }
            tokio::spawn(membership::resume_join(state.clone()));
        } else if let Some(info) = initialised {
            state.set_db_status(DbStatus::Starting);
            tokio::spawn(resume(state.clone(), info.id));
        } else {
            state.http().serve_before_init(state).await;
            tracing::warn!("Database is not yet initialized: waiting for `init` (bootstrap or join)");
        }
        Ok(())
    }
}

impl Lifecycle for MemberLifecycle {
    fn init<'a>(&'a self, state: &'a State, control: &'a Control) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let init = match (control.bootstrap, control.join_token.is_empty()) {
                (true, false) => return Err(Error::invalid("give either bootstrap or a join token, not both")),
                (false, true) => return Err(Error::invalid("give either bootstrap or a join token")),
                (bootstrap, _) => bootstrap,
            };
            // The member's address may be the pre-init one.
            state.http().stop_before_init().await;
            let result = match init {
                true => membership::bootstrap(state, control).await,
                false => membership::join(state, control).await,
            };
            if result.is_err() && matches!(state.dir().node_info(), Ok(None)) {
                state.http().serve_before_init(state).await;
            }
            result
        })
    }

    fn resume(&self, state: State, node_id: u64) -> BoxFuture<'static, ()> {
        Box::pin(resume(state, node_id))
    }

    fn reset(&self, state: State, name: String, epoch: u64) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _init = state.lock_init().await;
            if state.epoch() != epoch || state.name() != name {
                return;
            }
            tracing::info!("removed from the cluster; resetting to an uninitialised member");
            if let Err(err) = reset_local(&state).await {
                tracing::error!(error = %err, "resetting after removal");
            }
            state.http().serve_before_init(&state).await;
        })
    }

    fn start_background(&self, state: &State, runtime: &Arc<Runtime>) {
        start_background(state, runtime);
    }
}

/// Brings an initialised member back up after a start (or after a recovery plan arrived),
/// applying a pending recovery plan first.
async fn resume(state: State, node_id: u64) {
    let mut _init = state.lock_init().await;
    let plan = match recovery::pending(&state, node_id) {
        Ok(plan) => plan,
        Err(err) => return state.fail(format!("cannot apply the recovery plan: {err}")),
    };
    let configuration = match plan.as_ref().map(|p| recovery::prepare(&state, p)).transpose() {
        Ok(configuration) => configuration,
        Err(err) => return state.fail(format!("cannot apply the recovery plan: {err}")),
    };
    let mut node_id = node_id;
    let runtime = loop {
        match start_runtime_with(&state, node_id, configuration.clone()).await {
            Ok(runtime) => break runtime,
            Err(err) if !state.is_shutting_down() => {
                // A file damaged since the start-up checks fails every retry the same way.
                if let Err(damaged) = crate::server::lifecycle::startup::check_initialised(state.dir()) {
                    return state.fail(crate::report::one_line(&damaged));
                }
                tracing::warn!(error = %err, "starting the member failed; retrying in 1 s");
                // Unlocked meanwhile, so `cluster set-address` can move a member whose address is
                // gone (with a new node id) or a removal can reset it.
                drop(_init);
                tokio::time::sleep(Duration::from_secs(1)).await;
                _init = state.lock_init().await;
                match state.dir().node_info() {
                    Ok(Some(info)) => node_id = info.id,
                    _ => return,
                }
            }
            Err(_) => return,
        }
    };
    watch_for_missed_rotations(&state, &runtime);
    if let Some(plan) = &plan {
        recovery::applied(&state, plan);
        recovery::hand_out_later(&state, &runtime, plan.clone());
    }
    let opened = match open_schema(&state, &runtime, OPEN_TIMEOUT_FOREVER).await {
        Ok(()) => match &plan {
            Some(plan) => recovery::forget_removed(&state, &runtime, plan).await,
            None => Ok(()),
        },
        Err(err) => Err(err),
    };
    if let Err(err) = opened {
        // A stopped runtime is being restarted (a recovery plan arrived), not a failure.
        if !state.is_shutting_down() && !runtime.stop.is_fired() {
            state.fail(format!("the database could not be opened: {err}"));
        }
        return;
    }
    state.set_db_status(DbStatus::Online);
    if let Err(err) = crate::server::domain::monitors::refresh(&state).await {
        tracing::warn!(error = %err, "reading the monitoring credentials; the next heartbeat brings them");
    }
    let hooks = state.settings().hooks.clone();
    if let Err(err) = hooks.on_start(&state).await {
        state.fail(format!("the OnStart hook failed: {err}"));
        return;
    }
    start_background(&state, &runtime);
    tracing::info!(name = state.name(), address = state.address(), "member started");
}

/// Starts catching up with certificate rotations missed while away, once per runtime: before
/// the database opens (a member that missed one cannot reach the others to open it).
fn watch_for_missed_rotations(state: &State, runtime: &Arc<Runtime>) {
    if runtime.catch_up_started.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    runtime.adopt(tokio::spawn(crate::server::domain::rotation::catch_up_when_cut_off(
        state.clone(),
        Arc::downgrade(runtime),
        runtime.stop.clone(),
    )));
}

/// Everything after the database is online on every start: heartbeats, the checkpoint
/// threshold following the node's role, freed memory given back after bursts, and the disk
/// watch.
fn start_background(state: &State, runtime: &Arc<Runtime>) {
    runtime.adopt(tokio::spawn(crate::server::domain::certificates::watch(state.clone(), runtime.stop.clone())));
    runtime.adopt(tokio::spawn(crate::server::domain::heartbeat::run(state.clone(), runtime.stop.clone())));
    watch_for_missed_rotations(state, runtime);
    runtime.adopt(tokio::spawn(runtime.checkpoints_follow_role()));
    runtime.adopt(tokio::spawn(crate::server::memory::release_when_quiet(state.metrics().clone())));
    runtime.adopt(tokio::spawn(crate::server::state::disk::watch(
        state.clone(),
        crate::server::state::disk::Paths { raft: state.dir().database_dir(), probe: state.dir().root().to_owned() },
        runtime.disk.clone(),
        crate::server::state::runtime::RAFT_SEGMENT_SIZE as u64,
    )));
}
