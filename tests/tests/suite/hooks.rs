//! Each row of the hooks table (`microcluster::Hooks`): the hook made to fail
//! (`MICROD_FAIL_HOOK`), and what its failure does, checked on every member. PreJoin and
//! PostBootstrap are in `library::failing_pre_join_and_post_bootstrap_hooks_leave_no_half_state`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use microcluster_tests::{Cluster, Member, free_address, wait_until};

fn failing(name: &str, hook: &str) -> Member {
    let mut member = Member::new(name);
    member.env.push(("MICROD_FAIL_HOOK".into(), hook.into()));
    member
}

fn names(member: &Member) -> Vec<String> {
    member.members().iter().map(|m| m["name"].as_str().unwrap().to_owned()).collect()
}

/// `joiner` is not initialised, and no member knows it.
fn left_no_trace(cluster: &Cluster, joiner: &Member) {
    for m in &cluster.members {
        assert_eq!(names(m), ["m1"], "{}", m.name);
        assert!(!m.dir.join(format!("truststore/{}.toml", joiner.name)).exists());
    }
    assert!(!joiner.dir.join("database").exists() && !joiner.dir.join("cluster.crt").exists());
}

#[test]
fn a_failing_daemon_start_hook_stops_the_daemon() {
    let mut member = failing("m1", "on-daemon-start");
    member.spawn();
    assert_eq!(member.exit_code(Duration::from_secs(20)), Some(1), "{}", member.log());
    assert!(member.log().contains("the OnDaemonStart hook failed"), "{}", member.log());
}

#[test]
fn a_failing_pre_init_hook_fails_init_and_changes_nothing() {
    let mut member = failing("m1", "pre-init");
    member.start();
    let out = member.ctl(&["init", "m1", &member.address, "--bootstrap"]);
    assert!(!out.success && out.stderr.contains("PreInit hook failed"), "{out:?}");
    assert!(!member.dir.join("cluster.crt").exists() && !member.dir.join("database").exists());
    let daemon = std::fs::read_to_string(member.dir.join("daemon.toml")).unwrap_or_default();
    assert!(!daemon.contains("m1"), "{daemon}");
}

#[test]
fn a_member_refusing_a_newcomer_undoes_the_join_everywhere() {
    let mut cluster = Cluster { members: vec![failing("m1", "on-new-member")] };
    cluster.members[0].start().bootstrap();
    let mut joiner = Member::new("m2");
    joiner.start();
    let token = cluster.members[0].ctl_ok(&["tokens", "add", "m2"]);
    let out = joiner.ctl(&["init", "m2", &joiner.address, "--token", token.trim()]);
    assert!(!out.success && out.stderr.contains("the on-new-member hook failed on m1"), "{out:?}");
    left_no_trace(&cluster, &joiner);
}

/// The joiner asks the member that admitted it, which runs OnNewMember and passes it on: a
/// member it passed it to refuses, runs it once, and is named.
#[test]
fn a_member_refusing_a_newcomer_through_the_admitting_member_undoes_the_join_everywhere() {
    let mut cluster = Cluster { members: vec![Member::new("m1"), failing("m2", "on-new-member")] };
    cluster.members[0].start().bootstrap();
    cluster.members[1].start();
    cluster.join(1, 0);
    let mut joiner = Member::new("m3");
    joiner.start();
    let token = cluster.members[0].ctl_ok(&["tokens", "add", "m3"]);
    let out = joiner.ctl(&["init", "m3", &joiner.address, "--token", token.trim()]);
    assert!(!out.success && out.stderr.contains("the on-new-member hook failed on m2"), "{out:?}");
    assert!(!out.stderr.contains("on m1"), "{out:?}");
    wait_until("m3 gone from every member", Duration::from_secs(20), || {
        cluster.members.iter().all(|m| !names(m).contains(&"m3".to_owned())).then_some(())
    });
    for m in &cluster.members {
        assert!(!m.dir.join("truststore/m3.toml").exists(), "{}", m.name);
    }
    // m3 asked m1, which passed the refusal on; m2's hook ran once.
    let asked = cluster.members[0].log();
    assert!(asked.contains("path=/core/internal/hooks/on-new-member/members status=500"), "{asked}");
    let log = cluster.members[1].log();
    assert_eq!(log.matches("on-new-member failed on purpose").count(), 1, "{log}");
}

#[test]
fn a_failing_post_join_hook_undoes_the_join_everywhere() {
    let cluster = Cluster::form(1);
    let mut joiner = failing("m2", "post-join");
    joiner.start();
    let token = cluster.members[0].ctl_ok(&["tokens", "add", "m2"]);
    let out = joiner.ctl(&["init", "m2", &joiner.address, "--token", token.trim()]);
    assert!(!out.success && out.stderr.contains("PostJoin hook failed"), "{out:?}");
    left_no_trace(&cluster, &joiner);
}

