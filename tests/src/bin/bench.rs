//! `make bench`: our cluster beside Debian's `dqlite-demo` (go-dqlite, same libdqlite), same
//! workloads, same machine, same run, the same HTTP client for both. Prints one table: the
//! median of each figure over the repetitions, its spread, and the ratio ours / anchor.
//!
//! Workloads: forming a cluster (bootstrap + 2 joins until 3 voters are ONLINE), sequential
//! replicated writes and sequential point reads through each side's HTTP API.
//!
//! `cargo run --release -p microcluster-tests --bin bench -- [--repeat N] [--ops N]
//! [--failover-repeat N] [--quick]`
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use microcluster_tests::{Cluster, Member, free_address, wait_until};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A keep-alive HTTP/1.1 connection (unix socket or TCP).
struct Http {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Http {
    async fn unix(path: &std::path::Path) -> Result<Http, Error> {
        let stream = tokio::net::UnixStream::connect(path).await?;
        Http::handshake(stream, "localhost").await
    }

    async fn tcp(address: &str) -> Result<Http, Error> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Http::handshake(stream, address).await
    }

    async fn handshake<S>(stream: S, host: &str) -> Result<Http, Error>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Http { sender, host: host.to_owned() })
    }

    async fn send(&mut self, method: &str, path: &str, body: &str) -> Result<(u16, Bytes), Error> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .body(Full::new(Bytes::from(body.to_owned())))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }
}

/// Latencies of one sequential run.
struct Run {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Run {
    fn p(&self, q: f64) -> f64 {
        let mut v = self.latencies.clone();
        v.sort();
        v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0
    }
    fn ops(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Sends `ops` requests one after the other; `request(i)` gives method, path and body, and
/// `ok` checks each answer (a failed request fails the benchmark).
async fn sequential(
    http: &mut Http,
    ops: usize,
    request: impl Fn(usize) -> (&'static str, String, String),
    ok: impl Fn(u16, &Bytes) -> bool,
) -> Result<Run, Error> {
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(ops);
    for i in 0..ops {
        let (method, path, body) = request(i);
        let t = Instant::now();
        let (status, answer) = http.send(method, &path, &body).await?;
        latencies.push(t.elapsed());
        if !ok(status, &answer) {
            return Err(format!("{method} {path} failed with {status}: {}", String::from_utf8_lossy(&answer)).into());
        }
    }
    Ok(Run { latencies, elapsed: start.elapsed() })
}

fn value() -> String {
    "v".repeat(100)
}

/// One repetition on our side: formation time, then the write and read runs.
async fn ours(ops: usize) -> Result<(Duration, Run, Run), Error> {
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(3)).await?;
    let formed = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        cluster.members[0].bootstrap();
        cluster.join(1, 0);
        cluster.join(2, 0);
        wait_until("3 voters ONLINE", Duration::from_secs(60), || {
            let members = cluster.members[0].members();
            let ready = members.len() == 3 && members.iter().all(|m| m["role"] == "voter" && m["status"] == "ONLINE");
            ready.then_some(())
        });
        (start.elapsed(), cluster)
    })
    .await?;
    let (formation, cluster) = formed;
    let mut http = Http::unix(&cluster.members[0].dir.join("control.socket")).await?;
    let value = value();
    let sql = |query: String| serde_json::json!({ "query": query }).to_string();
    let writes = sequential(
        &mut http,
        ops,
        |i| {
            (
                "POST",
                "/core/internal/sql".into(),
                sql(format!("INSERT OR REPLACE INTO extended_table (key, value) VALUES ('key{i}', '{value}')")),
            )
        },
        |status, _| status == 200,
    )
    .await?;
    let reads = sequential(
        &mut http,
        ops,
        |i| {
            ("POST", "/core/internal/sql".into(), sql(format!("SELECT value FROM extended_table WHERE key = 'key{i}'")))
        },
        |status, body| status == 200 && body.len() > 100,
    )
    .await?;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok((formation, writes, reads))
}

/// The `kv` example (a key/value service on the library) as a 3-member cluster: writes and
/// reads through its plain HTTP API, like dqlite-demo's.
async fn kv(ops: usize) -> Result<(Run, Run), Error> {
    let binary = microcluster_tests::binaries().dir.join("examples/kv");
    if !binary.is_file() {
        return Err(format!("{} missing: cargo build --release -p microcluster --example kv", binary.display()).into());
    }
    let apis: Vec<String> = (0..3).map(|_| free_address()).collect();
    let cluster = {
        let (binary, apis) = (binary.clone(), apis.clone());
        tokio::task::spawn_blocking(move || {
            let mut members: Vec<Member> = (1..=3).map(|i| Member::new(&format!("k{i}"))).collect();
            for (member, api) in members.iter_mut().zip(&apis) {
                member.binary = Some(binary.clone());
                member.args = vec!["--api".into(), api.clone()];
                member.start();
            }
            let cluster = Cluster { members };
            cluster.members[0].bootstrap();
            cluster.join(1, 0);
            cluster.join(2, 0);
            cluster
        })
        .await?
    };
    let mut http = Http::tcp(&apis[0]).await?;
    let value = value();
    let writes =
        sequential(&mut http, ops, |i| ("PUT", format!("/key{i}"), value.clone()), |status, _| status == 200).await?;
    let reads = sequential(
        &mut http,
        ops,
        |i| ("GET", format!("/key{i}"), String::new()),
        |status, body| status == 200 && body.len() >= 100,
    )
    .await?;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok((writes, reads))
}

/// Kills the anchor's processes even when a run fails.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn demo_voters(db: &str) -> usize {
    Command::new("dqlite")
        .args(["-s", db, "demo", ".cluster"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.ends_with("|voter")).count())
        .unwrap_or(0)
}

