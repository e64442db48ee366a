//! The write queue: every write of this member goes through one task and one connection to the
//! leader, so writes of this member never race each other for SQLite's write lock. Requests that
//! arrive together are committed together (group commit): one `BEGIN IMMEDIATE … COMMIT` around
//! them, each request in a savepoint of its own so that one that fails is rolled back alone and
//! gets its own error, the others their own results. Plain writes that arrive while a batch
//! runs join it before its COMMIT, and a batch waits briefly for the writers the last COMMIT
//! answered. "database is locked" (another member is
//! writing) is retried inside the queue and never reaches a caller until a deadline passes.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dqlite::{Database, ExecResult, Transaction, TxFuture, Value};
use tokio::sync::{mpsc, oneshot};

use super::bursts::Bursts;
use crate::server::metrics::{GATHER_FULL, GATHER_TIMEOUT, MERGE_UNDONE, MERGED, Metrics};

/// Most requests committed together.
const MAX_BATCH: usize = 64;
/// How many times a merged batch takes in the writes that arrived while it ran.
const LATE_ROUNDS: usize = 2;
/// Longest a batch waits for the writers the last commit answered (see [`Queue::gather`]).
const GATHER_MAX: Duration = Duration::from_millis(2);
/// How long "database is locked" is retried before the requests fail.
pub(crate) const BUSY_DEADLINE: Duration = Duration::from_secs(10);

/// A closure run inside the batch's transaction.
pub(crate) type TxJob = Box<dyn for<'t, 'd> FnOnce(&'t mut Transaction<'d>) -> TxFuture<'t, ()> + Send>;
/// A closure given the write connection alone (for SQL that manages its own transaction).
pub(crate) type ExclusiveJob =
    Box<dyn for<'c> FnOnce(&'c mut Database) -> Pin<Box<dyn Future<Output = ()> + Send + 'c>> + Send>;

/// One request to the queue.
pub(crate) enum Job {
    /// SQL text (parameters bind to its first statement), with its shape; made by
    /// [`Job::exec`] or [`Job::exec_statement`].
    Exec { sql: String, shape: Shape, params: Vec<Value>, reply: oneshot::Sender<dqlite::Result<ExecResult>> },
    /// A closure in the shared transaction; `done` says whether its work was committed.
    Tx { run: TxJob, done: oneshot::Sender<dqlite::Result<()>> },
    /// Exclusive use of the connection, outside any batch.
    Exclusive(ExclusiveJob),
}

/// What the queue needs to know of a job's SQL text, judged once when the job is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The text is one statement (or none): it runs alone in autocommit, in one round trip.
    single: bool,
    /// One statement that more text may follow in the same EXEC (no block comment, which left
    /// open would swallow the rest).
    appendable: bool,
    /// Appendable and a plain INSERT, REPLACE, UPDATE or DELETE: it can join a merged batch
    /// (see [`merged_batch`]).
    plain_dml: bool,
}

impl Job {
    /// A job for SQL text, split and judged here.
    pub(crate) fn exec(sql: &str, params: Vec<Value>, reply: oneshot::Sender<dqlite::Result<ExecResult>>) -> Job {
        match dqlite::sql_text::parse(sql).as_slice() {
            [statement] => Job::exec_statement(statement, params, reply),
            statements => Job::Exec {
                sql: sql.to_owned(),
                shape: Shape { single: statements.is_empty(), ..Shape::default() },
                params,
                reply,
            },
        }
    }

    /// A job for one statement judged before (its text alone runs).
    pub(crate) fn exec_statement(
        statement: &dqlite::sql_text::Statement,
        params: Vec<Value>,
        reply: oneshot::Sender<dqlite::Result<ExecResult>>,
    ) -> Job {
        let appendable = !statement.has_block_comment();
        let shape = Shape { single: true, appendable, plain_dml: appendable && statement.is_plain_dml() };
        Job::Exec { sql: statement.text().to_owned(), shape, params, reply }
    }
}

