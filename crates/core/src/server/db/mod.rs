//! The cluster database as the daemon uses it: one dqlite database (`db.bin`) reached through
//! the leader, its status, schema bookkeeping, and the core tables' queries.
//!
//! libdqlite 1.11 answers a second concurrent writer with "database is locked" and has no busy
//! timeout, so this member's writes all go through one queue (`writer`), which commits
//! concurrent requests together and retries the lock; reads use a small pool of their own.

pub(crate) mod bursts;
pub(crate) mod dump;
pub(crate) mod members;
pub(crate) mod monitors;
pub(crate) mod schema;
pub(crate) mod tokens;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use dqlite::{Database, LeaderQuorum, QueryResult, Transaction, TxFuture, Value};
use tokio::sync::{mpsc, oneshot, watch};
pub(crate) use writer::BUSY_DEADLINE;
use writer::Job;

use crate::server::metrics::Metrics;

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

/// How many connections serve reads at once.
const READERS: usize = 4;
/// How many times a read runs before its error is returned.
const READ_ATTEMPTS: u32 = 3;
/// How often the local node is asked who leads.
const LEADER_POLL: Duration = Duration::from_millis(100);
/// How often it is asked while the member serves no request (an idle member saves the wake-ups;
/// a request wakes the watcher at once).
const IDLE_LEADER_POLL: Duration = Duration::from_secs(1);
/// How long after a request the member counts as busy.
const BUSY_WINDOW: Duration = Duration::from_secs(3);
/// How often it is asked while a request waits for leadership to move ([`Db::leader_moved_soon`]).
const URGENT_LEADER_POLL: Duration = Duration::from_millis(5);
/// How often a member whose node names no leader (a stand-by or spare) asks the cluster
/// instead while a request waits for leadership to move.
const URGENT_LEADER_SEARCH: Duration = Duration::from_millis(50);

/// When the member last served a request, and a way to wake the leader watcher.
#[derive(Debug)]
struct Activity {
    epoch: std::time::Instant,
    last_ms: std::sync::atomic::AtomicU64,
    wake: tokio::sync::Notify,
    /// Polls the watcher made, and a signal after each.
    polls: std::sync::atomic::AtomicU64,
    polled: tokio::sync::Notify,
    /// Requests waiting for leadership to move: the watcher looks every [`URGENT_LEADER_POLL`].
    urgent: std::sync::atomic::AtomicUsize,
}

/// A request waiting for leadership to move ([`Activity::urgent`]).
struct Urgent<'a>(&'a Activity);

impl Drop for Urgent<'_> {
    fn drop(&mut self) {
        self.0.urgent.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: std::time::Instant::now(),
            last_ms: 0.into(),
            wake: tokio::sync::Notify::new(),
            polls: 0.into(),
            polled: tokio::sync::Notify::new(),
            urgent: 0.into(),
        }
    }

    /// The watcher looks every [`URGENT_LEADER_POLL`] until the guard is dropped.
    fn urgent(&self) -> Urgent<'_> {
        self.urgent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.last_ms.store(self.elapsed_ms(), std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
        Urgent(self)
    }

    fn is_urgent(&self) -> bool {
        self.urgent.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request starts: the watcher goes back to its quick pace. If it was idle, it looks now,
    /// and this waits (briefly) for that fresh answer, so the request is not judged by an old one.
    async fn touch(&self) {
        let previous = self.last_ms.swap(self.elapsed_ms(), std::sync::atomic::Ordering::Relaxed);
        if self.elapsed_ms().saturating_sub(previous) <= BUSY_WINDOW.as_millis() as u64 {
            return;
        }
        let polled = self.polled.notified();
        let before = self.polls.load(std::sync::atomic::Ordering::Acquire);
        self.wake.notify_one();
        if self.polls.load(std::sync::atomic::Ordering::Acquire) == before {
            let _ = tokio::time::timeout(Duration::from_millis(250), polled).await;
        }
    }

    fn polled(&self) {
        self.polls.fetch_add(1, std::sync::atomic::Ordering::Release);
        self.polled.notify_waiters();
    }

    fn busy(&self) -> bool {
        let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.elapsed_ms().saturating_sub(last) <= BUSY_WINDOW.as_millis() as u64
    }
}

