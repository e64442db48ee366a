//! Jepsen-style invariants under faults: a bank (total money constant in every read and at the
//! end) and read-your-writes across members (an acknowledged write read at once through every
//! other member), while leaders are killed and frozen and members restart. The checkers are
//! proven able to fail first.
//!
//! `make test` runs a few faults; `make test-faults` (`MICROCLUSTER_FAULTS=full`) runs more.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use microcluster_tests::invariants::{Bank, ReadYourWrites};
use microcluster_tests::{Cluster, checker, wait_until};

fn full() -> bool {
    std::env::var("MICROCLUSTER_FAULTS").is_ok_and(|v| v == "full")
}

#[test]
fn the_bank_and_read_your_writes_checkers_catch_violations() {
    let cluster = Cluster::form(1);
    let socket = cluster.members[0].socket();
    // Money made out of nothing: every later read, and the final sum, is wrong.
    let bank = Bank::start(vec![socket.clone()], 5).unwrap();
    wait_until("transfers", Duration::from_secs(30), || (bank.acknowledged() >= 20).then_some(()));
    checker::sql(&socket, "UPDATE bank SET balance = balance + 1 WHERE id = 1").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let report = bank.stop();
    assert!(report.violations.iter().any(|v| v.contains("holding 501")), "{:?}", report.violations);
    assert!(report.violations.iter().any(|v| v.starts_with("final sum")), "{:?}", report.violations);
    // An acknowledged row that a read then misses (deleted behind the writer's back).
    let tamper_socket = socket.clone();
    let ryw = ReadYourWrites::start_tampering(vec![socket.clone()], move |writer, seq| {
        if seq == 3 {
            let delete = format!("DELETE FROM ryw WHERE writer = {writer} AND seq = {seq}");
            checker::sql(&tamper_socket, &delete).unwrap();
        }
    })
    .unwrap();
    wait_until("read-your-writes rounds", Duration::from_secs(30), || (ryw.acknowledged() >= 5).then_some(()));
    let report = ryw.stop();
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    assert!(report.violations[0].contains("acknowledged row 3 read through"), "{:?}", report.violations);
}

#[test]
fn the_bank_and_read_your_writes_hold_under_faults() {
    let rounds = if full() { 20 } else { 3 };
    let mut cluster = Cluster::form(3);
    let sockets: Vec<_> = cluster.members.iter().map(|m| m.socket()).collect();
    let bank = Bank::start(sockets.clone(), 5).unwrap();
    let ryw = ReadYourWrites::start(sockets).unwrap();
    let flowing = |bank: &Bank, ryw: &ReadYourWrites| {
        let (b, r) = (bank.acknowledged(), ryw.acknowledged());
        wait_until("transfers and writes to flow", Duration::from_secs(60), || {
            (bank.acknowledged() >= b + 10 && ryw.acknowledged() >= r + 10).then_some(())
        });
    };
    flowing(&bank, &ryw);
    let started = Instant::now();
    let mut faults = Vec::new();
    for round in 0..rounds {
        let leader = cluster.leader();
        match round % 4 {
            0 => {
                cluster.members[leader].kill();
                flowing(&bank, &ryw);
                cluster.members[leader].start();
                faults.push("leader killed");
            }
            1 => {
                cluster.members[leader].signal("STOP");
                std::thread::sleep(Duration::from_secs(3));
                cluster.members[leader].signal("CONT");
                faults.push("leader frozen 3 s");
            }
            2 => {
                let follower = (leader + 1) % 3;
                cluster.members[follower].signal("STOP");
                std::thread::sleep(Duration::from_secs(2));
                cluster.members[follower].signal("CONT");
                faults.push("follower frozen 2 s");
            }
            _ => {
                let follower = (leader + 2) % 3;
                cluster.members[follower].signal("TERM");
                assert!(cluster.members[follower].wait_exit(Duration::from_secs(30)).is_some(), "did not stop");
                cluster.members[follower].start();
                faults.push("follower restarted");
            }
        }
        flowing(&bank, &ryw);
        eprintln!("round {round}: {}", faults.last().unwrap());
    }
    let bank = bank.stop();
    let ryw = ryw.stop();
    eprintln!(
        "{} faults in {:.0} s: bank {} transfers, {} sums read, {} failed, {} violations; \
         read-your-writes {} writes, {} reads, {} failed, {} violations",
        faults.len(),
        started.elapsed().as_secs_f64(),
        bank.acknowledged,
        bank.reads,
        bank.failed,
        bank.violations.len(),
        ryw.acknowledged,
        ryw.reads,
        ryw.failed,
        ryw.violations.len()
    );
    assert!(bank.violations.is_empty(), "bank: {:?}", bank.violations);
    assert!(ryw.violations.is_empty(), "read-your-writes: {:?}", ryw.violations);
}
