//! Power cuts: members whose state directories sit on the power-loss file system
//! (`microcluster_tests::powerfail`), which forgets whatever was not fsynced when the power is
//! cut. Under four writers, every member at once or one at a time is killed, its file system
//! loses everything volatile, and it starts again on what is left. After each cut every member
//! must start (no torn configuration, trust store, certificate or raft log), the cluster must
//! write again, and every acknowledged write must be there exactly once.
//!
//! `make test` cuts 3 times per test; `make test-faults` (`MICROCLUSTER_FAULTS=full`) 20 times.
//! Needs root and `/dev/fuse`; elsewhere the tests say why and do nothing.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use microcluster_tests::checker::{self, Checker};
use microcluster_tests::powerfail::{self, Dropped, PowerFs};
use microcluster_tests::{Cluster, Member, free_address, until_not_503, wait_until};

fn full() -> bool {
    std::env::var("MICROCLUSTER_FAULTS").is_ok_and(|v| v == "full")
}

fn cuts() -> usize {
    if full() { 20 } else { 3 }
}

/// Three members, each with its state directory on a file system of its own. The disks are
/// returned apart so that the members (killed when dropped) go before their mounts.
fn form() -> (tempfile::TempDir, Vec<PowerFs>, Cluster) {
    let tmp = tempfile::Builder::new().prefix("power-loss-").tempdir().unwrap();
    let disks: Vec<PowerFs> =
        (1..=3).map(|i| PowerFs::mount(&tmp.path().join(format!("m{i}")).join("state")).unwrap()).collect();
    let mut members: Vec<Member> =
        disks.iter().enumerate().map(|(i, d)| Member::at(&format!("m{}", i + 1), &free_address(), d.path())).collect();
    for m in &mut members {
        m.start();
    }
    let cluster = Cluster { members };
    cluster.members[0].bootstrap();
    cluster.join(1, 0);
    cluster.join(2, 0);
    (tmp, disks, cluster)
}

/// On a failure, the end of each member's log (the directory holding them is removed).
struct LogsOnFailure(Vec<(String, std::path::PathBuf)>);

impl LogsOnFailure {
    fn of(cluster: &Cluster) -> LogsOnFailure {
        LogsOnFailure(cluster.members.iter().map(|m| (m.name.clone(), m.log_path())).collect())
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, path) in &self.0 {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                // Requests refused while it had no database say nothing new: left out.
                let tail: Vec<&str> = log.lines().rev().filter(|l| !l.contains("request failed")).take(60).collect();
                eprintln!("--- the end of {name}'s log ---");
                tail.iter().rev().for_each(|l| eprintln!("{l}"));
            }
        }
    }
}

fn writers(cluster: &Cluster) -> Checker {
    checker::create_table(&cluster.members[0].socket()).unwrap();
    Checker::start((0..4).map(|w| cluster.members[w % 3].socket()).collect())
}

fn online(cluster: &Cluster, observer: usize, name: &str) {
    wait_until(&format!("{name} ONLINE"), Duration::from_secs(60), || {
        (cluster.members[observer].member(name)["status"] == "ONLINE").then_some(())
    });
}

/// Checks the writes so far through member `i` (asking again while it is between leaders).
fn verify_now(cluster: &Cluster, i: usize, checker: &Checker) {
    let history = checker.history();
    until_not_503(&format!("after a power cut, through {}", cluster.members[i].name), || {
        checker::verify(&cluster.members[i].socket(), &history, false)
    });
}

/// Starts a member after a power cut and checks it still knows it belongs to a cluster: a
/// member whose `database/node.toml` or `daemon.toml` did not survive would wait for an `init`
/// that never comes, and the cluster would carry on without it.
fn restart(member: &mut Member) {
    let survived = std::fs::read_dir(&member.dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
        .unwrap_or_default();
    member.start();
    let node = member.dir.join("database").join("node.toml");
    assert!(
        node.exists(),
        "{} forgot its node identity in the power cut: {} is missing (the state directory held {survived:?} after \
         the cut)",
        member.name,
        node.display()
    );
    let config = std::fs::read_to_string(member.dir.join("daemon.toml")).unwrap_or_default();
    assert!(
        config.contains(&member.name),
        "{} forgot its name in the power cut: daemon.toml holds {config:?} (the state directory held {survived:?})",
        member.name
    );
}

/// Sleeps up to half a second, differently each time, so that the power goes at different
/// points of the writers' requests.
fn jitter() {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(u64::from(nanos % 500)));
}

fn cut(disk: &mut PowerFs) -> Dropped {
    disk.cut_power().unwrap_or_else(|e| panic!("cutting the power of {}: {e}", disk.path().display()))
}

fn report(what: &str, disks: &[PowerFs], history: &checker::History, summary: &str) {
    let mut dropped = Dropped::default();
    for d in disks {
        dropped += d.dropped();
    }
    eprintln!(
        "{what}: {summary}; {} power cuts dropped {} unsynced bytes in {} writes, {} size changes, {} directory \
         entries, {} files; failures {:?}",
        dropped.cuts, dropped.bytes, dropped.writes, dropped.sizes, dropped.entries, dropped.inodes, history.failures
    );
}

