//! `microctl cluster set-address`: a member moves to a new address while the others keep their
//! quorum and writers keep writing; refused changes change nothing; the only member of a
//! cluster moves; a member whose old address is taken by something else (a re-addressed
//! machine) moves through the others.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::time::Duration;

use microcluster_tests::checker::{self, Checker, unix_request};
use microcluster_tests::{Cluster, Member, free_address, wait_until};

const SETTLE: Duration = Duration::from_secs(60);

/// Waits until every one of `observers` lists member `name` at `address`, ONLINE, as `role`.
fn settled(observers: &[&Member], name: &str, address: &str, role: &str) {
    for observer in observers {
        wait_until(&format!("{} to list {name} at {address} as an ONLINE {role}", observer.name), SETTLE, || {
            let out = observer.ctl(&["cluster", "list", "--format", "json"]);
            let list: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).ok()?;
            let member = list.iter().find(|m| m["name"] == name)?;
            (member["address"] == address && member["status"] == "ONLINE" && member["role"] == role).then_some(())
        });
    }
}

/// Every member's view of the addresses: (observer, member, address).
fn addresses(cluster: &Cluster) -> Vec<(String, String, String)> {
    let mut seen = Vec::new();
    for observer in &cluster.members {
        for member in observer.members() {
            let field = |k: &str| member[k].as_str().unwrap_or_default().to_owned();
            seen.push((observer.name.clone(), field("name"), field("address")));
        }
    }
    seen
}

