//! One member's clock 2 days ahead (libfaketime in its daemon's environment): tokens keep the
//! lifetime they were issued with whoever issues or judges them, heartbeats are stamped in the
//! cluster's time, and the skew is reported by `cluster list`, `doctor`, the metrics and the
//! log, naming the member.
//!
//! The skewed daemon runs with `DONT_FAKE_MONOTONIC=1`: with the monotonic clock faked too, Rust's
//! timed waits (`Condvar::wait_timeout`, parking) pass an absolute CLOCK_MONOTONIC deadline 2
//! days ahead to the kernel's futex and never time out. Only the wall clock is skewed, which
//! is what a host with a wrong time looks like.
//!
//! Skipped (printing `SKIPPED: <reason>`) when libfaketime is not installed (`make deps-test`
//! installs it).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime};

use microcluster_tests::{Cluster, Member, wait_until};

const SKEW: Duration = Duration::from_secs(2 * 24 * 3600);

/// libfaketime's preload library, if installed and working (it moves `date` 2 days ahead).
fn faketime() -> Result<PathBuf, String> {
    let dirs = std::fs::read_dir("/usr/lib").map_err(|e| format!("cannot read /usr/lib: {e}"))?;
    let library = dirs
        .filter_map(Result::ok)
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.is_file())
        .ok_or("libfaketime is not installed (Debian: apt-get install libfaketime)")?;
    let out = Command::new("date")
        .arg("+%s")
        .envs(skewed_env(&library))
        .output()
        .map_err(|e| format!("cannot run date: {e}"))?;
    let faked: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().map_err(|e| format!("date: {e}"))?;
    let real = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    if faked.abs_diff(real + SKEW.as_secs()) > 60 {
        return Err(format!("{} does not move the clock 2 days ahead (date says {faked})", library.display()));
    }
    Ok(library)
}

fn skewed_env(library: &std::path::Path) -> Vec<(String, String)> {
    [("LD_PRELOAD", library.to_str().unwrap()), ("FAKETIME", "+2d"), ("DONT_FAKE_MONOTONIC", "1")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .to_vec()
}

/// m1..m3 formed through m1, m3's clock 2 days ahead; `None` (after printing why) without
/// libfaketime.
fn skewed_cluster() -> Option<Cluster> {
    let library = match faketime() {
        Ok(library) => library,
        Err(why) => {
            println!("SKIPPED: {why}");
            return None;
        }
    };
    let cluster = Cluster::start_with(3, |m| {
        if m.name == "m3" {
            m.env = skewed_env(&library);
        }
    });
    cluster.members[0].bootstrap();
    cluster.join(1, 0);
    cluster.join(2, 0);
    Some(cluster)
}

fn lead(cluster: &Cluster, name: &str) {
    cluster.members[0].ctl_ok(&["cluster", "transfer-leader", name]);
    wait_until(&format!("{name} to lead"), Duration::from_secs(30), || {
        cluster.members.iter().all(|m| m.member(name)["leader"] == true).then_some(())
    });
}

/// `tokens list --format json` on `member`: name → expiry.
fn tokens(member: &Member) -> Vec<(String, String)> {
    let text = member.ctl_ok(&["tokens", "list", "--format", "json"]);
    let json: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    json.iter()
        .map(|t| (t["name"].as_str().unwrap().to_owned(), t["expires_at"].as_str().unwrap().to_owned()))
        .collect()
}

/// Seconds from now (this process's clock, which is not skewed) to `time` (RFC 3339).
fn from_now(time: &str) -> f64 {
    let at = humantime::parse_rfc3339_weak(time).unwrap_or_else(|e| panic!("{time:?}: {e}"));
    match at.duration_since(SystemTime::now()) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    }
}

fn expiry_of(member: &Member, name: &str) -> Option<f64> {
    tokens(member).into_iter().find(|(n, _)| n == name).map(|(_, at)| from_now(&at))
}

/// Starts a fresh daemon `name` and tries to join it with `token`.
fn try_join(name: &str, token: &str) -> (Member, microcluster_tests::CtlOutput) {
    let mut joiner = Member::new(name);
    joiner.start();
    let out = joiner.ctl(&["init", name, &joiner.address, "--token", token]);
    (joiner, out)
}