#[test]
fn cutting_the_power_of_every_member_at_once_loses_no_acknowledged_write() {
    if let Some(why) = powerfail::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let (_tmp, mut disks, mut cluster) = form();
    let _logs = LogsOnFailure::of(&cluster);
    let checker = writers(&cluster);
    checker.writes_flow(50, Duration::from_secs(30));
    for round in 1..=cuts() {
        jitter();
        for m in &mut cluster.members {
            m.kill();
        }
        let dropped: Vec<Dropped> = disks.iter_mut().map(cut).collect();
        for m in &mut cluster.members {
            restart(m);
        }
        let outage = checker.writes_flow(20, Duration::from_secs(60));
        for i in 0..3 {
            cluster.members[i].wait_ready(Duration::from_secs(60));
        }
        verify_now(&cluster, round % 3, &checker);
        let bytes: u64 = dropped.iter().map(|d| d.bytes).sum();
        let entries: u64 = dropped.iter().map(|d| d.entries).sum();
        eprintln!(
            "cut {round}: all three lost power ({bytes} unsynced bytes, {entries} directory entries dropped); writes \
             again after {outage:?}"
        );
    }
    let history = checker.stop();
    let summary = until_not_503("the final check", || checker::verify(&cluster.members[0].socket(), &history, true));
    report(&format!("{} cuts of every member", cuts()), &disks, &history, &summary);
}

#[test]
fn cutting_the_power_of_one_member_at_a_time_loses_no_acknowledged_write() {
    if let Some(why) = powerfail::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let (_tmp, mut disks, mut cluster) = form();
    let _logs = LogsOnFailure::of(&cluster);
    let checker = writers(&cluster);
    checker.writes_flow(50, Duration::from_secs(30));
    let mut cuts_of = [0usize; 3];
    for round in 1..=cuts() {
        // The leader every other time (it holds writes in flight), otherwise the follower that
        // lost power least often.
        let leading = cluster.leader();
        let follower = (0..3).filter(|i| *i != leading).min_by_key(|i| cuts_of[*i]).unwrap();
        let victim = if round % 2 == 0 { leading } else { follower };
        cuts_of[victim] += 1;
        jitter();
        cluster.members[victim].kill();
        let dropped = cut(&mut disks[victim]);
        // The other two keep the cluster writing while it is down.
        checker.writes_flow(20, Duration::from_secs(60));
        restart(&mut cluster.members[victim]);
        let observer = (victim + 1) % 3;
        let name = cluster.members[victim].name.clone();
        online(&cluster, observer, &name);
        cluster.members[victim].wait_ready(Duration::from_secs(60));
        // Queries are served by the leader: make it the member that lost power, so that what is
        // checked is what its disk kept plus what it caught up on.
        // A transfer refused while the member still catches up is asked for again.
        wait_until(&format!("the leadership to move to {name}"), Duration::from_secs(60), || {
            cluster.members[observer].ctl(&["cluster", "transfer-leader", &name]).success.then_some(())
        });
        checker.writes_flow(20, Duration::from_secs(60));
        verify_now(&cluster, victim, &checker);
        eprintln!(
            "cut {round}: {name}{} lost power ({} unsynced bytes, {} directory entries dropped) and rejoined",
            if victim == leading { " (the leader)" } else { "" },
            dropped.bytes,
            dropped.entries
        );
    }
    let history = checker.stop();
    let summary = until_not_503("the final check", || checker::verify(&cluster.members[0].socket(), &history, true));
    report(&format!("{} cuts of one member", cuts()), &disks, &history, &summary);
}

#[test]
fn a_members_removal_survives_a_power_cut() {
    if let Some(why) = powerfail::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let (_tmp, mut disks, mut cluster) = form();
    let _logs = LogsOnFailure::of(&cluster);
    let mut m4 = Member::new("m4");
    m4.start();
    cluster.join_member(&m4, 0);
    online(&cluster, 1, "m4");
    let entries: Vec<std::path::PathBuf> =
        cluster.members.iter().map(|m| m.dir.join("truststore").join("m4.toml")).collect();
    let entry = |i: usize| &entries[i];
    wait_until("every member to trust m4", Duration::from_secs(30), || (0..3).all(|i| entry(i).exists()).then_some(()));
    cluster.members[0].ctl_ok(&["cluster", "remove", "m4"]);
    wait_until("every member to stop trusting m4", Duration::from_secs(30), || {
        (0..3).all(|i| !entry(i).exists()).then_some(())
    });
    drop(m4);
    for m in &mut cluster.members {
        m.kill();
    }
    for disk in &mut disks {
        cut(disk);
    }
    // What the disks kept, before anything starts and could repair it: a trust entry that
    // comes back would let the removed member's certificate in again.
    let back: Vec<String> = (0..3).filter(|i| entry(*i).exists()).map(|i| cluster.members[i].name.clone()).collect();
    assert!(back.is_empty(), "the removal of m4 did not survive the power cut: truststore/m4.toml is back on {back:?}");
    for m in &mut cluster.members {
        restart(m);
    }
    for i in 0..3 {
        cluster.members[i].wait_ready(Duration::from_secs(60));
    }
    let names: Vec<String> =
        cluster.members[0].members().iter().filter_map(|m| m["name"].as_str().map(str::to_owned)).collect();
    assert_eq!(names, ["m1", "m2", "m3"], "after the power cut");
}
