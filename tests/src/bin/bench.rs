//! `make bench-cluster`: our cluster beside Debian's `dqlite-demo` (go-dqlite, same libdqlite)
//! and etcd, same workloads, same machine, same run, the same HTTP client for every side. Prints
//! one table: the median of each figure over the repetitions, its spread, the ratio ours /
//! dqlite-demo, and the target of issue 7 with whether it is met. Numbers are never asserted.
//!
//! Workloads on three-member clusters: formation, idle memory and CPU, sequential writes and
//! point reads, 4 and 16 concurrent writers and 16 concurrent readers for a fixed time (errors
//! counted apart), each through the side's HTTP API. Then sixteen members on one machine
//! (formation, idle CPU) and failover (SIGKILL / SIGTERM of the leader under a writer).
//!
//! `bench [--repeat N] [--ops N] [--duration SECS] [--idle SECS] [--settle SECS] [--scale-idle SECS]
//! [--scale-repeat N] [--failover-repeat N] [--only cluster,scale,failover,scale256] [--quick] [--alone]`
//! (`--alone`: ours only, no anchors, for A/B runs; `MFLAGS` adds microd flags to failover's members)
//!
//! `bench drive --socket PATH|--tcp IP:PORT [--api ours|ours-weak|kv|demo|etcd] --op write|read [--ops N]
//! [--workers N] [--think-ms MS] [--pid PID]` drives an already running member (for profiling, see
//! docs/performance.md) and prints what each request cost that process; `bench layers CALLGRIND_OUT REQUESTS` splits a callgrind profile
//! of such a run by layer (`bench/profile.sh` does both).
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

#[path = "bench/api.rs"]
mod api;
#[path = "bench/failover.rs"]
mod failover;
#[path = "bench/http.rs"]
mod http;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/procfs.rs"]
mod procfs;
#[path = "bench/profile.rs"]
mod profile;
#[path = "bench/scale.rs"]
mod scale;
#[path = "bench/sides.rs"]
mod sides;
#[path = "bench/table.rs"]
mod table;

use std::collections::HashMap;
use std::time::Duration;

use api::Api;
use http::Endpoint;
use load::{Stats, Until, Workload};
use procfs::CpuMeter;
use sides::Side;
use table::{Row, Target};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The heartbeat of the concurrent-join run (the fastest the test harness uses).
const CONCURRENT_HEARTBEAT: &str = "1s";

/// What to run, from the command line.
#[derive(Debug)]
struct Config {
    repeat: usize,
    ops: usize,
    duration: Duration,
    idle: Duration,
    /// Quiet time after the workloads before the second memory reading.
    settle: Duration,
    scale_idle: Duration,
    scale_repeat: usize,
    failovers: usize,
    sections: Vec<String>,
    /// Ours alone, without dqlite-demo and etcd (for A/B runs of one change).
    alone: bool,
}

/// The value of `--name`, parsed, or `default`.
fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

impl Config {
    fn parse(args: &[String]) -> Config {
        let quick = args.iter().any(|a| a == "--quick");
        let secs = |name, full: f64, quick_value: f64| {
            Duration::from_secs_f64(flag(args, name, if quick { quick_value } else { full }))
        };
        let repeat = flag(args, "--repeat", if quick { 1 } else { 3 });
        Config {
            repeat,
            ops: flag(args, "--ops", if quick { 100 } else { 500 }),
            duration: secs("--duration", 5.0, 2.0),
            idle: secs("--idle", 20.0, 3.0),
            settle: secs("--settle", 15.0, 12.0),
            scale_idle: secs("--scale-idle", 30.0, 5.0),
            scale_repeat: flag(args, "--scale-repeat", repeat),
            failovers: flag(args, "--failover-repeat", if quick { 1 } else { 10 }),
            sections: flag(args, "--only", "cluster,scale,failover".to_owned()).split(',').map(str::to_owned).collect(),
            alone: args.iter().any(|a| a == "--alone"),
        }
    }

