//! The three-member clusters compared: ours (`microd`), the `kv` example, dqlite-demo and etcd.
//! Each is started on free loopback addresses with temporary state and stopped when dropped,
//! even when a run fails. Formation is timed the same way on each side: from the first
//! bootstrap (ours) or the first process start (the others) until every member serves.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use microcluster::api::{role, status};
use microcluster_tests::{Cluster, Member, free_address, wait_until};

use crate::Error;
use crate::api::Api;
use crate::http::{Endpoint, Req};

/// `microd` arguments for benchmarks: the product defaults (heartbeat 10 s, warnings only).
pub(crate) fn bench_args() -> Vec<String> {
    Vec::new()
}

/// Kills processes even when a run fails.
#[derive(Debug, Default)]
pub(crate) struct Processes(pub(crate) Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running three-member cluster of one side.
pub(crate) struct Side {
    pub(crate) api: Api,
    /// Each member's API; the leader's first.
    pub(crate) endpoints: Vec<Endpoint>,
    /// Each member's process.
    pub(crate) pids: Vec<u32>,
    /// How long it took to form.
    pub(crate) formation: Duration,
    /// Each member's dqlite address (dqlite-demo only; in the order of `endpoints`).
    pub(crate) dqlite: Vec<String>,
    /// What stops it when dropped: the harness's `Cluster`, or `Processes` and their directory.
    guard: Box<dyn std::any::Any + Send>,
}

impl Side {
    /// Stops every process (off the async threads: killing waits).
    pub(crate) async fn stop(self) {
        let guard = self.guard;
        let _ = tokio::task::spawn_blocking(move || drop(guard)).await;
    }
}

/// Whether `members` (`cluster list --format json`) are `voters` voters, `stand_bys` stand-bys
/// and the rest spares, all ONLINE.
pub(crate) fn formed(members: &[serde_json::Value], total: usize, voters: usize, stand_bys: usize) -> bool {
    let count = |r: &str| members.iter().filter(|m| m["role"] == r).count();
    members.len() == total
        && members.iter().all(|m| m["status"] == status::ONLINE)
        && count(role::VOTER) == voters
        && count(role::STAND_BY) == stand_bys
        && count(role::SPARE) == total - voters - stand_bys
}

/// Bootstraps member 0 and joins the others through it, one after the other, until all are
/// ONLINE in their roles; returns the time that took.
pub(crate) fn form_sequentially(cluster: &Cluster) -> Duration {
    let n = cluster.members.len();
    let (voters, stand_bys) = (n.min(3), n.saturating_sub(3).min(3));
    let start = Instant::now();
    cluster.members[0].bootstrap();
    for i in 1..n {
        cluster.join(i, 0);
    }
    wait_until("every member ONLINE in its role", crate::scale::formation_limit(n), || {
        formed(&cluster.members[0].members(), n, voters, stand_bys).then_some(())
    });
    start.elapsed()
}

/// Our three members; member 1 bootstraps and leads.
pub(crate) async fn ours() -> Result<Side, Error> {
    let (cluster, formation) = tokio::task::spawn_blocking(|| {
        let cluster = Cluster::start_with(3, |m| m.args = bench_args());
        let formation = form_sequentially(&cluster);
        (cluster, formation)
    })
    .await?;
    Ok(Side {
        api: Api::Ours,
        endpoints: cluster.members.iter().map(|m| Endpoint::Unix(m.socket())).collect(),
        pids: cluster.members.iter().filter_map(Member::pid).collect(),
        formation,
        dqlite: Vec::new(),
        guard: Box::new(cluster),
    })
}

/// The `kv` example as three members, serving plain HTTP like dqlite-demo.
pub(crate) async fn kv() -> Result<Side, Error> {
    let binary = microcluster_tests::binaries().dir.join("examples/kv");
    if !binary.is_file() {
        return Err(format!("{} missing: cargo build --release -p microcluster --example kv", binary.display()).into());
    }
    let apis: Vec<String> = (0..3).map(|_| free_address()).collect();
    let (cluster, formation) = {
        let apis = apis.clone();
        tokio::task::spawn_blocking(move || {
            let mut members: Vec<Member> = (1..=3).map(|i| Member::new(&format!("k{i}"))).collect();
            for (member, api) in members.iter_mut().zip(&apis) {
                member.binary = Some(binary.clone());
                member.args = vec!["--api".into(), api.clone()];
                member.start();
            }
            let cluster = Cluster { members };
            let formation = form_sequentially(&cluster);
            (cluster, formation)
        })
        .await?
    };
    Ok(Side {
        api: Api::Kv,
        endpoints: apis.into_iter().map(Endpoint::Tcp).collect(),
        pids: cluster.members.iter().filter_map(Member::pid).collect(),
        formation,
        dqlite: Vec::new(),
        guard: Box::new(cluster),
    })
}

/// Whether a program is installed (runs at all).
pub(crate) fn installed(program: &str) -> bool {
    Command::new(program).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// go-dqlite's Debian version (the anchor's column header).
pub(crate) fn demo_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "go-dqlite"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// etcd's version (its column header).
pub(crate) fn etcd_version() -> String {
    Command::new("etcd")
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().unwrap_or_default().trim_start_matches("etcd Version:").trim().to_owned()
        })
        .unwrap_or_default()
}

