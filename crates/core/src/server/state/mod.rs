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
    /// Requests being handled that a stopping daemon refuses (see [`State::request_running`]).
    pub(crate) running: watch::Sender<usize>,
    /// Serialises init, reset and the start-up of the cluster runtime.
    pub(crate) init_lock: tokio::sync::Mutex<()>,
    /// Serialises role decisions on the leader (joins arriving at once, heartbeat changes), so
    /// that each sees the roles the previous one gave.
    pub(crate) role_lock: tokio::sync::Mutex<()>,
    /// Held by the leader's heartbeat round and by a certificate rotation, so that a round's
    /// list of members, read before a rotation's step, never reaches a trust store after it.
    pub(crate) trust_lock: tokio::sync::Mutex<()>,
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
    /// The monitoring credentials' fingerprints, with their names.
    pub(crate) monitors: RwLock<std::collections::BTreeMap<String, String>>,
    /// Serialises reading them again (`domain::monitors::refresh`).
    pub(crate) monitors_lock: tokio::sync::Mutex<()>,
    /// As leader: the digest of its trust store each member gave in its last heartbeat answer,
    /// by address (`domain::heartbeat`).
    pub(crate) trust_digests: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// As leader: a permit per admission under way (`membership::join::admit`).
    pub(crate) admissions: tokio::sync::Semaphore,
}

/// Which node a restarted runtime starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum NodeToStart {
    /// The one that runs now; no restart when none runs.
    Running,
    /// This one (e.g. recorded in `node.toml` for a new address).
    Id(u64),
}

/// The core's own API extensions, in microcluster's names: applications declare theirs at
/// run time, and the core's endpoints are under `/core`.
pub const INTERNAL_EXTENSIONS: &[&str] = &["internal:runtime_extension_v1", "internal:rename_core_endpoints"];

/// The other members of the cluster, each with a client ([`State::cluster`]).
#[derive(Debug, Clone)]
pub struct Cluster {
    members: Vec<(ClusterMemberLocal, Client)>,
}

impl Cluster {
    /// The members and their clients.
    pub fn members(&self) -> &[(ClusterMemberLocal, Client)] {
        &self.members
    }

    /// Runs `call` with each member's client: one after the other, or all at once
    /// (`concurrent`); returns each member's name with what its call returned, in the members'
    /// order. Unlike microcluster's, it does not stop at the first failure: every member is
    /// asked and every answer kept, and the caller decides what a failure means.
    ///
    /// ```
    /// use microcluster::{Error, State};
    ///
    /// // Ask every other member for its status, all at once; fail if one cannot answer.
    /// async fn versions(state: &State) -> Result<Vec<(String, String)>, Error> {
    ///     let answers = state.cluster(false)?.query(true, |client| async move { client.status().await }).await;
    ///     answers
    ///         .into_iter()
    ///         .map(|(name, status)| match status {
    ///             Ok(status) => Ok((name, status.version)),
    ///             Err(err) => Err(Error::unavailable(format!("{name}: {err}"))),
    ///         })
    ///         .collect()
    /// }
    /// # let _ = versions;
    /// ```
    pub async fn query<T, F, Fut>(
        &self,
        concurrent: bool,
        call: F,
    ) -> Vec<(String, Result<T, crate::client::ClientError>)>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::client::ClientError>>,
    {
        let calls = self.members.iter().map(|(member, client)| {
            let answer = call(client.clone());
            async move { (member.name.clone(), answer.await) }
        });
        if concurrent {
            let mut set = Vec::new();
            for call in calls {
                set.push(Box::pin(call));
            }
            join_all(set).await
        } else {
            let mut answers = Vec::new();
            for call in calls {
                answers.push(call.await);
            }
            answers
        }
    }
}