#[test]
fn a_skewed_member_neither_revokes_nor_extends_tokens_and_is_reported() {
    let Some(cluster) = skewed_cluster() else { return };
    let (m1, m2, m3) = (&cluster.members[0], &cluster.members[1], &cluster.members[2]);

    // (a) While the skewed member leads (and prunes tokens every round), a 3 h token issued
    // through another member stays valid for its 3 hours, and a join with it succeeds.
    lead(&cluster, "m3");
    let token = m1.ctl_ok(&["tokens", "add", "m4"]).trim().to_owned();
    std::thread::sleep(Duration::from_secs(4));
    let left = expiry_of(m1, "m4").unwrap_or_else(|| panic!("the skewed leader dropped m4's 3 h token within 4 s"));
    assert!((left - 3.0 * 3600.0).abs() < 60.0, "m4's token expires in {left} s, not 3 h");
    let (_m4, out) = try_join("m4", &token);
    assert!(out.success, "joining with a 3 h token while the skewed member leads: {out:?}");

    // (d) Heartbeats are stamped in the cluster's time, not the skewed leader's.
    wait_until("m4 to be listed ONLINE", Duration::from_secs(30), || {
        (m1.member("m4")["status"] == "ONLINE").then_some(())
    });
    for member in m1.members() {
        let ahead = from_now(member["last_heartbeat"].as_str().unwrap());
        assert!(ahead < 5.0, "{}'s last heartbeat is {ahead} s in the future: {member}", member["name"]);
    }

    // (c) The skew is reported, naming the member: cluster list (everywhere), the metric, doctor
    // and the log. m3 knows its own offset once it shows in its own list.
    wait_until("every member to know m3's clock offset", Duration::from_secs(30), || {
        cluster.members.iter().all(|m| m.member("m3")["clock_offset"].is_number()).then_some(())
    });
    for observer in [m1, m2, m3] {
        let members = observer.members();
        for member in &members {
            let (name, offset) = (member["name"].as_str().unwrap(), member["clock_offset"].as_f64());
            let skewed = member["clock_skewed"] == true;
            let reason = member["status_reason"].as_str().unwrap_or_default();
            if name == "m3" {
                let offset = offset.unwrap();
                assert!((offset - SKEW.as_secs_f64()).abs() < 5.0, "{}: m3's offset {offset}", observer.name);
                assert!(skewed && reason.contains("clock") && reason.contains("NTP"), "{}: {member}", observer.name);
                assert_eq!(member["status"], "ONLINE", "a skewed member is still online: {member}");
            } else {
                assert!(offset.is_none_or(|o| o.abs() < 1.0) && !skewed, "{}: {member}", observer.name);
            }
        }
        let table = observer.ctl_ok(&["cluster", "list"]);
        let row = table.lines().find(|l| l.starts_with("| m3 ")).unwrap();
        assert!(row.contains("clock") && row.contains("ahead"), "{}'s table does not flag m3:\n{table}", observer.name);
        let gauge = observer.metric("microcluster_member_clock_offset_seconds{member=\"m3\"}");
        assert!(gauge.abs_diff(SKEW.as_secs()) < 5, "{}: m3's clock offset gauge is {gauge}", observer.name);
    }
    let out = m2.ctl(&["doctor", "--check", "-f", "json"]);
    assert!(!out.success, "doctor with a skewed member must fail: {out:?}");
    let report: microcluster::api::DoctorReport = serde_json::from_str(&out.stdout).unwrap();
    let clock: Vec<_> = report.checks.iter().filter(|c| c.check == "clock").collect();
    assert_eq!(clock.len(), 4, "one clock result per member: {report:#?}");
    for check in clock {
        if check.member == "m3" {
            assert_eq!(check.status, "PROBLEM", "{check:?}");
            assert!(check.detail.contains("ahead") && check.detail.contains("NTP"), "{check:?}");
        } else {
            assert_eq!(check.status, "OK", "{check:?}");
        }
    }
    let table = m2.ctl(&["doctor", "--check"]).stdout;
    assert!(table.contains("| clock ") && table.contains("m3's clock is 2days ahead"), "{table}");
    let warned =
        |member: &Member| member.log().lines().any(|l| l.contains("WARN") && l.contains("clock") && l.contains("m3"));
    assert!(warned(m3), "the skewed leader did not warn about its clock:\n{}", m3.log());

    // (b) A token issued through the skewed member lives its own 3 hours, not 51.
    m3.ctl_ok(&["tokens", "add", "m5"]);
    for observer in [m1, m3] {
        let left = expiry_of(observer, "m5").unwrap();
        assert!((left - 3.0 * 3600.0).abs() < 60.0, "m5's token through m3 expires in {left} s, not 3 h");
    }
}

