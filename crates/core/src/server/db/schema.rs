//! Schema bookkeeping: the core tables' own updates and the application's, applied in order,
//! each recorded in `schemas` (version, type 0 internal / 1 application).

use std::sync::Arc;

use dqlite::{Transaction, TxFuture, Value};

use super::{Db, now};

/// A database error, or a member too old for the cluster's schema.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchemaError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] dqlite::Error),
    /// The cluster's schema is newer than this binary knows.
    #[error(
        "this member's software is older than the cluster's: the database has {kind} schema version {applied}, this binary knows {known}; upgrade it"
    )]
    Behind {
        /// `internal` or `application`.
        kind: &'static str,
        /// Version in the database.
        applied: u64,
        /// Version this binary knows.
        known: u64,
    },
}

type UpdateFn = dyn for<'t, 'd> Fn(&'t mut Transaction<'d>) -> TxFuture<'t, ()> + Send + Sync;

/// One schema update. Updates are append-only: never change or reorder released ones.
///
/// ```
/// use microcluster::SchemaUpdate;
///
/// let updates = vec![
///     SchemaUpdate::sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"),
///     // Later release: arbitrary statements in the update's transaction.
///     SchemaUpdate::new(|tx| {
///         Box::pin(async move {
///             tx.exec("ALTER TABLE notes ADD COLUMN author TEXT", &[]).await?;
///             tx.exec("UPDATE notes SET author = ?", &["unknown".into()]).await?;
///             Ok(())
///         })
///     }),
/// ];
/// # let _ = updates;
/// ```
#[derive(Clone)]
pub struct SchemaUpdate {
    run: Arc<UpdateFn>,
}

impl std::fmt::Debug for SchemaUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchemaUpdate")
    }
}

impl SchemaUpdate {
    /// An update that runs SQL text (one or more statements).
    pub fn sql(sql: impl Into<String>) -> SchemaUpdate {
        let sql: Arc<str> = sql.into().into();
        SchemaUpdate {
            run: Arc::new(move |tx| {
                let sql = sql.clone();
                Box::pin(async move { tx.exec(&sql, &[]).await.map(drop) })
            }),
        }
    }

    /// An update that runs arbitrary statements in the update's transaction.
    pub fn new<F>(f: F) -> SchemaUpdate
    where
        F: for<'t, 'd> Fn(&'t mut Transaction<'d>) -> TxFuture<'t, ()> + Send + Sync + 'static,
    {
        SchemaUpdate { run: Arc::new(f) }
    }
}

/// The core tables, as internal updates.
pub(crate) fn internal_updates() -> Vec<SchemaUpdate> {
    vec![
        SchemaUpdate::sql(
            "CREATE TABLE core_cluster_members (
  id               INTEGER   PRIMARY KEY AUTOINCREMENT NOT NULL,
  name             TEXT      NOT NULL,
  address          TEXT      NOT NULL,
  certificate      TEXT      NOT NULL,
  schema_internal  INTEGER   NOT NULL,
  schema_external  INTEGER   NOT NULL,
  heartbeat        DATETIME  NOT NULL,
  role             TEXT      NOT NULL,
  api_extensions   TEXT      NOT NULL DEFAULT '[]',
  UNIQUE(name),
  UNIQUE(address),
  UNIQUE(certificate)
);
CREATE TABLE core_token_records (
  id           INTEGER   PRIMARY KEY AUTOINCREMENT NOT NULL,
  name         TEXT      NOT NULL,
  secret       TEXT      NOT NULL,
  expiry_date  DATETIME,
  UNIQUE(name),
  UNIQUE(secret)
);",
        ),
        // Monitoring credentials (`microctl monitoring add`): certificates that may read
        // metrics and status only.
        SchemaUpdate::sql(
            "CREATE TABLE core_monitors (
  id           INTEGER   PRIMARY KEY AUTOINCREMENT NOT NULL,
  name         TEXT      NOT NULL,
  fingerprint  TEXT      NOT NULL,
  created      DATETIME  NOT NULL,
  UNIQUE(name),
  UNIQUE(fingerprint)
)",
        ),
    ]
}

