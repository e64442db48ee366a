//! Bootstrap, tokens, join and removal semantics with real daemons, including every way a
//! token can be wrong and a join that has to skip a dead join address.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use microcluster_tests::{Cluster, Member, wait_until};

fn field(m: &serde_json::Value, key: &str) -> String {
    m[key].as_str().unwrap_or_default().to_owned()
}

#[test]
fn tokens_are_one_time_named_expiring_and_revocable() {
    let mut cluster = Cluster::form(1);
    let mut joiner = Member::new("m2");
    joiner.start();
    let mut stranger = Member::new("m9");
    stranger.start();
    let m1 = &cluster.members[0];

    // Listing and revoking.
    let token = m1.ctl_ok(&["tokens", "add", "m2"]).trim().to_owned();
    assert!(m1.ctl_ok(&["tokens", "list"]).contains("m2"));
    let json: serde_json::Value = serde_json::from_str(&m1.ctl_ok(&["tokens", "list", "--format", "json"])).unwrap();
    assert_eq!(json[0]["token"], token.as_str());
    let dup = m1.ctl(&["tokens", "add", "m2"]);
    assert!(!dup.success && dup.stderr.contains("already exists"), "{dup:?}");
    m1.ctl_ok(&["tokens", "revoke", "m2"]);
    assert!(!m1.ctl_ok(&["tokens", "list"]).contains("m2"));
    let gone = m1.ctl(&["tokens", "revoke", "m2"]);
    assert!(!gone.success && gone.stderr.contains("no join token"), "{gone:?}");

    // A revoked token no longer works.
    let out = joiner.ctl(&["init", "m2", &joiner.address, "--token", &token]);
    assert!(!out.success && out.stderr.contains("invalid join token"), "{out:?}");

    // Garbage, valid base64 of garbage, and tampering.
    let token = m1.ctl_ok(&["tokens", "add", "m2"]).trim().to_owned();
    for (bad, expect) in [("not a token!", "invalid join token"), ("aGVsbG8gd29ybGQ=", "invalid join token")] {
        let out = joiner.ctl(&["init", "m2", &joiner.address, "--token", bad]);
        assert!(!out.success && out.stderr.contains(expect), "{bad}: {out:?}");
    }
    let decoded = decode(&token);
    let mut tampered = decoded.clone();
    tampered["secret"] = serde_json::Value::String("0".repeat(64));
    let out = joiner.ctl(&["init", "m2", &joiner.address, "--token", &encode(&tampered)]);
    assert!(!out.success && out.stderr.contains("invalid join token"), "tampered secret: {out:?}");
    let mut tampered = decoded.clone();
    tampered["fingerprint"] = serde_json::Value::String("a".repeat(64));
    let out = joiner.ctl(&["init", "m2", &joiner.address, "--token", &encode(&tampered)]);
    assert!(!out.success, "tampered fingerprint accepted");
    assert!(out.stderr.contains("certificate"), "tampered fingerprint: {out:?}");

    // The token is bound to its name.
    let out = stranger.ctl(&["init", "m9", &stranger.address, "--token", &token]);
    assert!(!out.success && out.stderr.contains("invalid join token"), "wrong name: {out:?}");

    // Nothing of the failed attempts stayed behind, and the good token still works once.
    assert_eq!(cluster.members[0].members().len(), 1);
    joiner.ctl_ok(&["init", "m2", &joiner.address, "--token", &token]);
    let mut again = Member::new("m2");
    again.start();
    let out = again.ctl(&["init", "m2", &again.address, "--token", &token]);
    assert!(!out.success, "a used token worked twice");

    // Expiry.
    let token = cluster.members[0].ctl_ok(&["tokens", "add", "m9", "--expire-after", "1s"]).trim().to_owned();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!cluster.members[0].ctl_ok(&["tokens", "list"]).contains("m9"), "expired tokens are listed");
    let out = stranger.ctl(&["init", "m9", &stranger.address, "--token", &token]);
    assert!(!out.success, "an expired token worked");
    assert!(out.stderr.contains("expired") || out.stderr.contains("invalid join token"), "{out:?}");

    cluster.members.push(joiner);
    let names: Vec<_> = cluster.members[0].members().iter().map(|m| field(m, "name")).collect();
    assert_eq!(names, ["m1", "m2"]);
}

