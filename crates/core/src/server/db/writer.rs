//! The write queue: every write of this member goes through one task and one connection to the
//! leader, so writes of this member never race each other for SQLite's write lock. Requests that
//! arrive together are committed together (group commit): one `BEGIN IMMEDIATE … COMMIT` around
//! them, each request in a savepoint of its own so that one that fails is rolled back alone and
//! gets its own error, the others their own results. "database is locked" (another member is
//! writing) is retried inside the queue and never reaches a caller until a deadline passes.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dqlite::{Database, ExecResult, Transaction, TxFuture, Value};
use tokio::sync::{mpsc, oneshot};

use crate::server::metrics::{MERGE_UNDONE, MERGED, Metrics};

/// Most requests committed together.
const MAX_BATCH: usize = 64;
/// How long "database is locked" is retried before the requests fail.
pub(crate) const BUSY_DEADLINE: Duration = Duration::from_secs(10);

/// A closure run inside the batch's transaction.
pub(crate) type TxJob = Box<dyn for<'t, 'd> FnOnce(&'t mut Transaction<'d>) -> TxFuture<'t, ()> + Send>;
/// A closure given the write connection alone (for SQL that manages its own transaction).
pub(crate) type ExclusiveJob =
    Box<dyn for<'c> FnOnce(&'c mut Database) -> Pin<Box<dyn Future<Output = ()> + Send + 'c>> + Send>;

/// One request to the queue.
pub(crate) enum Job {
    /// SQL text (parameters bind to its first statement).
    Exec { sql: String, params: Vec<Value>, reply: oneshot::Sender<dqlite::Result<ExecResult>> },
    /// A closure in the shared transaction; `done` says whether its work was committed.
    Tx { run: TxJob, done: oneshot::Sender<dqlite::Result<()>> },
    /// Exclusive use of the connection, outside any batch.
    Exclusive(ExclusiveJob),
}

