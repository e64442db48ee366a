//! Resource limits against real members: thousands of idle connections, strangers that finish
//! their TLS handshake and then say nothing, clients that trickle their headers, and bodies
//! declared too large. The member under attack keeps serving its cluster and its operator, and
//! closes what it should within its timeouts. Durations are asserted only as generous upper
//! bounds; the figures are printed for docs/reliability.md.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use microcluster::tls;
use microcluster_tests::{Cluster, Member, checker, wait_until};

/// The header timeout the members of the timing tests run with (`--http-header-timeout`).
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Their keep-alive idle timeout (`--http-idle-timeout`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// A process's soft and hard limits on open files, from `/proc/PID/limits`.
fn nofile(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut fields = line.split_whitespace().skip(3);
    let mut value = || fields.next().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
    (value(), value())
}

/// Makes sure this test process may open `wanted` files (the tests crate forbids unsafe code,
/// so `prlimit(1)` does it). Returns the soft limit in force afterwards.
fn allow_own_files(wanted: u64) -> u64 {
    let me = std::process::id();
    let (soft, hard) = nofile(me);
    if soft < wanted {
        let target = if hard >= wanted { format!("--nofile={wanted}:") } else { format!("--nofile={wanted}:{wanted}") };
        let _ = Command::new("prlimit").args(["--pid", &me.to_string(), &target]).status();
    }
    nofile(me).0
}

/// A script that runs `microd` with the given open-file limits (`prlimit` execs it, so the
/// member's pid is the daemon's).
fn limited_microd(dir: &Path, soft: u64, hard: u64) -> PathBuf {
    let script = dir.join(format!("microd-nofile-{soft}-{hard}"));
    let microd = microcluster_tests::binaries().microd.display().to_string();
    std::fs::write(&script, format!("#!/bin/sh\nexec prlimit --nofile={soft}:{hard} {microd} \"$@\"\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Whether the peer closed a connection we never wrote to (or reset it).
fn closed_by_peer(stream: &mut impl Read) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(_) => true,
    }
}

/// What a flood of idle connections saw.
#[derive(Debug, Default)]
struct FloodStats {
    /// Connections opened (including reopened ones).
    opened: AtomicUsize,
    /// Connections the member closed.
    closed: AtomicUsize,
    /// Connections that could not be opened.
    failed: AtomicUsize,
}

/// Keeps `tcp_n` idle TCP connections (no TLS handshake) to `address` and `unix_n` idle ones
/// to `socket` open until `stop`, reopening those the member closes.
fn flood(address: String, socket: PathBuf, tcp_n: usize, unix_n: usize, stop: Arc<AtomicBool>, stats: Arc<FloodStats>) {
    let address: std::net::SocketAddr = address.parse().unwrap();
    let mut tcp: Vec<Option<TcpStream>> = (0..tcp_n).map(|_| None).collect();
    let mut unix: Vec<Option<UnixStream>> = (0..unix_n).map(|_| None).collect();
    while !stop.load(Ordering::SeqCst) {
        for slot in tcp.iter_mut() {
            if let Some(stream) = slot
                && closed_by_peer(stream)
            {
                stats.closed.fetch_add(1, Ordering::Relaxed);
                *slot = None;
            }
            if slot.is_none() {
                match TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
                    Ok(stream) => {
                        stream.set_nonblocking(true).unwrap();
                        stats.opened.fetch_add(1, Ordering::Relaxed);
                        *slot = Some(stream);
                    }
                    Err(_) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
        }
        for slot in unix.iter_mut() {
            if let Some(stream) = slot
                && closed_by_peer(stream)
            {
                stats.closed.fetch_add(1, Ordering::Relaxed);
                *slot = None;
            }
            if slot.is_none() {
                match UnixStream::connect(&socket) {
                    Ok(stream) => {
                        stream.set_nonblocking(true).unwrap();
                        stats.opened.fetch_add(1, Ordering::Relaxed);
                        *slot = Some(stream);
                    }
                    Err(_) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `f` and returns its result with how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let value = f();
    (value, started.elapsed())
}

/// Lines of `text` that report running out of file descriptors.
fn emfile_lines(text: &str) -> usize {
    text.lines().filter(|l| l.contains("Too many open files") || l.contains("os error 24")).count()
}

#[test]
fn a_member_at_1024_files_survives_thousands_of_idle_connections() {
    assert!(allow_own_files(8192) >= 4200, "this test needs 4200 open files");
    let scripts = tempfile::tempdir().unwrap();
    // m3 runs with the 1024 files systemd gives a unit without LimitNOFILE (soft and hard,
    // so raising its soft limit at start changes nothing).
    let limited = limited_microd(scripts.path(), 1024, 1024);
    let cluster = Cluster::start_with(3, |m| {
        if m.name == "m3" {
            m.binary = Some(limited.clone());
        }
    });
    cluster.members[0].bootstrap();
    cluster.join(1, 0);
    cluster.join(2, 0);
    let (m1, m2, m3) = (&cluster.members[0], &cluster.members[1], &cluster.members[2]);
    assert_eq!(nofile(m3.pid().unwrap()), (1024, 1024));
    checker::sql(&m1.socket(), "CREATE TABLE t (x)").unwrap();
    wait_until("m3 online as m1 sees it", Duration::from_secs(30), || {
        (m1.member("m3")["status"] == "ONLINE").then_some(())
    });
    let log_before = m3.log().lines().count();

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(FloodStats::default());
    let flooder = std::thread::spawn({
        let (address, socket, stop, stats) = (m3.address.clone(), m3.socket(), stop.clone(), stats.clone());
        move || flood(address, socket, 3000, 500, stop, stats)
    });
    // Let the first round of connections land.
    wait_until("the flood's first round", Duration::from_secs(60), || {
        (stats.opened.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed) >= 3500).then_some(())
    });

    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let (mut rounds, mut most_files, mut missed_looks) = (0, 0, 0);
    let open_files = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0);
    while started.elapsed() < Duration::from_secs(12) {
        rounds += 1;
        most_files = most_files.max(open_files(m3.pid().unwrap()));
        // A look may fail alone: the strangers' share tells a member's fresh connection from a
        // stranger's only by what it sent, and can close one before its hello arrived (the known
        // gap in docs/reliability.md). Two in a row would be an outage.
        let (mut view, took) = timed(|| m1.member("m3"));
        worst = worst.max(took);
        if view["status"] != "ONLINE" {
            missed_looks += 1;
            eprintln!("m3 as m1 sees it during the flood, one look: {}", view["status_reason"]);
            view = m1.member("m3");
        }
        assert_eq!(view["status"], "ONLINE", "m3 as m1 sees it during the flood, twice in a row: {view}");
        let (list, took) = timed(|| m3.ctl(&["cluster", "list", "--format", "json"]));
        worst = worst.max(took);
        assert!(list.success, "cluster list through m3: {}", list.stderr);
        for (who, member) in [("m3", m3), ("m2", m2), ("m1", m1)] {
            let (write, took) =
                timed(|| checker::sql(&member.socket(), &format!("INSERT INTO t VALUES ('{who} {rounds}')")));
            worst = worst.max(took);
            write.unwrap_or_else(|e| panic!("write through {who} during the flood: {e}"));
        }
        let (read, took) = timed(|| checker::sql(&m3.socket(), "SELECT count(*) FROM t"));
        worst = worst.max(took);
        let rows = read.unwrap_or_else(|e| panic!("read through m3 during the flood: {e}"));
        assert_eq!(rows["metadata"]["Results"][0]["rows"], serde_json::json!([[rounds * 3]]));
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::SeqCst);
    flooder.join().unwrap();

    let log = m3.log();
    let added = log.lines().count().saturating_sub(log_before);
    eprintln!(
        "flood of 3000 TCP + 500 control-socket idle connections on m3 (1024 files): {} opened, {} closed by m3, \
         {} failed to open; m3 held at most {most_files} descriptors; {rounds} rounds of checks, slowest call \
         {worst:?}; {missed_looks} single looks at m3 failed; {added} log lines added",
        stats.opened.load(Ordering::Relaxed),
        stats.closed.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
    );
    assert!(missed_looks * 10 <= rounds, "{missed_looks} of {rounds} looks at m3 failed");
    // The caps at 1024 files (288 per TCP listener, 96 on the socket) leave room for the rest.
    assert!(most_files < 900, "m3 held {most_files} descriptors of its 1024");
    // Heartbeats kept coming: m3 is still online a few rounds later, seen from m2 too.
    assert_eq!(m2.member("m3")["status"], "ONLINE");
    assert!(emfile_lines(&log) <= 3, "m3's log reports running out of descriptors:\n{log:.4000}");
    let evicted = m3.metric("microcluster_http_connections_closed_total{reason=\"evicted\"}");
    assert!(evicted > 0, "m3 counted no connection closed to make room");
    assert_eq!(m3.metric("microcluster_http_accept_errors_total"), 0);
    assert!(added < 2000, "m3 logged {added} lines during the flood");
}

#[test]
fn microd_raises_its_soft_file_limit_to_the_hard_one() {
    let scripts = tempfile::tempdir().unwrap();
    let mut m1 = Member::new("m1");
    m1.binary = Some(limited_microd(scripts.path(), 1024, 4096));
    m1.start();
    assert_eq!(nofile(m1.pid().unwrap()), (4096, 4096));
}

#[test]
fn the_unit_gives_microd_enough_files() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/microd.service")).unwrap();
    let limit = unit.lines().find_map(|l| l.strip_prefix("LimitNOFILE=")).expect("LimitNOFILE= in the unit");
    let soft = limit.split(':').next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    assert!(soft >= 65536, "LimitNOFILE={limit}: systemd's default soft limit of 1024 is what this replaces");
}

/// A TLS client without a certificate, pinned to the cluster's certificate.
fn stranger_tls(cluster_dir: &Path) -> tokio_rustls::TlsConnector {
    let cluster_cert = std::fs::read_to_string(cluster_dir.join("cluster.crt")).unwrap();
    let config = tls::client_config(None, vec![tls::fingerprint_pem(&cluster_cert).unwrap()]).unwrap();
    tokio_rustls::TlsConnector::from(config)
}

/// Members with short header and idle timeouts.
fn quick_timeouts(member: &mut Member) {
    member.args.extend([
        "--http-header-timeout".into(),
        format!("{}s", HEADER_TIMEOUT.as_secs()),
        "--http-idle-timeout".into(),
        format!("{}s", IDLE_TIMEOUT.as_secs()),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_that_finish_the_handshake_and_wait_are_closed_while_members_work() {
    use tokio::io::AsyncReadExt;
    assert!(allow_own_files(4096) >= 2048, "this test needs 2048 open files");
    let scripts = tempfile::tempdir().unwrap();
    // The leader has systemd's default 1024 files: 1000 strangers would take most of them.
    let limited = limited_microd(scripts.path(), 1024, 1024);
    let cluster = tokio::task::spawn_blocking(move || {
        let cluster = Cluster::start_with(3, |m| {
            quick_timeouts(m);
            if m.name == "m1" {
                m.binary = Some(limited.clone());
            }
        });
        cluster.members[0].bootstrap();
        cluster.join(1, 0);
        cluster.join(2, 0);
        checker::sql(&cluster.members[0].socket(), "CREATE TABLE t (x)").unwrap();
        cluster
    })
    .await
    .unwrap();
    let cluster = Arc::new(cluster);
    let m1 = &cluster.members[0];
    let connector = stranger_tls(&m1.dir);
    let server_name = tls::server_name(&m1.address);

    // 1000 strangers handshake with the leader (64 at a time) and then say nothing; each
    // notes how long after its handshake the member closed it (at once when the strangers'
    // share of 72 is full and it is the oldest waiting, else at the header timeout).
    let started = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(64));
    let mut strangers = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let (connector, server_name, address, limit) =
            (connector.clone(), server_name.clone(), m1.address.clone(), limit.clone());
        strangers.spawn(async move {
            let permit = limit.acquire_owned().await.unwrap();
            let tcp = tokio::net::TcpStream::connect(&address).await.ok()?;
            let mut stream = connector.connect(server_name, tcp).await.ok()?;
            drop(permit);
            let handshaken = Instant::now();
            let mut buf = [0u8; 64];
            // Whatever the member does, this stranger gives up after a minute.
            let _ = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut buf)).await;
            Some(handshaken.elapsed())
        });
    }

    // Meanwhile the members write through the leader, and see each other.
    let members = cluster.clone();
    let work = tokio::task::spawn_blocking(move || {
        let mut round = 0;
        let mut worst = Duration::ZERO;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            round += 1;
            for member in &members.members[1..] {
                let (write, took) =
                    timed(|| checker::sql(&member.socket(), &format!("INSERT INTO t VALUES ({round})")));
                worst = worst.max(took);
                write.unwrap_or_else(|e| panic!("write through {} during the handshakes: {e}", member.name));
            }
            let (view, took) = timed(|| members.members[2].member("m1"));
            worst = worst.max(took);
            assert_eq!(view["status"], "ONLINE", "m1 as m3 sees it: {view}");
            std::thread::sleep(Duration::from_millis(200));
        }
        (round, worst)
    });

    let (mut handshaken, mut longest) = (0, Duration::ZERO);
    while let Some(result) = strangers.join_next().await {
        if let Some(held) = result.unwrap() {
            handshaken += 1;
            longest = longest.max(held);
        }
    }
    let (rounds, worst) = work.await.unwrap();
    let open_files = std::fs::read_dir(format!("/proc/{}/fd", cluster.members[0].pid().unwrap())).unwrap().count();
    assert_eq!(emfile_lines(&cluster.members[0].log()), 0, "m1 ran out of descriptors");
    eprintln!(
        "{handshaken} strangers handshook with m1 (1024 files) in {:?}; the longest was held {longest:?} after its \
         handshake; {rounds} rounds of member writes, slowest {worst:?}; m1 holds {open_files} descriptors after",
        started.elapsed()
    );
    assert!(handshaken >= 900, "only {handshaken} of 1000 strangers completed their handshake");
    assert!(
        longest < HEADER_TIMEOUT + Duration::from_secs(20),
        "a stranger that sent nothing was held {longest:?} (header timeout {HEADER_TIMEOUT:?})"
    );
}

/// Sends `head` one byte every 250 ms until the member closes the connection; returns how long
/// that took and how many bytes went out.
fn trickle(stream: &mut (impl Read + Write), head: &[u8]) -> (Duration, usize) {
    let started = Instant::now();
    let mut sent = 0;
    for byte in head.iter().cycle() {
        if stream.write_all(&[*byte]).is_err() || closed_by_peer(stream) {
            break;
        }
        sent += 1;
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    (started.elapsed(), sent)
}

#[test]
fn slow_and_idle_clients_are_closed_after_their_timeouts() {
    let mut m1 = Member::new("m1");
    quick_timeouts(&mut m1);
    m1.start().bootstrap();
    let head = b"GET /core/1.0 HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let bound = HEADER_TIMEOUT + Duration::from_secs(10);

    // Slowloris on the control socket.
    let mut unix = UnixStream::connect(m1.socket()).unwrap();
    unix.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let (took, sent) = trickle(&mut unix, head);
    eprintln!("control socket: a client trickling its headers was closed after {took:?} ({sent} bytes)");
    assert!(took < bound, "a slowloris client on the control socket was held {took:?}");

    // Slowloris over TLS, as a stranger.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (took, sent) = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(&m1.address).await.unwrap();
        let mut stream = stranger_tls(&m1.dir).connect(tls::server_name(&m1.address), tcp).await.unwrap();
        let started = Instant::now();
        let mut sent = 0;
        let mut buf = [0u8; 1];
        for byte in head.iter().cycle() {
            if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
                break;
            }
            sent += 1;
            match tokio::time::timeout(Duration::from_millis(250), stream.read(&mut buf)).await {
                Ok(_) => break,
                Err(_) if started.elapsed() > Duration::from_secs(60) => break,
                Err(_) => {}
            }
        }
        (started.elapsed(), sent)
    });
    eprintln!("HTTPS: a stranger trickling its headers was closed after {took:?} ({sent} bytes)");
    assert!(took < bound, "a slowloris client over TLS was held {took:?}");

    // A connection that never sends anything.
    let mut silent = UnixStream::connect(m1.socket()).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (closed, took) = timed(|| closed_by_peer(&mut silent));
    eprintln!("control socket: a silent connection was closed after {took:?}");
    assert!(closed && took < bound, "a silent connection was held {took:?}");

    // A kept-alive connection after its request: closed once idle for the idle timeout.
    let mut kept = UnixStream::connect(m1.socket()).unwrap();
    kept.write_all(b"GET /core/1.0 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match kept.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text:.300}");
    eprintln!("control socket: an idle kept-alive connection was closed after {took:?}");
    assert!(took < IDLE_TIMEOUT + Duration::from_secs(10), "an idle kept-alive connection was held {took:?}");

    // Still serving, and counted.
    m1.ctl_ok(&["cluster", "list"]);
    let closed =
        |reason: &str| m1.metric(&format!("microcluster_http_connections_closed_total{{reason=\"{reason}\"}}"));
    assert!(closed("header_timeout") >= 3, "{}", closed("header_timeout"));
    assert!(closed("idle_timeout") >= 1, "{}", closed("idle_timeout"));
}

