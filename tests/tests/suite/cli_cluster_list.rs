//! `microctl cluster list` beyond this member's control socket: through another member's
//! address (mutual TLS with this member's certificates), from this member's own files
//! (`--local`: the last raft configuration and the trust store, with the daemon running, stopped
//! gracefully or killed), the compact format, and the errors for a bad address or a member that
//! is not initialised.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use microcluster_tests::{Cluster, CtlOutput, Member, free_address, wait_until};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(60);

fn assert_code(out: &CtlOutput, code: i32) {
    assert_eq!(out.code, Some(code), "{out:?}");
}

/// The member's dqlite node id, from `database/node.toml` (`id = "N"`).
fn node_id(member: &Member) -> u64 {
    let text = std::fs::read_to_string(member.dir.join("database/node.toml")).unwrap();
    let line = text.lines().find_map(|l| l.strip_prefix("id = ")).unwrap_or_else(|| panic!("no id in {text:?}"));
    line.trim_matches('"').parse().unwrap()
}

/// (name, address) of every member in a `cluster list -f json` document.
fn names_and_addresses(json: &str) -> BTreeSet<(String, String)> {
    let list: Vec<Value> = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    list.iter().map(|m| (m["name"].as_str().unwrap().to_owned(), m["address"].as_str().unwrap().to_owned())).collect()
}

/// (id, name, address, role) of every member in a `cluster list --local -f json` document.
fn local_rows(json: &str) -> Vec<(u64, String, String, String)> {
    let list: Vec<Value> = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    list.iter()
        .map(|m| {
            let text = |k: &str| m[k].as_str().unwrap_or_else(|| panic!("no {k} in {m}")).to_owned();
            (m["id"].as_u64().unwrap(), text("name"), text("address"), text("role"))
        })
        .collect()
}

/// A compact table: no border or rule characters, the header's titles, then one row per member
/// whose first column is one of `first_column`.
fn assert_compact(text: &str, header: &[&str], first_column: &BTreeSet<String>) {
    assert!(!text.contains(['|', '+', '-', '=']), "border characters in\n{text}");
    assert!(text.lines().all(|l| l == l.trim()), "leading or trailing spaces in\n{text}");
    let mut lines = text.lines();
    // Titles are single words here, so splitting on whitespace recovers them.
    let titles: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(titles, header, "{text}");
    let firsts: BTreeSet<String> = lines.map(|l| l.split_whitespace().next().unwrap().to_owned()).collect();
    assert_eq!(&firsts, first_column, "{text}");
    assert_eq!(text.lines().count(), 1 + first_column.len(), "{text}");
}