/// Runs the queue until every sender is gone.
pub(crate) async fn run(mut db: Database, jobs: mpsc::Receiver<Job>, metrics: Arc<Metrics>, bursts: Arc<Bursts>) {
    let mut queue = Queue { pending: VecDeque::new(), jobs, joined: 0 };
    let mut writers = Writers::default();
    loop {
        let first = match queue.pending.pop_front() {
            Some(job) => job,
            None => match queue.jobs.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        if let Job::Exclusive(run) = first {
            bursts.batch();
            run(&mut db).await;
            continue;
        }
        queue.put_back(first);
        if let Some(wait) = writers.worth_waiting_for(queue.waiting()) {
            let outcome = if queue.gather(writers.expected, wait).await { GATHER_FULL } else { GATHER_TIMEOUT };
            writers.gathered_in_vain = outcome == GATHER_TIMEOUT;
            metrics.write_gathers.with(&[outcome]).inc();
        }
        let Some(first) = queue.pending.pop_front() else { continue };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_next() {
                Some(Job::Exclusive(run)) => {
                    queue.put_back(Job::Exclusive(run));
                    break;
                }
                Some(job) => batch.push(job),
                None => break,
            }
        }
        let started = Instant::now();
        bursts.batch();
        let size = batch.len();
        queue.joined = 0;
        let outage = run_batch(&mut db, batch, &mut queue, &metrics).await;
        metrics.write_batch_size.observe((size + queue.joined) as f64);
        writers.last_batch = started.elapsed();
        metrics.write_batch_duration.observe_duration(writers.last_batch);
        writers.expected = size + queue.joined + queue.waiting();
        if let Some(outage) = outage {
            // No leader could be found for as long as the client looks: everything that queued
            // meanwhile would wait as long again, one after the other. Answer them now.
            while let Ok(job) = queue.jobs.try_recv() {
                queue.pending.push_back(job);
            }
            queue.pending.retain_mut(|job| !matches!(job, Job::Exclusive(_)));
            for job in queue.pending.drain(..) {
                refuse(job, &outage);
            }
        }
    }
}

/// What the queue knows of its writers, to gather bigger batches.
///
/// Why: under N closed-loop writers (each sends its next write once the last is answered), a
/// commit answers the writers in its batch while the others wait in the queue; started at once,
/// the next batch holds only those, and the two groups take turns with N/2 writes a commit.
/// The answered writers come back well within a commit's time, so waiting for them doubles
/// the batch for about the same commit: more writes per second and less CPU per write (16
/// writers through one member of three: ~3 300 → ~4 500 writes/s, p50 4.4 → 3.0 ms).
#[derive(Debug, Default)]
struct Writers {
    /// Requests the last commit answered plus those already waiting then: the writers to
    /// expect back.
    expected: usize,
    /// How long the last batch took.
    last_batch: Duration,
    /// The last wait ran out before the writers came: the next batch starts at once (and
    /// counts them anew), so writers that stopped or think between writes cost at most every
    /// other batch a wait.
    gathered_in_vain: bool,
}

impl Writers {
    /// How long to wait for more requests when `waiting` are queued: half the last batch's
    /// time (waiting longer than a commit cannot pay: the next commit would be done by then),
    /// at most [`GATHER_MAX`]; `None` when no writer is missing, there is just one, or the
    /// last wait was in vain.
    fn worth_waiting_for(&mut self, waiting: usize) -> Option<Duration> {
        if std::mem::take(&mut self.gathered_in_vain) || self.expected < 2 || waiting >= self.expected {
            return None;
        }
        Some((self.last_batch / 2).min(GATHER_MAX))
    }
}

/// The jobs not yet run: those taken off the channel and put back first, then the channel.
struct Queue {
    pending: VecDeque<Job>,
    jobs: mpsc::Receiver<Job>,
    /// Jobs that joined the running batch late (see [`Queue::late`]).
    joined: usize,
}

impl Queue {
    fn try_next(&mut self) -> Option<Job> {
        self.pending.pop_front().or_else(|| self.jobs.try_recv().ok())
    }

    /// Requests queued: taken off the channel and put back, and still in it.
    fn waiting(&self) -> usize {
        self.pending.len() + self.jobs.len()
    }