fn demo_voters(db: &str) -> usize {
    Command::new("dqlite")
        .args(["-s", db, "demo", ".cluster"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.ends_with("|voter")).count())
        .unwrap_or(0)
}

/// Which of dqlite-demo's nodes leads (`dqlite .leader`), as an index into `dqlite`.
pub(crate) fn demo_leader(dqlite: &[String]) -> Option<usize> {
    let out = Command::new("dqlite").args(["-s", &dqlite.join(","), "demo", ".leader"]).output().ok()?;
    let leader = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    dqlite.iter().position(|a| *a == leader)
}

fn spawn_demo(dir: &Path, api: &str, db: &str, join: Option<&str>) -> std::io::Result<Child> {
    let mut cmd = Command::new("dqlite-demo");
    cmd.args(["--api", api, "--db", db, "--dir"]).arg(dir).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(join) = join {
        cmd.args(["--join", join]);
    }
    cmd.spawn()
}

/// dqlite-demo as three nodes (the first bootstraps and leads), formed once three voters show in
/// `dqlite .cluster`.
pub(crate) async fn demo() -> Result<Side, Error> {
    let dir = tempfile::tempdir()?;
    let nodes: Vec<(String, String)> = (0..3).map(|_| (free_address(), free_address())).collect();
    let mut procs = Processes::default();
    let start = Instant::now();
    procs.0.push(spawn_demo(dir.path(), &nodes[0].0, &nodes[0].1, None)?);
    let first_api = nodes[0].0.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("dqlite-demo's API", Duration::from_secs(30), || std::net::TcpStream::connect(&first_api).ok())
    })
    .await?;
    for (api, db) in &nodes[1..] {
        procs.0.push(spawn_demo(dir.path(), api, db, Some(&nodes[0].1))?);
    }
    let first_db = nodes[0].1.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("dqlite-demo's 3 voters", Duration::from_secs(60), || (demo_voters(&first_db) == 3).then_some(()))
    })
    .await?;
    Ok(Side {
        api: Api::Demo,
        endpoints: nodes.iter().map(|(api, _)| Endpoint::Tcp(api.clone())).collect(),
        pids: procs.0.iter().map(Child::id).collect(),
        formation: start.elapsed(),
        dqlite: nodes.into_iter().map(|(_, db)| db).collect(),
        guard: Box::new((procs, dir)),
    })
}

/// The answer of a one-shot request, or None.
async fn ask(endpoint: &Endpoint, req: &Req) -> Option<serde_json::Value> {
    let mut http = endpoint.connect().await.ok()?;
    let (status, body) = http.send(req).await.ok()?;
    (status == 200).then(|| serde_json::from_slice(&body).ok()).flatten()
}

/// etcd as three members started together (`--initial-cluster`), formed once each reports
/// itself healthy; the leader's client URL comes first. etcd fsyncs its log on every write, like
/// dqlite.
pub(crate) async fn etcd() -> Result<Side, Error> {
    let dir = tempfile::tempdir()?;
    let nodes: Vec<(String, String)> = (0..3).map(|_| (free_address(), free_address())).collect();
    let cluster: Vec<String> = nodes.iter().enumerate().map(|(i, (_, peer))| format!("e{i}=http://{peer}")).collect();
    let mut procs = Processes::default();
    let start = Instant::now();
    for (i, (client, peer)) in nodes.iter().enumerate() {
        let log = std::fs::File::create(dir.path().join(format!("e{i}.log")))?;
        let child = Command::new("etcd")
            .args(["--name", &format!("e{i}"), "--data-dir"])
            .arg(dir.path().join(format!("e{i}")))
            .args(["--listen-client-urls", &format!("http://{client}")])
            .args(["--advertise-client-urls", &format!("http://{client}")])
            .args(["--listen-peer-urls", &format!("http://{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
            .args(["--initial-cluster", &cluster.join(",")])
            .args(["--initial-cluster-state", "new", "--initial-cluster-token", "bench"])
            .args(["--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        procs.0.push(child);
    }
    let mut endpoints: Vec<Endpoint> = nodes.iter().map(|(client, _)| Endpoint::Tcp(client.clone())).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let health = Req::new("GET", "/health", bytes::Bytes::new());
    for endpoint in &endpoints {
        while ask(endpoint, &health).await.is_none_or(|h| h["health"] != "true") {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.path().join("e0.log")).unwrap_or_default();
                return Err(format!("etcd did not become healthy in 60 s; e0's log:\n{log}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let formation = start.elapsed();
    // Put the leader first: every side's single-endpoint workloads then go to its leader.
    let status = Req::new("POST", "/v3/maintenance/status", "{}");
    for i in 0..endpoints.len() {
        let answer = ask(&endpoints[i], &status).await.unwrap_or_default();
        if answer["leader"].is_string() && answer["leader"] == answer["header"]["member_id"] {
            endpoints.swap(0, i);
            break;
        }
    }
    Ok(Side {
        api: Api::Etcd,
        endpoints,
        pids: procs.0.iter().map(Child::id).collect(),
        formation,
        dqlite: Vec::new(),
        guard: Box::new((procs, dir)),
    })
}
