//! After a burst of writes a member gives back, once quiet again, the memory its node freed
//! (libraft's log entries after each snapshot, which glibc would keep mapped).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use microcluster_tests::{Cluster, checker, wait_until};

const RELEASES: &str = "microcluster_memory_releases_total ";

fn resident_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_member_gives_back_what_a_burst_of_writes_left_behind() {
    let cluster = Cluster::form(1);
    let member = &cluster.members[0];
    let pid = member.pid().unwrap();
    let socket = member.socket();
    checker::sql(&socket, "CREATE TABLE m (k INTEGER PRIMARY KEY, v BLOB)").unwrap();
    // 4 writers for 4 s, 8 KiB a row: busy enough for the member's 5 s period to count as busy,
    // and thousands of raft entries, each holding the pages its write changed until a snapshot
    // (every 512 entries, 512 kept) lets libraft free it.
    let until = Instant::now() + Duration::from_secs(4);
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
    let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let before = member.metric(RELEASES);
    // The most the member held before its release: right after the burst, or later (the node
    // may still be taking a snapshot, which allocates a copy of the database).
    let mut peak = resident_kib(pid);
    eprintln!("{written} writes; resident {peak} KiB; {before} releases so far");
    // Within two periods of quiet the member releases, and holds less than it did.
    let releases = wait_until("a release after the burst", Duration::from_secs(20), || {
        let now = member.metric(RELEASES);
        if now > before {
            return Some(now);
        }
        peak = peak.max(resident_kib(pid));
        None
    });
    let quiet = resident_kib(pid);
    eprintln!("{releases} releases; resident {quiet} KiB, {peak} KiB at most before");
    assert!(quiet + 8 * 1024 <= peak, "resident {peak} KiB at most before the release, {quiet} KiB after it");
    drop(cluster);
}