    fn runs(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

/// One side's figures in one repetition, by name.
type Figures = HashMap<String, f64>;

fn write_workload(api: Api, tag: &'static str) -> Workload {
    Workload {
        request: Box::new(move |w, i| api.write(&format!("{tag}{w}-{i}"))),
        ok: Box::new(move |status, body| api.write_ok(status, body)),
        think: Duration::ZERO,
    }
}

/// Reads of the keys the sequential writes stored.
fn read_workload(api: Api, keys: usize) -> Workload {
    Workload {
        request: Box::new(move |w, i| api.read(&format!("s0-{}", (w * 7919 + i) % keys))),
        ok: Box::new(move |status, body| api.read_ok(status, body)),
        think: Duration::ZERO,
    }
}

/// Records a timed run's throughput, errors, latencies and the server CPU per success.
fn record(figures: &mut Figures, prefix: &str, stats: &Stats, cpu: Duration) {
    let key = |name: &str| format!("{prefix}_{name}");
    figures.insert(key("rate"), stats.rate());
    figures.insert(key("errors"), stats.errors as f64);
    figures.insert(key("error_pct"), stats.error_percent());
    figures.insert(key("p50"), stats.p(0.5));
    figures.insert(key("p99"), stats.p(0.99));
    figures.insert(key("cpu_us"), cpu.as_secs_f64() * 1e6 / stats.latencies.len().max(1) as f64);
    if let Some(err) = &stats.first_error {
        eprintln!("  {prefix}: {} errors; first: {err}", stats.errors);
    }
}

fn median_rss(pids: &[u32]) -> f64 {
    procfs::median(&mut pids.iter().filter_map(|p| procfs::rss_mib(*p)).collect::<Vec<_>>())
}

fn median_pss(pids: &[u32]) -> f64 {
    procfs::median(&mut pids.iter().filter_map(|p| procfs::pss_mib(*p)).collect::<Vec<_>>())
}

/// A side's memory now: median RSS and PSS of its members, as `{name}` and `{name}_pss`.
fn record_memory(f: &mut Figures, name: &str, pids: &[u32]) {
    f.insert(name.into(), median_rss(pids));
    f.insert(format!("{name}_pss"), median_pss(pids));
}

/// Every workload on one formed side. `full`: also idle figures and every concurrent run.
async fn measure(side: &Side, cfg: &Config, full: bool) -> Result<Figures, Error> {
    let mut f = Figures::new();
    let api = side.api;
    f.insert("formation".into(), side.formation.as_secs_f64());
    if full {
        // Let formation's after-effects (role changes, first heartbeats) pass first.
        tokio::time::sleep(Duration::from_secs(2)).await;
        record_memory(&mut f, "rss_idle", &side.pids);
        let meter = CpuMeter::start(&side.pids);
        tokio::time::sleep(cfg.idle).await;
        f.insert("cpu_idle".into(), meter.percent_of_core());
    }
    let leader = &side.endpoints[..1];
    let seq = |workload| load::run(leader, 1, Until::Count(cfg.ops), workload);
    let writes = seq(write_workload(api, "s")).await?;
    if let Some(err) = writes.first_error {
        return Err(format!("{api:?}: sequential writes failed: {err}").into());
    }
    f.insert("seq_write_p50".into(), writes.p(0.5));
    f.insert("seq_write_p99".into(), writes.p(0.99));
    f.insert("seq_write_rate".into(), writes.rate());
    let reads = seq(read_workload(api, cfg.ops)).await?;
    if let Some(err) = reads.first_error {
        return Err(format!("{api:?}: sequential reads failed: {err}").into());
    }
    f.insert("seq_read_p50".into(), reads.p(0.5));
    f.insert("seq_read_rate".into(), reads.rate());
    if api == Api::Ours {
        // The same reads without confirming the leader with the voters (dqlite-demo's guarantee).
        let weak = seq(read_workload(Api::OursWeak, cfg.ops)).await?;
        f.insert("seq_read_weak_p50".into(), weak.p(0.5));
        f.insert("seq_read_weak_rate".into(), weak.rate());
    }
    let mut runs: Vec<(&str, usize, &[Endpoint], &'static str)> = vec![("w16", 16, leader, "c")];
    if full {
        runs.insert(0, ("w4", 4, leader, "b"));
        if api == Api::Ours {
            runs.push(("w16x3", 16, &side.endpoints, "d"));
        }
    }
    for (prefix, workers, endpoints, tag) in runs {
        let meter = CpuMeter::start(&side.pids);
        let stats = load::run(endpoints, workers, Until::Elapsed(cfg.duration), write_workload(api, tag)).await?;
        record(&mut f, prefix, &stats, meter.used());
    }
    if full {
        let meter = CpuMeter::start(&side.pids);
        let stats = load::run(leader, 16, Until::Elapsed(cfg.duration), read_workload(api, cfg.ops)).await?;
        record(&mut f, "r16", &stats, meter.used());
        record_memory(&mut f, "rss_loaded", &side.pids);
        // What each side still holds once quiet: our members give back what their node freed
        // after 5-10 s of quiet; whatever the other sides give back meanwhile counts too.
        tokio::time::sleep(cfg.settle).await;
        record_memory(&mut f, "rss_settled", &side.pids);
    }
    Ok(f)
}

/// Starts a side, measures it, stops it.
async fn repetition<F>(name: &str, start: impl FnOnce() -> F, cfg: &Config, full: bool) -> Result<Figures, Error>
where
    F: std::future::Future<Output = Result<Side, Error>>,
{
    eprintln!("{name}: forming");
    let side = start().await?;
    eprintln!("{name}: measuring");
    let result = measure(&side, cfg, full).await;
    side.stop().await;
    result
}

/// The figures of every repetition of one side.
#[derive(Debug, Default)]
struct Series(Vec<Figures>);

impl Series {
    fn get(&self, key: &str) -> Vec<f64> {
        self.0.iter().filter_map(|f| f.get(key).copied()).collect()
    }
}

/// A row from the three-member figures.
fn row(name: &str, unit: &'static str, key: &str, sides: &[&Series; 3], target: Option<Target>) -> Row {
    Row {
        name: name.to_owned(),
        unit,
        ours: sides[0].get(key),
        anchor: sides[1].get(key),
        etcd: sides[2].get(key),
        target,
    }
}

/// `bench drive`: requests against a running member (or another side's API), with what they
/// cost its process.
async fn drive(args: &[String]) -> Result<(), Error> {
    let socket: String = flag(args, "--socket", String::new());
    let tcp: String = flag(args, "--tcp", String::new());
    let endpoint = match (socket.is_empty(), tcp.is_empty()) {
        (false, true) => Endpoint::Unix(socket.into()),
        (true, false) => Endpoint::Tcp(tcp),
        _ => return Err("bench drive needs --socket PATH (a member's control.socket) or --tcp IP:PORT".into()),
    };
    let api = match flag(args, "--api", "ours".to_owned()).as_str() {
        "ours" => Api::Ours,
        "ours-weak" => Api::OursWeak,
        "kv" => Api::Kv,
        "demo" => Api::Demo,
        "etcd" => Api::Etcd,
        other => return Err(format!("--api {other}: use ours, ours-weak, kv, demo or etcd").into()),
    };
    let op: String = flag(args, "--op", "write".to_owned());
    let (ops, workers) = (flag(args, "--ops", 1000usize), flag(args, "--workers", 1usize).max(1));
    let pid: Option<u32> = args.iter().position(|a| a == "--pid").and_then(|i| args.get(i + 1)?.parse().ok());
    let mut workload = match op.as_str() {
        "write" => write_workload(api, "s"),
        "read" => read_workload(api, ops / workers),
        other => return Err(format!("--op {other}: use write or read").into()),
    };
    workload.think = Duration::from_millis(flag(args, "--think-ms", 0u64));
    let before = pid.map(|p| (procfs::context_switches(p), procfs::cpu_time(p).unwrap_or_default()));
    let stats = load::run(&[endpoint], workers, Until::Count(ops / workers), workload).await?;
    let done = stats.latencies.len();
    println!(
        "{op}: {done} ok, {} errors, {:.0}/s, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        stats.errors,
        stats.rate(),
        stats.p(0.5),
        stats.p(0.99),
        stats.p(1.0)
    );
    if let (Some(p), Some((switches, cpu))) = (pid, before) {
        let per = |v: f64| v / done.max(1) as f64;
        println!(
            "pid {p}: {:.1} context switches and {:.0} µs CPU per request",
            per((procfs::context_switches(p) - switches) as f64),
            per((procfs::cpu_time(p).unwrap_or_default().saturating_sub(cpu)).as_secs_f64() * 1e6)
        );
    }
    if let Some(err) = stats.first_error {
        eprintln!("first error: {err}");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("drive") => return drive(&args).await,
        Some("layers") => {
            let file = args.get(2).ok_or("usage: bench layers CALLGRIND_OUT REQUESTS")?;
            return profile::layers(file, args.get(3).and_then(|n| n.parse().ok()).unwrap_or(1));
        }
        _ => {}
    }
    let cfg = Config::parse(&args);
    let have_demo = !cfg.alone && sides::installed("dqlite-demo") && sides::installed("dqlite");
    if !have_demo && !cfg.alone {
        eprintln!("dqlite-demo or dqlite not found: the anchor column is skipped (apt-get install go-dqlite)");
    }
    let have_etcd = !cfg.alone && sides::installed("etcd");
    if !have_etcd && !cfg.alone {
        eprintln!("etcd not found: the etcd column is skipped (apt-get install etcd-server etcd-client)");
    }
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let (mut ours, mut kv, mut demo, mut etcd) =
        (Series::default(), Series::default(), Series::default(), Series::default());
    let mut rows: Vec<Row> = Vec::new();
    if cfg.runs("cluster") {
        for rep in 1..=cfg.repeat {
            eprintln!("repetition {rep}/{}", cfg.repeat);
            ours.0.push(repetition("ours", sides::ours, &cfg, true).await?);
            kv.0.push(repetition("kv example", sides::kv, &cfg, false).await?);
            if have_demo {
                demo.0.push(repetition("dqlite-demo", sides::demo, &cfg, true).await?);
            }
            if have_etcd {
                etcd.0.push(repetition("etcd", sides::etcd, &cfg, true).await?);
            }
        }
        let s = [&ours, &demo, &etcd];
        let w = |n| format!("{n} writers, {} s: successful writes", cfg.duration.as_secs_f64());
        rows.extend([
            row("bootstrap + 2 joins -> 3 voters ONLINE", "s", "formation", &s, Some(Target::AtMost(1.0))),
            row("idle member RSS (median of 3)", "MiB", "rss_idle", &s, Some(Target::RatioAtMost(0.6))),
            row("idle member PSS (median of 3)", "MiB", "rss_idle_pss", &s, None),
            row("idle CPU, whole 3-member cluster", "% core", "cpu_idle", &s, Some(Target::AtMost(0.5))),
            row(
                "sequential write p50",
                "ms",
                "seq_write_p50",
                &s,
                Some(Target::All(&[Target::RatioAtMost(0.8), Target::EtcdAtMost(1.0)])),
            ),
            row("sequential write p99", "ms", "seq_write_p99", &s, None),
            row("sequential writes", "op/s", "seq_write_rate", &s, Some(Target::EtcdAtLeast(1.0))),
            row("sequential point read p50", "ms", "seq_read_p50", &s, None),
            row("sequential point reads", "op/s", "seq_read_rate", &s, Some(Target::RatioAtLeast(1.5))),
            row("sequential point read p50, weak reads", "ms", "seq_read_weak_p50", &s, None),
            row("sequential point reads, weak reads", "op/s", "seq_read_weak_rate", &s, None),
            row(&w(4), "op/s", "w4_rate", &s, None),
            row("4 writers: failed requests", "%", "w4_error_pct", &s, None),
            row("4 writers: p50", "ms", "w4_p50", &s, None),
            row(
                &w(16),
                "op/s",
                "w16_rate",
                &s,
                Some(Target::All(&[Target::RatioAtLeast(10.0), Target::EtcdAtLeast(1.5)])),
            ),
            row("16 writers: failed requests", "count", "w16_errors", &s, Some(Target::Zero)),
            row("16 writers: failed requests", "%", "w16_error_pct", &s, None),
            row("16 writers: p50", "ms", "w16_p50", &s, None),
            row("16 writers: p99", "ms", "w16_p99", &s, Some(Target::EtcdAtMost(1.0))),
            row("16 writers: server CPU per successful write", "µs", "w16_cpu_us", &s, None),
            row("16 writers spread over 3 members (ours)", "op/s", "w16x3_rate", &s, None),
            row("16 writers over 3 members: failed", "count", "w16x3_errors", &s, None),
            row("16 writers over 3 members: p50", "ms", "w16x3_p50", &s, None),
            row("16 readers: point reads", "op/s", "r16_rate", &s, Some(Target::RatioAtLeast(1.5))),
            row("16 readers: p50", "ms", "r16_p50", &s, None),
            row("16 readers: server CPU per read", "µs", "r16_cpu_us", &s, None),
            row("member RSS after the workloads", "MiB", "rss_loaded", &s, Some(Target::RatioAtMost(1.0))),
            row("member PSS after the workloads", "MiB", "rss_loaded_pss", &s, None),
            row(
                &format!("member RSS {} s later", cfg.settle.as_secs_f64()),
                "MiB",
                "rss_settled",
                &s,
                Some(Target::RatioAtMost(0.8)),
            ),
            row(&format!("member PSS {} s later", cfg.settle.as_secs_f64()), "MiB", "rss_settled_pss", &s, None),
        ]);
        let k = [&kv, &demo, &etcd];
        rows.extend([
            row("kv example: sequential write p50", "ms", "seq_write_p50", &k, None),
            row("kv example: sequential point read p50", "ms", "seq_read_p50", &k, None),
            row("kv example: sequential point reads", "op/s", "seq_read_rate", &k, None),
            row(&format!("kv example: {}", w(16)), "op/s", "w16_rate", &k, None),
            row("kv example: 16 writers: failed", "count", "w16_errors", &k, None),
            row("kv example: 16 writers: p50", "ms", "w16_p50", &k, None),
        ]);
    }
    if cfg.runs("scale") {
        // Sequential joins need no heartbeat (each joiner takes the role the cluster lacks), so
        // they run with the product's default; concurrent joins rely on the heartbeat to correct
        // roles, so they run with the fastest heartbeat the harness uses.
        let (mut seq, mut conc) = (Vec::new(), Vec::new());
        for rep in 1..=cfg.scale_repeat {
            eprintln!("16 members {rep}/{}: sequential joins, default heartbeat", cfg.scale_repeat);
            seq.push(scale::run(scale::MEMBERS, false, None, Duration::from_secs(3), cfg.scale_idle).await?);
            eprintln!("16 members {rep}/{}: concurrent joins, --heartbeat {CONCURRENT_HEARTBEAT}", cfg.scale_repeat);
            match scale::run(scale::MEMBERS, true, Some(CONCURRENT_HEARTBEAT), Duration::from_secs(3), cfg.scale_idle)
                .await
            {
                Ok(figures) => conc.push(figures),
                Err(err) => eprintln!("  concurrent joins: {err}"),
            }
        }
        let only_ours = |name: String, unit, values: Vec<f64>, target| Row {
            name,
            unit,
            ours: values,
            anchor: Vec::new(),
            etcd: Vec::new(),
            target,
        };
        let n = scale::MEMBERS;
        let of = |figures: &[scale::Figures], pick: fn(&scale::Figures) -> f64| figures.iter().map(pick).collect();
        rows.extend([
            only_ours(
                format!("{n} members, sequential joins -> 3/3/10 ONLINE"),
                "s",
                of(&seq, |f| f.formation),
                Some(Target::AtMost(10.0)),
            ),
            only_ours(
                format!("{n} members idle: CPU of the whole cluster"),
                "% core",
                of(&seq, |f| f.idle_cpu),
                Some(Target::Below(5.0)),
            ),
            only_ours(format!("{n} members idle: member RSS (median)"), "MiB", of(&seq, |f| f.rss), None),
            only_ours(
                format!("{n} members, concurrent joins (heartbeat {CONCURRENT_HEARTBEAT}) -> 3/3/10 ONLINE"),
                "s",
                of(&conc, |f| f.formation),
                Some(Target::AtMost(10.0)),
            ),
            only_ours(
                format!("{n} members idle, heartbeat {CONCURRENT_HEARTBEAT}: CPU of the whole cluster"),
                "% core",
                of(&conc, |f| f.idle_cpu),
                None,
            ),
        ]);
    }
    if cfg.runs("scale256") {
        // Once: 256 daemons take about 10 GiB and several minutes on a small machine.
        let n = scale::MANY;
        eprintln!("{n} members: sequential joins, default heartbeat");
        let seq = scale::run(n, false, None, Duration::from_secs(10), cfg.scale_idle).await?;
        // At the default heartbeat: at 1 s, every round while members join sends each of
        // hundreds of members the whole (changed) list.
        eprintln!("{n} members: concurrent joins, default heartbeat");
        let conc = match scale::run(n, true, None, Duration::from_secs(10), cfg.scale_idle).await {
            Ok(figures) => vec![figures.formation],
            Err(err) => {
                eprintln!("  concurrent joins: {err}");
                Vec::new()
            }
        };
        let one = |name: String, unit, value: Vec<f64>, target| Row {
            name,
            unit,
            ours: value,
            anchor: Vec::new(),
            etcd: Vec::new(),
            target,
        };
        rows.extend([
            one(
                format!("{n} members, sequential joins -> 3/3/{} ONLINE", n - 6),
                "s",
                vec![seq.formation],
                Some(Target::AtMost(120.0)),
            ),
            one(format!("{n} members: cluster list"), "s", vec![seq.list], Some(Target::AtMost(1.0))),
            one(format!("{n} members: a join token"), "bytes", vec![seq.token], None),
            one(
                format!("{n} members idle: CPU of the whole cluster"),
                "% core",
                vec![seq.idle_cpu],
                Some(Target::Below(25.0)),
            ),
            one(format!("{n} members idle: member RSS (median)"), "MiB", vec![seq.rss], None),
            one(
                format!("{n} members, concurrent joins -> 3/3/{} ONLINE", n - 6),
                "s",
                conc,
                Some(Target::AtMost(120.0)),
            ),
        ]);
    }
    if cfg.runs("failover") && cfg.failovers > 0 {
        for (label, signal) in [("SIGKILL leader: write outage", "KILL"), ("SIGTERM leader: write pause", "TERM")] {
            let (mut o, mut a) = (Vec::new(), Vec::new());
            for rep in 1..=cfg.failovers {
                eprintln!("failover {signal} {rep}/{}", cfg.failovers);
                o.push(failover::ours(signal).await?);
                if have_demo {
                    a.push(failover::demo(signal).await?);
                }
            }
            // SIGKILL: a median of 1 s and no round over 1.5 s. SIGTERM: no longer than the
            // demo's pause.
            let target = match signal {
                "KILL" => Target::All(&[Target::AtMost(1000.0), Target::WorstAtMost(1500.0)]),
                _ => Target::RatioAtMost(1.0),
            };
            rows.push(Row {
                name: label.to_owned(),
                unit: "ms",
                ours: o,
                anchor: a,
                etcd: Vec::new(),
                target: Some(target),
            });
        }
    }

    let anchor =
        if have_demo { format!("dqlite-demo (go-dqlite {})", sides::demo_version()) } else { "dqlite-demo".into() };
    let etcd_name = if have_etcd { format!("etcd {}", sides::etcd_version()) } else { "etcd (not installed)".into() };
    println!(
        "\n{} repetitions ({} for 16 members, {} for failover); {} sequential operations, concurrent runs of {} s, \
         idle windows of {} s (16 members: {} s); median (min–max). ratio = ours / dqlite-demo.",
        cfg.repeat,
        cfg.scale_repeat,
        cfg.failovers,
        cfg.ops,
        cfg.duration.as_secs_f64(),
        cfg.idle.as_secs_f64(),
        cfg.scale_idle.as_secs_f64()
    );
    println!(
        "load average before: {}; after: {}\n",
        load_before.trim(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    println!("{}", table::render(&rows, &anchor, &etcd_name));
    Ok(())
}
