//! `POST /core/internal/sql` (run statements) and `GET /core/internal/sql` (dump).
//!
//! The text is split and each statement judged once (`dqlite::sql_text::parse`); the statements
//! travel with their kinds down the right path (reads as queries, everything else as writes,
//! one write into the write queue as it was judged). A batch without its own BEGIN/COMMIT runs
//! in one transaction, so it applies entirely or not at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dqlite::Value;
use dqlite::sql_text::{self, Statement, StatementKind};

use crate::api::paths;
use crate::api::{ReadConsistency, SqlBatch, SqlDump, SqlQuery, SqlResult};
use crate::server::db::{Consistency, dump};
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};
use crate::server::state::State;

/// The most one statement may return through the API (the response is built in memory).
pub(crate) const RESULT_LIMITS: dqlite::Limits = dqlite::Limits { rows: 100_000, bytes: 64 * 1024 * 1024 };

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new(paths::INTERNAL_SQL).post(Action::new(run)).get(Action::new(dump_sql))]
}

fn json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Integer(v) | Value::UnixTime(v) => (*v).into(),
        Value::Float(v) => serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into),
        Value::Text(s) | Value::Iso8601(s) => s.clone().into(),
        Value::Blob(_) => dump::literal(value).into(),
        Value::Null => serde_json::Value::Null,
        Value::Boolean(b) => (*b).into(),
    }
}

async fn statement(db: &mut impl Runner, statement: &Statement) -> dqlite::Result<SqlResult> {
    let sql = statement.text();
    match statement.kind() {
        StatementKind::Read => {
            let rows = db.query(sql).await?;
            Ok(SqlResult {
                kind: "select".into(),
                statement: sql.to_owned(),
                columns: rows.columns,
                rows: rows.rows.iter().map(|r| r.values().iter().map(json_value).collect()).collect(),
                rows_affected: 0,
            })
        }
        _ => {
            let result = db.exec(statement).await?;
            // SQLite's count is the last INSERT, UPDATE or DELETE's: any other statement would
            // report the one before it.
            let rows_affected = if statement.counts_changes() { result.rows_affected } else { 0 };
            Ok(SqlResult {
                kind: "exec".into(),
                statement: sql.to_owned(),
                columns: Vec::new(),
                rows: Vec::new(),
                rows_affected,
            })
        }
    }
}

/// What runs a statement: a plain connection or an open transaction.
trait Runner {
    async fn query(&mut self, sql: &str) -> dqlite::Result<dqlite::QueryResult>;
    async fn exec(&mut self, statement: &Statement) -> dqlite::Result<dqlite::ExecResult>;
}

impl Runner for dqlite::Database {
    async fn query(&mut self, sql: &str) -> dqlite::Result<dqlite::QueryResult> {
        self.query_limited(sql, &[], RESULT_LIMITS).await
    }
    async fn exec(&mut self, statement: &Statement) -> dqlite::Result<dqlite::ExecResult> {
        dqlite::Database::exec(self, statement.text(), &[]).await
    }
}

impl Runner for dqlite::Transaction<'_> {
    async fn query(&mut self, sql: &str) -> dqlite::Result<dqlite::QueryResult> {
        dqlite::Transaction::query_limited(self, sql, &[], RESULT_LIMITS).await
    }
    async fn exec(&mut self, statement: &Statement) -> dqlite::Result<dqlite::ExecResult> {
        dqlite::Transaction::exec(self, statement.text(), &[]).await
    }
}