/// Runs the queue until every sender is gone.
pub(crate) async fn run(mut db: Database, mut jobs: mpsc::Receiver<Job>, metrics: Arc<Metrics>) {
    // Jobs taken off the channel but not yet run (an exclusive job waits its turn here).
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        let first = match pending.pop_front() {
            Some(job) => job,
            None => match jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        if let Job::Exclusive(run) = first {
            run(&mut db).await;
            continue;
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && !matches!(pending.front(), Some(Job::Exclusive(_))) {
            match pending.pop_front().map_or_else(|| jobs.try_recv().ok(), Some) {
                Some(Job::Exclusive(run)) => {
                    pending.push_front(Job::Exclusive(run));
                    break;
                }
                Some(job) => batch.push(job),
                None => break,
            }
        }
        let started = Instant::now();
        metrics.write_batch_size.observe(batch.len() as f64);
        let outage = run_batch(&mut db, batch, &metrics).await;
        metrics.write_batch_duration.observe_duration(started.elapsed());
        if let Some(outage) = outage {
            // No leader could be found for as long as the client looks: everything that queued
            // meanwhile would wait as long again, one after the other. Answer them now.
            while let Ok(job) = jobs.try_recv() {
                pending.push_back(job);
            }
            pending.retain_mut(|job| !matches!(job, Job::Exclusive(_)));
            for job in pending.drain(..) {
                refuse(job, &outage);
            }
        }
    }
}

/// Hands every waiting job `err`.
fn fail_all(replies: Vec<Reply>, err: &dqlite::Error) {
    for reply in replies {
        reply.send(Err(err.clone()));
    }
}

/// Where a committed job's answer goes.
enum Reply {
    Exec(oneshot::Sender<dqlite::Result<ExecResult>>, ExecResult),
    Tx(oneshot::Sender<dqlite::Result<()>>),
}

impl Reply {
    fn send(self, result: dqlite::Result<()>) {
        match self {
            Reply::Exec(tx, r) => {
                let _ = tx.send(result.map(|()| r));
            }
            Reply::Tx(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// Runs a batch; returns the error if no leader could be found at all.
async fn run_batch(db: &mut Database, batch: Vec<Job>, metrics: &Metrics) -> Option<dqlite::Error> {
    // One plain statement alone: autocommit, one round trip.
    if let [Job::Exec { sql, .. }] = batch.as_slice()
        && dqlite::sql::split_statements(sql).len() <= 1
    {
        let Some(Job::Exec { sql, params, reply }) = batch.into_iter().next() else { return None };
        let result = exec_retrying_busy(db, &sql, &params, metrics).await;
        let outage = result.as_ref().err().filter(|e| matches!(e, dqlite::Error::NoLeader { .. })).cloned();
        let _ = reply.send(result);
        return outage;
    }
    let batch = match merged_batch(&batch) {
        Some(text) => match run_merged(db, &text, batch, metrics).await {
            Merged::Done(outage) => return outage,
            Merged::OneByOne(batch) => batch,
        },
        None => batch,
    };
    batch_in_transaction(db, batch, metrics).await
}

/// Runs the jobs in one transaction.
async fn batch_in_transaction(db: &mut Database, batch: Vec<Job>, metrics: &Metrics) -> Option<dqlite::Error> {
    let mut busy = Busy::new();
    let mut tx = loop {
        match db.begin_immediate().await {
            Ok(tx) => break tx,
            Err(err) if busy.retries(&err) => busy.wait(metrics).await,
            Err(err) => {
                for job in batch {
                    refuse(job, &err);
                }
                return matches!(err, dqlite::Error::NoLeader { .. }).then_some(err);
            }
        }
    };
    let mut committed: Vec<Reply> = Vec::new();
    let count = batch.len();
    let mut jobs = batch.into_iter().enumerate();
    // The savepoint the previous job's request already opened for this one.
    let mut opened: Option<usize> = None;
    let failure = loop {
        let Some((i, job)) = jobs.next() else { break None };
        let savepoint = format!("job{i}");
        if opened.take() != Some(i)
            && let Err(err) = tx.exec(&format!("SAVEPOINT {savepoint}"), &[]).await
        {
            refuse(job, &err);
            break Some(err);
        }
        let (result, reply) = match job {
            Job::Exec { sql, params, reply } => {
                // One round trip per request: its statement, its RELEASE and the next request's
                // SAVEPOINT in one EXEC_SQL (parameters bind to the first statement; the
                // result's counts stay the statement's, as neither RELEASE nor SAVEPOINT
                // changes them). If the statement fails, the rest does not run.
                let merged = merged_text(&sql, &savepoint, (i + 1 < count).then(|| format!("job{}", i + 1)));
                match tx.exec(merged.as_deref().unwrap_or(&sql), &params).await {
                    Ok(r) if merged.is_some() => {
                        opened = Some(i + 1);
                        committed.push(Reply::Exec(reply, r));
                        continue;
                    }
                    Ok(r) => (Ok(()), Some(Reply::Exec(reply, r))),
                    Err(err) => {
                        let _ = reply.send(Err(err.clone()));
                        (Err(err), None)
                    }
                }
            }
            Job::Tx { run, done } => match run(&mut tx).await {
                Ok(()) => (Ok(()), Some(Reply::Tx(done))),
                Err(err) => {
                    let _ = done.send(Err(err.clone()));
                    (Err(err), None)
                }
            },
            Job::Exclusive(_) => (Ok(()), None),
        };
        let undo = match result {
            Err(err) if transaction_gone(&err) => break Some(err),
            Err(_) => format!("ROLLBACK TO {savepoint}; RELEASE {savepoint}"),
            Ok(()) => format!("RELEASE {savepoint}"),
        };
        if let Err(err) = tx.exec(&undo, &[]).await {
            break Some(err);
        }
        committed.extend(reply);
    };
    if let Some(err) = failure {
        for (_, job) in jobs {
            refuse(job, &err);
        }
        fail_all(committed, &err);
        return None;
    }
    commit(tx, committed).await
}

/// Commits the batch and hands every job its answer.
async fn commit(tx: Transaction<'_>, committed: Vec<Reply>) -> Option<dqlite::Error> {
    match tx.commit().await {
        Ok(()) => {
            for reply in committed {
                reply.send(Ok(()));
            }
        }
        Err(err) => fail_all(committed, &err),
    }
    None
}

/// Where a merged batch records each statement's counts, right after the statement: a
/// temporary table of the queue's own connection (the name is reserved: on that connection it
/// would hide a main table of the same name). WITHOUT ROWID, so that recording leaves
/// `last_insert_rowid()` as the statement left it.
const RESULTS: &str = "microcluster_write_queue_results";

enum Merged {
    /// Every job has its answer; the error if no leader could be found at all.
    Done(Option<dqlite::Error>),
    /// Not merged, or a statement failed and the group was undone: run the jobs one by one.
    OneByOne(Vec<Job>),
}

/// Runs a batch of plain INSERT/UPDATE/DELETE requests without parameters in three round
/// trips: `BEGIN IMMEDIATE` with all the statements and the record of their counts in one
/// EXEC_SQL, one query for the counts, and the COMMIT. If any statement fails, the whole group
/// is rolled back and the jobs go one by one, so that the failing one alone gets its error.
async fn run_merged(db: &mut Database, text: &str, batch: Vec<Job>, metrics: &Metrics) -> Merged {
    let mut busy = Busy::new();
    let mut tx = loop {
        match db.begin_immediate_with(text).await {
            Ok((tx, _)) => break tx,
            Err(err) if busy.retries(&err) => busy.wait(metrics).await,
            Err(err) if err.is_busy() || transaction_gone(&err) || matches!(err, dqlite::Error::NoLeader { .. }) => {
                for job in batch {
                    refuse(job, &err);
                }
                return Merged::Done(matches!(err, dqlite::Error::NoLeader { .. }).then_some(err));
            }
            Err(_) => {
                metrics.write_batches_merged.with(&[MERGE_UNDONE]).inc();
                return Merged::OneByOne(batch);
            }
        }
    };
    let counts = match tx.query(&format!("SELECT job, affected, insert_id FROM temp.{RESULTS} ORDER BY job"), &[]).await
    {
        Ok(rows) => rows,
        Err(err) => {
            for job in batch {
                refuse(job, &err);
            }
            return Merged::Done(None);
        }
    };
    let int = |row: &dqlite::Row, i: usize| row.get(i).and_then(Value::as_i64);
    let counts: Vec<(i64, i64, i64)> =
        counts.rows.iter().filter_map(|r| Some((int(r, 0)?, int(r, 1)?, int(r, 2)?))).collect();
    if counts.len() != batch.len() || counts.iter().enumerate().any(|(i, c)| c.0 != i as i64) {
        // Cannot happen unless the table was tampered with; nothing is lost by going slowly.
        return match tx.rollback().await {
            Ok(()) => Merged::OneByOne(batch),
            Err(err) => {
                for job in batch {
                    refuse(job, &err);
                }
                Merged::Done(None)
            }
        };
    }
    let replies = batch
        .into_iter()
        .zip(counts)
        .filter_map(|(job, (_, changes, rowid))| match job {
            // Bit for bit what libdqlite reports: SQLite's i64 values as u64.
            Job::Exec { reply, .. } => {
                Some(Reply::Exec(reply, ExecResult { last_insert_id: rowid as u64, rows_affected: changes as u64 }))
            }
            _ => None,
        })
        .collect();
    metrics.write_batches_merged.with(&[MERGED]).inc();
    Merged::Done(commit(tx, replies).await)
}

/// The error took the batch's transaction with it: nothing of the batch can be committed.
fn transaction_gone(err: &dqlite::Error) -> bool {
    err.is_connection_lost() || err.is_leadership_lost() || err.is_not_leader()
}

/// The batch as one text, or `None` unless it holds several jobs and each is a single plain
/// INSERT, UPDATE or DELETE without parameters (parameters would bind to the first statement
/// only) and without block comments (one left open would swallow the rest).
fn merged_batch(batch: &[Job]) -> Option<String> {
    if batch.len() < 2 {
        return None;
    }
    let mut text = format!(
        "CREATE TEMP TABLE IF NOT EXISTS {RESULTS} \
         (job INTEGER PRIMARY KEY, affected INTEGER, insert_id INTEGER) WITHOUT ROWID;DELETE FROM temp.{RESULTS}"
    );
    for (i, job) in batch.iter().enumerate() {
        let Job::Exec { sql, params, .. } = job else { return None };
        let statements = dqlite::sql::split_statements(sql);
        let [statement] = statements.as_slice() else { return None };
        if !params.is_empty() || statement.contains("/*") || !dqlite::sql::is_plain_dml(statement) {
            return None;
        }
        // The newline ends a trailing `--` comment.
        text.push_str(&format!(
            ";{statement}\n;INSERT INTO temp.{RESULTS} VALUES ({i}, changes(), last_insert_rowid())"
        ));
    }
    Some(text)
}

/// A request's single statement followed by `RELEASE savepoint` and, when another request
/// follows, `SAVEPOINT next`; `None` when the text is not one statement that can safely be
/// followed by more (several statements, or a block comment that could swallow the rest).
fn merged_text(sql: &str, savepoint: &str, next: Option<String>) -> Option<String> {
    let statements = dqlite::sql::split_statements(sql);
    let [statement] = statements.as_slice() else { return None };
    if statement.contains("/*") {
        return None;
    }
    // The newline ends a trailing `--` comment.
    let mut text = format!("{statement}\n;RELEASE {savepoint}");
    if let Some(next) = next {
        text.push_str(&format!(";SAVEPOINT {next}"));
    }
    Some(text)
}

fn refuse(job: Job, err: &dqlite::Error) {
    match job {
        Job::Exec { reply, .. } => {
            let _ = reply.send(Err(err.clone()));
        }
        Job::Tx { done, .. } => {
            let _ = done.send(Err(err.clone()));
        }
        Job::Exclusive(_) => {}
    }
}

async fn exec_retrying_busy(
    db: &mut Database,
    sql: &str,
    params: &[Value],
    metrics: &Metrics,
) -> dqlite::Result<ExecResult> {
    let mut busy = Busy::new();
    loop {
        match db.exec(sql, params).await {
            Err(err) if busy.retries(&err) => busy.wait(metrics).await,
            other => return other,
        }
    }
}

/// Retrying "database is locked" (another member holds SQLite's write lock) with a growing
/// pause, 1 ms up to 20 ms, until [`BUSY_DEADLINE`].
struct Busy {
    deadline: Instant,
    pause: Duration,
}

impl Busy {
    fn new() -> Busy {
        Busy { deadline: Instant::now() + BUSY_DEADLINE, pause: Duration::from_millis(1) }
    }

    /// Whether `err` is worth another try.
    fn retries(&self, err: &dqlite::Error) -> bool {
        err.is_busy() && Instant::now() < self.deadline
    }

    async fn wait(&mut self, metrics: &Metrics) {
        metrics.write_busy_retries.inc();
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::{Job, merged_batch, merged_text};
    use dqlite::Value;

    fn exec(sql: &str, params: Vec<Value>) -> Job {
        Job::Exec { sql: sql.into(), params, reply: tokio::sync::oneshot::channel().0 }
    }

    #[test]
    fn plain_writes_without_parameters_run_as_one_text() {
        let text = merged_batch(&[exec("INSERT INTO t VALUES (1) -- one", vec![]), exec("DELETE FROM t;", vec![])])
            .expect("two plain writes merge");
        assert!(text.starts_with("CREATE TEMP TABLE IF NOT EXISTS microcluster_write_queue_results"));
        assert!(text.ends_with(
            ";INSERT INTO t VALUES (1) -- one\n;INSERT INTO temp.microcluster_write_queue_results VALUES (0, changes(), last_insert_rowid());\
             DELETE FROM t\n;INSERT INTO temp.microcluster_write_queue_results VALUES (1, changes(), last_insert_rowid())"
        ));
        let plain = || exec("UPDATE t SET a = 1", vec![]);
        for odd in [
            exec("INSERT INTO t VALUES (?)", vec![Value::Integer(1)]),
            exec("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)", vec![]),
            exec("CREATE TABLE u (a)", vec![]),
            exec("INSERT INTO t VALUES (1) /* open", vec![]),
            Job::Tx { run: Box::new(|_| Box::pin(async { Ok(()) })), done: tokio::sync::oneshot::channel().0 },
        ] {
            assert!(merged_batch(&[plain(), odd]).is_none());
        }
        assert!(merged_batch(&[plain()]).is_none(), "one request alone gains nothing");
    }

    #[test]
    fn single_statements_carry_their_savepoints() {
        assert_eq!(
            merged_text("INSERT INTO t VALUES (?)", "job0", Some("job1".into())).as_deref(),
            Some("INSERT INTO t VALUES (?)\n;RELEASE job0;SAVEPOINT job1")
        );
        assert_eq!(
            merged_text("UPDATE t SET x = 1 -- why;", "job3", None).as_deref(),
            Some("UPDATE t SET x = 1 -- why;\n;RELEASE job3")
        );
        assert_eq!(merged_text("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)", "job0", None), None);
        assert_eq!(merged_text("INSERT INTO t VALUES (1) /* open", "job0", None), None);
    }
}