fn decode(token: &str) -> serde_json::Value {
    let out = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut child = out;
    child.stdin.take().unwrap().write_all(token.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn encode(value: &serde_json::Value) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(value.to_string().as_bytes()).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap()
}

#[test]
fn bootstrap_twice_and_invalid_init_arguments_are_refused() {
    let cluster = Cluster::form(1);
    let m1 = &cluster.members[0];
    let out = m1.ctl(&["init", "m1", &m1.address, "--bootstrap"]);
    assert!(!out.success && out.stderr.contains("already initialised"), "{out:?}");
    let mut fresh = Member::new("m2");
    fresh.start();
    for (name, address, expect) in [
        ("../evil", fresh.address.as_str(), "invalid member name"),
        ("bad name", fresh.address.as_str(), "invalid member name"),
        ("m2", "localhost:9001", "invalid address"),
        ("m2", "127.0.0.1", "invalid address"),
    ] {
        let out = fresh.ctl(&["init", name, address, "--bootstrap"]);
        assert!(!out.success && out.stderr.contains(expect), "{name} {address}: {out:?}");
    }
    // A taken address fails cleanly and leaves the member uninitialised.
    let out = fresh.ctl(&["init", "m2", &m1.address, "--bootstrap"]);
    assert!(!out.success && out.stderr.contains("cannot listen"), "{out:?}");
    fresh.ctl_ok(&["init", "m2", &fresh.address, "--bootstrap"]);
}

#[test]
fn a_join_skips_a_dead_first_join_address() {
    let mut cluster = Cluster::form(3);
    let mut joiner = Member::new("m4");
    joiner.start();
    // The token lists the member that issued it first (m1), then the other voters.
    let token = cluster.members[0].ctl_ok(&["tokens", "add", "m4"]).trim().to_owned();
    let addresses: Vec<&str> = cluster.members.iter().map(|m| m.address.as_str()).collect();
    assert_eq!(decode(&token)["join_addresses"], serde_json::json!(addresses));
    cluster.members[0].kill();
    wait_until("m2 to see a leader again", Duration::from_secs(30), || {
        cluster.members[1].ctl(&["cluster", "list"]).success.then_some(())
    });
    joiner.ctl_ok(&["init", "m4", &joiner.address, "--token", &token]);
    let members = cluster.members[1].members();
    let m4 = members.iter().find(|m| field(m, "name") == "m4").unwrap();
    assert_eq!(field(m4, "status"), "ONLINE");
    let m1 = members.iter().find(|m| field(m, "name") == "m1").unwrap();
    assert_eq!(field(m1, "status"), "UNREACHABLE");
    cluster.members.push(joiner);
}

#[test]
fn a_member_removed_from_its_own_state_dir_resets_and_can_join_again() {
    let cluster = Cluster::form(3);
    let m3 = &cluster.members[2];
    m3.ctl_ok(&["cluster", "remove", "m3"]);
    let members = cluster.members[0].members();
    assert_eq!(members.len(), 2);
    // m3 is an uninitialised daemon again: its database and cluster material are gone.
    wait_until("m3 to reset", Duration::from_secs(10), || (!m3.dir.join("cluster.crt").exists()).then_some(()));
    let out = m3.ctl(&["cluster", "list"]);
    assert!(!out.success && out.stderr.contains("not yet initialized"), "{out:?}");
    assert!(!m3.dir.join("database").exists());
    // The others stopped trusting it.
    assert!(!cluster.members[0].dir.join("truststore/m3.toml").exists());
    assert!(!cluster.members[1].dir.join("truststore/m3.toml").exists());
    // And it can join again with a new token.
    cluster.join(2, 0);
    assert_eq!(cluster.members[0].members().len(), 3);

    // The last member cannot be removed; unknown members are 404s.
    let out = cluster.members[0].ctl(&["cluster", "remove", "nobody"]);
    assert!(!out.success && out.stderr.contains("no cluster member named"), "{out:?}");
}

#[test]
fn removing_the_leader_hands_over_first() {
    let cluster = Cluster::form(3);
    // m1 bootstrapped and is the leader; remove it through m2.
    cluster.members[1].ctl_ok(&["cluster", "remove", "m1"]);
    let members = cluster.members[1].members();
    let names: Vec<_> = members.iter().map(|m| field(m, "name")).collect();
    assert_eq!(names, ["m2", "m3"]);
    cluster.members[2].ctl_ok(&["sql", "CREATE TABLE after_removal (x)"]);
    let last = Cluster::form(1);
    let out = last.members[0].ctl(&["cluster", "remove", "m1"]);
    assert!(!out.success && out.stderr.contains("last member"), "{out:?}");
}

#[test]
fn the_control_socket_speaks_plain_http_to_curl() {
    if std::process::Command::new("curl").arg("--version").output().is_err() {
        panic!("curl is not installed; `make test` installs it (apt-get install curl)");
    }
    let cluster = Cluster::form(1);
    let socket = cluster.members[0].dir.join("control.socket");
    let out = std::process::Command::new("curl")
        .args(["-s", "--unix-socket"])
        .arg(&socket)
        .arg("http://x/core/1.0/cluster")
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["type"], "sync");
    assert_eq!(body["metadata"][0]["name"], "m1");
    let out = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket"])
        .arg(&socket)
        .arg("http://x/no/such/path")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
}