#[test]
fn short_lived_tokens_expire_by_the_clusters_time() {
    let Some(cluster) = skewed_cluster() else { return };
    let (m1, m3) = (&cluster.members[0], &cluster.members[2]);
    // A member uses its own clock until a heartbeat tells it its offset: give m3 the time to
    // learn it (the other test requires that it does), then go on either way.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !m3.member("m3")["clock_offset"].is_number() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }

    // Issued through the skewed member, judged by a leader with the right time.
    lead(&cluster, "m1");
    let through_skewed = m3.ctl_ok(&["tokens", "add", "m6", "--expire-after", "10s"]).trim().to_owned();
    // Issued through a member with the right time, judged by the skewed leader.
    lead(&cluster, "m3");
    let judged_by_skewed = m1.ctl_ok(&["tokens", "add", "m7", "--expire-after", "10s"]).trim().to_owned();
    std::thread::sleep(Duration::from_secs(2));
    for name in ["m6", "m7"] {
        let left = expiry_of(m1, name).unwrap_or_else(|| panic!("{name}'s 10 s token is gone within 3 s"));
        assert!(left > 0.0 && left < 10.0, "{name}'s 10 s token expires in {left} s");
    }

    std::thread::sleep(Duration::from_secs(10));
    let refused = |name: &str, token: &str| {
        let (_joiner, out) = try_join(name, token);
        assert!(!out.success, "{name} joined with a 10 s token 12 s after it was issued");
        assert!(out.stderr.contains("expired"), "{name}'s refusal should say the token expired: {out:?}");
    };
    refused("m7", &judged_by_skewed);
    lead(&cluster, "m1");
    refused("m6", &through_skewed);
}

/// A member whose clock has come to 10 days before its certificates expire (libfaketime ten
/// years less a few days ahead, the certificates made before): its log warns of both, `cluster
/// list` shows the days left, `doctor` reports them as problems, the metrics say when.
#[test]
fn certificates_near_their_expiry_are_warned_of_listed_and_reported() {
    let library = match faketime() {
        Ok(library) => library,
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let mut member = Member::new("m1");
    member.start().bootstrap();
    let days = |member: &Member| member.member("m1")["certificate_days_left"].as_i64().unwrap();
    assert!((3649..=3650).contains(&days(&member)), "a new certificate has ten years");
    member.signal("TERM");
    assert!(member.wait_exit(Duration::from_secs(15)).is_some());

    member.env = skewed_env(&library)
        .into_iter()
        .map(|(k, v)| if k == "FAKETIME" { (k, "+3640d".to_owned()) } else { (k, v) })
        .collect();
    member.start();
    member.wait_ready(Duration::from_secs(30));
    let left = days(&member);
    assert!((8..=10).contains(&left), "{left} days left by the member's clock");
    let log = wait_until("the expiry warnings", Duration::from_secs(10), || {
        let log = member.log();
        (log.contains("this member's certificate expires in") && log.contains("the cluster certificate expires in"))
            .then_some(log)
    });
    assert!(log.contains("replace it before then (microctl cluster certificates rotate)"), "{log}");
    let doctor = member.ctl(&["doctor", "--check", "--format", "json"]);
    assert!(!doctor.success, "certificates about to expire are problems: {doctor:?}");
    let report: serde_json::Value = serde_json::from_str(&doctor.stdout).unwrap();
    let expiring: Vec<&serde_json::Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "certificate" && c["status"] == "PROBLEM")
        .collect();
    assert_eq!(expiring.len(), 2, "{report}");
    let socket = member.dir.join("control.socket");
    let scrape = Command::new("curl")
        .args(["-s", "--unix-socket", socket.to_str().unwrap(), "http://localhost/core/1.0/metrics"])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&scrape.stdout);
    for certificate in ["server", "cluster"] {
        let series = format!("microcluster_certificate_expiry_timestamp_seconds{{certificate=\"{certificate}\"}}");
        assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }

    // `rotate` renews: ten years again from the member's clock, and the doctor is content.
    member.ctl_ok(&["cluster", "certificates", "rotate"]);
    assert!((3649..=3650).contains(&days(&member)), "{} days left after the rotation", days(&member));
    let doctor = member.ctl(&["doctor", "--check", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&doctor.stdout).unwrap();
    let problems: Vec<&serde_json::Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["check"] == "certificate" && c["status"] != "OK")
        .collect();
    assert!(problems.is_empty(), "{report}");
}
