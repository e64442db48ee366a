//! The daemon's shared state, and [`State`], the handle handlers and hooks receive; with what
//! it holds while the member is initialised (its runtime: dqlite node, database, tunnel), the
//! disk and clock watches, and the application's hooks.

pub(crate) mod clock;
pub(crate) mod disk;
pub(crate) mod hooks;
pub(crate) mod http;
pub(crate) mod lifecycle;
pub(crate) mod runtime;
pub(crate) mod start;
pub(crate) mod tunnel;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::api::ClusterMemberLocal;
use crate::client::Client;
use crate::server::db::DbStatus;
use crate::server::db::schema::SchemaUpdate;
use crate::server::error::Error;
use crate::server::state::hooks::Hooks;
use crate::server::state::runtime::Runtime;
use crate::state_dir::{DaemonConfig, StateDir};
use crate::tls::Identity;
use crate::truststore::TrustStore;

/// What the application configured.
pub(crate) struct Settings {
    pub(crate) version: String,
    pub(crate) heartbeat: Duration,
    pub(crate) api_extensions: Vec<String>,
    pub(crate) internal_schema: Vec<SchemaUpdate>,
    pub(crate) external_schema: Vec<SchemaUpdate>,
    pub(crate) hooks: Arc<dyn Hooks>,
    pub(crate) network_latency: Duration,
}

/// Everything a running daemon holds.
pub(crate) struct Daemon {
    pub(crate) dir: StateDir,
    pub(crate) settings: Settings,
    pub(crate) config: RwLock<DaemonConfig>,
    pub(crate) server_identity: RwLock<Identity>,
    pub(crate) truststore: TrustStore,
    pub(crate) runtime: RwLock<Option<Arc<Runtime>>>,
    pub(crate) db_status: watch::Sender<DbStatus>,
    /// Why the database is in its status (e.g. which members still run older software).
    pub(crate) status_reason: RwLock<String>,
    /// Set when the daemon must stop with an error (e.g. its software is older than the data).
    pub(crate) fatal: RwLock<Option<String>>,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Serialises init, reset and the start-up of the cluster runtime.
    pub(crate) init_lock: tokio::sync::Mutex<()>,
    /// Serialises role decisions on the leader (joins arriving at once, heartbeat changes), so
    /// that each sees the roles the previous one gave.
    pub(crate) role_lock: tokio::sync::Mutex<()>,
    /// Bumped on every reset, so a reset requested for an earlier membership is not applied
    /// to a later one.
    pub(crate) epoch: AtomicU64,
    /// What is served over HTTP while the member is initialised.
    pub(crate) http: Arc<dyn http::Http>,
    /// What `GET /core/1.0/metrics` reports (shared with the database's tasks).
    pub(crate) metrics: Arc<crate::server::metrics::Metrics>,
    /// The cluster's time, which every time stamped into or judged from the database uses.
    pub(crate) clock: clock::Clock,
    /// Init, resume and reset: the life cycle's, above the layers that ask for them.
    pub(crate) lifecycle: Arc<dyn lifecycle::Lifecycle>,
}

/// Which node a restarted runtime starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NodeToStart {
    /// The one that runs now; no restart when none runs.
    Running,
    /// This one (e.g. recorded in `node.toml` for a new address).
    Id(u64),
}

/// A handle on the daemon, given to endpoint handlers and hooks; cheap to clone.
#[derive(Clone)]
pub struct State(Arc<Daemon>);

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").field("name", &self.name()).field("address", &self.address()).finish_non_exhaustive()
    }
}

/// What the layers of the daemon reach through a [`State`].
impl State {
    /// The handle on a daemon the life cycle built.
    pub(crate) fn new(daemon: Daemon) -> State {
        State(Arc::new(daemon))
    }

    /// The state directory's files.
    pub(crate) fn dir(&self) -> &StateDir {
        &self.0.dir
    }

    /// The members this member trusts, on disk and in memory.
    pub(crate) fn trust(&self) -> &TrustStore {
        &self.0.truststore
    }

    /// What the application configured.
    pub(crate) fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// `daemon.toml` as this daemon holds it.
    pub(crate) fn config(&self) -> &RwLock<DaemonConfig> {
        &self.0.config
    }

