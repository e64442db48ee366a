//! `POST /core/internal/sql` (run statements) and `GET /core/internal/sql` (dump).
//!
//! Statements are split with a real tokenizer and each goes down the right path (reads as
//! queries, everything else as writes). A batch without its own BEGIN/COMMIT runs in one
//! transaction, so it applies entirely or not at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dqlite::Value;
use dqlite::sql::{self as sqltext, StatementKind};

use crate::api::{SqlBatch, SqlDump, SqlQuery, SqlResult};
use crate::server::State;
use crate::server::db::dump;
use crate::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};

/// Most rows one statement may return through the API.
pub(crate) const MAX_ROWS: usize = 100_000;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![Endpoint::new("sql").post(Action::new(run)).get(Action::new(dump_sql))]
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

async fn statement(db: &mut impl Runner, sql: &str) -> dqlite::Result<SqlResult> {
    match sqltext::classify(sql) {
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
        kind => {
            let result = db.exec(sql).await?;
            // SQLite reports the previous statement's count for BEGIN/COMMIT; they change no row.
            let rows_affected = if kind == StatementKind::Transaction { 0 } else { result.rows_affected };
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
    async fn exec(&mut self, sql: &str) -> dqlite::Result<dqlite::ExecResult>;
}

impl Runner for dqlite::Database {
    async fn query(&mut self, sql: &str) -> dqlite::Result<dqlite::QueryResult> {
        self.query_limited(sql, &[], MAX_ROWS).await
    }
    async fn exec(&mut self, sql: &str) -> dqlite::Result<dqlite::ExecResult> {
        dqlite::Database::exec(self, sql, &[]).await
    }
}

impl Runner for dqlite::Transaction<'_> {
    async fn query(&mut self, sql: &str) -> dqlite::Result<dqlite::QueryResult> {
        dqlite::Transaction::query(self, sql, &[]).await
    }
    async fn exec(&mut self, sql: &str) -> dqlite::Result<dqlite::ExecResult> {
        dqlite::Transaction::exec(self, sql, &[]).await
    }
}

async fn run(state: State, req: Request) -> HandlerResult {
    let query: SqlQuery = req.json()?;
    let statements: Vec<String> = sqltext::split_statements(&query.query).into_iter().map(str::to_owned).collect();
    if statements.is_empty() {
        return Err(ApiError::bad_request("no SQL statement given"));
    }
    // One statement is atomic on its own; only a batch needs the surrounding transaction
    // (which costs two more round trips to the leader).
    let own_transaction =
        statements.len() == 1 || statements.iter().any(|s| sqltext::classify(s) == StatementKind::Transaction);
    let runtime = state.db()?;
    let failed_at = Arc::new(AtomicUsize::new(0));
    // "database is locked" (another member writing) on a single statement or a batch in our
    // own transaction means nothing was applied: try again, for a while, instead of failing.
    let retry_safe = statements.len() == 1 || !own_transaction;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut pause = std::time::Duration::from_millis(2);
    let outcome = loop {
        let outcome = runtime
            .db
            .with_connection(|db| {
                let (statements, failed_at) = (statements.clone(), failed_at.clone());
                Box::pin(async move {
                    if own_transaction {
                        let mut results = Vec::new();
                        for (i, sql) in statements.iter().enumerate() {
                            failed_at.store(i, Ordering::SeqCst);
                            results.push(statement(db, sql).await?);
                        }
                        Ok(results)
                    } else {
                        db.transaction(|tx| {
                            Box::pin(async move {
                                let mut results = Vec::new();
                                for (i, sql) in statements.iter().enumerate() {
                                    failed_at.store(i, Ordering::SeqCst);
                                    results.push(statement(tx, sql).await?);
                                }
                                Ok(results)
                            })
                        })
                        .await
                    }
                })
            })
            .await;
        match outcome {
            Err(err) if err.is_busy() && retry_safe && std::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
            }
            other => break other,
        }
    };
    match outcome {
        Ok(results) => Response::sync(SqlBatch { results }),
        Err(err) if err.is_busy() => Err(ApiError::unavailable(format!("the database stayed busy: {err}; try again"))),
        Err(err) if err.is_statement_error() => {
            let index = failed_at.load(Ordering::SeqCst);
            let sql = statements.get(index).map(String::as_str).unwrap_or_default();
            let scope =
                if own_transaction || statements.len() == 1 { "" } else { "; no statement of the batch was applied" };
            Err(ApiError::bad_request(format!("statement {} ({sql}): {err}{scope}", index + 1)))
        }
        Err(err) => Err(err.into()),
    }
}

async fn dump_sql(state: State, req: Request) -> HandlerResult {
    let schema_only = req.flag("schema");
    let runtime = state.db()?;
    let text =
        runtime.db.with_connection(|db| Box::pin(async move { dump::dump(db, schema_only, MAX_ROWS).await })).await?;
    Response::sync(SqlDump { text })
}
