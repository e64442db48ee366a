//! Starting, opening and resetting this member's runtime: the steps the life cycle's init,
//! resume and reset, and the domain's moves, are made of.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::server::db::{DbStatus, members, schema};
use crate::server::error::{Error, ErrorKind};
use crate::server::state::State;
use crate::server::state::runtime::{Runtime, RuntimeConfig, StartError};

/// How long to wait for a leader while opening the database during init.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting for a leader after a restart: as long as it takes (quorum may come back later).
pub(crate) const OPEN_TIMEOUT_FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Starts the runtime and installs it in the daemon.
pub(crate) async fn start_runtime(state: &State, node_id: u64) -> Result<Arc<Runtime>, Error> {
    start_runtime_with(state, node_id, None).await
}

/// [`start_runtime`], forcing the node's raft configuration first (quorum recovery).
pub(crate) async fn start_runtime_with(
    state: &State,
    node_id: u64,
    recovery: Option<Vec<dqlite::NodeInfo>>,
) -> Result<Arc<Runtime>, Error> {
    let config = RuntimeConfig::read(state, node_id, recovery).map_err(Error::wrap)?;
    let runtime =
        Runtime::start(config, |tcp, tls| state.http().serve_member(state, tcp, tls)).await.map_err(|e| match e {
            StartError::Listen { .. } => Error::wrap(e).with_kind(ErrorKind::Conflict),
            other => Error::wrap(other),
        })?;
    state.install_runtime(runtime.clone());
    // The application's own listeners: a failure leaves that listener off, not the member.
    if let Err(err) = state.http().apply_servers(state, &runtime.cluster_identity()).await {
        tracing::warn!(error = %err, "additional listeners");
    }
    Ok(runtime)
}

/// What opening found.
enum Opened {
    Online,
    /// Other members run older software; the reason names them.
    Waiting(String),
}

/// Waits for a leader, then brings the schema up to date and marks the database online — or,
/// when this member runs newer software than others, waits (status "waiting for an upgrade",
/// re-checked every second) until every member runs it, and then applies the updates once.
/// A member whose software is older than the database's schema refuses to open.
pub(crate) async fn open_database(state: &State, runtime: &Runtime, timeout: Duration) -> Result<(), Error> {
    open_schema(state, runtime, timeout).await?;
    state.set_db_status(DbStatus::Online);
    Ok(())
}

/// [`open_database`] up to, not including, marking the database online: for a caller with
/// work that must be done before anyone may use it.
pub(crate) async fn open_schema(state: &State, runtime: &Runtime, timeout: Duration) -> Result<(), Error> {
    state.set_db_status(DbStatus::Starting);
    let deadline = Instant::now() + timeout;
    loop {
        if runtime.stop.is_fired() || state.is_shutting_down() {
            return Err(Error::unavailable("shutting down"));
        }
        match try_open(state, runtime).await {
            Ok(Opened::Online) => break,
            Ok(Opened::Waiting(reason)) => {
                if state.database_status() != DbStatus::WaitingUpgrade {
                    tracing::warn!("{reason}");
                }
                state.set_db_status_with(DbStatus::WaitingUpgrade, reason);
                tokio::time::sleep(UPGRADE_POLL).await;
            }
            Err(schema::SchemaError::Behind { kind, applied, known }) => {
                state.set_db_status(DbStatus::Offline);
                return Err(Error::unavailable(schema::SchemaError::Behind { kind, applied, known }.to_string()));
            }
            Err(schema::SchemaError::Db(err)) if Instant::now() < deadline => {
                tracing::debug!(error = %err, "database not reachable yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(schema::SchemaError::Db(err)) => return Err(err.into()),
        }
    }
    Ok(())
}

/// How often a member waiting for the others to upgrade looks again.
const UPGRADE_POLL: Duration = Duration::from_secs(1);

async fn try_open(state: &State, runtime: &Runtime) -> Result<Opened, schema::SchemaError> {
    let settings = state.settings();
    let db = &runtime.db;
    schema::create_schemas_table(db).await?;
    let applied = schema::applied(db).await?;
    let known = schema::known(&settings.internal_schema, &settings.external_schema);
    schema::check_not_behind(applied, known)?;
    if applied == schema::Versions::default() {
        // A new cluster's database: nobody else runs older software yet.
        schema::apply_missing(db, &settings.internal_schema, &settings.external_schema).await?;
        return Ok(Opened::Online);
    }

    // Record what this member runs, so the others can tell when everyone has upgraded.
    let (name, extensions) = (state.name(), settings.api_extensions.clone());
    let (owned_name, owned_extensions) = (name.clone(), extensions.clone());
    let rows = db
        .transaction(move |tx| {
            let (name, extensions) = (owned_name, owned_extensions);
            Box::pin(async move {
                members::set_software(tx, &name, known.internal, known.external, &extensions).await?;
                members::list(tx).await
            })
        })
        .await?;
    let behind: Vec<&str> = rows
        .iter()
        .filter(|m| {
            m.name != name
                && ((m.schema_internal, m.schema_external) < (known.internal, known.external)
                    || m.api_extensions.len() < extensions.len())
        })
        .map(|m| m.name.as_str())
        .collect();
    if !behind.is_empty() {
        return Ok(Opened::Waiting(format!(
            "{} cluster member(s) have not yet received the update ({}); upgrade them, or remove \
             one that is gone for good with `cluster remove --force`",
            behind.len(),
            behind.join(", ")
        )));
    }
    if applied != known {
        schema::apply_missing(db, &settings.internal_schema, &settings.external_schema).await?;
        tracing::info!(
            from = ?(applied.internal, applied.external),
            to = ?(known.internal, known.external),
            "applied schema updates"
        );
    }
    Ok(Opened::Online)
}

/// Turns this member back into an uninitialised daemon: stops its node and listener, and
/// deletes its database, cluster certificate and trust store. Idempotent.
pub(crate) async fn reset_local(state: &State) -> Result<(), Error> {
    state.bump_epoch();
    state.set_db_status(DbStatus::Offline);
    let runtime = state.take_runtime();
    if let Some(runtime) = runtime {
        runtime.stop().await;
    }
    let result = state.dir().reset().map_err(|e| Error::internal(format!("resetting the state directory: {e}")));
    state.trust().clear();
    if let Ok(mut config) = state.config().write() {
        config.name.clear();
        config.address.clear();
    }
    state.set_db_status(DbStatus::NotInitialized);
    result
}

/// Makes a member that is not initialised forget what an init that did not finish left behind
/// (another cluster's certificate and trust entries, a name, a join's journal), so that a
/// bootstrap or a join starts from nothing but this member's own certificate.
pub(crate) async fn clean_slate(state: &State) -> Result<(), Error> {
    let dir = state.dir();
    let files = [dir.cert_path("cluster"), dir.key_path("cluster"), dir.join_path()];
    let leftovers = files.iter().any(|f| f.exists())
        || state.trust().snapshot().iter().next().is_some()
        || !state.name().is_empty();
    if leftovers {
        tracing::info!("removing what an earlier init that did not finish left in the state directory");
        reset_local(state).await?;
    }
    Ok(())
}
