//! Quorum-loss recovery with `microctl cluster recover`: a cluster that lost most of its voters
//! for good is brought back from its survivors, with every committed row, without copying any
//! database file by hand. Also what it refuses: a running daemon, a cluster that still has a
//! leader, an undecided operator.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use microcluster_tests::checker::{self, Checker};
use microcluster_tests::{Cluster, Member, wait_until};

fn rows(member: &Member, sql: &str) -> serde_json::Value {
    checker::sql(&member.socket(), sql).unwrap()["metadata"]["Results"][0]["rows"].clone()
}

/// Writes under load through every member, makes `leader` the leader, stops the writers and
/// returns their history.
fn write_some(cluster: &Cluster, leader: &str) -> checker::History {
    let m1 = &cluster.members[0];
    m1.ctl_ok(&["cluster", "transfer-leader", leader]);
    checker::create_table(&m1.socket()).unwrap();
    let writers = Checker::start(cluster.members.iter().map(Member::socket).collect());
    wait_until("writes", Duration::from_secs(30), || (writers.acknowledged() > 200).then_some(()));
    writers.stop()
}

#[test]
fn a_lone_survivor_recovers_with_every_committed_row() {
    let mut cluster = Cluster::form(3);
    let history = write_some(&cluster, "m1");

    // A member that is down while the others keep quorum has nothing to recover.
    cluster.members[2].kill();
    let out = cluster.members[2].ctl(&["cluster", "recover", "--yes"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("has not lost its quorum"), "{}", out.stderr);
    // Nor does a running one.
    let out = cluster.members[0].ctl(&["cluster", "recover", "--yes"]);
    assert!(out.stderr.contains("microd is running"), "{}", out.stderr);

    // Disaster: every daemon dies, and m2 and m3 are lost for good.
    for member in &mut cluster.members {
        member.kill();
    }
    std::fs::remove_dir_all(&cluster.members[1].dir).unwrap();
    std::fs::remove_dir_all(&cluster.members[2].dir).unwrap();
    let m1 = &mut cluster.members[0];
    let out = m1.ctl(&["cluster", "recover"]);
    assert_eq!(out.code, Some(1), "without a terminal it needs --yes: {out:?}");
    assert!(out.stderr.contains("--yes keeps m1"), "{}", out.stderr);
    let planned = m1.ctl_ok(&["cluster", "recover", "--yes"]);
    for expected in
        ["this member (stopped)", "unreachable", "survivors m1 (voter); dropped m2, m3", "start microd on m1"]
    {
        assert!(planned.contains(expected), "{expected:?} in:\n{planned}");
    }
    assert!(m1.dir.join("recovery.json").is_file());

    // The daemon applies the plan at start: alone, it leads and writes.
    m1.start();
    m1.wait_ready(Duration::from_secs(30));
    let summary = checker::verify(&m1.socket(), &history, true).unwrap();
    eprintln!("after recovery: {summary}");
    wait_until("the dropped members' rows to go", Duration::from_secs(30), || {
        let members = m1.members();
        (members.len() == 1).then_some(members)
    });
    let me = m1.member("m1");
    assert_eq!((me["role"].as_str(), me["status"].as_str()), (Some("voter"), Some("ONLINE")), "{me}");
    m1.ctl_ok(&["sql", "INSERT INTO extended_table (key, value) VALUES ('after', 'recovery')"]);
    assert!(!m1.dir.join("recovery.json").exists());
    assert!(m1.dir.join("recovery.applied.json").is_file());
    assert!(
        std::fs::read_dir(&m1.dir)
            .unwrap()
            .flatten()
            .any(|e| { e.file_name().to_string_lossy().starts_with("database.before-recovery-") })
    );
    assert!(!m1.dir.join("truststore/m2.toml").exists(), "dropped members are no longer trusted");

    // The cluster grows again, and a restart does not apply the plan twice.
    let mut m4 = Member::new("m4");
    m4.start();
    let token = m1.ctl_ok(&["tokens", "add", "m4"]);
    m4.ctl_ok(&["init", "m4", &m4.address.clone(), "--token", token.trim()]);
    assert_eq!(rows(&m4, "SELECT count(*) FROM extended_table WHERE key = 'after'"), serde_json::json!([[1]]));
    m1.signal("TERM");
    m1.wait_exit(Duration::from_secs(20));
    m1.start();
    m1.wait_ready(Duration::from_secs(30));
    assert_eq!(m1.members().len(), 2);
}

#[test]
fn survivors_that_still_run_are_handed_the_plan() {
    // 5 members: m1..m3 voters, m4 and m5 stand-bys.
    let mut cluster = Cluster::form(5);
    let roles: Vec<String> =
        cluster.members[0].members().iter().map(|m| m["role"].as_str().unwrap().to_owned()).collect();
    assert_eq!(roles, ["voter", "voter", "voter", "stand-by", "stand-by"]);
    let history = write_some(&cluster, "m1");

    // Two voters die at once and for good: no quorum is left.
    cluster.members[1].kill();
    cluster.members[2].kill();
    cluster.members[0].kill();
    let m4_socket = cluster.members[3].socket();
    let refused = checker::sql(&m4_socket, "INSERT INTO extended_table (key, value) VALUES ('x', 'y')");
    assert!(refused.is_err(), "{refused:?}");

    let m1 = &cluster.members[0];
    let planned = m1.ctl_ok(&["cluster", "recover", "--survivor", "m1", "--survivor", "m4", "--survivor", "m5"]);
    assert!(planned.contains("survivors m1 (voter), m4 (voter), m5 (voter); dropped m2, m3"), "{planned}");
    assert!(planned.contains("running, no leader"), "{planned}");

    cluster.members[0].start();
    for i in [0, 3, 4] {
        cluster.members[i].wait_ready(Duration::from_secs(60));
    }
    let m1 = &cluster.members[0];
    let members = wait_until("the three survivors ONLINE as voters", Duration::from_secs(60), || {
        let members = m1.members();
        (members.len() == 3 && members.iter().all(|m| m["status"] == "ONLINE" && m["role"] == "voter"))
            .then_some(members)
    });
    let names: Vec<&str> = members.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["m1", "m4", "m5"]);
    checker::verify(&m4_socket, &history, true).unwrap();
    cluster.members[4].ctl_ok(&["sql", "INSERT INTO extended_table (key, value) VALUES ('through', 'm5')"]);
    for i in [3, 4] {
        assert!(cluster.members[i].dir.join("recovery.applied.json").is_file(), "m{} applied the plan", i + 1);
    }
}
