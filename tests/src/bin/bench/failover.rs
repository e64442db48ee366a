//! Failover: a writer writes one request at a time through a follower while the leader gets a
//! signal; the figure is the longest pause between two successful writes while the leader
//! stops (from the signal until its process has exited).

use std::process::Command;
use std::time::{Duration, Instant};

use microcluster_tests::Cluster;

use crate::Error;
use crate::api::Api;
use crate::http::{Endpoint, Http};
use crate::sides;

/// Writes through `endpoint` until `stop` flips, each request bounded by a deadline and a
/// broken connection reopened after 10 ms; returns when each successful write was answered.
async fn write_until(api: Api, endpoint: Endpoint, stop: tokio::sync::watch::Receiver<bool>) -> Vec<Instant> {
    let mut done = Vec::new();
    let mut http: Option<Http> = None;
    let mut i = 0;
    while !*stop.borrow() {
        i += 1;
        let conn = match http.as_mut() {
            Some(conn) => conn,
            None => match tokio::time::timeout(Duration::from_secs(1), endpoint.connect()).await {
                Ok(Ok(conn)) => http.insert(conn),
                _ => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let req = api.write(&format!("f{i}"));
        match tokio::time::timeout(Duration::from_secs(1), conn.send(&req)).await {
            Ok(Ok((status, body))) if api.write_ok(status, &body) => done.push(Instant::now()),
            Ok(Ok(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            _ => {
                http = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    done
}

/// The longest pause between successful writes that overlaps the leader's stop, from
/// `signal_at` until `exited_at` (for SIGKILL: from the last write before the crash to the
/// first on the new leader), in milliseconds; NaN if writes did not flow before the signal or
/// never resumed within 8 s. Only pauses overlapping the stop count: writes to a cluster of
/// three also pause now and then for tens of milliseconds without any stop (docs/performance.md,
/// "SIGTERM: the pause is the handover"), and a window of seconds would report those.
fn interruption(successes: &[Instant], signal_at: Instant, exited_at: Instant) -> f64 {
    let window: Vec<&Instant> = successes
        .iter()
        .filter(|t| **t + Duration::from_secs(2) > signal_at && **t < signal_at + Duration::from_secs(8))
        .collect();
    // Writes must have flowed before the signal and resumed after it.
    if !window.iter().any(|t| **t > signal_at) || !window.iter().any(|t| **t < signal_at) {
        return f64::NAN;
    }
    window
        .windows(2)
        .filter(|w| *w[1] > signal_at && *w[0] < exited_at)
        .map(|w| (*w[1] - *w[0]).as_secs_f64() * 1000.0)
        .fold(0.0, f64::max)
}

/// Whether process `pid` has exited (gone, or a zombie not reaped yet).
fn exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_or(true, |stat| stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')))
}

/// Runs the writer through `endpoint`, signals process `pid` with `signal` after 500 ms, stops
/// `after` later.
async fn measure(api: Api, endpoint: Endpoint, after: Duration, pid: u32, signal: &str) -> f64 {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(write_until(api, endpoint, stop_rx));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signal_at = Instant::now();
    let _ = Command::new("kill").args(["-s", signal, &pid.to_string()]).status();
    let mut exited_at = signal_at + after;
    while Instant::now() < signal_at + after {
        if exited(pid) {
            exited_at = Instant::now();
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep_until((signal_at + after).into()).await;
    let _ = stop_tx.send(true);
    task.await.map_or(f64::NAN, |successes| interruption(&successes, signal_at, exited_at))
}

/// Ours: member 1 leads, the writer writes through member 2's control socket, member 1 gets
/// `signal` (`KILL` or `TERM`).
pub(crate) async fn ours(signal: &'static str) -> Result<f64, Error> {
    let cluster = tokio::task::spawn_blocking(|| {
        // MFLAGS: extra microd flags, as for the scripts beside (e.g. "--network-latency 30ms").
        let flags: Vec<String> =
            std::env::var("MFLAGS").unwrap_or_default().split_whitespace().map(String::from).collect();
        let c = Cluster::start_with(3, |m| m.args.extend(flags.iter().cloned()));
        c.members[0].bootstrap();
        for i in 1..3 {
            c.join(i, 0);
        }
        c.members[0].ctl_ok(&["cluster", "transfer-leader", "m1"]);
        c
    })
    .await?;
    let endpoint = Endpoint::Unix(cluster.members[1].socket());
    let pid = cluster.members[0].pid().ok_or("member 1 is not running")?;
    let result = measure(Api::Ours, endpoint, Duration::from_secs(5), pid, signal).await;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(result)
}

/// dqlite-demo: the writer writes through a node that does not lead, and the leader (asked
/// with `dqlite .leader`: go-dqlite may hand leadership on while nodes join) gets `signal`.
pub(crate) async fn demo(signal: &'static str) -> Result<f64, Error> {
    let side = sides::demo().await?;
    let dqlite = side.dqlite.clone();
    let Some(leader) = tokio::task::spawn_blocking(move || sides::demo_leader(&dqlite)).await? else {
        side.stop().await;
        return Err("dqlite .leader names none of dqlite-demo's nodes".into());
    };
    let pid = side.pids[leader];
    let writer = side.endpoints[(leader + 1) % side.endpoints.len()].clone();
    let after = Duration::from_secs(if signal == "KILL" { 8 } else { 4 });
    let result = measure(Api::Demo, writer, after, pid, signal).await;
    side.stop().await;
    Ok(result)
}
