//! After a burst of writes a member gives back, once quiet again, the memory its node freed
//! (libraft's log entries after each snapshot, which glibc would keep mapped): once per quiet
//! spell, never during the burst. That the call gives memory back is tested on its own in
//! `crates/dqlite/tests/memory.rs`; how much a member holds that is free at the end of a burst
//! depends on when its last snapshot fell (1-90 MiB in these runs), so it is printed here,
//! not asserted.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use microcluster_tests::{Cluster, checker, wait_until};

const RELEASES: &str = "microcluster_memory_releases_total ";

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_member_gives_back_freed_memory_once_after_a_burst_of_writes() {
    let cluster = Cluster::form(1);
    let member = &cluster.members[0];
    let pid = member.pid().unwrap();
    let socket = member.socket();
    checker::sql(&socket, "CREATE TABLE m (k INTEGER PRIMARY KEY, v BLOB)").unwrap();
    let at_start = member.metric(RELEASES);
    // 4 writers for 8 s, 8 KiB a row: more than a whole 5 s period busy, and thousands of raft
    // entries, each holding the pages its write changed until a snapshot (every 512 entries,
    // 512 kept) lets libraft free it.
    let until = Instant::now() + Duration::from_secs(8);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while Instant::now() < until {
                    let sql = format!("INSERT INTO m VALUES ({}, randomblob(8192))", w * 1_000_000 + i);
                    checker::sql(&socket, &sql).unwrap();
                    i += 1;
                }
                i
            })
        })
        .collect();
    // A release may end the quiet spell of start-up, but none comes once the burst has
    // filled a whole period.
    std::thread::sleep(Duration::from_secs(6));
    let during = member.metric(RELEASES);
    let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(member.metric(RELEASES), during, "a release while the member was busy writing");
    assert!(during <= at_start + 1, "{} releases before the burst was over", during - at_start);
    let mut peak = resident_kib(pid);
    eprintln!("{written} writes; resident {peak} KiB");
    // Within two quiet periods the member releases, and only once while it stays quiet. Each
    // look is a metrics request, which costs the member CPU: one a second keeps it quiet.
    wait_until("a release after the burst", Duration::from_secs(20), || {
        if member.metric(RELEASES) > during {
            return Some(());
        }
        peak = peak.max(resident_kib(pid));
        std::thread::sleep(Duration::from_secs(1));
        None
    });
    let quiet = resident_kib(pid);
    eprintln!("resident {quiet} KiB after the release, {peak} KiB at most before it");
    let released = member.metric(RELEASES);
    assert_eq!(released, during + 1);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(member.metric(RELEASES), released, "released again with nothing done since");
    assert!(quiet <= peak, "resident {peak} KiB at most before the release, {quiet} KiB after it");
    drop(cluster);
}
