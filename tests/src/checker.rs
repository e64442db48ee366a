//! The fault suite's checker: writers insert unique, increasing values through different
//! members and record which inserts were acknowledged; afterwards every acknowledged value must
//! be present exactly once and no value may appear twice.
//!
//! A write that failed or timed out is "unknown" (it may have been committed): it may be
//! present or absent, but never twice. Writers never retry a value, so any duplicate is the
//! system's doing.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One HTTP/1.1 request over a unix socket; returns the status and the body.
pub fn unix_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {response:.200}")))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// Runs SQL through a member's socket; the JSON response body on success.
pub fn sql(socket: &Path, query: &str) -> Result<serde_json::Value, String> {
    let body = serde_json::json!({ "query": query }).to_string();
    let (status, text) = unix_request(socket, "POST", "/core/internal/sql", &body, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text:.200}"))?;
    if status != 200 {
        return Err(format!("HTTP {status}: {}", value["error"]));
    }
    Ok(value)
}

/// What the writers did.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Acknowledged values, per writer.
    pub acknowledged: BTreeMap<u64, BTreeSet<u64>>,
    /// Values whose outcome is unknown (error or timeout), per writer.
    pub unknown: BTreeMap<u64, BTreeSet<u64>>,
    /// The last value each writer tried.
    pub attempted: BTreeMap<u64, u64>,
    /// Why writes failed, and how often.
    pub failures: BTreeMap<String, usize>,
    /// When each writer's last write was acknowledged.
    pub last_acknowledged: BTreeMap<u64, std::time::Instant>,
    /// The longest time a writer waited between two of its acknowledged writes, since the
    /// writers started or [`Checker::measure_pauses`] was last called.
    pub longest_pause: Duration,
}

impl History {
    /// Acknowledged writes in all.
    pub fn acknowledged_count(&self) -> usize {
        self.acknowledged.values().map(BTreeSet::len).sum()
    }

    /// Writes with an unknown outcome in all.
    pub fn unknown_count(&self) -> usize {
        self.unknown.values().map(BTreeSet::len).sum()
    }
}

/// Running writers.
#[derive(Debug)]
pub struct Checker {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    threads: Vec<JoinHandle<()>>,
}

/// Creates the checker's table (no unique constraint: duplicates must be possible to detect).
pub fn create_table(socket: &Path) -> Result<(), String> {
    sql(socket, "CREATE TABLE IF NOT EXISTS checker (writer INTEGER NOT NULL, seq INTEGER NOT NULL)").map(drop)
}

