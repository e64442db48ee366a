//! A voter whose state directory is on a real file system (ext4 on a loop device, 64 MiB) that
//! fills up while the cluster writes. libraft stops writing the member's log, silently, once it
//! cannot create its next segment (32 MiB, preallocated): the member must say so at once, lose
//! its vote to another member, and resume when space returns; nothing acknowledged may be
//! lost. Then the disk fails (ext4 records an error and turns read-only): the member says so
//! too, and starts again once the operator checked the file system. Needs root (loop devices,
//! mount); elsewhere it says why and passes.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use microcluster_tests::checker::{self, Checker};
use microcluster_tests::disk::LoopDisk;
use microcluster_tests::{Cluster, Member, until_not_503, wait_until};

/// `name`'s row in `cluster list` as `observer` sees it.
fn row(observer: &Member, name: &str) -> serde_json::Value {
    observer.member(name)
}

#[test]
fn a_voter_whose_disk_fills_up_says_so_loses_its_vote_and_resumes_when_space_returns() {
    let disk = match LoopDisk::ext4(64) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED: an ext4 file system on a loop device cannot be made here ({why})");
            return;
        }
    };
    // m1, m2 and m3 (on the small disk) vote; m4 stands by.
    let mut cluster = Cluster::start(2);
    cluster.members[0].bootstrap();
    cluster.join(1, 0);
    let logs = tempfile::tempdir().unwrap();
    let mut m3 = Member::at("m3", &microcluster_tests::free_address(), &disk.path.join("state"));
    m3.log_file = Some(logs.path().join("m3.log"));
    m3.start();
    cluster.join_member(&m3, 0);
    cluster.members.push(m3);
    let mut m4 = Member::new("m4");
    m4.start();
    cluster.join_member(&m4, 0);
    cluster.members.push(m4);
    let (m1, m3) = (0, 2);
    assert_eq!(row(&cluster.members[m1], "m3")["role"], "voter");
    assert_eq!(row(&cluster.members[m1], "m4")["role"], "stand-by");
    checker::create_table(&cluster.members[m1].socket()).unwrap();
    let checker = Checker::start((0..4).map(|w| cluster.members[w % 2].socket()).collect());
    checker.writes_flow(100, Duration::from_secs(30));

    // The disk fills up under the running voter, and stays full (what raft frees as it closes
    // a segment is taken too) until raft cannot create its next segment.
    let mut fillers = disk.fill();
    let filled = Instant::now();
    eprintln!("filled m3's disk: {} B left", disk.available());
    // It says so at once: DEGRADED with the reason, the metric, an error in its log.
    let degraded = wait_until("m3 DEGRADED in cluster list", Duration::from_secs(60), || {
        fillers.extend(disk.fill());
        let r = row(&cluster.members[m1], "m3");
        (r["status"] == "DEGRADED").then_some(r)
    });
    eprintln!("m3 DEGRADED {:.1} s after the fill: {}", filled.elapsed().as_secs_f64(), degraded["status_reason"]);
    assert!(degraded["status_reason"].as_str().unwrap().contains("cannot write its raft log"), "{degraded}");
    assert_eq!(cluster.members[m3].metric("microcluster_raft_log_writable "), 0);
    assert!(cluster.members[m3].log().contains("ERROR"), "no error in m3's log");
    let doctor = cluster.members[m1].ctl(&["doctor", "--check", "--format", "json"]);
    assert!(!doctor.success, "doctor found no problem: {}", doctor.stdout);
    let report: serde_json::Value = serde_json::from_str(&doctor.stdout).unwrap();
    let raft_log =
        report["checks"].as_array().unwrap().iter().find(|c| c["check"] == "raft-log" && c["member"] == "m3");
    assert!(
        raft_log.is_some_and(
            |c| c["status"] == "PROBLEM" && c["detail"].as_str().unwrap().contains("cannot write its raft log")
        ),
        "{}",
        doctor.stdout
    );
    // Full for a while under writes: raft runs out of room in its open segment, or fails to
    // write a snapshot, or both.
    let until = Instant::now() + Duration::from_secs(20);
    let mut stuck = false;
    while Instant::now() < until {
        fillers.extend(disk.fill());
        let r = row(&cluster.members[m1], "m3");
        assert_eq!(r["status"], "DEGRADED", "m3 while its disk is full: {r}");
        stuck |= r["status_reason"].as_str().is_some_and(|r| r.contains("next log segment"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        cluster.members[m3].is_running(),
        "m3 exited: {}",
        cluster.members[m3].log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    eprintln!("raft on m3 ran out of log segments: {stuck}");
    // The others keep writing, and m4 takes m3's vote.
    checker.writes_flow(200, Duration::from_secs(60));
    wait_until("m4 a voter in m3's place", Duration::from_secs(60), || {
        let list = cluster.members[m1].members();
        let role = |n: &str| list.iter().find(|m| m["name"] == n).map(|m| m["role"].clone()).unwrap_or_default();
        (role("m4") == "voter" && role("m3") != "voter").then_some(())
    });
    eprintln!("m4 votes in m3's place {:.1} s after the fill", filled.elapsed().as_secs_f64());
    // Losing the leader now costs no more than usual: the voters that can persist go on.
    let victim = cluster.leader_except(&[m3]);
    assert_ne!(victim, m3);
    cluster.members[victim].kill();
    let outage = checker.writes_flow(50, Duration::from_secs(60));
    eprintln!(
        "killed the leader {}: writes flowed again after {:.2} s",
        cluster.members[victim].name,
        outage.as_secs_f64()
    );
    cluster.members[victim].start();

    // Space returns: m3 resumes by itself (its node restarts) and catches up.
    disk.free(&mut fillers, 48 << 20);
    let freed = Instant::now();
    let observer = (victim + 1) % 2;
    let back = Instant::now() + Duration::from_secs(90);
    while cluster.members[m3].is_running() && row(&cluster.members[observer], "m3")["status"] != "ONLINE" {
        assert!(
            Instant::now() < back,
            "m3 not ONLINE 90 s after space returned (running: {}): {}\n--- m3's log, its end ---\n{}",
            cluster.members[m3].is_running(),
            row(&cluster.members[observer], "m3")["status_reason"],
            cluster.members[m3]
                .log()
                .lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let exit = cluster.members[m3].exit_code(Duration::ZERO);
    assert!(
        exit.is_none(),
        "m3 exited ({exit:?}): {}",
        cluster.members[m3].log().lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    eprintln!("m3 ONLINE {:.1} s after space returned", freed.elapsed().as_secs_f64());
    for line in cluster.members[m3]
        .log()
        .lines()
        .filter(|l| l.contains("raft log") || l.contains("restarting") || l.contains("disk"))
    {
        eprintln!("m3: {line}");
    }
    // Its node restarted once the room lasted (one that failed writes is not trusted further).
    let restarts = cluster.members[m3].metric("microcluster_raft_log_restarts_total");
    assert!(restarts >= 1, "m3's node was not restarted after its disk recovered");
    assert_eq!(cluster.members[m3].metric("microcluster_raft_log_writable "), 1);
    checker.writes_flow(100, Duration::from_secs(60));

    // The disk fails (ext4 records an error and turns read-only under the running member): the
    // same, until the operator stops the member, checks the file system and starts it again.
    disk.fail().unwrap();
    let read_only = wait_until("m3 DEGRADED on a failed disk", Duration::from_secs(60), || {
        let r = row(&cluster.members[observer], "m3");
        (r["status"] == "DEGRADED").then_some(r)
    });
    eprintln!("m3 on a failed disk: {}", read_only["status_reason"]);
    assert!(read_only["status_reason"].as_str().unwrap().contains("Read-only file system"), "{read_only}");
    checker.writes_flow(100, Duration::from_secs(60));
    cluster.members[m3].signal("TERM");
    assert!(cluster.members[m3].wait_exit(Duration::from_secs(30)).is_some(), "m3 did not stop");
    disk.repair().unwrap();
    cluster.members[m3].start();
    wait_until("m3 ONLINE after the repair", Duration::from_secs(90), || {
        (row(&cluster.members[observer], "m3")["status"] == "ONLINE").then_some(())
    });
    checker.writes_flow(100, Duration::from_secs(60));
    let history = checker.stop();

    // Proof that m3 holds every write: once m4 is gone, m3 votes again and leads.
    let m4 = 3;
    cluster.members[m4].kill();
    wait_until("m3 a voter again", Duration::from_secs(90), || {
        (row(&cluster.members[observer], "m3")["role"] == "voter").then_some(())
    });
    until_not_503("transferring leadership to m3", || {
        let out = cluster.members[observer].ctl(&["cluster", "transfer-leader", "m3"]);
        if out.success { Ok(()) } else { Err(out.stderr) }
    });
    let summary =
        until_not_503("reading through m3", || checker::verify(&cluster.members[m3].socket(), &history, true));
    eprintln!("full disk on a voter: {summary}; failures {:?}", history.failures);
}