async fn run(state: State, req: Request) -> HandlerResult {
    let query: SqlQuery = req.json()?;
    let consistency = match query.consistency.unwrap_or_default() {
        ReadConsistency::Linearizable => Consistency::Linearizable,
        ReadConsistency::Weak => Consistency::Weak,
    };
    let statements = Arc::new(sql_text::parse(&query.query));
    if statements.is_empty() {
        return Err(ApiError::bad_request("no SQL statement given"));
    }
    let kinds: Vec<StatementKind> = statements.iter().map(Statement::kind).collect();
    // One read-only statement asked for with `?stream=1` streams its rows; anything else gets
    // the ordinary answer (the client tells them apart by content type).
    if req.flag("stream")
        && let [read] = statements.as_slice()
        && read.kind() == StatementKind::Read
    {
        return stream(state, &query.query, read.text().to_owned(), consistency).await;
    }
    let all_reads = kinds.iter().all(|k| *k == StatementKind::Read);
    let own_transaction = kinds.contains(&StatementKind::Transaction);
    let runtime = state.online_runtime()?;
    // Only text without reads is forwarded: its answer is small, while a read's rows could
    // outgrow what the member-to-member client accepts after the writes were applied.
    let no_reads = !kinds.contains(&StatementKind::Read);
    if no_reads
        && !req.is_notification()
        && let Some(answer) = forward_to_leader(&state, &runtime, &req.body).await
    {
        return answer;
    }
    let failed_at = Arc::new(AtomicUsize::new(0));
    // The write queue retries "database is locked" (another member writing) itself. Text with
    // its own transaction can be retried only when one BEGIN … COMMIT holds all of it: then a
    // busy failure applied nothing.
    let retry_safe = own_transaction
        && kinds.iter().filter(|k| **k == StatementKind::Transaction).count() == 2
        && kinds.first() == Some(&StatementKind::Transaction)
        && kinds.last() == Some(&StatementKind::Transaction)
        && statements.first().is_some_and(|s| s.text().get(..5).is_some_and(|b| b.eq_ignore_ascii_case("BEGIN")));
    let deadline = std::time::Instant::now() + crate::server::db::BUSY_DEADLINE;
    let mut busy = dqlite::Backoff::new(std::time::Duration::from_millis(2), std::time::Duration::from_millis(50));
    let outcome = loop {
        let (statements, failed_at) = (statements.clone(), failed_at.clone());
        let outcome = if all_reads {
            // Reads take a pooled connection and never wait behind this member's writes.
            runtime
                .db
                .reading_with(consistency, |db| {
                    let (statements, failed_at) = (statements.clone(), failed_at.clone());
                    Box::pin(async move { run_all(db, &statements, &failed_at).await })
                })
                .await
        } else if own_transaction {
            // The text has its own BEGIN/COMMIT: it needs the write connection to itself.
            runtime
                .db
                .exclusive(move |db| {
                    Box::pin(async move {
                        let outcome = run_all(db, &statements, &failed_at).await;
                        // Never hand the shared connection on inside a transaction the text
                        // left open (a missing COMMIT, or a failure between BEGIN and COMMIT).
                        let _ = dqlite::Database::exec(db, "ROLLBACK", &[]).await;
                        outcome
                    })
                })
                .await
                .and_then(|outcome| outcome)
        } else if statements.len() == 1 {
            // One statement is atomic on its own and may be committed with other requests'.
            run_all(&mut Queued(&runtime.db, consistency), &statements, &failed_at).await
        } else {
            runtime.db.transaction(move |tx| Box::pin(async move { run_all(tx, &statements, &failed_at).await })).await
        };
        match outcome {
            Err(err) if err.is_busy() && retry_safe && std::time::Instant::now() < deadline => busy.wait().await,
            other => break other,
        }
    };
    match outcome {
        Ok(results) => Response::sync(SqlBatch { results }),
        Err(err) if err.is_busy() => Err(ApiError::unavailable(format!("the database stayed busy: {err}; try again"))),
        Err(err) if err.is_statement_error() => {
            let index = failed_at.load(Ordering::SeqCst);
            let sql = statements.get(index).map(Statement::text).unwrap_or_default();
            let scope =
                if own_transaction || statements.len() == 1 { "" } else { "; no statement of the batch was applied" };
            let why = if err.is_interrupted() {
                "it ran past the member's statement time limit and was interrupted".to_owned()
            } else {
                err.to_string()
            };
            let message = format!("statement {} ({sql}): {why}{scope}", index + 1);
            // A constraint violation conflicts with what the database holds; anything else is
            // the statement's own fault.
            if err.is_constraint() { Err(ApiError::conflict(message)) } else { Err(ApiError::bad_request(message)) }
        }
        Err(err) => Err(err.into()),
    }
}

/// Bytes gathered into one chunk of a streamed result before it is sent.
const STREAM_CHUNK: usize = 32 * 1024;

