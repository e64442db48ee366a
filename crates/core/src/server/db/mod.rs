//! The cluster database as the daemon uses it: one dqlite database (`db.bin`) reached through
//! the leader, its status, schema bookkeeping, and the core tables' queries.
//!
//! Access is serialised through one connection for now: libdqlite 1.11 answers a second
//! concurrent writer with "database is locked", and one connection never races itself.

pub(crate) mod dump;
pub(crate) mod members;
pub(crate) mod schema;
pub(crate) mod tokens;

use std::time::{Duration, Instant};

use dqlite::{Client, Database, QueryResult, Transaction, TxFuture, Value};
use hyper::StatusCode;

use crate::server::rest::ApiError;

/// The logical database every member shares.
pub(crate) const DB_NAME: &str = "db.bin";

/// Where the database stands, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbStatus {
    /// The member has not been bootstrapped or joined.
    NotInitialized,
    /// The node runs; the schema is being checked or a leader is awaited.
    Starting,
    /// This member runs newer software than others and waits for them.
    WaitingUpgrade,
    /// Usable.
    Online,
    /// Stopped (shutting down or failed).
    Offline,
}

impl DbStatus {
    /// The status text (also the 503 message while not online).
    pub fn text(self) -> &'static str {
        match self {
            DbStatus::NotInitialized => "Database is not yet initialized",
            DbStatus::Starting => "Database is still starting",
            DbStatus::WaitingUpgrade => "Database is waiting for an upgrade",
            DbStatus::Online => "Database is online",
            DbStatus::Offline => "Database is offline",
        }
    }
}

/// SQLite's constraint violation code.
const SQLITE_CONSTRAINT: u64 = 19;

/// The one place where a database error becomes an HTTP status.
impl From<dqlite::Error> for ApiError {
    fn from(err: dqlite::Error) -> ApiError {
        let status = match &err {
            e if e.is_not_leader() || e.is_ambiguous() => StatusCode::SERVICE_UNAVAILABLE,
            dqlite::Error::NoLeader { .. } => StatusCode::SERVICE_UNAVAILABLE,
            e if e.code().is_some_and(|c| c & 0xff == SQLITE_CONSTRAINT) => StatusCode::CONFLICT,
            dqlite::Error::Returning { .. }
            | dqlite::Error::NotReadOnly { .. }
            | dqlite::Error::MultipleStatements { .. }
            | dqlite::Error::EmptyStatement
            | dqlite::Error::ParamCount { .. }
            | dqlite::Error::UnsupportedParam { .. }
            | dqlite::Error::Encode(_)
            | dqlite::Error::TooManyRows { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, format!("database: {err}"))
    }
}

/// The shared database.
#[derive(Debug)]
pub(crate) struct Db {
    client: Client,
    conn: tokio::sync::Mutex<Database>,
}

/// How long database operations keep retrying "database is locked" from other members.
const BUSY_RETRY: Duration = Duration::from_secs(10);

impl Db {
    pub(crate) fn new(client: Client) -> Db {
        let conn = tokio::sync::Mutex::new(client.database(DB_NAME));
        Db { client, conn }
    }

    /// The dqlite client (leader discovery, membership requests).
    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `f` in a transaction, retrying while another member holds the write lock.
    pub(crate) async fn transaction<T, F>(&self, f: F) -> Result<T, dqlite::Error>
    where
        F: for<'t, 'd> Fn(&'t mut Transaction<'d>) -> TxFuture<'t, T>,
    {
        let deadline = Instant::now() + BUSY_RETRY;
        let mut pause = Duration::from_millis(5);
        loop {
            let result = self.conn.lock().await.transaction(&f).await;
            match result {
                Err(err) if err.is_busy() && Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// Runs `f` in a read transaction (a consistent snapshot without the write lock).
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, dqlite::Error>
    where
        F: for<'t, 'd> FnOnce(&'t mut Transaction<'d>) -> TxFuture<'t, T>,
    {
        self.conn.lock().await.read_transaction(f).await
    }

    /// Runs SQL text that may write (each statement atomic on its own), retrying while another
    /// member holds the write lock.
    pub(crate) async fn exec(&self, sql: &str, params: &[Value]) -> Result<dqlite::ExecResult, dqlite::Error> {
        let deadline = Instant::now() + BUSY_RETRY;
        let mut pause = Duration::from_millis(5);
        loop {
            let result = self.conn.lock().await.exec(sql, params).await;
            match result {
                Err(err) if err.is_busy() && Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// Runs one read-only statement.
    pub(crate) async fn query(&self, sql: &str, params: &[Value]) -> Result<QueryResult, dqlite::Error> {
        self.conn.lock().await.query(sql, params).await
    }

    /// Lends the connection to `f` (SQL batches and dumps that need several requests on it).
    pub(crate) async fn with_connection<T>(
        &self,
        f: impl for<'c> FnOnce(&'c mut Database) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'c>>,
    ) -> T {
        let mut guard = self.conn.lock().await;
        f(&mut guard).await
    }
}

/// The current time as stored in the database (RFC 3339, UTC, nanoseconds).
pub(crate) fn now() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// The "never" time of a heartbeat that has not happened.
pub(crate) const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Reads text from a row value (TEXT or ISO8601), or an empty string.
pub(crate) fn text(value: Option<&Value>) -> String {
    value.and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// Reads an integer from a row value, or 0.
pub(crate) fn int(value: Option<&Value>) -> i64 {
    value.and_then(Value::as_i64).unwrap_or_default()
}
