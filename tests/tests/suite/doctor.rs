//! `microctl doctor` on real members: a healthy cluster is all OK; drift induced in a trust
//! store, in a role and by a deleted row is reported by `--check` without changing anything,
//! then repaired, and the next run is clean.
//!
//! The members run with an hour between heartbeats: every round re-syncs trust stores and
//! roles from the database, which would repair the drift before the doctor sees it.
#![allow(clippy::unwrap_used)]

use microcluster::api::{DoctorReport, doctor_status};
use microcluster_tests::{Cluster, CtlOutput, Member};

/// `n` members, formed like [`Cluster::form`], whose leader does not heartbeat during the test.
fn quiet_cluster(n: usize) -> Cluster {
    let cluster = Cluster::start_with(n, |m| m.args = ["--debug", "--heartbeat", "1h"].map(String::from).to_vec());
    cluster.members[0].bootstrap();
    for i in 1..n {
        cluster.join(i, 0);
    }
    cluster
}

/// `microctl doctor -f json ARGS` on `member`, and the report it printed.
fn doctor(member: &Member, args: &[&str]) -> (CtlOutput, DoctorReport) {
    let args: Vec<&str> = ["doctor", "-f", "json"].into_iter().chain(args.iter().copied()).collect();
    let out = member.ctl(&args);
    let report = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor on {}: {e}: {out:?}\n--- log ---\n{}", member.name, member.log()));
    (out, report)
}

/// The (check, member) pairs of the results with `status`.
fn with(report: &DoctorReport, status: &str) -> Vec<(String, String)> {
    report.checks.iter().filter(|c| c.status == status).map(|c| (c.check.clone(), c.member.clone())).collect()
}

fn pair(check: &str, member: &str) -> (String, String) {
    (check.to_owned(), member.to_owned())
}

/// Asserts a clean run in the table format: every result OK, exit 0.
fn assert_clean(member: &Member) -> DoctorReport {
    let out = member.ctl(&["doctor"]);
    assert!(out.success && out.stdout.ends_with("\n0 problems, 0 repaired\n"), "{out:?}");
    let (_, report) = doctor(member, &[]);
    assert!(report.checks.iter().all(|c| c.status == doctor_status::OK), "{report:#?}");
    report
}

/// A client of the member at `address` with `member`'s own certificate.
fn by_name<'c>(cluster: &'c Cluster, name: &str) -> &'c Member {
    cluster.members.iter().find(|m| m.name == name).unwrap()
}

#[test]
fn trust_store_and_role_drift_is_reported_by_check_and_repaired() {
    let cluster = quiet_cluster(3);
    let report = assert_clean(&cluster.members[1]);
    assert_eq!(report.checks.iter().filter(|c| c.check == "row-has-node").count(), 3, "{report:#?}");
    // Drift on a member that does not lead, about another that does not lead either (a member
    // that distrusts the leader refuses the doctor's questions).
    let others: Vec<&Member> = cluster.members.iter().filter(|m| m.name != report.leader).collect();
    let (leader, victim, stranger) = (by_name(&cluster, &report.leader), others[0], others[1]);

    // The victim stops trusting the stranger: a notification, so it tells no one else.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = leader.client_to(&victim.address).as_notification();
    rt.block_on(client.remove_trust(&stranger.name)).unwrap();
    let entry = victim.dir.join(format!("truststore/{}.toml", stranger.name));
    assert!(!entry.exists());

    // --check reports it, changes nothing and fails.
    let (out, report) = doctor(stranger, &["--check"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(with(&report, doctor_status::PROBLEM), [pair("trust-store", &victim.name)], "{report:#?}");
    assert_eq!((report.problems, report.repaired, report.repair), (1, 0, false));
    assert!(out.stderr.contains("1 problems, 0 repaired (--check: nothing was changed)"), "{out:?}");
    assert!(!entry.exists());

    // Repaired through the victim's trust endpoint, then clean.
    let (out, report) = doctor(leader, &[]);
    assert!(out.success, "{out:?}");
    assert_eq!(with(&report, doctor_status::REPAIRED), [pair("trust-store", &victim.name)], "{report:#?}");
    assert_eq!((report.problems, report.repaired), (0, 1));
    assert!(entry.exists());
    let trusted = rt.block_on(leader.client_to(&victim.address).truststore()).unwrap();
    assert!(trusted.iter().any(|m| m.name == stranger.name && m.address == stranger.address), "{trusted:?}");
    assert_clean(leader);

    // A role changed by hand in the table is put back from dqlite's configuration.
    let set = format!("UPDATE core_cluster_members SET role = 'spare' WHERE name = '{}'", stranger.name);
    leader.ctl_ok(&["sql", &set]);
    let (out, report) = doctor(victim, &["--check"]);
    assert_eq!((out.code, with(&report, doctor_status::PROBLEM)), (Some(1), vec![pair("role", &stranger.name)]));
    let (out, report) = doctor(victim, &[]);
    assert!(out.success, "{out:?}");
    assert_eq!(with(&report, doctor_status::REPAIRED), [pair("role", &stranger.name)], "{report:#?}");
    let get = format!("SELECT role FROM core_cluster_members WHERE name = '{}'", stranger.name);
    let role = leader.ctl_ok(&["sql", &get]);
    assert!(role.contains("| voter "), "{role}");
    assert_clean(stranger);
}

#[test]
fn a_member_without_a_row_is_distrusted_then_its_node_removed() {
    let cluster = quiet_cluster(3);
    let report = assert_clean(&cluster.members[0]);
    let leader = by_name(&cluster, &report.leader);
    let others: Vec<&Member> = cluster.members.iter().filter(|m| m.name != report.leader).collect();
    let (gone, other) = (others[0], others[1]);
    leader.ctl_ok(&["sql", &format!("DELETE FROM core_cluster_members WHERE name = '{}'", gone.name)]);

    // First the trust entries go (the table says who is a member); the node is still trusted
    // when the run starts, so it stays a problem.
    let (out, report) = doctor(other, &[]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let mut repaired = with(&report, doctor_status::REPAIRED);
    repaired.sort();
    assert_eq!(repaired, [pair("leader-trust-store", &leader.name), pair("trust-store", &other.name)], "{report:#?}");
    assert_eq!(with(&report, doctor_status::PROBLEM), [pair("node-has-row", &gone.address)], "{report:#?}");
    for member in [leader, other] {
        assert!(!member.dir.join(format!("truststore/{}.toml", gone.name)).exists(), "{}", member.name);
    }

    // Then the orphan node: a voter, but the two others are online and make a quorum.
    let (out, report) = doctor(leader, &[]);
    assert!(out.success, "{out:?}");
    assert_eq!(with(&report, doctor_status::REPAIRED), [pair("node-has-row", &gone.address)], "{report:#?}");
    let report = assert_clean(other);
    assert_eq!(report.checks.iter().filter(|c| c.check == "node-has-row").count(), 2, "{report:#?}");
    // The two left still take writes.
    leader.ctl_ok(&["sql", "CREATE TABLE after_doctor (x)"]);
}