/// `POST /core/internal/sql?stream=1` with one read-only statement: its rows stream as they come
/// (newline-delimited JSON: `{"columns":[..]}`, one array per row, then `{"rows":N}`, or
/// `{"error":".."}` if the query fails part-way), so the result is never held whole, by the
/// daemon or by the client. Errors before the first row are ordinary error responses.
async fn stream(state: State, text: &str, sql: String, consistency: Consistency) -> HandlerResult {
    let runtime = state.online_runtime()?;
    let (chunks, body) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let (started_tx, started) = tokio::sync::oneshot::channel::<dqlite::Result<()>>();
    let started_tx = Arc::new(std::sync::Mutex::new(Some(started_tx)));
    tokio::spawn(async move {
        let announce = started_tx.clone();
        let sender = chunks.clone();
        let outcome = runtime
            .db
            .reading_once(consistency, move |db| {
                let (sql, announce, sender) = (sql.clone(), announce.clone(), sender.clone());
                Box::pin(async move { stream_rows(db, &sql, &announce, &sender).await })
            })
            .await;
        let pending = started_tx.lock().ok().and_then(|mut s| s.take());
        match (outcome, pending) {
            (Err(err), Some(pending)) => drop(pending.send(Err(err))),
            (Err(err), None) => {
                let why = if err.is_interrupted() {
                    "it ran past the member's statement time limit and was interrupted".to_owned()
                } else {
                    format!("database: {err}")
                };
                let message = format!("the query failed after sending part of its rows: {why}");
                let line = format!("{}\n", serde_json::json!({ "error": message }));
                let _ = chunks.send(line.into()).await;
            }
            (Ok(()), _) => {}
        }
    });
    match started.await {
        Ok(Ok(())) => Ok(Response::stream("application/x-ndjson", body)),
        Ok(Err(err)) if err.is_statement_error() => Err(ApiError::bad_request(format!("statement 1 ({text}): {err}"))),
        Ok(Err(err)) => Err(err.into()),
        Err(_) => Err(ApiError::internal("the streaming query ended before it started")),
    }
}

type Announce = Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<dqlite::Result<()>>>>>;

/// Runs the query and sends its rows on as lines, a chunk at a time; stops (interrupting the
/// query) if the client goes away.
async fn stream_rows(
    db: &mut dqlite::Database,
    sql: &str,
    announce: &Announce,
    chunks: &tokio::sync::mpsc::Sender<bytes::Bytes>,
) -> dqlite::Result<()> {
    let mut rows = db.query_rows(sql, &[]).await?;
    if let Some(started) = announce.lock().ok().and_then(|mut s| s.take()) {
        let _ = started.send(Ok(()));
    }
    let mut chunk = format!("{}\n", serde_json::json!({ "columns": rows.columns() }));
    let mut count = 0u64;
    while let Some(row) = rows.next().await? {
        let values: Vec<serde_json::Value> = row.values().iter().map(json_value).collect();
        chunk.push_str(&serde_json::Value::from(values).to_string());
        chunk.push('\n');
        count += 1;
        if chunk.len() >= STREAM_CHUNK && chunks.send(std::mem::take(&mut chunk).into()).await.is_err() {
            return rows.interrupt().await;
        }
    }
    chunk.push_str(&format!("{}\n", serde_json::json!({ "rows": count })));
    let _ = chunks.send(chunk.into()).await;
    Ok(())
}

/// How long a follower tries to connect to the leader before writing through its own queue
/// (nothing was sent, so running it here is safe); a leader cut off by a partition would
/// otherwise hold the request for the client's whole timeout.
const FORWARD_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest a follower waits for leadership to move away from a leader that refused a
/// forwarded write before running it: a stopping leader finishes what it accepted (2 s at
/// most), runs its OnStop hook (5 s) and hands over (5 s).
const LEADER_MOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(12);