/// How sure a read must be to see every write acknowledged before it was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Consistency {
    /// Answered by a node that a majority of the voters named as leader after the read was
    /// asked for (see [`dqlite::LeaderQuorum`]): never misses an acknowledged write.
    #[default]
    Linearizable,
    /// Answered by whichever node believes it leads: one round trip less, but a leader that
    /// froze or was cut off, and does not know yet that it was replaced, answers from its old
    /// state.
    Weak,
}

/// The shared database: a write queue (one connection, group commit), a pool of read
/// connections, and a watcher that tells them when leadership moves.
#[derive(Debug)]
pub(crate) struct Db {
    client: dqlite::Client,
    jobs: mpsc::Sender<Job>,
    readers: tokio::sync::Mutex<Vec<Database>>,
    reader_slots: tokio::sync::Semaphore,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    leader: watch::Receiver<Option<String>>,
    /// Confirms the leader with a majority of the voters before linearizable reads.
    quorum: LeaderQuorum,
    /// Whether reads are confirmed (from the moment the member is online): a member still
    /// joining is not yet trusted by every voter, which refuses its questions, so its own
    /// bookkeeping reads until then are weak (clients' reads only come once it is online).
    confirm_reads: std::sync::atomic::AtomicBool,
    /// Whether this member's node has ever named a leader (spares never do).
    seen_leader: Arc<std::sync::atomic::AtomicBool>,
    activity: Arc<Activity>,
    bursts: Arc<bursts::Bursts>,
    /// How long a request waits for a leader when the node knows none (see [`Db::await_leader`]).
    election_wait: Duration,
    metrics: Arc<Metrics>,
}

