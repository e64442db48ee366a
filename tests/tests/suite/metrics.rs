//! `GET /core/1.0/metrics` on real members, without microctl: scraped with curl over the
//! control socket and with the typed client over HTTPS. The counters follow the SQL requests,
//! write batches, heartbeats, streams of writes and a leadership transfer the test causes;
//! strangers get 403.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use microcluster::client::{Client, StatusCode};
use microcluster::{certs, tls};
use microcluster_tests::{Cluster, Member, wait_until};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Scrapes a member over its control socket with curl; checks the status, the content type
/// and the shape of every line, and returns the body.
fn scrape(member: &Member) -> String {
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "10", "--unix-socket"])
        .arg(member.socket())
        .arg("http://localhost/core/1.0/metrics")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) =
        text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer from {}: {text}", member.name));
    assert!(head.starts_with("HTTP/1.1 200"), "{}: {head}", member.name);
    let content_type =
        head.lines().find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")));
    assert_eq!(content_type.map(|(_, v)| v.trim()), Some(CONTENT_TYPE), "{head}");
    check_lines(body);
    body.to_owned()
}

/// Every line is a `# HELP` / `# TYPE` comment or `name{labels} value` with a numeric value.
fn check_lines(body: &str) {
    assert!(body.ends_with('\n') && body.starts_with("# HELP "), "not exposition text:\n{body}");
    for line in body.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "bad value: {line}");
        let name = series.split('{').next().unwrap_or_default();
        assert!(!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad name: {line}");
        assert!(
            series == name || (series.ends_with("\"}") && series[name.len()..].starts_with("{")),
            "bad labels: {line}"
        );
    }
}