#[test]
fn every_member_exits_promptly_on_sigterm_and_restarts_with_its_data() {
    let mut cluster = Cluster::form(3);
    cluster.members[0].ctl_ok(&["sql", "INSERT INTO extended_table (key, value) VALUES ('kept', 'yes')"]);
    for m in &cluster.members {
        m.signal("TERM");
    }
    for m in &mut cluster.members {
        assert!(m.wait_exit(Duration::from_secs(15)).is_some(), "{} did not exit:\n{}", m.name, m.log());
    }
    for m in &mut cluster.members {
        m.start();
    }
    let out = wait_until("the restarted cluster to answer", Duration::from_secs(30), || {
        let out = cluster.members[1].ctl(&["sql", "SELECT value FROM extended_table WHERE key = 'kept'"]);
        out.success.then_some(out.stdout)
    });
    assert!(out.contains("yes"), "{out}");
}

#[test]
fn a_second_daemon_on_the_same_state_dir_refuses_to_start() {
    let mut first = Member::new("m1");
    first.start();
    let out = std::process::Command::new(&microcluster_tests::binaries().microd)
        .arg("--state-dir")
        .arg(&first.dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another microd is already running"), "{stderr}");
    assert!(first.is_running());
}

#[test]
fn a_join_that_fails_midway_leaves_nothing_behind() {
    let cluster = Cluster::form(2);
    let mut joiner = Member::new("m3");
    joiner.start();
    // Something else holds the joiner's address: the join is admitted by the cluster, then
    // fails when the joiner starts its listener, and must be undone on both sides.
    let squatter = std::net::TcpListener::bind(&joiner.address).unwrap();
    let token = cluster.members[0].ctl_ok(&["tokens", "add", "m3"]).trim().to_owned();
    let out = joiner.ctl(&["init", "m3", &joiner.address, "--token", &token]);
    assert!(!out.success && out.stderr.contains("cannot listen"), "{out:?}");
    drop(squatter);

    for m in &cluster.members {
        let names: Vec<_> = m.members().iter().map(|m| field(m, "name")).collect();
        assert_eq!(names, ["m1", "m2"], "{}", m.name);
        assert!(!m.dir.join("truststore/m3.toml").exists(), "{} still trusts m3", m.name);
    }
    let rows = cluster.members[0].ctl_ok(&["sql", "SELECT count(*) FROM core_cluster_members WHERE name = 'm3'"]);
    assert!(rows.contains("| 0 "), "{rows}");
    assert!(!joiner.dir.join("database").exists() && !joiner.dir.join("cluster.crt").exists());
    let out = joiner.ctl(&["cluster", "list"]);
    assert!(!out.success && out.stderr.contains("not yet initialized"), "{out:?}");

    // With the address free, the same init works again: a token is used up only by a join that
    // completes.
    joiner.ctl_ok(&["init", "m3", &joiner.address, "--token", &token]);
    assert!(!cluster.members[0].ctl_ok(&["tokens", "list"]).contains("m3"), "the token outlived the join");
    let names: Vec<_> = cluster.members[0].members().iter().map(|m| field(m, "name")).collect();
    assert_eq!(names, ["m1", "m2", "m3"]);
}

#[test]
fn a_dead_member_is_removed_with_force_and_shutdown_works_through_the_api() {
    let mut cluster = Cluster::form(3);
    cluster.members[2].kill();
    let m1 = &cluster.members[0];
    // Without --force the removal needs the member's PreRemove hook, so it is refused.
    let out = m1.ctl(&["cluster", "remove", "m3"]);
    assert!(!out.success && out.stderr.contains("--force"), "{out:?}");
    m1.ctl_ok(&["cluster", "remove", "m3", "--force"]);
    let names: Vec<_> = m1.members().iter().map(|m| field(m, "name")).collect();
    assert_eq!(names, ["m1", "m2"]);
    assert!(!m1.dir.join("truststore/m3.toml").exists());
    // The cluster still takes writes with the two remaining voters.
    m1.ctl_ok(&["sql", "CREATE TABLE after_force (x)"]);

    // `microctl shutdown` stops a daemon.
    cluster.members[1].ctl_ok(&["shutdown"]);
    assert!(cluster.members[1].wait_exit(Duration::from_secs(15)).is_some(), "{}", cluster.members[1].log());
}

#[test]
fn sql_batches_dumps_and_stdin() {
    let cluster = Cluster::form(1);
    let m1 = &cluster.members[0];
    let out = m1.ctl_ok(&["sql", "CREATE TABLE t (a, b); INSERT INTO t VALUES (1, 'x;y'); SELECT * FROM t"]);
    assert!(out.contains("=> Query 1:") && out.contains("=> Query 3:"), "{out}");
    assert!(out.contains("| 1 | x;y |"), "{out}");
    // A failing batch applies nothing.
    let out = m1.ctl(&["sql", "INSERT INTO t VALUES (2, 'z'); INSERT INTO missing VALUES (1)"]);
    assert!(!out.success && out.stderr.contains("no such table: missing"), "{out:?}");
    assert!(m1.ctl_ok(&["sql", "SELECT count(*) FROM t"]).contains("| 1 "));
    // Writes that libdqlite 1.11 cannot run safely are refused with a reason.
    let out = m1.ctl(&["sql", "INSERT INTO t VALUES (3, 'r') RETURNING a"]);
    assert!(!out.success && out.stderr.contains("RETURNING"), "{out:?}");
    let dump = m1.ctl_ok(&["sql", ".dump"]);
    assert!(dump.contains("CREATE TABLE t (a, b);") && dump.contains("INSERT INTO \"t\" VALUES(1,'x;y');"), "{dump}");
    let schema = m1.ctl_ok(&["sql", ".schema"]);
    assert!(schema.contains("CREATE TABLE t (a, b);") && !schema.contains("INSERT INTO \"t\""), "{schema}");
    let out = m1.ctl_stdin(&["sql", "-"], "SELECT b FROM t");
    assert!(out.success && out.stdout.contains("x;y"), "{out:?}");
}