    /// This member's own certificate.
    pub(crate) fn server_identity(&self) -> &RwLock<Identity> {
        &self.0.server_identity
    }

    /// The cluster's time by this member.
    pub(crate) fn clock(&self) -> &clock::Clock {
        &self.0.clock
    }

    /// What `GET /core/1.0/metrics` reports.
    pub(crate) fn metrics(&self) -> &Arc<crate::server::metrics::Metrics> {
        &self.0.metrics
    }

    /// What is served over HTTP while the member is initialised.
    pub(crate) fn http(&self) -> &Arc<dyn http::Http> {
        &self.0.http
    }

    /// How the member is initialised, resumed and reset.
    pub(crate) fn lifecycle(&self) -> &Arc<dyn lifecycle::Lifecycle> {
        &self.0.lifecycle
    }

    /// Serialises init, reset and the start-up of the runtime.
    pub(crate) async fn lock_init(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.init_lock.lock().await
    }

    /// Serialises role decisions on the leader.
    pub(crate) async fn lock_roles(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.role_lock.lock().await
    }

    /// Makes `runtime` the member's running one.
    pub(crate) fn install_runtime(&self, runtime: Arc<Runtime>) {
        if let Ok(mut slot) = self.0.runtime.write() {
            *slot = Some(runtime);
        }
    }

    /// Takes the running runtime out (the caller stops it), if there is one.
    pub(crate) fn take_runtime(&self) -> Option<Arc<Runtime>> {
        self.0.runtime.write().ok().and_then(|mut r| r.take())
    }

    /// Why the daemon must stop with an error, if it must.
    pub(crate) fn fatal_message(&self) -> Option<String> {
        self.0.fatal.read().ok().and_then(|f| f.clone())
    }

    /// This member's name (empty before init).
    pub fn name(&self) -> String {
        self.0.config.read().map(|c| c.name.clone()).unwrap_or_default()
    }

    /// This member's address `ip:port` (empty before init).
    pub fn address(&self) -> String {
        self.0.config.read().map(|c| c.address.clone()).unwrap_or_default()
    }

    /// The application's version string.
    pub fn version(&self) -> &str {
        &self.0.settings.version
    }

    /// The state directory.
    pub fn state_dir(&self) -> &std::path::Path {
        self.0.dir.root()
    }

    /// Where the database stands.
    pub fn database_status(&self) -> DbStatus {
        *self.0.db_status.borrow()
    }

    /// Whether this binary declares API extension `name`.
    pub fn has_extension(&self, name: &str) -> bool {
        self.0.settings.api_extensions.iter().any(|e| e == name)
    }

    /// The members this member trusts (itself included).
    pub fn members(&self) -> Vec<ClusterMemberLocal> {
        self.0.truststore.snapshot().iter().map(|e| e.member.clone()).collect()
    }

    /// A mutual-TLS client of the member at `address`.
    pub fn member_client(&self, address: &str) -> Result<Client, Error> {
        Ok(Client::https(address, self.runtime()?.peer_tls.clone()))
    }

    /// Clients of every other member, marked as notifications (receivers do not fan out again).
    pub fn peer_clients(&self) -> Result<Vec<(ClusterMemberLocal, Client)>, Error> {
        let runtime = self.runtime()?;
        let me = self.name();
        Ok(self
            .members()
            .into_iter()
            .filter(|m| m.name != me)
            .map(|m| {
                let client = Client::https(m.address.clone(), runtime.peer_tls.clone()).as_notification();
                (m, client)
            })
            .collect())
    }

    /// The database, when the member is initialised and its database online.
    pub(crate) fn online_runtime(&self) -> Result<Arc<Runtime>, Error> {
        self.require_database()?;
        self.runtime()
    }

    /// A mutual-TLS client of the current dqlite leader.
    pub async fn leader_client(&self) -> Result<Client, Error> {
        let runtime = self.online_runtime()?;
        let leader = runtime.db.client().leader().await?;
        self.member_client(&leader.address)
    }

    /// Runs one read-only statement on the cluster database.
    pub async fn query(&self, sql: &str, params: &[dqlite::Value]) -> Result<dqlite::QueryResult, Error> {
        let runtime = self.online_runtime()?;
        Ok(runtime.db.query(sql, params).await?)
    }