/// Creates `schemas`. The throw-away first table makes SQLite create `sqlite_sequence` before
/// `schemas`, so `sqlite_master` lists the tables in the order microcluster's tutorial shows.
const CREATE_SCHEMAS: &str = "CREATE TABLE schemas_first (id INTEGER PRIMARY KEY AUTOINCREMENT);
CREATE TABLE schemas (
  id          INTEGER   PRIMARY KEY AUTOINCREMENT NOT NULL,
  version     INTEGER   NOT NULL,
  type        INTEGER   NOT NULL,
  updated_at  DATETIME  NOT NULL,
  UNIQUE(version, type)
);
DROP TABLE schemas_first;";

pub(crate) async fn create_schemas_table(db: &Db) -> Result<(), dqlite::Error> {
    const EXISTS: &str = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schemas'";
    let count =
        |rows: &dqlite::QueryResult| rows.rows.first().and_then(|r| r.get(0).and_then(Value::as_i64)).unwrap_or(0);
    if count(&db.query(EXISTS, &[]).await?) > 0 {
        return Ok(());
    }
    db.transaction(move |tx| {
        Box::pin(async move {
            // Another member may have created it since the check above.
            if count(&tx.query(EXISTS, &[]).await?) == 0 {
                tx.exec(CREATE_SCHEMAS, &[]).await?;
            }
            Ok(())
        })
    })
    .await
}

/// Schema versions: how many internal and application updates are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Versions {
    /// Internal updates.
    pub(crate) internal: u64,
    /// Application updates.
    pub(crate) external: u64,
}

/// The versions this software knows.
pub(crate) fn known(internal: &[SchemaUpdate], external: &[SchemaUpdate]) -> Versions {
    Versions { internal: internal.len() as u64, external: external.len() as u64 }
}

/// Fails if the database's schema is newer than this software knows.
pub(crate) fn check_not_behind(applied: Versions, known: Versions) -> Result<(), SchemaError> {
    for (kind, applied, known) in
        [("internal", applied.internal, known.internal), ("application", applied.external, known.external)]
    {
        if applied > known {
            return Err(SchemaError::Behind { kind, applied, known });
        }
    }
    Ok(())
}

/// Applies the updates the database lacks, in one transaction, re-reading what is applied
/// inside it so that two members doing this at once apply each update once.
pub(crate) async fn apply_missing(
    db: &Db,
    internal: &[SchemaUpdate],
    external: &[SchemaUpdate],
) -> Result<(), SchemaError> {
    let internal: Vec<_> = internal.to_vec();
    let external: Vec<_> = external.to_vec();
    db.transaction(move |tx| {
        let (internal, external) = (internal.clone(), external.clone());
        Box::pin(async move {
            let rows = tx.query("SELECT type, COALESCE(max(version), 0) FROM schemas GROUP BY type", &[]).await?;
            let current = |kind: i64| {
                rows.rows
                    .iter()
                    .find(|r| r.get(0).and_then(Value::as_i64) == Some(kind))
                    .and_then(|r| r.get(1).and_then(Value::as_i64))
                    .unwrap_or(0) as usize
            };
            for (kind, updates) in [(0i64, &internal), (1i64, &external)] {
                for (index, update) in updates.iter().enumerate().skip(current(kind)) {
                    (update.run)(tx).await?;
                    tx.exec(
                        "INSERT INTO schemas (version, type, updated_at) VALUES (?, ?, ?)",
                        &[Value::Integer(index as i64 + 1), Value::Integer(kind), Value::Text(now())],
                    )
                    .await?;
                }
            }
            Ok(())
        })
    })
    .await?;
    Ok(())
}

/// The versions recorded in `schemas`.
pub(crate) async fn applied(db: &Db) -> Result<Versions, dqlite::Error> {
    let rows = db.query("SELECT type, COALESCE(max(version), 0) FROM schemas GROUP BY type", &[]).await?;
    let mut versions = Versions::default();
    for row in &rows.rows {
        let version = row.get(1).and_then(Value::as_i64).unwrap_or(0).max(0) as u64;
        match row.get(0).and_then(Value::as_i64) {
            Some(0) => versions.internal = version,
            Some(1) => versions.external = version,
            _ => {}
        }
    }
    Ok(versions)
}