impl Drop for Db {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Db {
    /// Starts the queue and the leader watcher; `own_address` is this member's node.
    /// `election_wait` is the longest a normal election takes (twice raft's election timeout).
    pub(crate) fn new(
        client: dqlite::Client,
        own_address: String,
        election_wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Db {
        let (leader_tx, leader) = watch::channel(None);
        let (jobs, queue) = mpsc::channel(1024);
        let database = || {
            let mut db = client.database(DB_NAME);
            db.follow_leader(leader.clone());
            db
        };
        let bursts = Arc::new(bursts::Bursts::new());
        let writer = tokio::spawn(writer::run(database(), queue, metrics.clone(), bursts.clone()));
        let readers = (0..READERS).map(|_| database()).collect();
        let seen_leader = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let activity = Arc::new(Activity::new());
        let watcher = tokio::spawn(watch_leader(
            client.clone(),
            own_address,
            Watch { leader: leader_tx, seen: seen_leader.clone(), activity: activity.clone() },
            metrics.clone(),
        ));
        Db {
            leader,
            quorum: LeaderQuorum::new(client.clone()),
            confirm_reads: false.into(),
            seen_leader,
            activity,
            bursts,
            election_wait,
            metrics,
            readers: tokio::sync::Mutex::new(readers),
            reader_slots: tokio::sync::Semaphore::new(READERS),
            client,
            jobs,
            tasks: vec![writer, watcher],
        }
    }

    /// The dqlite client (leader discovery, membership requests).
    pub(crate) fn client(&self) -> &dqlite::Client {
        &self.client
    }

    /// Write requests waiting in the queue.
    pub(crate) fn queue_depth(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Whether this member's writes stream in (see [`bursts`]).
    pub(crate) fn bursts(&self) -> Arc<bursts::Bursts> {
        self.bursts.clone()
    }

    /// Every change of the leader as this member's node reports it.
    pub(crate) fn leader_changes(&self) -> watch::Receiver<Option<String>> {
        self.leader.clone()
    }

    /// The leader's address as this member's node last reported it.
    pub(crate) fn leader(&self) -> Option<String> {
        self.leader.borrow().clone()
    }

    /// Resolves once this member's node names a leader other than `leader` (never on a
    /// stand-by or spare, whose node names none): for a request handed to `leader` that would
    /// otherwise wait for its whole timeout on a leader that froze or was cut off.
    pub(crate) async fn leader_moved_from(&self, leader: &str) {
        self.activity.touch().await;
        let mut watch = self.leader.clone();
        if watch.wait_for(|now| now.as_deref().is_some_and(|now| now != leader)).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits (until `until`) for leadership to move away from `leader`, looking often: for a
    /// request `leader` refused before running it because it is stopping, to be sent to the
    /// next leader as soon as there is one. False if it did not move in time.
    pub(crate) async fn leader_moved_soon(&self, leader: &str, until: tokio::time::Instant) -> bool {
        let _urgent = self.activity.urgent();
        let mut searched = tokio::time::Instant::now();
        loop {
            if self.leader_hint().is_some_and(|now| now != leader) {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return false;
            }
            // A stand-by's or spare's node names no leader; the search remembers what it finds.
            if self.leader().is_none() && now >= searched + URGENT_LEADER_SEARCH {
                searched = now;
                let _ = tokio::time::timeout_at(until, self.client.connect_leader()).await;
            }
            tokio::time::sleep_until(until.min(now + URGENT_LEADER_POLL)).await;
        }
    }

    /// The leader's address as best known without asking anyone: what this member's node
    /// reports, or (on a stand-by or spare, whose node names no leader) the leader this
    /// member's client last reached. It may be out of date.
    pub(crate) fn leader_hint(&self) -> Option<String> {
        self.leader().or_else(|| self.client.last_leader())
    }

    /// Waits (at most the length of an election) while this member's node knows no leader, and
    /// refuses after that: a member cut off from the majority then answers at once instead of
    /// searching for a leader for the client's whole timeout. A node that never named a leader
    /// (a spare, or one just started) is not judged by it.
    async fn await_leader(&self) -> Result<(), dqlite::Error> {
        self.activity.touch().await;
        if self.leader.borrow().is_some() || !self.seen_leader.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let mut leader = self.leader.clone();
        match tokio::time::timeout(self.election_wait, leader.wait_for(Option::is_some)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(dqlite::Error::NoLeader {
                attempts: 0,
                servers: self.client.servers().join(", "),
                last_error: format!(
                    "this member's node has known no leader for {:?} (longer than an election takes): it is \
                     probably cut off from the majority of voters",
                    self.election_wait
                ),
            }),
        }
    }

    async fn submit(&self, job: Job) -> Result<(), dqlite::Error> {
        self.await_leader().await?;
        self.jobs.send(job).await.map_err(|_| abandoned())
    }

    /// Runs `f` in a write transaction, committed together with whatever else this member is
    /// writing at the same moment (each caller's work in a savepoint of its own).
    pub(crate) async fn transaction<T, F>(&self, f: F) -> Result<T, dqlite::Error>
    where
        T: Send + 'static,
        F: for<'t, 'd> FnOnce(&'t mut Transaction<'d>) -> TxFuture<'t, T> + Send + 'static,
    {
        let slot: Arc<std::sync::Mutex<Option<T>>> = Arc::new(std::sync::Mutex::new(None));
        let out = slot.clone();
        let run: writer::TxJob = Box::new(move |tx| {
            Box::pin(async move {
                let value = f(tx).await?;
                if let Ok(mut out) = out.lock() {
                    *out = Some(value);
                }
                Ok(())
            })
        });
        let (done, finished) = oneshot::channel();
        self.submit(Job::Tx { run, done }).await?;
        let outcome = finished.await.map_err(|_| abandoned()).and_then(|r| r);
        self.metrics.record(&outcome);
        outcome?;
        slot.lock().ok().and_then(|mut v| v.take()).ok_or_else(abandoned)
    }

    /// Runs SQL text that may write (parameters bind to its first statement).
    pub(crate) async fn exec(&self, sql: &str, params: &[Value]) -> Result<dqlite::ExecResult, dqlite::Error> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::exec(sql, params.to_vec(), reply)).await?;
        let outcome = answer.await.map_err(|_| abandoned()).and_then(|r| r);
        self.metrics.record(&outcome);
        outcome
    }

    /// [`Db::exec`] of one statement split and judged before (`dqlite::sql_text::parse`).
    pub(crate) async fn exec_statement(
        &self,
        statement: &dqlite::sql_text::Statement,
    ) -> Result<dqlite::ExecResult, dqlite::Error> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::exec_statement(statement, Vec::new(), reply)).await?;
        let outcome = answer.await.map_err(|_| abandoned()).and_then(|r| r);
        self.metrics.record(&outcome);
        outcome
    }