/// One repetition of dqlite-demo: formation from the first node's start, then the same runs.
async fn anchor(ops: usize) -> Result<(Duration, Run, Run), Error> {
    let dir = tempfile::tempdir()?;
    let nodes: Vec<(String, String)> = (0..3).map(|_| (free_address(), free_address())).collect();
    let mut procs = Processes(Vec::new());
    let spawn = |api: &str, db: &str, join: Option<&str>| -> std::io::Result<Child> {
        let mut cmd = Command::new("dqlite-demo");
        cmd.args(["--api", api, "--db", db, "--dir"]).arg(dir.path()).stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(join) = join {
            cmd.args(["--join", join]);
        }
        cmd.spawn()
    };
    let start = Instant::now();
    procs.0.push(spawn(&nodes[0].0, &nodes[0].1, None)?);
    let first_api = nodes[0].0.clone();
    wait_until("dqlite-demo's API", Duration::from_secs(30), || std::net::TcpStream::connect(&first_api).ok());
    for (api, db) in &nodes[1..] {
        procs.0.push(spawn(api, db, Some(&nodes[0].1))?);
    }
    let first_db = nodes[0].1.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("dqlite-demo's 3 voters", Duration::from_secs(60), || (demo_voters(&first_db) == 3).then_some(()))
    })
    .await?;
    let formation = start.elapsed();
    let mut http = Http::tcp(&nodes[0].0).await?;
    let value = value();
    let writes =
        sequential(&mut http, ops, |i| ("PUT", format!("/key{i}"), value.clone()), |status, _| status == 200).await?;
    let reads = sequential(
        &mut http,
        ops,
        |i| ("GET", format!("/key{i}"), String::new()),
        |status, body| status == 200 && body.len() >= 100,
    )
    .await?;
    drop(procs);
    Ok((formation, writes, reads))
}

/// A write loop for failover measurements: one request at a time, each bounded by a deadline,
/// reconnecting after any failure. Records when each write succeeded.
/// Opens the writer's connection.
type Connect = Box<dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Http, Error>> + Send>> + Send>;