/// The address a member's own status reports.
fn own_address(member: &Member) -> String {
    let (status, body) = unix_request(&member.socket(), "GET", "/core/1.0", "", Duration::from_secs(5)).unwrap();
    assert_eq!(status, 200, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    value["metadata"]["address"].as_str().unwrap_or_default().to_owned()
}

/// The values of `kept.x`, read through `member`.
fn kept(member: &Member) -> Vec<String> {
    let out = checker::sql(&member.socket(), "SELECT x FROM kept ORDER BY rowid").unwrap();
    let rows = out["metadata"]["Results"][0]["rows"].as_array().cloned().unwrap_or_default();
    rows.iter().map(|r| r[0].as_str().unwrap_or_default().to_owned()).collect()
}

/// Stops a member gracefully and starts it again on the same state directory.
fn restart(member: &mut Member) {
    member.signal("TERM");
    assert!(member.wait_exit(Duration::from_secs(30)).is_some(), "{} did not stop", member.name);
    member.start();
    member.wait_ready(SETTLE);
}

fn assert_free(address: &str) {
    if let Err(err) = TcpListener::bind(address) {
        panic!("the old address {address} is still in use: {err}");
    }
}

#[test]
fn a_member_moves_while_writers_write_and_refusals_change_nothing() {
    let mut cluster = Cluster::form(3);
    let (old, new) = (cluster.members[1].address.clone(), free_address());
    settled(&[&cluster.members[0]], "m2", &old, "voter");

    // Refused: nothing may change.
    let before = addresses(&cluster);
    let m2 = &cluster.members[1];
    let taken = m2.ctl(&["cluster", "set-address", "m2", &cluster.members[2].address]);
    assert!(!taken.success && taken.stderr.contains("already used by member \"m3\""), "{taken:?}");
    for bad in ["127.0.0.1", "localhost:9001", "127.0.0.1:0", "0.0.0.0:9001", "127.0.0.1:09001"] {
        let out = m2.ctl(&["cluster", "set-address", "m2", bad]);
        assert!(!out.success && out.stderr.contains("invalid address"), "{bad}: {out:?}");
    }
    let elsewhere = cluster.members[0].ctl(&["cluster", "set-address", "m2", &new]);
    assert!(!elsewhere.success && elsewhere.stderr.contains("run the command on m2"), "{elsewhere:?}");
    let squatter = TcpListener::bind(free_address()).unwrap();
    let occupied = squatter.local_addr().unwrap().to_string();
    let busy = m2.ctl(&["cluster", "set-address", "m2", &occupied]);
    assert!(!busy.success && busy.stderr.contains(&format!("cannot listen on {occupied}")), "{busy:?}");
    assert_eq!(addresses(&cluster), before, "a refused change changed the membership");
    assert_eq!(own_address(m2), old);

    // The move, while writers write through m1 and m3.
    checker::create_table(&cluster.members[0].socket()).unwrap();
    let writers = Checker::start(vec![cluster.members[0].socket(), cluster.members[2].socket()]);
    wait_until("writes before the move", SETTLE, || (writers.acknowledged() >= 50).then_some(()));
    m2.ctl_ok(&["cluster", "set-address", "m2", &new]);
    let during = writers.acknowledged();
    wait_until("writes after the move", SETTLE, || (writers.acknowledged() >= during + 50).then_some(()));
    cluster.members[1].address = new.clone();
    let all: Vec<&Member> = cluster.members.iter().collect();
    settled(&all, "m2", &new, "voter");
    assert_eq!(own_address(&cluster.members[1]), new);

    // m2 answers at the new address (and reaches the others from there), not at the old one.
    let greeting = cluster.members[0].ctl_ok(&["extended", &new]);
    let from_new = format!("from cluster member at address {new:?}");
    assert_eq!(greeting.lines().filter(|l| l.contains(&from_new)).count(), 2, "{greeting}");
    let gone = cluster.members[0].ctl(&["extended", &old]);
    assert!(!gone.success, "something still answers at the old address: {gone:?}");

    // Writes through m2 work; nothing acknowledged before or during the move was lost.
    checker::sql(&cluster.members[1].socket(), "CREATE TABLE kept (x); INSERT INTO kept VALUES ('via m2')").unwrap();
    assert_eq!(kept(&cluster.members[0]), ["via m2"]);
    let history = writers.stop();
    let summary = checker::verify(&cluster.members[1].socket(), &history, true).unwrap();
    println!("{summary}");

    // A restart keeps the new address, and the old one is free.
    restart(&mut cluster.members[1]);
    let all: Vec<&Member> = cluster.members.iter().collect();
    settled(&all, "m2", &new, "voter");
    assert_eq!(own_address(&cluster.members[1]), new);
    assert_eq!(kept(&cluster.members[1]), ["via m2"]);
    assert_free(&old);

    // The leader moves too: it hands leadership over first.
    let leader = cluster.members[0].members().iter().find(|m| m["leader"] == true).map(|m| m["name"].clone());
    let leader = leader.and_then(|n| cluster.members.iter().position(|m| n == m.name.as_str())).unwrap();
    let (name, moved) = (cluster.members[leader].name.clone(), free_address());
    cluster.members[leader].ctl_ok(&["cluster", "set-address", &name, &moved]);
    cluster.members[leader].address = moved.clone();
    let all: Vec<&Member> = cluster.members.iter().collect();
    settled(&all, &name, &moved, "voter");
    checker::sql(&cluster.members[leader].socket(), "INSERT INTO kept VALUES ('via the old leader')").unwrap();
    assert_eq!(kept(&cluster.members[2]), ["via m2", "via the old leader"]);
}

#[test]
fn the_only_member_moves_running_and_stopped() {
    let mut cluster = Cluster::form(1);
    let m1 = &mut cluster.members[0];
    checker::sql(&m1.socket(), "CREATE TABLE kept (x); INSERT INTO kept VALUES ('before')").unwrap();

    // Running: it keeps its node and moves its one-node configuration.
    let (old, new) = (m1.address.clone(), free_address());
    m1.ctl_ok(&["cluster", "set-address", "m1", &new]);
    m1.address = new.clone();
    settled(&[m1], "m1", &new, "voter");
    assert_eq!(own_address(m1), new);
    checker::sql(&m1.socket(), "INSERT INTO kept VALUES ('after')").unwrap();
    restart(m1);
    settled(&[m1], "m1", &new, "voter");
    assert_eq!(kept(m1), ["before", "after"]);
    assert_free(&old);

    // Stopped: its address was taken while it was down, so it cannot start until it moves.
    m1.signal("TERM");
    assert!(m1.wait_exit(Duration::from_secs(30)).is_some());
    let squatter = TcpListener::bind(&new).unwrap();
    m1.start();
    assert!(!m1.ctl(&["waitready", "--timeout", "1"]).success, "m1 started on a taken address");
    let newer = free_address();
    m1.ctl_ok(&["cluster", "set-address", "m1", &newer]);
    m1.address = newer.clone();
    settled(&[m1], "m1", &newer, "voter");
    assert_eq!(kept(m1), ["before", "after"]);
    drop(squatter);
}

#[test]
fn a_member_whose_old_address_is_taken_moves_through_the_others() {
    let mut cluster = Cluster::form(3);
    let old = cluster.members[2].address.clone();
    checker::sql(&cluster.members[0].socket(), "CREATE TABLE kept (x); INSERT INTO kept VALUES ('before')").unwrap();
    settled(&[&cluster.members[0]], "m3", &old, "voter");

    // m3 stops; when it comes back, its old address belongs to something else.
    cluster.members[2].signal("TERM");
    assert!(cluster.members[2].wait_exit(Duration::from_secs(30)).is_some());
    checker::sql(&cluster.members[0].socket(), "INSERT INTO kept VALUES ('while m3 was down')").unwrap();

    // Meanwhile m2 may not move: m1 alone would be no quorum of the voters left.
    let before: Vec<_> = cluster.members[..2].iter().map(|m| m.members()).collect();
    let refused = cluster.members[1].ctl(&["cluster", "set-address", "m2", &free_address()]);
    assert!(!refused.success && refused.stderr.contains("without a quorum"), "{refused:?}");
    let after: Vec<_> = cluster.members[..2].iter().map(|m| m.members()).collect();
    let view = |lists: &[Vec<serde_json::Value>]| -> Vec<(String, String)> {
        lists.iter().flatten().map(|m| (m["address"].to_string(), m["role"].to_string())).collect()
    };
    assert_eq!(view(&after), view(&before), "a refused move changed the membership");
    let squatter = TcpListener::bind(&old).unwrap();
    cluster.members[2].start();
    assert!(!cluster.members[2].ctl(&["waitready", "--timeout", "1"]).success, "m3 started on a taken address");

    let new = free_address();
    cluster.members[2].ctl_ok(&["cluster", "set-address", "m3", &new]);
    cluster.members[2].address = new.clone();
    let all: Vec<&Member> = cluster.members.iter().collect();
    settled(&all, "m3", &new, "voter");
    assert_eq!(own_address(&cluster.members[2]), new);
    assert_eq!(kept(&cluster.members[2]), ["before", "while m3 was down"]);
    checker::sql(&cluster.members[2].socket(), "INSERT INTO kept VALUES ('via m3')").unwrap();
    assert_eq!(kept(&cluster.members[0]).last().map(String::as_str), Some("via m3"));
    cluster.members[0].ctl_ok(&["extended", &new]);
    drop(squatter);
}