    /// Gives `f` the write connection alone, outside any batch (for SQL that has its own
    /// BEGIN/COMMIT).
    pub(crate) async fn exclusive<T, F>(&self, f: F) -> Result<T, dqlite::Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut Database) -> Pin<Box<dyn Future<Output = T> + Send + 'c>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let run: writer::ExclusiveJob = Box::new(move |db| {
            Box::pin(async move {
                let _ = reply.send(f(db).await);
            })
        });
        self.submit(Job::Exclusive(run)).await?;
        answer.await.map_err(|_| abandoned())
    }

    /// From now on, reads are confirmed with the voters (the member is online).
    pub(crate) fn confirm_reads(&self) {
        self.confirm_reads.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Lends `f` a read connection (reads do not queue behind writes), on a leader confirmed
    /// by a majority of the voters (see [`Db::confirm_reads`]). A read that lost its connection
    /// or its leader changed nothing, so `f` runs again, on the new leader.
    pub(crate) async fn reading<T, F>(&self, f: F) -> Result<T, dqlite::Error>
    where
        F: for<'c> Fn(&'c mut Database) -> Pin<Box<dyn Future<Output = Result<T, dqlite::Error>> + Send + 'c>>,
    {
        self.reading_attempts(READ_ATTEMPTS, Consistency::Linearizable, f).await
    }

    /// [`Db::reading`] with the given consistency.
    pub(crate) async fn reading_with<T, F>(&self, consistency: Consistency, f: F) -> Result<T, dqlite::Error>
    where
        F: for<'c> Fn(&'c mut Database) -> Pin<Box<dyn Future<Output = Result<T, dqlite::Error>> + Send + 'c>>,
    {
        self.reading_attempts(READ_ATTEMPTS, consistency, f).await
    }

    /// [`Db::reading`] without running `f` again: for a read that already handed rows on.
    pub(crate) async fn reading_once<T, F>(&self, consistency: Consistency, f: F) -> Result<T, dqlite::Error>
    where
        F: for<'c> Fn(&'c mut Database) -> Pin<Box<dyn Future<Output = Result<T, dqlite::Error>> + Send + 'c>>,
    {
        self.reading_attempts(1, consistency, f).await
    }

    async fn reading_attempts<T, F>(&self, attempts: u32, consistency: Consistency, f: F) -> Result<T, dqlite::Error>
    where
        F: for<'c> Fn(&'c mut Database) -> Pin<Box<dyn Future<Output = Result<T, dqlite::Error>> + Send + 'c>>,
    {
        self.await_leader().await?;
        let deadline = std::time::Instant::now() + self.client.config().leader_timeout;
        let _slot = self.reader_slots.acquire().await.map_err(|_| abandoned())?;
        let Some(mut db) = self.readers.lock().await.pop() else { return Err(abandoned()) };
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            let confirmed = self.confirm_reads.load(std::sync::atomic::Ordering::Relaxed);
            let outcome = match consistency {
                Consistency::Linearizable if confirmed => self.on_confirmed_leader(&mut db, deadline, &f).await,
                _ => f(&mut db).await,
            };
            match outcome {
                Err(err) if attempt < attempts && err.is_leader_gone() => {
                    tracing::debug!(error = %err, "read interrupted; trying again on the leader");
                    tokio::time::sleep(LEADER_POLL).await;
                }
                other => break other,
            }
        };
        self.readers.lock().await.push(db);
        self.metrics.record(&result);
        result
    }

    /// Runs `f` on the node that a majority of the voters names as leader, asked after this
    /// call began; fails (with [`dqlite::Error::LeaderMoved`], which a read retries) if `f`
    /// ended up on another node.
    async fn on_confirmed_leader<T, F>(
        &self,
        db: &mut Database,
        deadline: std::time::Instant,
        f: &F,
    ) -> Result<T, dqlite::Error>
    where
        F: for<'c> Fn(&'c mut Database) -> Pin<Box<dyn Future<Output = Result<T, dqlite::Error>> + Send + 'c>>,
    {
        let mut backoff = dqlite::Backoff::new(LEADER_POLL, IDLE_LEADER_POLL);
        let leader = loop {
            let leader = self.quorum.confirm(deadline).await?;
            if db.connected_to().is_some_and(|node| node != leader) {
                self.metrics.reads_redirected.inc();
            }
            match db.connect_to(&leader).await {
                Ok(()) => break leader,
                // A leader that just died is still named by the voters until their election
                // timeout: wait for the election, as a write would.
                Err(err) if err.is_connection_lost() && std::time::Instant::now() + backoff.peek() < deadline => {
                    tracing::debug!(%leader, error = %err, "the confirmed leader cannot be reached; asking again");
                    backoff.wait().await;
                }
                Err(err) => return Err(err),
            }
        };
        let value = f(db).await?;
        match db.connected_to() {
            Some(node) if node == leader => Ok(value),
            other => {
                let address = other.unwrap_or_default().to_owned();
                db.disconnect();
                self.metrics.reads_redirected.inc();
                Err(dqlite::Error::LeaderMoved { address, leader })
            }
        }
    }

    /// Rounds of leader confirmation run for reads, and those that found no majority.
    pub(crate) fn confirmation_rounds(&self) -> (u64, u64) {
        self.quorum.rounds()
    }

    /// Runs `f` in a read transaction (a consistent snapshot without the write lock).
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, dqlite::Error>
    where
        F: for<'t, 'd> Fn(&'t mut Transaction<'d>) -> TxFuture<'t, T> + Send + Sync + 'static,
        T: Send + 'static,
    {
        let f = Arc::new(f);
        self.reading(move |db| {
            let f = f.clone();
            Box::pin(async move { db.read_transaction(&*f).await })
        })
        .await
    }

    /// Runs one read-only statement.
    pub(crate) async fn query(&self, sql: &str, params: &[Value]) -> Result<QueryResult, dqlite::Error> {
        self.reading(|db| {
            let (sql, params) = (sql.to_owned(), params.to_vec());
            Box::pin(async move { db.query(&sql, &params).await })
        })
        .await
    }
}

