//! A database on the cluster's leader, the way an application uses it: run statements, read
//! rows, group statements in transactions, and survive leader changes.
//!
//! Retry rules: a request refused with "not leader" had no effect and is retried on the new
//! leader; a connection found closed before a request is sent is replaced silently; reads are
//! retried after any connection loss. A write whose connection broke after it was sent, or that
//! failed with "leadership lost", is *not* retried: it may have been committed, and
//! [`Error::is_ambiguous`] tells the caller so.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use tokio::sync::watch;

use crate::client::Client;
use crate::connection::{Connection, ExecResult};
use crate::error::{Error, Result};
use crate::proto::Value;
use crate::rows::{Limits, QueryResult, Rows};
use crate::sql_text::{self, StatementKind};

/// What one statement produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A read: its rows.
    Rows(QueryResult),
    /// A write or transaction statement: last insert id and rows affected.
    Exec(ExecResult),
}

/// The future a [`Database::transaction`] closure returns.
pub type TxFuture<'t, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 't>>;

/// A database on the leader, reconnected as leadership moves.
#[derive(Debug)]
pub struct Database {
    client: Client,
    name: String,
    conn: Option<Connection>,
    /// A transaction was abandoned without COMMIT or ROLLBACK: roll it back before going on.
    needs_rollback: bool,
    /// Who leads, as someone else keeps finding out (see [`Database::follow_leader`]).
    leader_hint: Option<watch::Receiver<Option<String>>>,
}

