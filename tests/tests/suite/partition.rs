//! Members on distinct hosts (network namespaces with their own addresses), and a partition that
//! cuts the leader off: the minority refuses writes with a clear error, the majority elects a
//! leader and keeps writing, and after healing nothing is lost. Needs root and `ip netns`;
//! elsewhere the test says why and does nothing.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use microcluster_tests::checker::{self, Checker};
use microcluster_tests::invariants::{Bank, ReadYourWrites};
use microcluster_tests::netns::{self, Network};
use microcluster_tests::{Cluster, Member, until_not_503, wait_until};

#[test]
fn three_hosts_survive_a_partition_of_the_leader() {
    if let Some(why) = netns::unavailable() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let net = Network::new(3).unwrap();
    // Members are dropped (killed) before the network, which is declared first.
    let mut members = Vec::new();
    for (i, (ns, ip)) in net.namespaces.iter().zip(&net.addresses).enumerate() {
        let mut m = Member::new(&format!("h{}", i + 1));
        m.address = format!("{ip}:9001");
        m.netns = Some(ns.clone());
        m.start();
        members.push(m);
    }
    let cluster = Cluster { members };
    cluster.members[0].bootstrap();
    cluster.join(1, 0);
    cluster.join(2, 0);
    let view = cluster.members[2].members();
    let addresses: Vec<&str> = view.iter().map(|m| m["address"].as_str().unwrap()).collect();
    assert_eq!(addresses, net.addresses.iter().map(|a| format!("{a}:9001")).collect::<Vec<_>>());
    assert!(view.iter().all(|m| m["status"] == "ONLINE" && m["role"] == "voter"), "{view:?}");

    // Make h1 the leader, then write through every member.
    cluster.members[0].ctl_ok(&["cluster", "transfer-leader", "h1"]);
    checker::create_table(&cluster.members[0].socket()).unwrap();
    let checker = Checker::start((0..4).map(|w| cluster.members[w % 3].socket()).collect());
    // The bank and read-your-writes run through every member, the one cut off included: no
    // read through it may come from before the majority's writes.
    let sockets: Vec<_> = cluster.members.iter().map(|m| m.socket()).collect();
    let bank = Bank::start(sockets.clone(), 5).unwrap();
    let ryw = ReadYourWrites::start(sockets).unwrap();
    wait_until("writes", Duration::from_secs(30), || (checker.acknowledged() > 50).then_some(()));

    net.cut(0).unwrap();
    let cut_at = Instant::now();
    // The majority elects a leader among itself and keeps writing.
    let base = checker.acknowledged();
    wait_until("the majority to write again", Duration::from_secs(30), || {
        (checker.acknowledged() > base + 50).then_some(())
    });
    eprintln!("majority writing again {:.2} s after the cut", cut_at.elapsed().as_secs_f64());
    // The minority refuses writes with a clear error rather than hanging.
    let start = Instant::now();
    let refused = checker::sql(&cluster.members[0].socket(), "INSERT INTO checker (writer, seq) VALUES (99, 1)");
    let took = start.elapsed();
    eprintln!("minority write refused after {:.2} s: {refused:?}", took.as_secs_f64());
    let err = refused.unwrap_err();
    assert!(err.contains("503"), "{err}");
    assert!(err.contains("leader") || err.contains("disk I/O") || err.contains("timed out"), "{err}");

    net.heal(0).unwrap();
    wait_until("h1 to be ONLINE again", Duration::from_secs(60), || {
        (cluster.members[1].member("h1")["status"] == "ONLINE").then_some(())
    });
    wait_until("h1 to take writes again", Duration::from_secs(60), || {
        checker::sql(&cluster.members[0].socket(), "INSERT INTO checker (writer, seq) VALUES (99, 2)").ok()
    });
    let history = checker.stop();
    let (bank, ryw) = (bank.stop(), ryw.stop());
    eprintln!(
        "bank: {} transfers, {} sums read, {} violations; read-your-writes: {} writes, {} reads, {} violations",
        bank.acknowledged,
        bank.reads,
        bank.violations.len(),
        ryw.acknowledged,
        ryw.reads,
        ryw.violations.len()
    );
    assert!(bank.violations.is_empty(), "bank: {:?}", bank.violations);
    assert!(ryw.violations.is_empty(), "read-your-writes: {:?}", ryw.violations);
    // The two probe writes above are not the writers': drop them before checking.
    let socket = |i: usize| cluster.members[i].socket();
    until_not_503("dropping the probes", || checker::sql(&socket(1), "DELETE FROM checker WHERE writer = 99"));
    let summary = until_not_503("checking the history", || checker::verify(&socket(0), &history, true));
    eprintln!("partition and heal: {summary}");
    drop(cluster);
    drop(net);
}