/// How long a forwarded write's answer is still awaited once leadership moved: a leader that
/// handed over answers at once, one cut off from the others never does.
const ANSWER_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Sends writes that reach a follower to the leader's own SQL endpoint, so that they join the
/// leader's batches: each member's queue would otherwise take SQLite's write lock in turn
/// ("database is locked", retried with pauses). `None`: run here (this member leads, no leader
/// is known, or the leader could not be reached before anything was sent). A request that
/// reached the leader but got no answer is reported, never run again here. A leader hint that
/// is out of date costs one hop: the old leader, now a follower, runs the request itself. A
/// leader that refused the write before running it (it is stopping) is waited out: the write
/// goes to the next leader, or runs here if that is this member, so a planned stop costs
/// writers a pause instead of an error.
async fn forward_to_leader(
    state: &State,
    runtime: &crate::server::state::runtime::Runtime,
    body: &bytes::Bytes,
) -> Option<HandlerResult> {
    let move_deadline = tokio::time::Instant::now() + LEADER_MOVE_WAIT;
    loop {
        let leader = runtime.db.leader_hint().filter(|leader| *leader != runtime.address)?;
        let client = state.member_client(&leader).ok()?.as_notification().with_connect_timeout(FORWARD_CONNECT_TIMEOUT);
        let request = client.raw_with_headers(hyper::Method::POST, crate::api::paths::INTERNAL_SQL, Some(body.clone()));
        tokio::pin!(request);
        let sent = tokio::select! {
            sent = &mut request => sent,
            () = runtime.db.leader_moved_from(&leader) => match tokio::time::timeout(ANSWER_GRACE, &mut request).await {
                Ok(sent) => sent,
                Err(_) => {
                    return Some(Err(ApiError::unavailable(format!(
                        "the write was sent to the leader {leader}, which lost its leadership before answering: it \
                         may or may not have been applied"
                    ))));
                }
            },
        };
        let not_run = match &sent {
            Ok((hyper::StatusCode::SERVICE_UNAVAILABLE, headers, _)) => {
                let why = headers.get(crate::api::paths::NOT_RUN_HEADER).and_then(|v| v.to_str().ok());
                [crate::api::paths::NOT_RUN_STOPPING, crate::api::paths::NOT_RUN_NOT_READY]
                    .into_iter()
                    .find(|known| Some(*known) == why)
            }
            _ => None,
        };
        return match (sent, not_run) {
            // The leader is stopping: once it has handed over, to the next leader.
            (Ok((status, _, answer)), Some(crate::api::paths::NOT_RUN_STOPPING)) => {
                if runtime.db.leader_moved_soon(&leader, move_deadline).await {
                    tracing::debug!(%leader, "the leader refused the write before running it and has handed over; again");
                    continue;
                }
                Some(Ok(Response::forwarded(status, answer)))
            }
            // The leader's member is not ready to serve (starting, waiting for an upgrade) while
            // its node leads: this member's queue writes to that node directly.
            (_, Some(_)) => {
                tracing::debug!(%leader, "the leader's member is not ready; writing from here");
                None
            }
            // Refused before any handler ran: the leader no longer trusts this member.
            (Ok((hyper::StatusCode::FORBIDDEN, _, _)), None) => Some(Err(ApiError::unavailable(format!(
                "the leader {leader} refused this member's certificate (was this member removed from the cluster?); \
                 nothing was written"
            )))),
            (Ok((status, _, answer)), None) => {
                state.metrics().writes_forwarded.inc();
                Some(Ok(Response::forwarded(status, answer)))
            }
            (Err(err), None)
                if matches!(
                    err,
                    crate::client::ClientError::Connect { .. } | crate::client::ClientError::Tls { .. }
                ) =>
            {
                tracing::debug!(%leader, error = %err, "the leader cannot be reached; writing from here");
                None
            }
            (Err(err), None) => Some(Err(ApiError::unavailable(format!(
                "the write was sent to the leader {leader}, which did not answer ({err}): it may or may not have been \
                 applied"
            )))),
        };
    }
}

/// The write queue, for a statement that needs no transaction of its own (and the read pool,
/// with this consistency, for a read).
struct Queued<'a>(&'a crate::server::db::Db, Consistency);

impl Runner for Queued<'_> {
    async fn query(&mut self, sql: &str) -> dqlite::Result<dqlite::QueryResult> {
        self.0
            .reading_with(self.1, |db| {
                let sql = sql.to_owned();
                Box::pin(async move { db.query_limited(&sql, &[], RESULT_LIMITS).await })
            })
            .await
    }
    async fn exec(&mut self, statement: &Statement) -> dqlite::Result<dqlite::ExecResult> {
        self.0.exec_statement(statement).await
    }
}

/// Runs the statements in order, recording which one is running (to name it if it fails).
async fn run_all(
    db: &mut impl Runner,
    statements: &[Statement],
    failed_at: &AtomicUsize,
) -> dqlite::Result<Vec<SqlResult>> {
    let mut results = Vec::with_capacity(statements.len());
    for (i, one) in statements.iter().enumerate() {
        failed_at.store(i, Ordering::SeqCst);
        results.push(statement(db, one).await?);
    }
    Ok(results)
}

async fn dump_sql(state: State, req: Request) -> HandlerResult {
    let schema_only = req.flag("schema");
    let runtime = state.online_runtime()?;
    let text =
        runtime.db.reading(|db| Box::pin(async move { dump::dump(db, schema_only, RESULT_LIMITS).await })).await?;
    Response::sync(SqlDump { text })
}