    /// Waits until `want` requests (at most a batch) are queued or an exclusive job arrives
    /// (it would end the batch anyway), for at most `wait`; whether they came in time.
    async fn gather(&mut self, want: usize, wait: Duration) -> bool {
        let want = want.min(MAX_BATCH);
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(job) = self.jobs.try_recv() {
            self.pending.push_back(job);
        }
        while self.pending.len() < want {
            if self.pending.iter().any(|job| matches!(job, Job::Exclusive(_))) {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.jobs.recv()).await {
                Ok(Some(job)) => self.pending.push_back(job),
                // Every sender is gone: nothing more can come.
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
        true
    }

    fn put_back(&mut self, job: Job) {
        self.pending.push_front(job);
    }

    /// Up to `room` jobs that arrived meanwhile and that `fit`; the first one that does not fit
    /// stays queued.
    fn late(&mut self, room: usize, fit: impl Fn(&Job) -> bool) -> Vec<Job> {
        let mut late = Vec::new();
        while late.len() < room {
            let Some(job) = self.try_next() else { break };
            if !fit(&job) {
                self.put_back(job);
                break;
            }
            late.push(job);
        }
        late
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
async fn run_batch(db: &mut Database, batch: Vec<Job>, queue: &mut Queue, metrics: &Metrics) -> Option<dqlite::Error> {
    // One plain statement alone: autocommit, one round trip.
    if let [Job::Exec { shape: Shape { single: true, .. }, .. }] = batch.as_slice() {
        let Some(Job::Exec { sql, params, reply, .. }) = batch.into_iter().next() else { return None };
        let result = exec_retrying_busy(db, &sql, &params, metrics).await;
        let outage = result.as_ref().err().filter(|e| matches!(e, dqlite::Error::NoLeader { .. })).cloned();
        let _ = reply.send(result);
        return outage;
    }
    let batch = match merged_batch(&batch) {
        Some(text) => match run_merged(db, &text, batch, queue, metrics).await {
            Merged::Done(outage) => return outage,
            Merged::OneByOne(batch) => batch,
        },
        None => batch,
    };
    batch_in_transaction(db, batch, queue, metrics).await
}

/// Runs the jobs in one transaction.
async fn batch_in_transaction(
    db: &mut Database,
    batch: Vec<Job>,
    queue: &mut Queue,
    metrics: &Metrics,
) -> Option<dqlite::Error> {
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
    let mut jobs: VecDeque<Job> = batch.into();
    let (mut ran, mut late_rounds) = (0, 0);
    // The savepoint the previous job's request already opened for this one.
    let mut opened: Option<usize> = None;
    let failure = loop {
        if jobs.is_empty() && late_rounds < LATE_ROUNDS {
            // As in `run_merged`: what arrived meanwhile joins before the COMMIT.
            late_rounds += 1;
            let late = queue.late(MAX_BATCH.saturating_sub(ran), |job| !matches!(job, Job::Exclusive(_)));
            queue.joined += late.len();
            jobs.extend(late);
        }
        let Some(job) = jobs.pop_front() else { break None };
        let i = ran;
        ran += 1;
        let savepoint = format!("job{i}");
        if opened.take() != Some(i)
            && let Err(err) = tx.exec(&format!("SAVEPOINT {savepoint}"), &[]).await
        {
            refuse(job, &err);
            break Some(err);
        }
        let (result, reply) = match job {
            Job::Exec { sql, shape, params, reply } => {
                // One round trip per request: its statement, its RELEASE and the next request's
                // SAVEPOINT in one EXEC_SQL (parameters bind to the first statement; the
                // result's counts stay the statement's, as neither RELEASE nor SAVEPOINT
                // changes them). If the statement fails, the rest does not run.
                let next = (!jobs.is_empty()).then_some(i + 1);
                let merged = merged_text(&sql, shape, &savepoint, next.map(|n| format!("job{n}")));
                match tx.exec(merged.as_deref().unwrap_or(&sql), &params).await {
                    Ok(r) if merged.is_some() => {
                        opened = next;
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
            Err(err) if err.is_leader_gone() => break Some(err),
            Err(_) => format!("ROLLBACK TO {savepoint}; RELEASE {savepoint}"),
            Ok(()) => format!("RELEASE {savepoint}"),
        };
        if let Err(err) = tx.exec(&undo, &[]).await {
            break Some(err);
        }
        committed.extend(reply);
    };
    if let Some(err) = failure {
        for job in jobs {
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
/// Plain writes queued meanwhile join before the query, one more round trip per group.
async fn run_merged(
    db: &mut Database,
    text: &str,
    mut batch: Vec<Job>,
    queue: &mut Queue,
    metrics: &Metrics,
) -> Merged {
    let mut busy = Busy::new();
    let mut tx = loop {
        match db.begin_immediate_with(text).await {
            Ok((tx, _)) => break tx,
            Err(err) if busy.retries(&err) => busy.wait(metrics).await,
            Err(err) if err.is_busy() || err.is_leader_gone() || matches!(err, dqlite::Error::NoLeader { .. }) => {
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
    // Writes that arrived while the statements ran join the transaction before it commits (in a
    // savepoint, so that a failing one undoes only its own group, which goes back to the queue).
    // Under load this is where the writers answered by the previous commit come back: without
    // it, they would wait for the next commit, and batches would hold half of the writers.
    for _ in 0..LATE_ROUNDS {
        let late = queue.late(MAX_BATCH - batch.len(), |job| mergeable(job).is_some());
        if late.is_empty() {
            break;
        }
        let mut text = String::from("SAVEPOINT late");
        for (i, statement) in late.iter().filter_map(mergeable).enumerate() {
            push_merged(&mut text, statement, batch.len() + i);
        }
        match tx.exec(&format!("{text};RELEASE late"), &[]).await {
            Ok(_) => {
                queue.joined += late.len();
                batch.extend(late);
            }
            Err(err) if err.is_leader_gone() => {
                for job in batch.into_iter().chain(late) {
                    refuse(job, &err);
                }
                return Merged::Done(None);
            }
            Err(_) => {
                let undone = tx.exec("ROLLBACK TO late; RELEASE late", &[]).await;
                for job in late.into_iter().rev() {
                    queue.put_back(job);
                }
                if let Err(err) = undone {
                    for job in batch {
                        refuse(job, &err);
                    }
                    return Merged::Done(None);
                }
                break;
            }
        }
    }
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
        push_merged(&mut text, mergeable(job)?, i);
    }
    Some(text)
}

/// The job's statement if it can go into a merged batch: a single plain INSERT, UPDATE or
/// DELETE without parameters (parameters would bind to the first statement only) and without
/// block comments (one left open would swallow the rest).
fn mergeable(job: &Job) -> Option<&str> {
    match job {
        Job::Exec { sql, shape, params, .. } if shape.plain_dml && params.is_empty() => Some(sql),
        _ => None,
    }
}

/// Appends `statement` and the record of its counts as job `i`.
fn push_merged(text: &mut String, statement: &str, i: usize) {
    // The newline ends a trailing `--` comment.
    text.push_str(&format!(";{statement}\n;INSERT INTO temp.{RESULTS} VALUES ({i}, changes(), last_insert_rowid())"));
}

/// A request's single statement followed by `RELEASE savepoint` and, when another request
/// follows, `SAVEPOINT next`; `None` when the text is not one statement that can safely be
/// followed by more (several statements, or a block comment that could swallow the rest).
fn merged_text(statement: &str, shape: Shape, savepoint: &str, next: Option<String>) -> Option<String> {
    if !shape.appendable {
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
    backoff: dqlite::Backoff,
}

impl Busy {
    fn new() -> Busy {
        Busy {
            deadline: Instant::now() + BUSY_DEADLINE,
            backoff: dqlite::Backoff::new(Duration::from_millis(1), Duration::from_millis(20)),
        }
    }

    /// Whether `err` is worth another try.
    fn retries(&self, err: &dqlite::Error) -> bool {
        err.is_busy() && Instant::now() < self.deadline
    }

    async fn wait(&mut self, metrics: &Metrics) {
        metrics.write_busy_retries.inc();
        self.backoff.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::{GATHER_MAX, Job, MERGED, Metrics, Queue, Writers, merged_batch, merged_text, run_batch};
    use dqlite::{ExecResult, Value};
    use std::collections::VecDeque;
    use std::time::Duration;
    use tokio::sync::{mpsc, oneshot};
    use tokio::time::Instant;

    type Answer = oneshot::Receiver<dqlite::Result<ExecResult>>;

    fn write(sql: &str, params: Vec<Value>) -> (Job, Answer) {
        let (reply, answer) = oneshot::channel();
        (Job::exec(sql, params, reply), answer)
    }

    fn insert(key: &str) -> (Job, Answer) {
        write(&format!("INSERT INTO t (k) VALUES ('{key}')"), vec![])
    }

    /// Runs `batch` with `waiting` already queued, as if it had arrived while the batch ran.
    async fn batch_with_waiting(
        db: &mut dqlite::Database,
        queue: &mut Queue,
        metrics: &Metrics,
        batch: Vec<Job>,
        waiting: Vec<Job>,
    ) {
        queue.pending.extend(waiting);
        queue.joined = 0;
        assert!(run_batch(db, batch, queue, metrics).await.is_none());
    }

    fn answered(answer: &mut Answer) -> Option<dqlite::Result<ExecResult>> {
        answer.try_recv().ok()
    }

    /// A real single node with table `t`, a connection to it, and an empty queue.
    async fn scratch(tag: &str) -> (tempfile::TempDir, dqlite::Node, dqlite::Database, Queue) {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("@microcluster-writer-test-{}-{tag}", std::process::id());
        let mut node = dqlite::Node::builder(dqlite::BOOTSTRAP_ID, address.clone(), dir.path()).build().unwrap();
        node.start().unwrap();
        let mut db = dqlite::Client::new([address]).database("test");
        db.exec("CREATE TABLE t (k TEXT PRIMARY KEY)", &[]).await.unwrap();
        (dir, node, db, Queue { pending: VecDeque::new(), jobs: mpsc::channel(1).1, joined: 0 })
    }

    #[tokio::test]
    async fn writes_with_parameters_queued_meanwhile_join_the_transaction() {
        let (_dir, mut node, mut db, mut queue) = scratch("params").await;
        let metrics = Metrics::default();
        let with = |k: &str| write("INSERT INTO t (k) VALUES (?)", vec![Value::Text(k.into())]);
        let ((x, mut x_answer), (y, mut y_answer), (z, mut z_answer)) = (with("x"), with("y"), with("z"));
        let exclusive = Job::Exclusive(Box::new(|_| Box::pin(async {})));
        batch_with_waiting(&mut db, &mut queue, &metrics, vec![x, y], vec![z, exclusive]).await;
        for answer in [&mut x_answer, &mut y_answer, &mut z_answer] {
            assert_eq!(answered(answer).unwrap().unwrap().rows_affected, 1);
        }
        assert_eq!(queue.joined, 1);
        assert!(matches!(queue.pending.as_slices().0, [Job::Exclusive(_)]), "the exclusive job stays queued");
        let rows = db.query("SELECT count(*) FROM t", &[]).await.unwrap();
        assert_eq!(rows.rows[0].get(0), Some(&Value::Integer(3)));
        drop(db);
        node.stop().unwrap();
    }

    #[tokio::test]
    async fn writes_queued_meanwhile_join_the_batch_and_a_failing_group_goes_back_to_the_queue() {
        let (_dir, mut node, mut db, mut queue) = scratch("plain").await;
        let metrics = Metrics::default();

        // A plain write that waits joins; the one after it, with parameters, cannot and stays.
        let ((a, mut a_answer), (b, mut b_answer), (c, mut c_answer)) = (insert("a"), insert("b"), insert("c"));
        let (p, mut p_answer) = write("INSERT INTO t (k) VALUES (?)", vec![Value::Text("p".into())]);
        batch_with_waiting(&mut db, &mut queue, &metrics, vec![a, b], vec![c, p]).await;
        for answer in [&mut a_answer, &mut b_answer, &mut c_answer] {
            assert_eq!(answered(answer).unwrap().unwrap().rows_affected, 1);
        }
        assert_eq!(queue.joined, 1);
        assert!(answered(&mut p_answer).is_none(), "the write with parameters ran in the batch");
        assert!(matches!(queue.pending.front(), Some(Job::Exec { params, .. }) if !params.is_empty()));
        queue.pending.clear();

        // A waiting group with a failing write is undone alone and goes back, in order; the
        // batch it tried to join commits with the right counts.
        let ((d, mut d_answer), (e, mut e_answer)) = (insert("d"), insert("e"));
        let ((f, mut f_answer), (dup, mut dup_answer)) = (insert("f"), insert("a"));
        batch_with_waiting(&mut db, &mut queue, &metrics, vec![d, e], vec![f, dup]).await;
        for answer in [&mut d_answer, &mut e_answer] {
            assert_eq!(answered(answer).unwrap().unwrap().rows_affected, 1);
        }
        assert_eq!(queue.joined, 0);
        assert!(answered(&mut dup_answer).is_none() && answered(&mut f_answer).is_none());
        assert_eq!(metrics.write_batches_merged.with(&[MERGED]).get(), 2, "a batch fell back to one by one");

        // Run next, the failing write gets its own error and the other one commits.
        let batch: Vec<Job> = queue.pending.drain(..).collect();
        assert!(matches!(batch.as_slice(), [_, Job::Exec { sql, .. }] if sql.contains("'a'")));
        batch_with_waiting(&mut db, &mut queue, &metrics, batch, vec![]).await;
        let err = answered(&mut dup_answer).unwrap().unwrap_err();
        assert!(err.to_string().contains("UNIQUE constraint failed"), "{err}");
        assert_eq!(answered(&mut f_answer).unwrap().unwrap().rows_affected, 1);

        let rows = db.query("SELECT group_concat(k, '') FROM (SELECT k FROM t ORDER BY k)", &[]).await.unwrap();
        assert_eq!(rows.rows[0].get(0), Some(&Value::Text("abcdef".into())));
        drop(db);
        node.stop().unwrap();
    }

    fn exec(sql: &str, params: Vec<Value>) -> Job {
        Job::exec(sql, params, tokio::sync::oneshot::channel().0)
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
        let merged = |sql: &str, savepoint: &str, next: Option<String>| {
            let Job::Exec { sql, shape, .. } = exec(sql, vec![]) else { unreachable!("an exec job") };
            merged_text(&sql, shape, savepoint, next)
        };
        assert_eq!(
            merged("INSERT INTO t VALUES (?)", "job0", Some("job1".into())).as_deref(),
            Some("INSERT INTO t VALUES (?)\n;RELEASE job0;SAVEPOINT job1")
        );
        assert_eq!(
            merged("UPDATE t SET x = 1 -- why;", "job3", None).as_deref(),
            Some("UPDATE t SET x = 1 -- why;\n;RELEASE job3")
        );
        assert_eq!(
            merged("  DELETE FROM t ; ", "job1", None).as_deref(),
            Some("DELETE FROM t\n;RELEASE job1"),
            "the statement alone, judged once when the job was made"
        );
        assert_eq!(merged("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)", "job0", None), None);
        assert_eq!(merged("INSERT INTO t VALUES (1) /* open", "job0", None), None);
    }

    #[test]
    fn a_batch_waits_for_missing_writers_only_when_it_can_pay() {
        let mut writers = Writers { expected: 16, last_batch: Duration::from_millis(3), gathered_in_vain: false };
        assert_eq!(writers.worth_waiting_for(8), Some(Duration::from_micros(1500)), "half the last batch");
        assert_eq!(writers.worth_waiting_for(16), None, "all writers are there");
        writers.last_batch = Duration::from_secs(1);
        assert_eq!(writers.worth_waiting_for(1), Some(GATHER_MAX));
        writers.gathered_in_vain = true;
        assert_eq!(writers.worth_waiting_for(1), None, "right after a wait in vain");
        assert_eq!(writers.worth_waiting_for(1), Some(GATHER_MAX), "and only once");
        writers.expected = 1;
        assert_eq!(writers.worth_waiting_for(0), None, "a lone writer never waits for itself");
    }

    #[tokio::test(start_paused = true)]
    async fn gathering_ends_when_the_writers_are_back_or_the_wait_runs_out() {
        let (tx, jobs) = mpsc::channel(16);
        let mut queue = Queue { pending: VecDeque::from([insert("a").0]), jobs, joined: 0 };
        let sender = tx.clone();
        tokio::spawn(async move {
            for key in ["b", "c"] {
                tokio::time::sleep(Duration::from_millis(1)).await;
                sender.send(insert(key).0).await.unwrap();
            }
        });
        let started = Instant::now();
        assert!(queue.gather(3, Duration::from_millis(5)).await, "both writers came back in time");
        assert_eq!((queue.pending.len(), started.elapsed() < Duration::from_millis(5)), (3, true));

        let started = Instant::now();
        assert!(!queue.gather(4, Duration::from_millis(2)).await, "nobody came");
        assert_eq!((queue.pending.len(), started.elapsed() >= Duration::from_millis(2)), (3, true));

        // An exclusive job ends the batch anyway, wherever it is queued: no point in waiting.
        tx.send(Job::Exclusive(Box::new(|_| Box::pin(async {})))).await.unwrap();
        tx.send(insert("d").0).await.unwrap();
        let started = Instant::now();
        assert!(queue.gather(8, Duration::from_secs(60)).await);
        assert_eq!((queue.pending.len(), started.elapsed()), (5, Duration::ZERO));
        assert!(matches!(queue.pending.get(3), Some(Job::Exclusive(_))));
        // Nor when nothing more can come.
        queue.pending.truncate(3);
        drop(tx);
        assert!(queue.gather(8, Duration::from_secs(60)).await);
        assert_eq!((queue.pending.len(), started.elapsed()), (3, Duration::ZERO));
    }
}