#[test]
fn cluster_list_through_another_member_from_local_files_and_compact() {
    let mut cluster = Cluster::form(3);
    let expected: BTreeSet<(String, String)> =
        cluster.members.iter().map(|m| (m.name.clone(), m.address.clone())).collect();
    let names: BTreeSet<String> = expected.iter().map(|(name, _)| name.clone()).collect();
    wait_until("three ONLINE voters", SETTLE, || {
        let members = cluster.members[0].members();
        (members.len() == 3 && members.iter().all(|m| m["status"] == "ONLINE" && m["role"] == "voter")).then_some(())
    });
    let (m1, m2, m3) = (&cluster.members[0], &cluster.members[1], &cluster.members[2]);

    // Through another member's address, authenticated with m1's certificates: every member, in
    // JSON, as a table and compact.
    assert_eq!(names_and_addresses(&m1.ctl_ok(&["cluster", "list", &m2.address, "-f", "json"])), expected);
    let table = m1.ctl_ok(&["cluster", "list", &m2.address]);
    assert!(table.starts_with("+-") && names.iter().all(|n| table.contains(&format!("| {n} "))), "{table}");
    let compact = m3.ctl_ok(&["cluster", "list", &m1.address, "--format", "compact"]);
    assert_compact(&compact, &["NAME", "ADDRESS", "ROLE", "FINGERPRINT", "STATUS"], &names);
    // The local listing in the compact format too.
    assert_compact(
        &m1.ctl_ok(&["cluster", "list", "-f", "compact"]),
        &["NAME", "ADDRESS", "ROLE", "FINGERPRINT", "STATUS"],
        &names,
    );

    // --local: node ids, names, addresses and roles from m2's raft log and trust store, while
    // its daemon runs.
    let ids: Vec<(u64, String, String)> =
        cluster.members.iter().map(|m| (node_id(m), m.name.clone(), m.address.clone())).collect();
    let mut want: Vec<(u64, String, String, String)> =
        ids.iter().map(|(id, name, address)| (*id, name.clone(), address.clone(), "voter".to_owned())).collect();
    want.sort();
    assert_eq!(local_rows(&m2.ctl_ok(&["cluster", "list", "--local", "-f", "json"])), want);
    let ids_only: BTreeSet<String> = ids.iter().map(|(id, _, _)| id.to_string()).collect();
    let compact = m2.ctl_ok(&["cluster", "list", "-l", "-f", "compact"]);
    assert_compact(&compact, &["ID", "NAME", "ADDRESS", "ROLE"], &ids_only);
    let table = m2.ctl_ok(&["cluster", "list", "--local"]);
    assert!(table.starts_with("+-") && table.contains(" ID "), "{table}");
    assert!(
        ids.iter().all(|(id, name, _)| table.contains(&format!("| {id} ")) && table.contains(&format!("| {name} "))),
        "{table}"
    );
    let m1_address = m1.address.clone();

    // Stopped gracefully, m2 still lists the same members from its files; its socket is gone.
    let m2 = &mut cluster.members[1];
    m2.signal("TERM");
    assert!(m2.wait_exit(SETTLE).is_some(), "m2 did not stop");
    assert_code(&m2.ctl(&["cluster", "list"]), 3);
    let stopped = local_rows(&m2.ctl_ok(&["cluster", "list", "--local", "-f", "json"]));
    let without_roles = |rows: &[(u64, String, String, String)]| {
        rows.iter().map(|(id, name, address, _)| (*id, name.clone(), address.clone())).collect::<Vec<_>>()
    };
    assert_eq!(without_roles(&stopped), without_roles(&want), "{stopped:?}");
    assert!(
        stopped.iter().all(|(_, _, _, role)| ["voter", "stand-by", "spare"].contains(&role.as_str())),
        "{stopped:?}"
    );
    // Its certificates still reach the others: the list through m1 answers without m2's daemon.
    assert_eq!(names_and_addresses(&m2.ctl_ok(&["cluster", "list", &m1_address, "-f", "json"])), expected);

    // Killed (its open segment as the crash left it), with the cluster's quorum gone: m3 too.
    let m3 = &mut cluster.members[2];
    m3.kill();
    let killed = local_rows(&m3.ctl_ok(&["cluster", "list", "--local", "-f", "json"]));
    assert_eq!(without_roles(&killed), without_roles(&want), "{killed:?}");

    // Bad addresses: nobody listening (unreachable, 3, in one line), not an address (usage, 2,
    // saying what is wrong), an address with --local (usage, 2).
    let m1 = &cluster.members[0];
    let nobody = free_address();
    let out = m1.ctl(&["cluster", "list", &nobody]);
    assert_code(&out, 3);
    assert!(
        out.stderr.starts_with(&format!("Error: listing the members through {nobody}: cannot reach https://{nobody}")),
        "{out:?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    for bad in ["not-an-address", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999"] {
        let out = m1.ctl(&["cluster", "list", bad]);
        assert_code(&out, 2);
        assert!(
            out.stderr.contains(&format!("invalid value '{bad}'")) && out.stderr.contains("expected ip:port"),
            "{out:?}"
        );
    }
    let out = m1.ctl(&["cluster", "list", "--local", &m1.address]);
    assert_code(&out, 2);
    assert!(out.stderr.contains("cannot be used with"), "{out:?}");
}

#[test]
fn cluster_list_local_or_remote_needs_an_initialised_member() {
    let mut fresh = Member::new("fresh");
    // No state directory yet.
    let out = fresh.ctl(&["cluster", "list", "--local"]);
    assert_code(&out, 1);
    assert!(out.stderr.contains("does not exist"), "{out:?}");

    // A running daemon that was never initialised: no raft log, no cluster certificate.
    fresh.start();
    let out = fresh.ctl(&["cluster", "list", "--local"]);
    assert_code(&out, 1);
    assert!(out.stderr.contains("holds no raft log yet: this member is not initialised"), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    let out = fresh.ctl(&["cluster", "list", "127.0.0.1:9001"]);
    assert_code(&out, 1);
    assert!(out.stderr.contains("the member must be initialised first"), "{out:?}");
}