impl Checker {
    /// Starts one writer per socket; writer `w` writes through socket `w` and moves to the next
    /// member's socket after a failure, so writes keep flowing while members die.
    pub fn start(sockets: Vec<PathBuf>) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let history = Arc::new(Mutex::new(History::default()));
        let sockets = Arc::new(sockets);
        let threads = (0..sockets.len())
            .map(|w| {
                let (stop, history, sockets) = (stop.clone(), history.clone(), sockets.clone());
                std::thread::spawn(move || write_loop(w as u64, &sockets, &stop, &history))
            })
            .collect();
        Checker { stop, history, threads }
    }

    /// What has happened so far.
    pub fn history(&self) -> History {
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Acknowledged writes so far.
    pub fn acknowledged(&self) -> usize {
        self.history().acknowledged_count()
    }

    /// Waits until `more` further writes were acknowledged (writes flow again), panicking after
    /// `timeout`; returns how long that took.
    pub fn writes_flow(&self, more: usize, timeout: Duration) -> Duration {
        let start = std::time::Instant::now();
        let base = self.acknowledged();
        crate::wait_until(&format!("{more} more acknowledged writes"), timeout, || {
            (self.acknowledged() >= base + more).then_some(())
        });
        start.elapsed()
    }

    /// Measures the longest pause between a writer's acknowledged writes from now on.
    pub fn measure_pauses(&self) {
        if let Ok(mut h) = self.history.lock() {
            h.longest_pause = Duration::ZERO;
        }
    }

    /// The longest any writer waited between two of its acknowledged writes since
    /// [`Checker::measure_pauses`], the time since each one's last acknowledgement included.
    pub fn longest_pause(&self) -> Duration {
        let h = self.history();
        let since_last = h.last_acknowledged.values().map(|t| t.elapsed()).max().unwrap_or_default();
        h.longest_pause.max(since_last)
    }

    /// Stops the writers and returns what they did.
    pub fn stop(self) -> History {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            let _ = thread.join();
        }
        self.history.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

fn write_loop(writer: u64, sockets: &[PathBuf], stop: &AtomicBool, history: &Mutex<History>) {
    let mut seq = 0u64;
    let mut target = writer as usize;
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        let socket = &sockets[target % sockets.len()];
        let query = format!("INSERT INTO checker (writer, seq) VALUES ({writer}, {seq})");
        let body = serde_json::json!({ "query": query }).to_string();
        let outcome = unix_request(socket, "POST", "/core/internal/sql", &body, Duration::from_secs(5));
        let Ok(mut h) = history.lock() else { return };
        h.attempted.insert(writer, seq);
        match outcome {
            Ok((200, _)) => {
                h.acknowledged.entry(writer).or_default().insert(seq);
                let now = std::time::Instant::now();
                if let Some(last) = h.last_acknowledged.insert(writer, now) {
                    h.longest_pause = h.longest_pause.max(now.duration_since(last));
                }
            }
            other => {
                let why = match other {
                    Ok((status, body)) => {
                        let message = serde_json::from_str::<serde_json::Value>(&body)
                            .ok()
                            .and_then(|v| v["error"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        format!("HTTP {status}: {:.80}", message)
                    }
                    Err(err) => format!("{:?}", err.kind()),
                };
                *h.failures.entry(why).or_default() += 1;
                h.unknown.entry(writer).or_default().insert(seq);
                drop(h);
                target += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// What the database holds, per writer.
fn stored(socket: &Path) -> Result<BTreeMap<u64, Vec<u64>>, String> {
    let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let (mut last_writer, mut last_seq) = (-1i64, -1i64);
    loop {
        let page = sql(
            socket,
            &format!(
                "SELECT writer, seq FROM checker WHERE (writer, seq) > ({last_writer}, {last_seq}) \
                 ORDER BY writer, seq LIMIT 20000"
            ),
        )?;
        let rows = page["metadata"]["Results"][0]["rows"].as_array().cloned().unwrap_or_default();
        if rows.is_empty() {
            return Ok(out);
        }
        for row in &rows {
            let (w, s) = (row[0].as_i64().unwrap_or(-1), row[1].as_i64().unwrap_or(-1));
            out.entry(w as u64).or_default().push(s as u64);
            (last_writer, last_seq) = (w, s);
        }
    }
}

/// Checks the database against the history: every acknowledged value present exactly once,
/// no value twice, and (once the writers stopped, `finished`) no value that was never
/// attempted. While writers still run, pass a history taken before calling this. Returns a
/// summary.
pub fn verify(socket: &Path, history: &History, finished: bool) -> Result<String, String> {
    // Duplicates are counted by SQL, so none hides at a page boundary.
    let dups =
        sql(socket, "SELECT writer, seq, count(*) FROM checker GROUP BY writer, seq HAVING count(*) > 1 LIMIT 10")?;
    let dups = dups["metadata"]["Results"][0]["rows"].as_array().cloned().unwrap_or_default();
    if !dups.is_empty() {
        return Err(format!("values stored more than once (writer, seq, count): {dups:?}"));
    }
    let stored = stored(socket)?;
    let mut problems = Vec::new();
    for (writer, acked) in &history.acknowledged {
        let present: BTreeSet<u64> = stored.get(writer).map(|v| v.iter().copied().collect()).unwrap_or_default();
        let missing: Vec<&u64> = acked.iter().filter(|s| !present.contains(s)).take(10).collect();
        if !missing.is_empty() {
            problems.push(format!("writer {writer}: acknowledged but missing {missing:?}"));
        }
    }
    for (writer, values) in stored.iter().filter(|_| finished) {
        let last = history.attempted.get(writer).copied().unwrap_or(0);
        let foreign: Vec<&u64> = values.iter().filter(|s| **s > last || **s == 0).take(10).collect();
        if !foreign.is_empty() {
            problems.push(format!("writer {writer}: values never written {foreign:?}"));
        }
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    let rows: usize = stored.values().map(Vec::len).sum();
    Ok(format!(
        "{} acknowledged writes all present once; {} unknown outcomes; {rows} rows",
        history.acknowledged_count(),
        history.unknown_count()
    ))
}
