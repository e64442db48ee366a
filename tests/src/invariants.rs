//! Jepsen-style workloads whose invariants any history must keep, whatever faults strike:
//!
//! - [`Bank`]: transfers between accounts, each one SQL text (one transaction), through every
//!   member; readers sum the balances through every member. Every read, and the final sum, must
//!   equal the starting total: a lost, half-applied or doubled transfer, or a read of a state
//!   that never existed, shows as a wrong sum.
//! - [`ReadYourWrites`]: a writer inserts a row through one member and, as soon as the insert is
//!   acknowledged, reads it through every other member: each read must find it (a failed read
//!   claims nothing; a read that answers without the row is a stale read).
//!
//! Both record violations instead of panicking, so a test can prove they can fail.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::checker::unix_request;

/// A request's deadline: long enough for an election, short enough to notice a hang.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs SQL through a member; the response body, or why it failed.
fn sql(socket: &std::path::Path, query: &str) -> Result<serde_json::Value, String> {
    let body = serde_json::json!({ "query": query }).to_string();
    let (status, text) =
        unix_request(socket, "POST", "/core/internal/sql", &body, TIMEOUT).map_err(|e| format!("{:?}", e.kind()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text:.200}"))?;
    if status != 200 {
        return Err(format!("HTTP {status}: {}", value["error"]));
    }
    Ok(value)
}

/// The first row of result `index` of a batch.
fn first_row(value: &serde_json::Value, index: usize) -> Option<&Vec<serde_json::Value>> {
    value["metadata"]["Results"][index]["rows"][0].as_array()
}

/// What a workload saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Operations that succeeded (transfers or writes acknowledged).
    pub acknowledged: u64,
    /// Reads that answered.
    pub reads: u64,
    /// Operations and reads that failed (allowed: they claim nothing).
    pub failed: u64,
    /// Invariant violations, described.
    pub violations: Vec<String>,
}

#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    acknowledged: AtomicU64,
    reads: AtomicU64,
    failed: AtomicU64,
    violations: Mutex<Vec<String>>,
}

impl Shared {
    fn violation(&self, what: String) {
        if let Ok(mut v) = self.violations.lock() {
            v.push(what);
        }
    }

    fn report(&self) -> Report {
        Report {
            acknowledged: self.acknowledged.load(Ordering::SeqCst),
            reads: self.reads.load(Ordering::SeqCst),
            failed: self.failed.load(Ordering::SeqCst),
            violations: self.violations.lock().map(|v| v.clone()).unwrap_or_default(),
        }
    }
}

/// Workers that run until stopped.
#[derive(Debug)]
struct Workers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    fn stop(self) -> Report {
        self.shared.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            let _ = thread.join();
        }
        self.shared.report()
    }
}

/// The bank workload.
#[derive(Debug)]
pub struct Bank {
    workers: Workers,
    sockets: Vec<PathBuf>,
    /// The sum every read must find.
    pub total: i64,
    accounts: i64,
}

impl Bank {
    /// Creates `accounts` accounts of 100 each (through `sockets[0]`), then starts one transfer
    /// worker and one reader per socket.
    pub fn start(sockets: Vec<PathBuf>, accounts: i64) -> Result<Bank, String> {
        let values: Vec<String> = (1..=accounts).map(|id| format!("({id}, 100)")).collect();
        sql(
            &sockets[0],
            &format!(
                "CREATE TABLE bank (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL); INSERT INTO bank VALUES {}",
                values.join(", ")
            ),
        )?;
        let total = accounts * 100;
        let shared = Arc::new(Shared::default());
        let mut threads = Vec::new();
        for (i, socket) in sockets.iter().enumerate() {
            let (shared, socket) = (shared.clone(), socket.clone());
            threads.push(std::thread::spawn(move || transfer_loop(i as u64, &socket, accounts, &shared)));
        }
        for socket in &sockets {
            let (shared, socket) = (shared.clone(), socket.clone());
            threads.push(std::thread::spawn(move || read_loop(&socket, total, accounts, &shared)));
        }
        Ok(Bank { workers: Workers { shared, threads }, sockets, total, accounts })
    }

    /// Transfers acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.workers.shared.acknowledged.load(Ordering::SeqCst)
    }

    /// Stops the workers, then sums the balances through every member (waiting through an
    /// election) and adds any wrong final sum to the violations.
    pub fn stop(self) -> Report {
        let (sockets, total, accounts) = (self.sockets.clone(), self.total, self.accounts);
        let mut report = self.workers.stop();
        for socket in &sockets {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                match read_sum(socket) {
                    Ok(sum) => {
                        if let Some(wrong) = wrong_sum(sum, total, accounts) {
                            report.violations.push(format!("final sum through {}: {wrong}", socket.display()));
                        }
                        break;
                    }
                    Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                    Err(err) => {
                        report.violations.push(format!("no final sum through {}: {err}", socket.display()));
                        break;
                    }
                }
            }
        }
        report
    }
}

/// The sum and count of the balances as one read sees them.
fn read_sum(socket: &std::path::Path) -> Result<(i64, i64), String> {
    let value = sql(socket, "SELECT SUM(balance), COUNT(*) FROM bank")?;
    let row = first_row(&value, 0).ok_or_else(|| format!("no row in {value}"))?;
    Ok((row[0].as_i64().unwrap_or(i64::MIN), row[1].as_i64().unwrap_or(-1)))
}