struct Writer {
    connect: Connect,
    request: Box<dyn Fn(usize) -> (&'static str, String, String) + Send>,
}

impl Writer {
    /// Writes until `stop` flips, returning the instants of successful writes.
    async fn run(self, stop: tokio::sync::watch::Receiver<bool>) -> Vec<Instant> {
        let mut done = Vec::new();
        let mut http: Option<Http> = None;
        let mut i = 0;
        while !*stop.borrow() {
            i += 1;
            if http.is_none() {
                http = match tokio::time::timeout(Duration::from_secs(1), (self.connect)()).await {
                    Ok(Ok(h)) => Some(h),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
            }
            let (method, path, body) = (self.request)(i);
            let Some(h) = http.as_mut() else { continue };
            match tokio::time::timeout(Duration::from_secs(1), h.send(method, &path, &body)).await {
                Ok(Ok((200, _))) => done.push(Instant::now()),
                _ => {
                    http = None;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        done
    }
}

/// The longest pause between a writer's successful writes around `signal_at` (for SIGKILL:
/// from the last write before the crash to the first on the new leader).
fn interruption(successes: &[Instant], signal_at: Instant) -> f64 {
    let window: Vec<&Instant> = successes
        .iter()
        .filter(|t| **t + Duration::from_secs(2) > signal_at && **t < signal_at + Duration::from_secs(8))
        .collect();
    if !window.iter().any(|t| **t > signal_at) {
        return f64::NAN;
    }
    window.windows(2).map(|w| (*w[1] - *w[0]).as_secs_f64() * 1000.0).fold(0.0, f64::max)
}

/// Failover on our side: member 1 leads, a writer writes through member 2, member 1 gets
/// `signal`. Returns milliseconds (see [`interruption`]).
async fn failover_ours(signal: &'static str) -> Result<f64, Error> {
    let cluster = tokio::task::spawn_blocking(|| {
        let c = Cluster::form(3);
        c.members[0].ctl_ok(&["cluster", "transfer-leader", "m1"]);
        c
    })
    .await?;
    let socket = cluster.members[1].dir.join("control.socket");
    let writer = Writer {
        connect: Box::new(move || {
            let socket = socket.clone();
            Box::pin(async move { Http::unix(&socket).await })
        }),
        request: Box::new(|i| {
            let query = format!("INSERT INTO extended_table (key, value) VALUES ('f{i}', 'v')");
            ("POST", "/core/internal/sql".into(), serde_json::json!({ "query": query }).to_string())
        }),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(writer.run(stop_rx));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signal_at = Instant::now();
    cluster.members[0].signal(signal);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _ = stop_tx.send(true);
    let successes = task.await?;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(interruption(&successes, signal_at))
}

/// The same with dqlite-demo: node 1 bootstraps and leads, writes go through node 2's API.
async fn failover_demo(signal: &'static str) -> Result<f64, Error> {
    let dir = tempfile::tempdir()?;
    let nodes: Vec<(String, String)> = (0..3).map(|_| (free_address(), free_address())).collect();
    let mut procs = Processes(Vec::new());
    for (i, (api, db)) in nodes.iter().enumerate() {
        let mut cmd = Command::new("dqlite-demo");
        cmd.args(["--api", api, "--db", db, "--dir"]).arg(dir.path()).stdout(Stdio::null()).stderr(Stdio::null());
        if i > 0 {
            cmd.args(["--join", &nodes[0].1]);
        }
        procs.0.push(cmd.spawn()?);
        if i == 0 {
            let api = api.clone();
            wait_until("dqlite-demo's API", Duration::from_secs(30), || std::net::TcpStream::connect(&api).ok());
        }
    }
    let first_db = nodes[0].1.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("dqlite-demo's 3 voters", Duration::from_secs(60), || (demo_voters(&first_db) == 3).then_some(()))
    })
    .await?;
    let api = nodes[1].0.clone();
    let writer = Writer {
        connect: Box::new(move || {
            let api = api.clone();
            Box::pin(async move { Http::tcp(&api).await })
        }),
        request: Box::new(|i| ("PUT", format!("/f{i}"), "v".into())),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(writer.run(stop_rx));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signal_at = Instant::now();
    let pid = procs.0[0].id().to_string();
    Command::new("kill").args(["-s", signal, &pid]).status()?;
    tokio::time::sleep(Duration::from_secs(if signal == "KILL" { 8 } else { 4 })).await;
    let _ = stop_tx.send(true);
    let successes = task.await?;
    drop(procs);
    Ok(interruption(&successes, signal_at))
}

/// Median and spread of a figure over the repetitions.
fn summary(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn row(name: &str, unit: &str, ours: &[f64], anchor: &[f64]) {
    let (o, omin, omax) = summary(ours);
    let cell = |m: f64, lo: f64, hi: f64| format!("{m:.3} ({lo:.3}–{hi:.3})");
    if anchor.is_empty() {
        println!("| {name:<34} | {unit:<5} | {:<26} | {:<26} | {:>6} |", cell(o, omin, omax), "skipped", "");
        return;
    }
    let (a, amin, amax) = summary(anchor);
    println!("| {name:<34} | {unit:<5} | {:<26} | {:<26} | {:>6.2} |", cell(o, omin, omax), cell(a, amin, amax), o / a);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let quick = args.iter().any(|a| a == "--quick");
    let repeat = if quick { 1 } else { flag("--repeat", 3) };
    let ops = if quick { 50 } else { flag("--ops", 500) };
    let have_demo = Command::new("dqlite-demo").arg("--help").output().is_ok();
    if !have_demo {
        eprintln!("dqlite-demo not found: the anchor column is skipped (apt-get install go-dqlite)");
    }

    let (mut o, mut a): (Vec<[f64; 6]>, Vec<[f64; 6]>) = (Vec::new(), Vec::new());
    let mut k: Vec<[f64; 6]> = Vec::new();
    for rep in 1..=repeat {
        eprintln!("repetition {rep}/{repeat}: ours");
        let (formation, w, r) = ours(ops).await?;
        o.push([formation.as_secs_f64(), w.p(0.5), w.p(0.99), w.ops(), r.p(0.5), r.ops()]);
        eprintln!("repetition {rep}/{repeat}: kv example");
        let (w, r) = kv(ops).await?;
        k.push([f64::NAN, w.p(0.5), w.p(0.99), w.ops(), r.p(0.5), r.ops()]);
        if have_demo {
            eprintln!("repetition {rep}/{repeat}: dqlite-demo");
            let (formation, w, r) = anchor(ops).await?;
            a.push([formation.as_secs_f64(), w.p(0.5), w.p(0.99), w.ops(), r.p(0.5), r.ops()]);
        }
    }
    let col = |runs: &[[f64; 6]], i: usize| runs.iter().map(|r| r[i]).collect::<Vec<_>>();
    println!("\n{repeat} repetitions, {ops} sequential operations each; median (min–max)\n");
    println!(
        "| {:<34} | {:<5} | {:<26} | {:<26} | {:>6} |",
        "workload", "unit", "ours (microd)", "anchor (dqlite-demo)", "ratio"
    );
    println!("|{:-<36}|{:-<7}|{:-<28}|{:-<28}|{:-<8}|", "", "", "", "", "");
    let names = [
        ("bootstrap + 2 joins -> 3 voters ONLINE", "s"),
        ("sequential write p50", "ms"),
        ("sequential write p99", "ms"),
        ("sequential write throughput", "op/s"),
        ("sequential point read p50", "ms"),
        ("sequential point read throughput", "op/s"),
    ];
    for (i, (name, unit)) in names.iter().enumerate() {
        row(name, unit, &col(&o, i), &col(&a, i));
    }
    for (i, (name, unit)) in names.iter().enumerate().skip(1) {
        row(&format!("kv example: {}", name.trim_start_matches("sequential ")), unit, &col(&k, i), &col(&a, i));
    }

    let failovers = if quick { 1 } else { flag("--failover-repeat", 10) };
    if failovers > 0 {
        let mut results: Vec<(&str, Vec<f64>, Vec<f64>)> = Vec::new();
        for (label, signal) in [("SIGKILL leader: write outage", "KILL"), ("SIGTERM leader: write pause", "TERM")] {
            let (mut ours, mut anchor) = (Vec::new(), Vec::new());
            for rep in 1..=failovers {
                eprintln!("failover {signal} {rep}/{failovers}");
                ours.push(failover_ours(signal).await?);
                if have_demo {
                    anchor.push(failover_demo(signal).await?);
                }
            }
            results.push((label, ours, anchor));
        }
        println!("\nfailover, {failovers} repetitions each; median (min–max); a writer retries every 10 ms\n");
        for (label, ours, anchor) in &results {
            row(label, "ms", ours, anchor);
        }
    }
    Ok(())
}
