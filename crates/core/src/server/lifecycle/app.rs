//! The library's entry point: [`App`] runs a member's daemon with the application's endpoints,
//! schema and hooks, and offers the calls an application makes on its own member.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{Control, ServerStatus, SqlBatch, TokenRecord};
use crate::client::{Client, ClientError};
use crate::server::db::DbStatus;
use crate::server::db::schema::{SchemaUpdate, internal_updates};
use crate::server::lifecycle::member::MemberLifecycle;
use crate::server::lifecycle::startup::{self, Files};
use crate::server::rest::endpoints;
use crate::server::rest::front::{Front, PreInit};
use crate::server::rest::servers::{Listeners, Server};
use crate::server::rest::{ConnectionLimits, Listener, Routes, open_file_limit};
use crate::server::state::hooks::{Hooks, NoHooks};
use crate::server::state::{Daemon, Settings, State};
use crate::state_dir::{StateDir, StateDirError};

/// Where the member keeps its state.
#[derive(Debug, Clone)]
pub struct Args {
    /// The state directory.
    pub state_dir: PathBuf,
}

/// What the application brings to the daemon.
#[derive(Clone)]
pub struct DaemonArgs {
    /// Application version, reported by `GET /core/1.0`.
    pub version: String,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// API extensions this software provides (`[a-z0-9]+(_[a-z0-9]+)*`, append-only).
    pub api_extensions: Vec<String>,
    /// The application's schema updates (append-only).
    pub extensions_schema: Vec<SchemaUpdate>,
    /// Lifecycle hooks.
    pub hooks: Arc<dyn Hooks>,
    /// The application's endpoints and where they are served.
    pub servers: Vec<Server>,
    /// Group owning the control socket (name or numeric id).
    pub socket_group: Option<String>,
    /// Expected network round trip between members (raft heartbeat 3×, election 15×).
    pub network_latency: Duration,
    /// Longest an SQL statement may run on this member's node before it is interrupted
    /// (`None`: no limit). libdqlite runs statements on the loop that also keeps raft going, so
    /// a runaway query would otherwise freeze the member for good. Process-wide (see
    /// [`dqlite::set_statement_timeout`]).
    pub statement_timeout: Option<Duration>,
    /// This member's failure domain, recorded in `daemon.toml` at start (`None`: keep the
    /// recorded one). Voters and stand-bys are spread across domains.
    pub failure_domain: Option<u64>,
    /// Connections each listener holds and the timeouts that close them.
    pub connections: ConnectionLimits,
    /// The signals that stop the daemon (SIGTERM and SIGINT by default; empty: none, for an
    /// application that handles signals itself and stops the daemon with
    /// [`App::start_until`]).
    pub shutdown_signals: Vec<tokio::signal::unix::SignalKind>,
    /// Where the member serves, over HTTPS with its own certificate, while it is not
    /// initialised: the core API's status and the core servers marked
    /// [`Server::pre_init`] (`None`: nothing before init). It may be the address the member
    /// is then initialised with.
    pub pre_init_address: Option<String>,
}

impl std::fmt::Debug for DaemonArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonArgs")
            .field("version", &self.version)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("api_extensions", &self.api_extensions)
            .finish_non_exhaustive()
    }
}

impl Default for DaemonArgs {
    fn default() -> Self {
        DaemonArgs {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            heartbeat_interval: Duration::from_secs(10),
            api_extensions: Vec::new(),
            extensions_schema: Vec::new(),
            hooks: Arc::new(NoHooks),
            servers: Vec::new(),
            socket_group: None,
            network_latency: Duration::from_millis(40),
            statement_timeout: Some(Duration::from_secs(5)),
            failure_domain: None,
            connections: ConnectionLimits::default(),
            shutdown_signals: vec![
                tokio::signal::unix::SignalKind::terminate(),
                tokio::signal::unix::SignalKind::interrupt(),
            ],
            pre_init_address: None,
        }
    }
}

