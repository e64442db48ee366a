//! `make bench-engine`: our client against go-dqlite's `dqlite-benchmark` (same libdqlite), same
//! workload, same machine, same run. Both drive nodes over TCP loopback from the process of
//! the bootstrap node (ours leads; Go's may have handed leadership to another node when its
//! bootstrap node restarted as the driver), with every node a voter before the clock starts: `kvwrite` (INSERT OR REPLACE of a 32-byte key and a 1 KiB value) and
//! `kvreadwrite` (half point reads of written keys, half writes), one worker, on 1 and 3 nodes.
//! Prints medians over the repetitions with their spread, and the ratio ours / Go.
//!
//! `cargo bench -p dqlite --bench engine -- [--duration SECS] [--repeat N] [--nodes 1,3] [--quick]`
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dqlite::{BOOTSTRAP_ID, Client, Node, Role, Value};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Per-operation latencies (ms) of one kind of operation in one run.
#[derive(Default, Clone)]
struct Ops(Vec<f64>);

impl Ops {
    fn percentile(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * q) as usize]
    }
}

/// What one run measured: (ops/s, p50 ms, p99 ms) for writes and reads.
#[derive(Clone, Copy, Default)]
struct Figures {
    write: [f64; 3],
    read: [f64; 3],
}

fn figures(writes: &Ops, reads: &Ops, seconds: f64) -> Figures {
    let f = |o: &Ops| [o.0.len() as f64 / seconds, o.percentile(0.5), o.percentile(0.99)];
    Figures { write: f(writes), read: f(reads) }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn letters(&mut self, n: usize) -> String {
        const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        (0..n).map(|_| LETTERS[(self.next() % LETTERS.len() as u64) as usize] as char).collect()
    }
    /// Like go-dqlite's benchmark: half one repeated letter, half random letters.
    fn value(&mut self) -> String {
        let c = self.letters(1);
        c.repeat(512) + &self.letters(512)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Follower nodes run in processes of their own, as go-dqlite's do (this binary re-executed
/// with `--node ID ADDRESS DIR`), so the two sides share the machine the same way.
fn host_node(args: &[String]) -> Result<(), Error> {
    let (id, address, dir) = (args[0].parse::<u64>()?, &args[1], &args[2]);
    let mut node = Node::new(id, address.clone(), dir)?;
    node.start()?;
    println!("ready");
    let mut line = String::new();
    while std::io::stdin().read_line(&mut line)? > 0 {}
    node.stop()?;
    Ok(())
}

fn spawn_node(id: u64, address: &str, dir: &Path) -> Result<Child, Error> {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--node")
        .arg(id.to_string())
        .arg(address)
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut ready)?;
    if ready.trim() != "ready" {
        return Err(format!("node {address} did not start").into());
    }
    Ok(child)
}

async fn ours(nodes: usize, readwrite: bool, duration: Duration) -> Result<Figures, Error> {
    let dir = tempfile::tempdir()?;
    let addresses: Vec<String> = (0..nodes).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut followers = Processes(Vec::new());
    let mut leader = Node::new(BOOTSTRAP_ID, addresses[0].clone(), dir.path().join("0"))?;
    leader.start()?;
    let mut ids = Vec::new();
    for (i, address) in addresses.iter().enumerate().skip(1) {
        let id = dqlite::generate_id(address);
        followers.0.push(spawn_node(id, address, &dir.path().join(i.to_string()))?);
        ids.push((id, address.clone()));
    }
    let client = Client::new(addresses.clone());
    for (id, address) in &ids {
        client.add(*id, address).await?;
        client.assign(*id, Role::Voter).await?;
    }
    let mut conn = client.connect_leader().await?;
    conn.open("bench").await?;
    conn.exec_sql("CREATE TABLE IF NOT EXISTS model (key TEXT, value TEXT, UNIQUE(key))", &[]).await?;
    let insert = conn.prepare("INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)").await?;
    let select = conn.prepare("SELECT value FROM model WHERE key = ?").await?;
    let (mut writes, mut reads, mut keys) = (Ops::default(), Ops::default(), Vec::new());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let start = Instant::now();
    while start.elapsed() < duration {
        if readwrite && !keys.is_empty() && rng.next().is_multiple_of(2) {
            let key: &String = &keys[(rng.next() % keys.len() as u64) as usize];
            let t = Instant::now();
            let rows = conn.query(&select, &[Value::Text(key.clone())]).await?.collect().await?;
            reads.0.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(rows.rows.len(), 1);
        } else {
            let (key, value) = (rng.letters(32), rng.value());
            let t = Instant::now();
            conn.exec(&insert, &[Value::Text(key.clone()), Value::Text(value)]).await?;
            writes.0.push(t.elapsed().as_secs_f64() * 1000.0);
            keys.push(key);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(conn);
    drop(followers);
    tokio::task::spawn_blocking(move || drop(leader)).await?;
    Ok(figures(&writes, &reads, seconds))
}

/// Kills the Go processes even when a run fails.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_results(dir: &Path, kind: &str) -> Result<Ops, Error> {
    let mut ops = Ops::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        if !name.contains(&format!("-{kind}-")) {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let mut measuring = false;
        for line in text.lines() {
            if line.starts_with("measurements") {
                measuring = true;
            } else if measuring && let Some(Ok(ms)) = line.split_whitespace().nth(1).map(str::parse::<f64>) {
                ops.0.push(ms);
            }
        }
    }
    Ok(ops)
}

fn go(runtime: &tokio::runtime::Runtime, nodes: usize, readwrite: bool, duration: Duration) -> Result<Figures, Error> {
    let dir = tempfile::tempdir()?;
    let addresses: Vec<String> = (0..nodes).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let workload = if readwrite { "kvreadwrite" } else { "kvwrite" };
    let secs = duration.as_secs().max(1).to_string();
    let spawn = |address: &str, extra: &[&str]| {
        Command::new("dqlite-benchmark")
            .args(["--db", address])
            .args(extra)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    let mut procs = Processes(Vec::new());
    let cluster = addresses.join(",");
    let driver_args = [
        "--driver",
        "--cluster",
        &cluster,
        "--workload",
        workload,
        "--workers",
        "1",
        "--duration",
        &secs,
        "--cluster-timeout",
        "60",
    ];
    if nodes > 1 {
        // dqlite-benchmark's driver starts timing once every node answers, while the joiners are
        // still spares (measured: one voter for the first second, three after two). So the
        // cluster forms first, without a driver; once all are voters the bootstrap node is
        // killed and restarted, from its data, as the driver.
        procs.0.push(spawn(&addresses[0], &[])?);
        for address in &addresses[1..] {
            procs.0.push(spawn(address, &["--join", &addresses[0]])?);
        }
        runtime.block_on(wait_for_voters(&addresses))?;
        let _ = procs.0[0].kill();
        let _ = procs.0[0].wait();
        procs.0[0] = spawn(&addresses[0], &driver_args)?;
    } else {
        procs.0.push(spawn(&addresses[0], &driver_args)?);
    }
    let deadline = Instant::now() + duration + Duration::from_secs(90);
    loop {
        if let Some(status) = procs.0[0].try_wait()? {
            if !status.success() {
                return Err(format!("dqlite-benchmark failed: {status}").into());
            }
            break;
        }
        if Instant::now() > deadline {
            return Err("dqlite-benchmark did not finish in time".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let results = dir.path().join(&addresses[0]).join("results");
    let figures = figures(&read_results(&results, "exec")?, &read_results(&results, "query")?, duration.as_secs_f64());
    drop(procs);
    Ok(figures)
}

/// Waits (up to a minute) until every one of `addresses` is a voter.
async fn wait_for_voters(addresses: &[String]) -> Result<(), Error> {
    let client = Client::new(addresses.to_vec());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(nodes) = client.cluster().await {
            let voters = nodes.iter().filter(|n| n.role == Some(Role::Voter)).count();
            if voters == addresses.len() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("go-dqlite's nodes did not all become voters within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Chooses the write or the read figures of a run.
type Pick = fn(&Figures) -> [f64; 3];

fn summary(values: &[f64]) -> String {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    format!("{:.3} ({:.3}–{:.3})", v[v.len() / 2], v[0], v[v.len() - 1])
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--node") {
        return host_node(&args[i + 1..]);
    }
    // `cargo test --all-targets` runs bench binaries without `--bench`: nothing to test here.
    if !args.iter().any(|a| a == "--bench") {
        eprintln!("engine benchmark: run it with `make bench-engine` (cargo bench -p dqlite --bench engine)");
        return Ok(());
    }
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let quick = args.iter().any(|a| a == "--quick");
    let duration =
        Duration::from_secs(if quick { 1 } else { value("--duration").and_then(|v| v.parse().ok()).unwrap_or(5) });
    let repeat: usize = if quick { 1 } else { value("--repeat").and_then(|v| v.parse().ok()).unwrap_or(3) };
    let node_counts: Vec<usize> =
        value("--nodes").map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect()).unwrap_or_else(|| vec![1, 3]);
    let have_go = Command::new("dqlite-benchmark").arg("--help").output().is_ok();
    if !have_go {
        eprintln!("dqlite-benchmark not found: the Go column is skipped (apt-get install go-dqlite)");
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    println!("{repeat} runs of {duration:?} per row, 1 worker; median (min–max) over runs\n");
    println!(
        "| {:<6} | {:<18} | {:<5} | {:<28} | {:<28} | {:>6} |",
        "nodes", "workload / op", "unit", "ours (Rust client)", "go-dqlite (dqlite-benchmark)", "ratio"
    );
    println!("|{:-<8}|{:-<20}|{:-<7}|{:-<30}|{:-<30}|{:-<8}|", "", "", "", "", "", "");
    for &nodes in &node_counts {
        for readwrite in [false, true] {
            let (mut o, mut g) = (Vec::new(), Vec::new());
            for run in 1..=repeat {
                eprintln!("{nodes} node(s), {}, run {run}/{repeat}", if readwrite { "kvreadwrite" } else { "kvwrite" });
                o.push(runtime.block_on(ours(nodes, readwrite, duration))?);
                if have_go {
                    g.push(go(&runtime, nodes, readwrite, duration)?);
                }
            }
            let ops: &[(&str, Pick)] = if readwrite {
                &[("kvreadwrite write", |f| f.write), ("kvreadwrite read", |f| f.read)]
            } else {
                &[("kvwrite write", |f| f.write)]
            };
            for (label, pick) in ops {
                for (i, unit) in ["op/s", "p50 ms", "p99 ms"].iter().enumerate() {
                    let ours: Vec<f64> = o.iter().map(|f| pick(f)[i]).collect();
                    let theirs: Vec<f64> = g.iter().map(|f| pick(f)[i]).collect();
                    let ratio = median(&ours) / median(&theirs);
                    println!(
                        "| {nodes:<6} | {label:<18} | {unit:<5} | {:<28} | {:<28} | {:>6} |",
                        summary(&ours),
                        summary(&theirs),
                        if ratio.is_finite() { format!("{ratio:.2}") } else { "-".into() }
                    );
                }
            }
        }
    }
    println!("\nratio = ours / Go: above 1 is better for op/s, below 1 is better for latency.");
    Ok(())
}
