//! The example's tutorial (`002_...txt`, steps 2–6), run with our binaries and checked against
//! the outputs it promises.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use microcluster_tests::Cluster;

fn names_roles_statuses(members: &[serde_json::Value]) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = members
        .iter()
        .map(|m| {
            let field = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
            (field("name"), field("role"), field("status"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn tutorial_steps_2_to_6() {
    // Step 2: three daemons, uninitialised, each warning that its database is not initialised.
    let mut cluster = Cluster::start(3);
    for m in &cluster.members {
        assert!(m.log().contains("Database is not yet initialized"), "{}", m.log());
        // Listing before init is refused with the database status, in one line.
        let out = m.ctl(&["cluster", "list"]);
        assert!(!out.success && out.stderr.contains("not yet initialized"), "{out:?}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
    }

    // Step 3: bootstrap; the only member is ONLINE.
    let m1 = &cluster.members[0];
    m1.bootstrap();
    let table = m1.ctl_ok(&["cluster", "list"]);
    assert!(table.contains("| m1 ") && table.contains(&m1.address) && table.contains("ONLINE"), "{table}");
    assert!(table.starts_with('+') && table.contains("| NAME"), "{table}");

    // Step 4: join the others with one-time tokens.
    for i in 1..3 {
        cluster.join(i, 0);
    }
    let members = m1.members();
    assert_eq!(
        names_roles_statuses(&members),
        [("m1", "voter", "ONLINE"), ("m2", "voter", "ONLINE"), ("m3", "voter", "ONLINE")].map(|(a, b, c)| (
            a.to_owned(),
            b.to_owned(),
            c.to_owned()
        ))
    );

    // Step 5.1: remove m3 through m1.
    m1.ctl_ok(&["cluster", "remove", "m3"]);
    let members = m1.members();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(members.iter().all(|m| m["name"] != "m3"));

    // Step 5.2: SQL.
    let tables = m1.ctl_ok(&["sql", "SELECT name FROM sqlite_master WHERE type='table';"]);
    assert_eq!(
        tables,
        "+----------------------+\n\
         |         name         |\n\
         +----------------------+\n\
         | sqlite_sequence      |\n\
         | schemas              |\n\
         | core_cluster_members |\n\
         | core_token_records   |\n\
         | core_monitors        |\n\
         | extended_table       |\n\
         | some_other_table     |\n\
         +----------------------+\n"
    );
    let heartbeats = m1.ctl_ok(&["sql", "SELECT name,address,heartbeat FROM core_cluster_members"]);
    assert!(heartbeats.contains("| name |") && heartbeats.contains("heartbeat"), "{heartbeats}");
    assert!(heartbeats.contains(&cluster.members[1].address), "{heartbeats}");
    assert!(heartbeats.matches('Z').count() >= 2, "RFC 3339 heartbeats expected: {heartbeats}");
    assert_eq!(
        m1.ctl_ok(&["sql", "insert into extended_table (key, value) values ('some_key', 'some_value')"]),
        "Rows affected: 1\n"
    );
    assert_eq!(
        m1.ctl_ok(&["sql", "select * from extended_table"]),
        "+----+----------+------------+\n\
         | id |   key    |   value    |\n\
         +----+----------+------------+\n\
         | 1  | some_key | some_value |\n\
         +----+----------+------------+\n"
    );

    // Step 5.3: the extended API, from m2's state directory to m1.
    let m2 = &cluster.members[1];
    let out = m2.ctl_ok(&["extended", &m1.address]);
    assert_eq!(
        out,
        format!(
            "cluster member at address {:?} received message \"Testing 1 2 3...\" from cluster member at address {:?}\n",
            m2.address, m1.address
        )
    );

    // Step 6: stop every daemon at once; all exit promptly.
    for m in &cluster.members {
        m.signal("TERM");
    }
    for m in &mut cluster.members {
        let took = m.wait_exit(Duration::from_secs(15));
        assert!(took.is_some(), "{} did not exit within 15 s of SIGTERM:\n{}", m.name, m.log());
    }
}