impl Database {
    pub(crate) fn new(client: Client, name: String) -> Database {
        Database { client, name, conn: None, needs_rollback: false, leader_hint: None }
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address of the node this handle is connected to (the leader when it connected), if
    /// it holds a connection.
    pub fn connected_to(&self) -> Option<&str> {
        self.conn.as_ref().map(Connection::address)
    }

    /// Gives up on any request to a node as soon as `leader` names another node as the leader.
    ///
    /// A leader cut off by a partition or frozen neither answers nor closes its connections,
    /// so a request sent to it would wait for the full request timeout; whoever watches the
    /// cluster (e.g. a task asking the local node who leads) can cut that short. An abandoned
    /// request fails with [`Error::LeaderMoved`] (ambiguous for a write) and the next one goes
    /// to the new leader.
    pub fn follow_leader(&mut self, leader: watch::Receiver<Option<String>>) {
        self.leader_hint = Some(leader);
    }

    /// Drops the connection (the next request finds the leader again), e.g. when the leader is
    /// known to have moved while a request hangs on the old one.
    pub fn disconnect(&mut self) {
        self.conn = None;
        self.needs_rollback = false;
    }

    /// A usable connection to the leader with the database open.
    async fn leader(&mut self) -> Result<&mut Connection> {
        self.connection(None).await
    }

    /// A usable connection with the database open: to `node` if given (which is not asked
    /// whether it leads: every request checks that itself), else to the leader.
    async fn connection(&mut self, node: Option<&str>) -> Result<&mut Connection> {
        if self.needs_rollback {
            self.needs_rollback = false;
            if let Some(conn) = self.conn.as_mut() {
                // Fails harmlessly when no transaction is open any more.
                if let Err(err) = conn.exec_sql("ROLLBACK", &[]).await
                    && err.is_connection_lost()
                {
                    self.conn = None;
                }
            }
        }
        // Whoever watches the cluster already names another leader: a request sent on this
        // connection would be refused, or cut if that node is stopping (ambiguous for a write).
        let hinted =
            if node.is_none() { self.leader_hint.as_ref().and_then(|hint| hint.borrow().clone()) } else { None };
        let reusable = match self.conn.as_mut() {
            Some(conn) => {
                conn.is_usable()
                    && node.is_none_or(|node| conn.address() == node)
                    && hinted.as_deref().is_none_or(|leader| conn.address() == leader)
                    && !conn.peer_closed()
            }
            None => false,
        };
        if !reusable {
            self.conn = None;
            let mut conn = match node {
                Some(node) => self.client.connect(node).await?,
                None => self.client.connect_leader_hinted(self.leader_hint.as_mut()).await?,
            };
            conn.open(&self.name).await?;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or(Error::NoDatabase)
    }

    /// Connects to `node` (keeping the connection this handle holds if it already goes there),
    /// so that the next request goes to that node, e.g. the leader a [`crate::LeaderQuorum`]
    /// confirmed. Requests still check on arrival that the node leads.
    pub async fn connect_to(&mut self, node: &str) -> Result<()> {
        self.connection(Some(node)).await.map(drop)
    }

    /// Forgets the connection after an error that makes it useless or points elsewhere.
    fn after_error(&mut self, err: &Error) {
        if err.is_connection_lost() || err.is_not_leader() || err.is_leadership_lost() {
            self.conn = None;
            self.client.forget_leader();
        }
    }

    /// How long to wait before retry `round`: nothing the first time (a new leader is usually
    /// there already, and the leader search has its own backoff), then the client's backoff.
    fn retry_delay(&self, round: u32) -> std::time::Duration {
        match round {
            0 | 1 => std::time::Duration::ZERO,
            _ => self.client.config().backoff(round - 1),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.client.config().leader_timeout
    }

    /// Executes SQL text (one or more statements; parameters bind to the first) on the leader.
    pub async fn exec(&mut self, sql_text: &str, params: &[Value]) -> Result<ExecResult> {
        self.exec_on_leader(sql_text, params, false).await
    }

    /// [`Database::exec`]; `behind_barrier` sends the text with
    /// [`Connection::exec_sql_behind_barrier`] (for text of several statements).
    async fn exec_on_leader(&mut self, sql_text: &str, params: &[Value], behind_barrier: bool) -> Result<ExecResult> {
        let deadline = self.deadline();
        let mut round = 0;
        loop {
            round += 1;
            let hint = self.leader_hint.clone();
            let conn = self.leader().await?;
            let address = conn.address().to_owned();
            let result = if behind_barrier {
                guarded(hint, address, conn.exec_sql_behind_barrier(sql_text, params)).await
            } else {
                guarded(hint, address, conn.exec_sql(sql_text, params)).await
            };
            match result {
                Err(err) if err.is_not_leader() && Instant::now() < deadline => {
                    self.after_error(&err);
                    tokio::time::sleep(self.retry_delay(round)).await;
                }
                Err(err) => {
                    self.after_error(&err);
                    return Err(err);
                }
                ok => return ok,
            }
        }
    }

    /// Runs one read-only statement and returns all its rows. Retried on the new leader after
    /// a leader change or a lost connection, since a read changes nothing.
    pub async fn query(&mut self, sql_text: &str, params: &[Value]) -> Result<QueryResult> {
        self.query_limited(sql_text, params, Limits::NONE).await
    }

    /// Like [`Database::query`], failing (with [`Error::TooManyRows`] or
    /// [`Error::ResultTooLarge`]) past `limits`.
    pub async fn query_limited(
        &mut self,
        sql_text: &str,
        params: &[Value],
        limits: impl Into<Limits>,
    ) -> Result<QueryResult> {
        let limits = limits.into();
        let deadline = self.deadline();
        let mut round = 0;
        loop {
            round += 1;
            let hint = self.leader_hint.clone();
            let result = match self.leader().await {
                Ok(conn) => {
                    let address = conn.address().to_owned();
                    guarded(hint, address, async {
                        match conn.query_sql(sql_text, params).await {
                            Ok(rows) => rows.collect_limited(limits).await,
                            Err(err) => Err(err),
                        }
                    })
                    .await
                }
                Err(err) => Err(err),
            };
            match result {
                Err(err) if retry_read(&err) && Instant::now() < deadline => {
                    self.after_error(&err);
                    tokio::time::sleep(self.retry_delay(round)).await;
                }
                Err(err) => {
                    self.after_error(&err);
                    return Err(err);
                }
                ok => return ok,
            }
        }
    }

    /// Runs one read-only statement and streams its rows (no retry once rows are flowing).
    pub async fn query_rows(&mut self, sql_text: &str, params: &[Value]) -> Result<Rows<'_>> {
        // The connection is re-borrowed for the returned rows, so errors are handled by the
        // caller's next call (which finds the connection unusable and replaces it).
        let conn = self.leader().await?;
        conn.query_sql(sql_text, params).await
    }

    /// Runs SQL text statement by statement, each down the right path: provably read-only
    /// statements as queries (their rows returned), everything else as writes. Stops at the
    /// first error; statements before it stay applied unless the text opened a transaction.
    pub async fn execute(&mut self, sql_text: &str) -> Result<Vec<Outcome>> {
        let mut outcomes = Vec::new();
        for statement in sql_text::split_statements(sql_text) {
            let outcome = match sql_text::classify(statement) {
                StatementKind::Empty => continue,
                StatementKind::Read => Outcome::Rows(self.query(statement, &[]).await?),
                StatementKind::Write | StatementKind::Transaction => Outcome::Exec(self.exec(statement, &[]).await?),
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Starts a transaction on the leader; finish it with [`Transaction::commit`] or
    /// [`Transaction::rollback`] (dropping it rolls back before the next request).
    pub async fn begin(&mut self) -> Result<Transaction<'_>> {
        self.exec("BEGIN", &[]).await?;
        Ok(Transaction { db: self, finished: false })
    }

    /// Like [`Database::begin`], but takes the write lock at once (`BEGIN IMMEDIATE`): a
    /// transaction that reads and then writes cannot then fail half-way with "database is
    /// locked" because another connection committed meanwhile; if the lock is taken, the BEGIN
    /// itself fails with [`Error::is_busy`], before anything ran.
    pub async fn begin_immediate(&mut self) -> Result<Transaction<'_>> {
        self.exec("BEGIN IMMEDIATE", &[]).await?;
        Ok(Transaction { db: self, finished: false })
    }

    /// [`Database::begin_immediate`] and the first statements of the transaction in one
    /// request (one round trip instead of two); returns the result of the text's last
    /// statement. If any of it fails, nothing of it stays: whatever ran is rolled back before
    /// the next request on this handle, and the error says what failed ([`Error::is_busy`]
    /// when the write lock is taken, as for `begin_immediate`).
    pub async fn begin_immediate_with(&mut self, sql_text: &str) -> Result<(Transaction<'_>, ExecResult)> {
        match self.exec_on_leader(&format!("BEGIN IMMEDIATE;{sql_text}"), &[], true).await {
            Ok(result) => Ok((Transaction { db: self, finished: false }, result)),
            Err(err) => {
                // The BEGIN may have run before the failing statement; when it did not, the
                // ROLLBACK fails harmlessly.
                self.needs_rollback = true;
                Err(err)
            }
        }
    }

    /// Runs `f` inside a read transaction (deferred `BEGIN`: one consistent snapshot, no write
    /// lock); ends it with COMMIT when `f` returns `Ok`, ROLLBACK otherwise.
    pub async fn read_transaction<T, F>(&mut self, f: F) -> Result<T>
    where
        F: for<'t, 'd> FnOnce(&'t mut Transaction<'d>) -> TxFuture<'t, T>,
    {
        let mut tx = self.begin().await?;
        match f(&mut tx).await {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(err) => {
                let _ = tx.rollback().await;
                Err(err)
            }
        }
    }

    /// Runs `f` inside a write transaction (`BEGIN IMMEDIATE`, see
    /// [`Database::begin_immediate`]): commits when it returns `Ok`, rolls back when it returns
    /// `Err` (and returns that error).
    ///
    /// ```no_run
    /// # async fn demo(db: &mut dqlite::Database) -> dqlite::Result<()> {
    /// db.transaction(|tx| Box::pin(async move {
    ///     tx.exec("INSERT INTO t VALUES (?)", &[1.into()]).await?;
    ///     tx.exec("INSERT INTO t VALUES (?)", &[2.into()]).await?;
    ///     Ok(())
    /// })).await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction<T, F>(&mut self, f: F) -> Result<T>
    where
        F: for<'t, 'd> FnOnce(&'t mut Transaction<'d>) -> TxFuture<'t, T>,
    {
        let mut tx = self.begin_immediate().await?;
        match f(&mut tx).await {
            Ok(value) => {
                tx.commit().await?;
                Ok(value)
            }
            Err(err) => {
                // The transaction's own error matters more than a failed rollback.
                let _ = tx.rollback().await;
                Err(err)
            }
        }
    }
}

/// How long a request to a former leader may still take once another node leads: the new
/// leader's first heartbeats tell a live old leader within a round trip, and every moment of
/// it is an outage for a frozen one.
const LEADER_MOVED_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs a request on the connection to `address`, abandoning it once `hint` names another
/// leader. The request future is dropped mid-exchange, which marks the connection unusable.
async fn guarded<T>(
    hint: Option<watch::Receiver<Option<String>>>,
    address: String,
    request: impl Future<Output = Result<T>>,
) -> Result<T> {
    let Some(mut hint) = hint else { return request.await };
    let moved = async {
        let moved = hint.wait_for(|l| l.as_ref().is_some_and(|l| *l != address)).await.map(|l| l.clone());
        match moved {
            Ok(leader) => {
                // A live old leader answers "not leader" (safe to retry) within a round trip;
                // only one that is gone or cut off stays silent.
                tokio::time::sleep(LEADER_MOVED_GRACE).await;
                leader.unwrap_or_default()
            }
            // Nobody watches any more: never give up on that account.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = request => result,
        leader = moved => Err(Error::LeaderMoved { address, leader }),
    }
}

fn retry_read(err: &Error) -> bool {
    err.is_not_leader() || err.is_leadership_lost() || err.is_connection_lost()
}

/// An open transaction on one connection to the leader. Nothing in it is retried: if the
/// connection or leadership is lost, the transaction is gone.
#[derive(Debug)]
pub struct Transaction<'d> {
    db: &'d mut Database,
    finished: bool,
}

impl Transaction<'_> {
    fn conn(&mut self) -> Result<&mut Connection> {
        match self.db.conn.as_mut() {
            Some(conn) if conn.is_usable() => Ok(conn),
            _ => Err(Error::Broken { address: self.db.client.last_leader().unwrap_or_default() }),
        }
    }

    fn check<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(err) = &result
            && (err.is_connection_lost() || err.is_leadership_lost() || err.is_not_leader())
        {
            self.finished = true;
            self.db.after_error(err);
        }
        result
    }

    /// Executes SQL text inside the transaction.
    pub async fn exec(&mut self, sql_text: &str, params: &[Value]) -> Result<ExecResult> {
        let hint = self.db.leader_hint.clone();
        let result = match self.conn() {
            Ok(conn) => guarded(hint, conn.address().to_owned(), conn.exec_sql(sql_text, params)).await,
            Err(err) => Err(err),
        };
        self.check(result)
    }

    /// Runs one read-only statement inside the transaction (it sees the transaction's writes).
    pub async fn query(&mut self, sql_text: &str, params: &[Value]) -> Result<QueryResult> {
        self.query_limited(sql_text, params, Limits::NONE).await
    }

    /// Like [`Transaction::query`], failing past `limits` (the query is stopped; the
    /// transaction stays usable).
    pub async fn query_limited(
        &mut self,
        sql_text: &str,
        params: &[Value],
        limits: impl Into<Limits>,
    ) -> Result<QueryResult> {
        let limits = limits.into();
        let hint = self.db.leader_hint.clone();
        let result = match self.conn() {
            Ok(conn) => {
                let address = conn.address().to_owned();
                guarded(hint, address, async {
                    match conn.query_sql(sql_text, params).await {
                        Ok(rows) => rows.collect_limited(limits).await,
                        Err(err) => Err(err),
                    }
                })
                .await
            }
            Err(err) => Err(err),
        };
        self.check(result)
    }

    /// Commits. An error that [`Error::is_ambiguous`] means the commit may have happened.
    pub async fn commit(mut self) -> Result<()> {
        self.finished = true;
        let result = self.exec("COMMIT", &[]).await.map(drop);
        if result.is_err() {
            // A failed COMMIT can leave the transaction open on the server.
            self.db.needs_rollback = true;
        }
        result
    }

    /// Rolls back.
    pub async fn rollback(mut self) -> Result<()> {
        self.finished = true;
        self.exec("ROLLBACK", &[]).await.map(drop)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.db.needs_rollback = true;
        }
    }
}