/// The daemon could not start or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// A state directory problem (including another daemon holding it).
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// Invalid arguments.
    #[error("{0}")]
    Invalid(String),
    /// A listener could not start.
    #[error("{what}: {source}")]
    Io {
        /// What failed.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A member of a cluster, run by the application.
#[derive(Debug, Clone)]
pub struct App {
    state_dir: PathBuf,
}

impl App {
    /// An app using the state directory in `args`.
    pub fn new(args: Args) -> App {
        App { state_dir: args.state_dir }
    }

    /// The control socket's path.
    pub fn socket_path(&self) -> PathBuf {
        self.state_dir.join("control.socket")
    }

    /// A client of this member over its control socket.
    pub fn local_client(&self) -> Client {
        Client::unix(self.socket_path())
    }

    /// This member's status.
    pub async fn status(&self) -> Result<ServerStatus, ClientError> {
        self.local_client().status().await
    }

    /// Waits until the daemon answers and is ready.
    pub async fn ready(&self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.local_client().with_timeout(Duration::from_secs(5)).ready().await {
                Ok(()) => return Ok(()),
                Err(err) if tokio::time::Instant::now() >= deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Bootstraps a new cluster with this member.
    pub async fn new_cluster(
        &self,
        name: &str,
        address: &str,
        config: BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let control =
            Control { bootstrap: true, name: name.into(), address: address.into(), config, ..Control::default() };
        self.local_client().with_timeout(Duration::from_secs(120)).control(&control).await
    }

    /// Joins the cluster that issued `token`.
    pub async fn join_cluster(
        &self,
        name: &str,
        address: &str,
        token: &str,
        config: BTreeMap<String, String>,
    ) -> Result<(), ClientError> {
        let control = Control {
            join_token: token.into(),
            name: name.into(),
            address: address.into(),
            config,
            ..Control::default()
        };
        self.local_client().with_timeout(Duration::from_secs(120)).control(&control).await
    }

    /// Issues a join token for member `name`.
    pub async fn new_join_token(&self, name: &str, expire_after: Option<Duration>) -> Result<String, ClientError> {
        self.local_client().add_token(name, expire_after).await
    }

    /// Outstanding join tokens.
    pub async fn list_join_tokens(&self) -> Result<Vec<TokenRecord>, ClientError> {
        self.local_client().tokens().await
    }

    /// Revokes the join token for `name`.
    pub async fn revoke_join_token(&self, name: &str) -> Result<(), ClientError> {
        self.local_client().revoke_token(name).await
    }

    /// The cluster's members, with their roles and status (`microctl cluster list`).
    pub async fn cluster_members(&self) -> Result<Vec<crate::api::ClusterMember>, ClientError> {
        self.local_client().cluster_members().await
    }

    /// Removes member `name` from the cluster (`force`: it is gone for good; its PreRemove
    /// hook's failure and its absence do not stop the removal).
    pub async fn remove_cluster_member(&self, name: &str, force: bool) -> Result<(), ClientError> {
        self.local_client().with_timeout(Duration::from_secs(120)).remove_member(name, force).await
    }

    /// Stops this member's daemon, as SIGTERM does.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.local_client().shutdown().await
    }

    /// A mutual-TLS client of the server at `address` whose certificate is `cert_pem` (pinned:
    /// no other is accepted), authenticated with this member's certificate: for a member of
    /// another cluster, or an application's listener with a certificate of its own.
    pub fn remote_client_with_cert(&self, address: &str, cert_pem: &str) -> Result<Client, AppError> {
        let dir = StateDir::open(&self.state_dir)?;
        let identity =
            dir.server_identity()?.ok_or_else(|| AppError::Invalid("this member has no certificate yet".into()))?;
        let fingerprint = crate::tls::fingerprint_pem(cert_pem)
            .map_err(|e| AppError::Invalid(format!("the server certificate: {e}")))?;
        let config = crate::tls::client_config(Some(&identity), vec![fingerprint])
            .map_err(|e| AppError::Invalid(e.to_string()))?;
        Ok(Client::https(address, config))
    }

    /// A mutual-TLS client of the member at `address`, authenticated with this member's
    /// certificate (the member must be initialised).
    pub fn remote_client(&self, address: &str) -> Result<Client, AppError> {
        let cluster = StateDir::open(&self.state_dir)?
            .cluster_identity()?
            .ok_or_else(|| AppError::Invalid("this member is not initialised (no cluster certificate)".into()))?;
        self.remote_client_with_cert(address, &cluster.cert_pem)
    }

    /// Runs SQL on the cluster database.
    pub async fn sql(&self, query: &str) -> Result<SqlBatch, ClientError> {
        self.local_client().sql(query).await
    }

    /// Runs the daemon until one of [`DaemonArgs::shutdown_signals`] (SIGTERM, SIGINT) or
    /// `POST /core/control/shutdown`.
    pub async fn start(&self, args: DaemonArgs) -> Result<(), AppError> {
        self.start_until(args, std::future::pending()).await
    }

    /// [`App::start`], also stopping (with the same orderly shutdown) when `stop` completes:
    /// for an application that embeds the daemon and decides itself when it ends.
    ///
    /// ```no_run
    /// use microcluster::{App, Args, DaemonArgs};
    ///
    /// # async fn run() -> Result<(), microcluster::AppError> {
    /// let app = App::new(Args { state_dir: "/var/lib/myapp".into() });
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let daemon = tokio::spawn(async move {
    ///     let args = DaemonArgs { shutdown_signals: Vec::new(), ..DaemonArgs::default() };
    ///     app.start_until(args, async move { let _ = stopped.await; }).await
    /// });
    /// // ... later, from anywhere:
    /// let _ = stop.send(());
    /// daemon.await.expect("the daemon task")?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_until(
        &self,
        args: DaemonArgs,
        stop: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), AppError> {
        crate::server::memory::note_start();
        crate::server::rest::servers::validate(&args.servers).map_err(AppError::Invalid)?;
        if let Some(address) = &args.pre_init_address {
            crate::validate::member_address(address)
                .map_err(|e| AppError::Invalid(format!("the pre-init address: {e}")))?;
        }
        for ext in &args.api_extensions {
            if !valid_extension(ext) {
                return Err(AppError::Invalid(format!(
                    "invalid API extension name {ext:?}: use [a-z0-9]+(_[a-z0-9]+)*"
                )));
            }
        }
        let gid = args.socket_group.as_deref().map(resolve_group).transpose()?;
        dqlite::set_statement_timeout(args.statement_timeout).map_err(|e| AppError::Invalid(e.to_string()))?;
        let dir = StateDir::open(&self.state_dir)?;
        let _lock = dir.lock()?;
        let Files { mut config, server: server_identity, truststore, node: initialised } = startup::load(&dir)?;
        if let Some(domain) = args.failure_domain.filter(|d| *d != config.failure_domain) {
            config.failure_domain = domain;
            dir.set_daemon_config(&config)?;
        }

        // The core listener serves the core API and the core servers; the socket also the
        // control endpoints and the core servers that asked for it.
        let mut shared = endpoints::shared();
        let mut unix = vec![endpoints::control()];
        unix.extend(shared.iter().cloned());
        for server in args.servers.iter().filter(|s| s.core_api) {
            shared.extend(server.resources.iter().cloned());
            if server.serve_unix {
                unix.extend(server.resources.iter().cloned());
            }
        }
        let limits = args.connections.resolve(open_file_limit());
        let pre_init = args.pre_init_address.as_ref().map(|address| {
            let mut early = endpoints::shared();
            for server in args.servers.iter().filter(|s| s.core_api && s.pre_init) {
                early.extend(server.resources.iter().cloned());
            }
            PreInit { address: address.clone(), routes: Arc::new(Routes::new(&early)), running: Default::default() }
        });
        let front = Front {
            core_routes: Arc::new(Routes::new(&shared)),
            limits,
            servers: args.servers.clone(),
            listeners: Listeners::default(),
            pre_init,
        };
        let (shutdown, mut shutdown_rx) = watch::channel(false);
        let daemon = Daemon {
            dir,
            settings: Settings {
                version: args.version.clone(),
                heartbeat: args.heartbeat_interval,
                api_extensions: args.api_extensions.clone(),
                internal_schema: internal_updates(),
                external_schema: args.extensions_schema.clone(),
                hooks: args.hooks.clone(),
                network_latency: args.network_latency,
            },
            config: RwLock::new(config),
            server_identity: RwLock::new(server_identity),
            truststore,
            runtime: RwLock::new(None),
            db_status: watch::channel(DbStatus::NotInitialized).0,
            status_reason: RwLock::new(String::new()),
            fatal: RwLock::new(None),
            shutdown,
            running: watch::channel(0).0,
            init_lock: tokio::sync::Mutex::new(()),
            role_lock: tokio::sync::Mutex::new(()),
            trust_lock: tokio::sync::Mutex::new(()),
            epoch: AtomicU64::new(0),
            http: Arc::new(front),
            metrics: Arc::default(),
            clock: Default::default(),
            lifecycle: Arc::new(MemberLifecycle),
            monitors: RwLock::default(),
            monitors_lock: tokio::sync::Mutex::new(()),
            trust_digests: Default::default(),
            admissions: tokio::sync::Semaphore::new(crate::server::domain::membership::ADMISSIONS),
        };
        let state = State::new(daemon);
        let socket = state.dir().socket();
        let control =
            Listener::unix(&socket, gid, state.clone(), Arc::new(Routes::new(&unix)), limits).map_err(|source| {
                AppError::Io { what: format!("cannot serve the control socket {}", socket.display()), source }
            })?;
        tracing::info!(socket = %socket.display(), "control socket ready");

        if let Err(err) = MemberLifecycle::boot(&state, initialised).await {
            state.request_shutdown();
            control.stop().await;
            return Err(AppError::Invalid(err.to_string()));
        }

        let signals = args.shutdown_signals.iter().map(|kind| Box::pin(signal(*kind)));
        let any_signal = async move {
            match signals.len() {
                0 => std::future::pending().await,
                _ => futures_select_all(signals.collect()).await,
            }
        };
        tokio::select! {
            _ = shutdown_rx.wait_for(|stop| *stop) => {}
            kind = any_signal => tracing::info!(signal = kind, "signal received"),
            () = stop => tracing::info!("stop requested by the application"),
        }
        shutdown_sequence(&state, limits.drain_timeout.min(REQUEST_DRAIN)).await;
        control.stop().await;
        tracing::info!("stopped");
        match state.fatal_message() {
            Some(message) => Err(AppError::Invalid(message)),
            None => Ok(()),
        }
    }
}

/// Resolves when `kind` arrives (never, if it cannot be listened for), with its number.
async fn signal(kind: tokio::signal::unix::SignalKind) -> i32 {
    match tokio::signal::unix::signal(kind) {
        Ok(mut stream) => {
            stream.recv().await;
        }
        Err(err) => {
            tracing::warn!(signal = kind.as_raw_value(), error = %err, "cannot listen for a signal");
            std::future::pending::<()>().await;
        }
    }
    kind.as_raw_value()
}

/// The first of `futures` to complete.
async fn futures_select_all<F: std::future::Future<Output = i32> + Unpin>(mut futures: Vec<F>) -> i32 {
    std::future::poll_fn(move |cx| {
        for future in futures.iter_mut() {
            if let std::task::Poll::Ready(value) = std::pin::Pin::new(future).poll(cx) {
                return std::task::Poll::Ready(value);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The longest a stopping daemon waits for the requests it accepted before the stop (no
/// longer than its listeners' drain time either, which the application may have set shorter).
const REQUEST_DRAIN: Duration = Duration::from_secs(2);

/// Stops everything in reverse order of start-up, bounded in time; `drain`: how long the
/// requests accepted before the stop may still run before the handover.
async fn shutdown_sequence(state: &State, drain: Duration) {
    state.request_shutdown();
    // What was accepted before the stop finishes while this member still leads: a write in
    // flight during the leadership transfer would fail, some of them without saying whether
    // they were applied. Requests arriving from now on are refused before they run, and a
    // member that forwarded one sends it again to the next leader.
    if !state.requests_finished(drain).await {
        tracing::info!("requests still running after {drain:?}; stopping anyway");
    }
    let hooks = state.settings().hooks.clone();
    match tokio::time::timeout(Duration::from_secs(5), hooks.on_stop(state)).await {
        Ok(Err(err)) => tracing::warn!(error = %err, "the OnStop hook failed"),
        Err(_) => tracing::warn!("the OnStop hook took longer than 5 s; going on"),
        Ok(Ok(())) => {}
    }
    crate::server::domain::membership::handover(state).await;
    let runtime = state.take_runtime();
    if let Some(runtime) = runtime {
        state.set_db_status(DbStatus::Offline);
        if tokio::time::timeout(Duration::from_secs(10), runtime.stop()).await.is_err() {
            tracing::warn!("stopping the database took longer than 10 s");
        }
    }
}

/// API extension names: lower-case words joined by single underscores.
pub(crate) fn valid_extension(name: &str) -> bool {
    !name.is_empty()
        && name
            .split('_')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

fn resolve_group(group: &str) -> Result<u32, AppError> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|source| AppError::Io { what: "reading /etc/group".into(), source })?;
    groups
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            Some((fields.next()?, fields.nth(1)?))
        })
        .find(|(name, _)| *name == group)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| AppError::Invalid(format!("unknown socket group {group:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_names() {
        for ok in ["a", "custom_extension_a_0", "x1_y2"] {
            assert!(valid_extension(ok), "{ok}");
        }
        for bad in ["", "A", "a__b", "_a", "a_", "a-b", "a b"] {
            assert!(!valid_extension(bad), "{bad}");
        }
    }
}