fn wrong_sum((sum, count): (i64, i64), total: i64, accounts: i64) -> Option<String> {
    (sum != total || count != accounts)
        .then(|| format!("{count} accounts holding {sum}, expected {accounts} holding {total}"))
}

fn transfer_loop(worker: u64, socket: &std::path::Path, accounts: i64, shared: &Shared) {
    let mut n = worker.wrapping_mul(7919);
    while !shared.stop.load(Ordering::SeqCst) {
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let from = (n >> 33) as i64 % accounts + 1;
        let to = (n >> 13) as i64 % accounts + 1;
        let amount = (n >> 3) as i64 % 20 + 1;
        if from == to {
            continue;
        }
        // One text: the endpoint runs its statements in one transaction.
        let text = format!(
            "UPDATE bank SET balance = balance - {amount} WHERE id = {from}; \
             UPDATE bank SET balance = balance + {amount} WHERE id = {to}"
        );
        match sql(socket, &text) {
            Ok(_) => shared.acknowledged.fetch_add(1, Ordering::SeqCst),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                shared.failed.fetch_add(1, Ordering::SeqCst)
            }
        };
    }
}

fn read_loop(socket: &std::path::Path, total: i64, accounts: i64, shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        match read_sum(socket) {
            Ok(sum) => {
                shared.reads.fetch_add(1, Ordering::SeqCst);
                if let Some(wrong) = wrong_sum(sum, total, accounts) {
                    shared.violation(format!("read through {}: {wrong}", socket.display()));
                }
            }
            Err(_) => {
                shared.failed.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The read-your-writes workload.
#[derive(Debug)]
pub struct ReadYourWrites {
    workers: Workers,
}

impl ReadYourWrites {
    /// Creates its table, then starts one writer per socket: writer `w` writes through socket
    /// `w` and reads each acknowledged row back through every other socket at once.
    pub fn start(sockets: Vec<PathBuf>) -> Result<ReadYourWrites, String> {
        sql(&sockets[0], "CREATE TABLE ryw (writer INTEGER NOT NULL, seq INTEGER NOT NULL)")?;
        let shared = Arc::new(Shared::default());
        let sockets = Arc::new(sockets);
        let threads = (0..sockets.len())
            .map(|w| {
                let (shared, sockets) = (shared.clone(), sockets.clone());
                std::thread::spawn(move || ryw_loop(w, &sockets, &shared))
            })
            .collect();
        Ok(ReadYourWrites { workers: Workers { shared, threads } })
    }

    /// Writes acknowledged (and read back) so far.
    pub fn acknowledged(&self) -> u64 {
        self.workers.shared.acknowledged.load(Ordering::SeqCst)
    }

    /// Stops the writers.
    pub fn stop(self) -> Report {
        self.workers.stop()
    }

    /// A hook for proving the checker: runs `tamper(writer, seq)` after each acknowledged write
    /// of writer 0 and before it is read back (see the test that deletes the row there).
    pub fn start_tampering(
        sockets: Vec<PathBuf>,
        tamper: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> Result<ReadYourWrites, String> {
        sql(&sockets[0], "CREATE TABLE ryw (writer INTEGER NOT NULL, seq INTEGER NOT NULL)")?;
        let shared = Arc::new(Shared::default());
        let sockets = Arc::new(sockets);
        let tamper: Arc<dyn Fn(u64, u64) + Send + Sync> = Arc::new(tamper);
        let threads = vec![{
            let (shared, sockets, tamper) = (shared.clone(), sockets.clone(), tamper.clone());
            std::thread::spawn(move || ryw_loop_with(0, &sockets, &shared, Some(&*tamper)))
        }];
        Ok(ReadYourWrites { workers: Workers { shared, threads } })
    }
}

fn ryw_loop(writer: usize, sockets: &[PathBuf], shared: &Shared) {
    ryw_loop_with(writer, sockets, shared, None);
}

fn ryw_loop_with(
    writer: usize,
    sockets: &[PathBuf],
    shared: &Shared,
    tamper: Option<&(dyn Fn(u64, u64) + Send + Sync)>,
) {
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        seq += 1;
        let via = &sockets[writer % sockets.len()];
        if sql(via, &format!("INSERT INTO ryw VALUES ({writer}, {seq})")).is_err() {
            shared.failed.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        shared.acknowledged.fetch_add(1, Ordering::SeqCst);
        if let Some(tamper) = tamper {
            tamper(writer as u64, seq);
        }
        // Read back through every other member at once, right after the acknowledgement.
        let query = format!("SELECT COUNT(*) FROM ryw WHERE writer = {writer} AND seq = {seq}");
        let reads: Vec<_> = sockets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != writer % sockets.len() || sockets.len() == 1)
            .map(|(_, socket)| {
                let (socket, query) = (socket.clone(), query.clone());
                std::thread::spawn(move || (socket.clone(), sql(&socket, &query)))
            })
            .collect();
        for read in reads {
            let Ok((socket, answer)) = read.join() else { continue };
            match answer {
                Ok(value) => {
                    shared.reads.fetch_add(1, Ordering::SeqCst);
                    let count = first_row(&value, 0).and_then(|r| r[0].as_i64());
                    if count != Some(1) {
                        shared.violation(format!(
                            "writer {writer}'s acknowledged row {seq} read through {} as {count:?}",
                            socket.display()
                        ));
                    }
                }
                Err(_) => {
                    shared.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}