/// Every future's output, in order, the futures run at once on the caller's task.
async fn join_all<F: std::future::Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match std::pin::Pin::new(future).poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        match pending {
            true => std::task::Poll::Pending,
            false => std::task::Poll::Ready(outputs.iter_mut().filter_map(Option::take).collect()),
        }
    })
    .await
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

    /// See [`Daemon::admissions`].
    pub(crate) fn admissions(&self) -> &tokio::sync::Semaphore {
        &self.0.admissions
    }

    /// See [`Daemon::trust_digests`].
    pub(crate) fn trust_digests(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        self.0.trust_digests.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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

    /// Serialises the leader's heartbeat rounds with certificate rotations.
    pub(crate) async fn lock_trust(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.trust_lock.lock().await
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

    /// Whether this binary declares API extension `name`, or the core has it (`internal:…`:
    /// [`INTERNAL_EXTENSIONS`], the names microcluster gives the same behaviour).
    pub fn has_extension(&self, name: &str) -> bool {
        INTERNAL_EXTENSIONS.contains(&name) || self.0.settings.api_extensions.iter().any(|e| e == name)
    }

    /// This member's own certificate and key (what it presents to other members).
    pub fn server_cert(&self) -> Identity {
        self.0.server_identity.read().map(|i| i.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The cluster's certificate and key (what every member serves its API with), once the
    /// member is initialised.
    pub fn cluster_cert(&self) -> Result<Identity, Error> {
        Ok(self.runtime()?.cluster_identity())
    }

    /// The application's own listeners (the servers that are not part of the core API), by
    /// name, with the address each listens on (empty: not listening).
    pub fn extension_servers(&self) -> std::collections::BTreeMap<String, String> {
        self.0.http.wanted_servers(self)
    }

    /// The address of the dqlite leader, asked of the cluster.
    pub async fn leader_address(&self) -> Result<String, Error> {
        Ok(self.online_runtime()?.db.client().leader().await?.address)
    }

    /// dqlite's configuration: every node's id, address and role (voter, stand-by, spare).
    pub async fn dqlite_nodes(&self) -> Result<Vec<dqlite::NodeInfo>, Error> {
        Ok(self.online_runtime()?.db.client().cluster().await?)
    }

    /// Clients of every other member, to ask them all something ([`Cluster::query`]);
    /// `notification`: marked so that receivers do not pass the request on again.
    pub fn cluster(&self, notification: bool) -> Result<Cluster, Error> {
        let me = self.name();
        let members = self
            .members()
            .into_iter()
            .filter(|m| m.name != me)
            .map(|m| {
                let client = self.member_client(&m.address)?;
                Ok((m, if notification { client.as_notification() } else { client }))
            })
            .collect::<Result<_, Error>>()?;
        Ok(Cluster { members })
    }

    /// The members this member trusts (itself included).
    pub fn members(&self) -> Vec<ClusterMemberLocal> {
        self.0.truststore.snapshot().iter().map(|e| e.member.clone()).collect()
    }

    /// A mutual-TLS client of the member at `address`.
    pub fn member_client(&self, address: &str) -> Result<Client, Error> {
        let runtime = self.runtime()?;
        Ok(Client::https(address, runtime.peer_tls.clone()).with_pool(runtime.peer_pool.clone()))
    }

    /// Clients of every other member, marked as notifications (receivers do not fan out again).
    pub fn peer_clients(&self) -> Result<Vec<(ClusterMemberLocal, Client)>, Error> {
        let me = self.name();
        self.members()
            .into_iter()
            .filter(|m| m.name != me)
            .map(|m| self.member_client(&m.address).map(|client| (m, client.as_notification())))
            .collect()
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

    /// Resolves when the daemon begins to shut down: what a task started by a hook or a
    /// handler waits on to end in time (microcluster hands hooks a context that lives until
    /// then).
    pub async fn stopping(&self) {
        let mut shutdown = self.0.shutdown.subscribe();
        let _ = shutdown.wait_for(|stop| *stop).await;
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.0.shutdown.borrow()
    }

    /// The monitoring credential with this certificate fingerprint.
    pub(crate) fn monitor(&self, fingerprint: &str) -> Option<String> {
        self.0.monitors.read().ok().and_then(|m| m.get(fingerprint).cloned())
    }

    /// The monitoring credentials this member knows: fingerprint → name.
    pub(crate) fn monitors(&self) -> std::collections::BTreeMap<String, String> {
        self.0.monitors.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Replaces the monitoring credentials this member knows.
    pub(crate) fn set_monitors(&self, monitors: std::collections::BTreeMap<String, String>) {
        if let Ok(mut slot) = self.0.monitors.write() {
            *slot = monitors;
        }
    }

    /// Serialises reading the monitoring credentials again.
    pub(crate) async fn lock_monitors(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.monitors_lock.lock().await
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

    /// Counts a request as running until the guard is dropped. Counted before the request
    /// checks [`State::is_shutting_down`], so that [`State::requests_finished`], called after
    /// the shutdown was requested, never misses one that got past the check.
    pub(crate) fn request_running(&self) -> RequestRunning {
        self.0.running.send_modify(|n| *n += 1);
        RequestRunning(self.clone())
    }

    /// Waits (at most `limit`) until no counted request runs; false if some still do.
    pub(crate) async fn requests_finished(&self, limit: std::time::Duration) -> bool {
        let mut running = self.0.running.subscribe();
        tokio::time::timeout(limit, running.wait_for(|n| *n == 0)).await.is_ok()
    }
}

/// A request counted as running ([`State::request_running`]).
pub(crate) struct RequestRunning(State);

impl Drop for RequestRunning {
    fn drop(&mut self) {
        self.0.0.running.send_modify(|n| *n = n.saturating_sub(1));
    }
}