/// Sends `head` (no body) over the control socket and reads the answer for up to 10 s.
fn head_only(member: &Member, head: &str) -> (String, Duration) {
    let mut stream = UnixStream::connect(member.socket()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the answer is whole (Content-Length) or the member closes.
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&response);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
        }
    }
    (String::from_utf8_lossy(&response).into_owned(), started.elapsed())
}

#[test]
fn a_declared_body_over_the_limit_is_refused_before_it_is_sent() {
    let mut m1 = Member::new("m1");
    m1.start().bootstrap();
    for path in ["/core/internal/sql", "/core/1.0/database/restore", "/core/control/tokens"] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n"
        );
        let (response, took) = head_only(&m1, &head);
        eprintln!("{path}: Content-Length 10^12 answered in {took:?}");
        assert!(response.starts_with("HTTP/1.1 413"), "{path}: {response:.300}");
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let envelope: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:.300}"));
        assert_eq!(envelope["type"], "error", "{envelope}");
        assert_eq!(envelope["error_code"], 413, "{envelope}");
        assert!(took < Duration::from_secs(5), "{path}: the 413 took {took:?}");
    }
    // The same connection-level rules leave ordinary requests alone.
    m1.ctl_ok(&["sql", "CREATE TABLE t (x); INSERT INTO t VALUES (1)"]);
}