    /// Runs SQL text that may write on the cluster database (each statement atomic on its own;
    /// use [`State::transaction`] to group several).
    pub async fn exec(&self, sql: &str, params: &[dqlite::Value]) -> Result<dqlite::ExecResult, Error> {
        let runtime = self.online_runtime()?;
        Ok(runtime.db.exec(sql, params).await?)
    }

    /// Runs `f` in a write transaction. Writes from concurrent requests on this member are
    /// committed together (each in a savepoint of its own), so `f` owns what it uses; if
    /// leadership moves before the commit, the call fails and `f`'s work is rolled back.
    pub async fn transaction<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: for<'t, 'd> FnOnce(&'t mut dqlite::Transaction<'d>) -> dqlite::TxFuture<'t, T> + Send + 'static,
    {
        let runtime = self.online_runtime()?;
        Ok(runtime.db.transaction(f).await?)
    }

    pub(crate) fn runtime(&self) -> Result<Arc<Runtime>, Error> {
        self.0
            .runtime
            .read()
            .ok()
            .and_then(|r| r.clone())
            .ok_or_else(|| Error::unavailable(DbStatus::NotInitialized.text()))
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.0.shutdown.borrow()
    }

    /// The trusted member with this certificate fingerprint.
    pub(crate) fn trusted_member(&self, fingerprint: &str) -> Option<String> {
        self.0.truststore.snapshot().by_fingerprint(fingerprint).map(|e| e.member.name.clone())
    }

    /// The database status text, with its reason when there is one.
    pub fn database_status_text(&self) -> String {
        let reason = self.0.status_reason.read().map(|r| r.clone()).unwrap_or_default();
        match reason.is_empty() {
            true => self.database_status().text().to_owned(),
            false => format!("{}: {reason}", self.database_status().text()),
        }
    }

    /// Fails with 503 and the status text unless the database is online.
    pub(crate) fn require_database(&self) -> Result<(), Error> {
        match self.database_status() {
            DbStatus::Online => Ok(()),
            _ => Err(Error::unavailable(self.database_status_text())),
        }
    }

    pub(crate) fn set_db_status(&self, status: DbStatus) {
        self.set_db_status_with(status, String::new());
    }

    pub(crate) fn set_db_status_with(&self, status: DbStatus, reason: String) {
        if let Ok(mut slot) = self.0.status_reason.write() {
            *slot = reason;
        }
        if status == DbStatus::Online
            && let Ok(runtime) = self.runtime()
        {
            runtime.db.confirm_reads();
        }
        self.0.db_status.send_replace(status);
    }

    /// Stops the daemon with an error.
    pub(crate) fn fail(&self, message: String) {
        tracing::error!("{message}");
        if let Ok(mut slot) = self.0.fatal.write() {
            *slot = Some(message);
        }
        self.request_shutdown();
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.0.epoch.load(Ordering::SeqCst)
    }

    pub(crate) fn bump_epoch(&self) {
        self.0.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Stops this member's runtime (listener, node, background tasks) and has the life cycle
    /// start it again, after `delay`, on a task of its own: the caller may be one of the tasks
    /// the stop ends.
    pub(crate) fn restart(&self, why: &'static str, node: NodeToStart, delay: Duration) {
        let state = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let runtime: Option<Arc<Runtime>> = state.take_runtime();
            let node_id = match (node, &runtime) {
                (NodeToStart::Id(id), _) => id,
                (NodeToStart::Running, Some(runtime)) => runtime.node_id,
                (NodeToStart::Running, None) => return,
            };
            tracing::warn!(why, "restarting this member's node");
            state.set_db_status(DbStatus::Starting);
            if let Some(runtime) = runtime {
                runtime.stop().await;
            }
            let lifecycle = state.0.lifecycle.clone();
            lifecycle.resume(state, node_id).await;
        });
    }

    /// Has the life cycle start what runs beside a runtime whose database is online
    /// (heartbeats, checkpoints following the node's role, memory given back after bursts, the
    /// disk watch), tied to the runtime's life: after a bootstrap, a join or a move.
    pub(crate) fn start_background(&self, runtime: &Arc<Runtime>) {
        self.0.lifecycle.start_background(self, runtime);
    }

    /// Asks the daemon to shut down.
    pub(crate) fn request_shutdown(&self) {
        self.0.shutdown.send_replace(true);
    }
}