/// A request the queue dropped (its batch was abandoned when leadership moved): the outcome
/// of a write in it is unknown.
fn abandoned() -> dqlite::Error {
    dqlite::Error::Broken { address: "the database queue (request abandoned; leadership moved)".into() }
}

/// Whether this member's node is a voter in its own configuration (true if it cannot tell).
async fn is_voter(conn: &mut dqlite::Connection, own_address: &str) -> bool {
    match conn.cluster().await {
        Ok(nodes) => nodes.iter().any(|n| n.address == own_address && n.role == Some(dqlite::Role::Voter)),
        Err(_) => true,
    }
}

/// What the leader watcher reports to, and what tells it how often to look.
struct Watch {
    leader: watch::Sender<Option<String>>,
    seen: Arc<std::sync::atomic::AtomicBool>,
    activity: Arc<Activity>,
}

/// Asks this member's own node who leads (only voters and stand-bys know): every
/// [`LEADER_POLL`] while the member serves requests, every [`IDLE_LEADER_POLL`] otherwise.
async fn watch_leader(client: dqlite::Client, own_address: String, watch: Watch, metrics: Arc<Metrics>) {
    let Watch { leader, seen: seen_leader, activity } = watch;
    let (mut conn, mut last_known) = (None, None);
    loop {
        if conn.is_none() {
            conn = client.connect(&own_address).await.ok();
        }
        if let Some(c) = conn.as_mut() {
            match c.leader().await {
                Ok(now) => {
                    let now = now.map(|n| n.address);
                    // A change is a new leader after another one (an election between them
                    // included), not the first leader seen.
                    if now.is_some() && last_known.is_some() && now != last_known {
                        metrics.leader_changes.inc();
                    }
                    if now.is_some() {
                        seen_leader.store(true, std::sync::atomic::Ordering::Relaxed);
                    } else if !is_voter(c, &own_address).await {
                        // Only voters know the leader: a member demoted to stand-by or spare
                        // is not cut off for knowing none (nor judged by it any more).
                        seen_leader.store(false, std::sync::atomic::Ordering::Relaxed);
                    }
                    last_known = now.clone().or(last_known);
                    leader.send_if_modified(|current| {
                        let changed = *current != now;
                        *current = now;
                        changed
                    });
                }
                Err(_) => conn = None,
            }
        }
        activity.polled();
        if activity.is_urgent() {
            tokio::time::sleep(URGENT_LEADER_POLL).await;
        } else if activity.busy() {
            tokio::select! {
                _ = tokio::time::sleep(LEADER_POLL) => {}
                _ = activity.wake.notified() => {}
            }
        } else {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_LEADER_POLL) => {}
                _ = activity.wake.notified() => {}
            }
        }
    }
}

/// This member's own clock, as the database stores times (RFC 3339, UTC, nanoseconds). Only
/// for what no other member compares, or a member that cannot know its offset yet: anything
/// judged across members uses the cluster's time (`State`'s `clock`, see `server::clock`).
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