#[test]
fn a_failing_start_hook_undoes_a_bootstrap_and_stops_a_restarted_member() {
    let mut member = failing("m1", "on-start");
    member.start();
    let out = member.ctl(&["init", "m1", &member.address, "--bootstrap"]);
    assert!(!out.success && out.stderr.contains("OnStart hook failed"), "{out:?}");
    assert!(!member.dir.join("cluster.crt").exists());
    // Initialised without the failing hook, then restarted with it: the daemon stops.
    member.kill();
    member.env.clear();
    member.start().bootstrap();
    member.signal("TERM");
    assert!(member.wait_exit(Duration::from_secs(15)).is_some());
    member.env.push(("MICROD_FAIL_HOOK".into(), "on-start".into()));
    member.spawn();
    assert_eq!(member.exit_code(Duration::from_secs(30)), Some(1), "{}", member.log());
    assert!(member.log().contains("the OnStart hook failed"), "{}", member.log());
}

#[test]
fn a_failing_pre_remove_hook_refuses_the_removal_unless_forced() {
    let mut cluster = Cluster::form(1);
    let mut leaving = failing("m2", "pre-remove");
    leaving.start();
    cluster.join_member(&leaving, 0);
    cluster.members.push(leaving);
    let out = cluster.members[0].ctl(&["cluster", "remove", "m2"]);
    assert!(!out.success && out.stderr.contains("the pre-remove hook failed"), "{out:?}");
    assert_eq!(names(&cluster.members[0]), ["m1", "m2"]);
    cluster.members[0].ctl_ok(&["cluster", "remove", "m2", "--force"]);
    assert_eq!(names(&cluster.members[0]), ["m1"]);
}

#[test]
fn a_failing_post_remove_hook_is_reported_and_the_removal_stands() {
    let mut cluster = Cluster { members: vec![failing("m1", "post-remove")] };
    cluster.members[0].start().bootstrap();
    for name in ["m2", "m3"] {
        let mut member = Member::new(name);
        member.start();
        cluster.join_member(&member, 0);
        cluster.members.push(member);
    }
    let out = cluster.members[0].ctl(&["cluster", "remove", "m3"]);
    assert!(!out.success, "{out:?}");
    assert!(out.stderr.contains("the member was removed, but") && out.stderr.contains("PostRemove"), "{out:?}");
    assert_eq!(names(&cluster.members[0]), ["m1", "m2"]);
}

#[test]
fn the_heartbeat_hook_sees_role_changes_and_its_failure_changes_nothing() {
    let record = tempfile::NamedTempFile::new().unwrap();
    let path = record.path().display().to_string();
    let cluster = Cluster::start_with(4, |m| {
        m.env.push(("MICROD_FAIL_HOOK".into(), "on-heartbeat".into()));
        m.env.push(("MICROD_HOOK_FILE".into(), path.clone()));
    });
    cluster.members[0].bootstrap();
    for i in 1..4 {
        cluster.join(i, 0);
    }
    // Three voters and a stand-by; removing a voter has the next round promote the stand-by.
    assert_eq!(cluster.members[0].member("m4")["role"], "stand-by");
    cluster.members[0].ctl_ok(&["cluster", "remove", "m2"]);
    let line = wait_until("a heartbeat round that promotes m4", Duration::from_secs(20), || {
        let text = std::fs::read_to_string(record.path()).unwrap_or_default();
        text.lines().find(|l| l.contains(" on-heartbeat ") && l.contains("m4:stand-by->voter")).map(str::to_owned)
    });
    assert!(line.starts_with("m1 "), "only the leader runs it: {line}");
    assert_eq!(cluster.members[0].member("m4")["role"], "voter");
}

#[test]
fn a_failing_config_update_hook_is_reported_and_the_change_stands() {
    let mut cluster = Cluster::form(1);
    let mut other = failing("m2", "on-daemon-config-update");
    other.start();
    cluster.join_member(&other, 0);
    cluster.members.push(other);
    let greeter = free_address();
    let out = cluster.members[0].ctl(&["servers", "set", "greeter", &greeter]);
    assert!(!out.success, "{out:?}");
    assert!(out.stderr.contains("the listeners changed here, but") && out.stderr.contains("failed on m2"), "{out:?}");
    let listing = cluster.members[0].ctl_ok(&["servers", "list", "--format", "json"]);
    assert!(listing.contains(&greeter), "{listing}");
}

#[test]
fn a_failing_stop_hook_is_logged_and_the_daemon_stops_cleanly() {
    let mut member = failing("m1", "on-stop");
    member.start().bootstrap();
    member.signal("TERM");
    assert_eq!(member.exit_code(Duration::from_secs(20)), Some(0), "{}", member.log());
    assert!(member.log().contains("the OnStop hook failed"), "{}", member.log());
}
