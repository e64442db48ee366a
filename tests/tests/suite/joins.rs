//! Members joining at the same time: every join succeeds (a heartbeat round that read the
//! membership before an admission must not make the others drop the newcomer's trust), and the
//! roles settle to 3 voters and 3 stand-bys.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use microcluster_tests::{Cluster, Member, wait_until};

#[test]
fn five_members_joining_at_once_all_succeed_and_roles_settle() {
    // Heartbeats every second (the harness's default) so that rounds overlap the joins.
    let cluster = Cluster::form(1);
    let mut joiners: Vec<Member> = (2..=6).map(|i| Member::new(&format!("m{i}"))).collect();
    for joiner in &mut joiners {
        joiner.start();
    }
    let tokens: Vec<String> =
        joiners.iter().map(|j| cluster.members[0].ctl_ok(&["tokens", "add", &j.name]).trim().to_owned()).collect();
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = joiners
            .iter()
            .zip(&tokens)
            .map(|(joiner, token)| {
                scope.spawn(move || joiner.ctl(&["init", &joiner.name, &joiner.address, "--token", token]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (joiner, out) in joiners.iter().zip(&outcomes) {
        assert!(out.success, "{} failed to join: {}\n--- its log ---\n{}", joiner.name, out.stderr, joiner.log());
    }
    let roles = wait_until("3 voters and 3 stand-bys, all ONLINE", Duration::from_secs(60), || {
        let members = cluster.members[0].members();
        let count = |role: &str| members.iter().filter(|m| m["role"] == role).count();
        let online = members.iter().all(|m| m["status"] == "ONLINE");
        (members.len() == 6 && online && count("voter") == 3 && count("stand-by") == 3).then_some(members)
    });
    // Every member comes to trust every other one: a member still busy joining when a later
    // joiner was admitted misses the admission's notice and learns it from the next heartbeat.
    let names: Vec<String> = roles.iter().map(|m| m["name"].as_str().unwrap().to_owned()).collect();
    for member in cluster.members.iter().chain(&joiners) {
        wait_until(&format!("{} trusts all six members", member.name), Duration::from_secs(30), || {
            names.iter().all(|name| member.dir.join(format!("truststore/{name}.toml")).exists()).then_some(())
        });
    }
}

#[test]
fn members_joining_at_once_get_exact_roles_without_waiting_for_a_heartbeat() {
    // No heartbeat round during the test: the roles are what the joins chose.
    let quiet = |m: &mut Member| m.args = vec!["--debug".into(), "--heartbeat".into(), "1h".into()];
    let cluster = Cluster::start_with(1, quiet);
    cluster.members[0].bootstrap();
    let mut joiners: Vec<Member> = (2..=7).map(|i| Member::new(&format!("m{i}"))).collect();
    for joiner in &mut joiners {
        quiet(joiner);
        joiner.start();
    }
    let tokens: Vec<String> =
        joiners.iter().map(|j| cluster.members[0].ctl_ok(&["tokens", "add", &j.name]).trim().to_owned()).collect();
    std::thread::scope(|scope| {
        for (joiner, token) in joiners.iter().zip(&tokens) {
            scope.spawn(move || joiner.ctl_ok(&["init", &joiner.name, &joiner.address, "--token", token]));
        }
    });
    let members = cluster.members[0].members();
    let count = |role: &str| members.iter().filter(|m| m["role"] == role).count();
    assert_eq!((count("voter"), count("stand-by"), count("spare")), (3, 3, 1), "{members:#?}");
}