/// The sum of the samples named `name` whose labels include every pair of `labels` (the
/// values used here contain no quotes or commas).
fn value(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            let pairs: Vec<(&str, &str)> = rest
                .trim_end_matches('}')
                .split("\",")
                .filter_map(|p| p.split_once("=\""))
                .map(|(k, v)| (k, v.trim_end_matches('"')))
                .collect();
            n == name && labels.iter().all(|l| pairs.contains(l))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

/// A mutual-TLS client of `address` presenting `identity`, pinning the
/// cluster certificate found in `cluster_dir`.
fn https_client(cluster_dir: &Path, identity: &tls::Identity, address: &str) -> Client {
    let cluster_cert = std::fs::read_to_string(cluster_dir.join("cluster.crt")).unwrap();
    let config = tls::client_config(Some(identity), vec![tls::fingerprint_pem(&cluster_cert).unwrap()]).unwrap();
    Client::https(address, config)
}

/// Waits until `member`'s node checkpoints at `frames` WAL frames.
fn checkpoint_threshold_reaches(member: &Member, frames: f64) {
    wait_until(&format!("{}'s checkpoint threshold at {frames}", member.name), Duration::from_secs(20), || {
        (value(&scrape(member), "microcluster_checkpoint_threshold_frames", &[]) == frames).then_some(())
    });
}

/// Every member's node checkpoints at 200 WAL frames while no writes stream in, the leader's
/// too; while writes stream (sequential writes through `via`, forwarded to the leader), the
/// leader's checkpoints at libdqlite's 1000, and goes back to 200 after the stream.
/// Not on libdqlite 1.11: the threshold is the library's own, never set, and not reported.
fn checkpoints_follow_the_leader_and_the_writes(cluster: &Cluster, leader: usize, via: &Member) {
    if !dqlite::library().takes_private_tuning() {
        for member in &cluster.members {
            let body = scrape(member);
            let sample = body.lines().find(|l| l.starts_with("microcluster_checkpoint_threshold_frames"));
            assert_eq!(sample, None, "{}", dqlite::library());
        }
        return;
    }
    for member in &cluster.members {
        checkpoint_threshold_reaches(member, 200.0);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = std::thread::spawn({
        let (stop, client) = (stop.clone(), Client::unix(via.socket()));
        move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let mut writes = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sql = format!("INSERT OR REPLACE INTO extended_table (key, value) VALUES ('stream', '{writes}')");
                rt.block_on(client.sql(&sql)).unwrap();
                writes += 1;
            }
            writes
        }
    });
    checkpoint_threshold_reaches(&cluster.members[leader], 1000.0);
    for (i, member) in cluster.members.iter().enumerate().filter(|(i, _)| *i != leader) {
        let frames = value(&scrape(member), "microcluster_checkpoint_threshold_frames", &[]);
        assert_eq!(frames, 200.0, "member {i} does not lead, yet checkpoints at {frames}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes > 1, "{writes} writes streamed");
    checkpoint_threshold_reaches(&cluster.members[leader], 200.0);
}

fn leader(cluster: &Cluster) -> usize {
    wait_until("a member reporting itself as the leader", Duration::from_secs(20), || {
        cluster.members.iter().position(|m| value(&scrape(m), "microcluster_is_leader", &[]) == 1.0)
    })
}

#[test]
fn metrics_follow_requests_writes_members_heartbeats_and_leader_changes() {
    let cluster = Cluster::form(3);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m1 = &cluster.members[0];
    let local = Client::unix(m1.socket());
    let before = value(&scrape(m1), "microcluster_write_batch_size_count", &[]);

    const WRITES: usize = 5;
    const READS: usize = 3;
    for i in 0..WRITES {
        rt.block_on(local.sql(&format!("INSERT INTO extended_table (key, value) VALUES ('k{i}', 'v')"))).unwrap();
    }
    for _ in 0..READS {
        rt.block_on(local.sql("SELECT key FROM extended_table")).unwrap();
    }
    let body = rt.block_on(local.metrics()).unwrap();
    check_lines(&body);
    let sql = [("route", "/core/internal/sql"), ("method", "POST"), ("code", "200")];
    let requests = value(&body, "microcluster_http_request_duration_seconds_count", &sql);
    assert!(requests >= (WRITES + READS) as f64, "{requests} SQL requests counted:\n{body}");
    let bucket =
        value(&body, "microcluster_http_request_duration_seconds_bucket", &[sql[0], sql[1], sql[2], ("le", "+Inf")]);
    assert_eq!(bucket, requests);
    // Each write waited for the previous one's answer, so none shared a batch.
    let batches = value(&body, "microcluster_write_batch_size_count", &[]);
    assert!(batches >= before + WRITES as f64, "{batches} write batches (before: {before}):\n{body}");
    assert_eq!(value(&body, "microcluster_database_status", &[("status", "online")]), 1.0);
    assert_eq!(value(&body, "microcluster_build_info", &[]), 1.0);
    // Reads are confirmed with the voters first (scrapes read the members' table too).
    let confirmed = value(&body, "microcluster_read_confirmations_total", &[("outcome", "confirmed")]);
    assert!(confirmed >= 1.0, "no read confirmation round:\n{body}");
    assert!(body.contains("microcluster_reads_redirected_total "), "{body}");

    // Members by role and status, from the database (the leader records heartbeats).
    wait_until("3 online voters in m1's metrics", Duration::from_secs(30), || {
        let body = scrape(m1);
        let total = value(&body, "microcluster_members", &[]);
        let voters = value(&body, "microcluster_members", &[("role", "voter")]);
        let online = value(&body, "microcluster_members", &[("status", "online")]);
        (total == 3.0 && voters == 3.0 && online == 3.0).then_some(())
    });

    let first = leader(&cluster);
    wait_until("heartbeat rounds on the leader", Duration::from_secs(20), || {
        (value(&scrape(&cluster.members[first]), "microcluster_heartbeat_rounds_total", &[]) > 0.0).then_some(())
    });
    let round_count =
        value(&scrape(&cluster.members[first]), "microcluster_heartbeat_round_duration_seconds_count", &[]);
    assert!(round_count > 0.0);
    checkpoints_follow_the_leader_and_the_writes(&cluster, first, m1);

    // Hand leadership over: every member's node sees the leader move.
    let changes: Vec<f64> =
        cluster.members.iter().map(|m| value(&scrape(m), "microcluster_leader_changes_total", &[])).collect();
    let new_leader = rt.block_on(local.transfer_leader("")).unwrap();
    assert_ne!(new_leader, cluster.members[first].name);
    for (member, before) in cluster.members.iter().zip(changes) {
        wait_until(&format!("{} to count the leader change", member.name), Duration::from_secs(20), || {
            (value(&scrape(member), "microcluster_leader_changes_total", &[]) > before).then_some(())
        });
    }
    let now = leader(&cluster);
    assert_eq!(cluster.members[now].name, new_leader);
    checkpoints_follow_the_leader_and_the_writes(&cluster, now, m1);

    // Over HTTPS: a member's certificate may scrape, a stranger's may not.
    let m2 = &cluster.members[1];
    let as_m2 = tls::Identity {
        cert_pem: std::fs::read_to_string(m2.dir.join("server.crt")).unwrap(),
        key_pem: std::fs::read_to_string(m2.dir.join("server.key")).unwrap(),
    };
    let body = rt.block_on(https_client(&m1.dir, &as_m2, &m1.address).metrics()).unwrap();
    check_lines(&body);
    assert_eq!(value(&body, "microcluster_database_status", &[("status", "online")]), 1.0);
    let stranger = certs::generate("stranger", &[]).unwrap();
    let err = rt.block_on(https_client(&m1.dir, &stranger, &m1.address).metrics()).unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
}

#[test]
fn an_uninitialised_member_answers_with_what_exists() {
    let mut member = Member::new("solo");
    member.start();
    let body = scrape(&member);
    assert_eq!(value(&body, "microcluster_database_status", &[("status", "not_initialized")]), 1.0);
    assert_eq!(value(&body, "microcluster_database_status", &[]), 1.0);
    assert_eq!(value(&body, "microcluster_is_leader", &[]), 0.0);
    assert!(!body.lines().any(|l| l.starts_with("microcluster_members{")), "{body}");
    // The scrape itself is counted, by its route.
    let body = scrape(&member);
    let scrapes = [("route", "/core/1.0/metrics"), ("method", "GET"), ("code", "200")];
    assert!(value(&body, "microcluster_http_request_duration_seconds_count", &scrapes) >= 1.0, "{body}");
    // Unknown paths share one series.
    for path in ["/nope", "/core/1.0/nope/1", "/core/1.0/nope/2"] {
        let status = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket"])
            .arg(member.socket())
            .arg(format!("http://localhost{path}"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&status.stdout), "404");
    }
    let body = scrape(&member);
    let unmatched = [("route", "unmatched"), ("method", "GET"), ("code", "404")];
    assert_eq!(value(&body, "microcluster_http_request_duration_seconds_count", &unmatched), 3.0);
    assert!(!body.contains("nope"), "{body}");
}
