//! A damaged or missing state file of an initialised member stops its start with a message
//! that names the file and what to do, instead of a silent regeneration (a new `server.crt`
//! the others refuse, forever "Database is still starting") or an endless retry; once the
//! file is restored, the member starts and rejoins with its data. A fresh state directory
//! still generates its certificate, and a member that stopped halfway through a join, before
//! it was initialised, still starts.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use microcluster_tests::{Cluster, Member, checker, wait_until};

/// A file's content and mode (or its absence), to put back after the damage.
struct Saved {
    path: PathBuf,
    content: Option<(Vec<u8>, u32)>,
}

impl Saved {
    fn take(path: PathBuf) -> Saved {
        let content = std::fs::read(&path)
            .ok()
            .map(|bytes| (bytes, std::fs::metadata(&path).unwrap().permissions().mode() & 0o777));
        Saved { path, content }
    }

    fn restore(&self) {
        match &self.content {
            Some((bytes, mode)) => {
                std::fs::write(&self.path, bytes).unwrap();
                std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(*mode)).unwrap();
            }
            None => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Forms a 3-member cluster, stops m3, writes a row without it, lets `damage` spoil `files`
/// of m3 and checks that m3 then exits non-zero within seconds with a log line naming
/// `names` (a path inside its state directory) and containing what `damage` returns (the fix,
/// in any case). Then puts the files back and checks that m3 starts, is ONLINE again and reads
/// both rows.
fn damage_stops_the_start(files: &[&str], names: &str, damage: impl FnOnce(&Cluster, &Path) -> String) {
    let mut cluster = Cluster::form(3);
    let m1 = cluster.members[0].socket();
    checker::sql(&m1, "CREATE TABLE kept (x); INSERT INTO kept VALUES (1)").unwrap();
    let m3 = &mut cluster.members[2];
    m3.signal("TERM");
    assert!(m3.wait_exit(Duration::from_secs(20)).is_some(), "m3 did not stop:\n{}", m3.log());
    checker::sql(&m1, "INSERT INTO kept VALUES (2)").unwrap();

    let dir = cluster.members[2].dir.clone();
    let saved: Vec<Saved> = files.iter().map(|f| Saved::take(dir.join(f))).collect();
    let fix = damage(&cluster, &dir);

    let m3 = &mut cluster.members[2];
    let before = m3.log().len();
    m3.spawn();
    let code = m3.exit_code(Duration::from_secs(15));
    let log = m3.log()[before..].to_owned();
    if code.is_none() {
        m3.kill();
    }
    assert!(matches!(code, Some(c) if c != 0), "m3 did not stop with an error (exit {code:?}); its log:\n{log}");
    let path = dir.join(names).display().to_string();
    assert!(log.contains(&path), "the log does not name {path}:\n{log}");
    assert!(log.to_lowercase().contains(&fix.to_lowercase()), "the log does not say {fix:?}:\n{log}");
    assert!(!log.contains("retrying"), "m3 retried before it stopped:\n{log}");

    for file in &saved {
        file.restore();
    }
    let m3 = &mut cluster.members[2];
    m3.start();
    m3.wait_ready(Duration::from_secs(60));
    wait_until("m3 ONLINE again", Duration::from_secs(60), || {
        (cluster.members[0].member("m3")["status"] == "ONLINE").then_some(())
    });
    let rows = checker::sql(&cluster.members[2].socket(), "SELECT count(*) FROM kept").unwrap();
    assert_eq!(rows["metadata"]["Results"][0]["rows"][0][0], 2, "{rows}");
}

/// `id = "N"` as `node.toml` holds it.
fn node_toml_line(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("database/node.toml")).unwrap();
    text.lines().find(|l| l.starts_with("id = ")).unwrap().to_owned()
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_deleted_server_certificate_stops_the_start() {
    damage_stops_the_start(&["server.crt"], "server.crt", |_, dir| {
        std::fs::remove_file(dir.join("server.crt")).unwrap();
        "restore".into()
    });
}

#[test]
fn a_garbage_server_key_stops_the_start() {
    damage_stops_the_start(&["server.key"], "server.key", |_, dir| {
        write(&dir.join("server.key"), "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n");
        "restore".into()
    });
}

/// The original failure: a member that got a new certificate is refused by the others (403 on
/// the tunnel) and stays "Database is still starting" for good.
#[test]
fn a_server_certificate_the_cluster_does_not_trust_stops_the_start() {
    damage_stops_the_start(&["server.crt", "server.key"], "server.crt", |cluster, dir| {
        let other = &cluster.members[1].dir;
        for file in ["server.crt", "server.key"] {
            std::fs::copy(other.join(file), dir.join(file)).unwrap();
        }
        "restore".into()
    });
}

#[test]
fn a_deleted_cluster_certificate_stops_the_start() {
    damage_stops_the_start(&["cluster.crt"], "cluster.crt", |_, dir| {
        std::fs::remove_file(dir.join("cluster.crt")).unwrap();
        "copy".into()
    });
}

#[test]
fn an_empty_daemon_toml_stops_the_start() {
    damage_stops_the_start(&["daemon.toml"], "daemon.toml", |cluster, dir| {
        let address = cluster.members[2].address.clone();
        write(&dir.join("daemon.toml"), "");
        // The member's name and address, found in its own trust store entry.
        format!("name = \"m3\" and address = \"{address}\"")
    });
}

#[test]
fn a_garbage_node_toml_stops_the_start() {
    damage_stops_the_start(&["database/node.toml"], "database/node.toml", |_, dir| {
        // The node id, found in the raft log next to the member's address.
        let id = node_toml_line(dir);
        write(&dir.join("database/node.toml"), "\u{0}\u{0}garbage");
        id
    });
}

/// Without `node.toml` the member looked uninitialised and started as a fresh daemon next to
/// its raft data.
#[test]
fn a_deleted_node_toml_stops_the_start() {
    damage_stops_the_start(&["database/node.toml"], "database/node.toml", |_, dir| {
        // The node id, found in the raft log next to the member's address.
        let id = node_toml_line(dir);
        std::fs::remove_file(dir.join("database/node.toml")).unwrap();
        id
    });
}

#[test]
fn a_corrupt_trust_store_entry_stops_the_start() {
    damage_stops_the_start(&["truststore/m1.toml"], "truststore/m1.toml", |_, dir| {
        write(&dir.join("truststore/m1.toml"), "name = \"m1\"\naddress = ");
        "copy".into()
    });
}

#[test]
fn a_missing_own_trust_store_entry_stops_the_start() {
    damage_stops_the_start(&["truststore/m3.toml"], "truststore/m3.toml", |_, dir| {
        std::fs::remove_file(dir.join("truststore/m3.toml")).unwrap();
        "copy".into()
    });
}

#[test]
fn a_world_readable_key_stops_the_start() {
    damage_stops_the_start(&["server.key"], "server.key", |_, dir| {
        std::fs::set_permissions(dir.join("server.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
        "chmod 600".into()
    });
}

#[test]
fn a_fresh_member_generates_its_certificate() {
    let mut fresh = Member::new("fresh");
    fresh.start();
    let key = fresh.dir.join("server.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let cert = std::fs::read_to_string(fresh.dir.join("server.crt")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    // The same certificate after a restart.
    fresh.signal("TERM");
    assert!(fresh.wait_exit(Duration::from_secs(10)).is_some());
    fresh.start();
    assert_eq!(std::fs::read_to_string(fresh.dir.join("server.crt")).unwrap(), cert);
}

/// A fresh member that stopped after writing its key but before its certificate (the first
/// of the pair written) makes a new pair: nothing trusts a member before it is initialised.
#[test]
fn a_fresh_member_with_half_a_key_pair_makes_a_new_one() {
    let mut fresh = Member::new("fresh");
    fresh.start();
    fresh.signal("TERM");
    assert!(fresh.wait_exit(Duration::from_secs(10)).is_some());
    let key = std::fs::read_to_string(fresh.dir.join("server.key")).unwrap();
    std::fs::remove_file(fresh.dir.join("server.crt")).unwrap();
    fresh.start();
    assert_ne!(std::fs::read_to_string(fresh.dir.join("server.key")).unwrap(), key);
    assert!(fresh.dir.join("server.crt").exists());
    let cluster = Cluster::form(1);
    cluster.join_member(&fresh, 0);
}

/// A joiner that stopped after storing the cluster's certificate and trust store but before
/// `node.toml` (so before its node ever ran) is not initialised: it starts, and joins again.
#[test]
fn a_member_stopped_mid_join_before_node_toml_still_starts() {
    let cluster = Cluster::form(1);
    let m1 = &cluster.members[0].dir;
    let mut joiner = Member::new("m2");
    joiner.start();
    joiner.signal("TERM");
    assert!(joiner.wait_exit(Duration::from_secs(10)).is_some());
    for file in ["cluster.crt", "cluster.key"] {
        std::fs::copy(m1.join(file), joiner.dir.join(file)).unwrap();
    }
    std::fs::create_dir_all(joiner.dir.join("truststore")).unwrap();
    std::fs::copy(m1.join("truststore/m1.toml"), joiner.dir.join("truststore/m1.toml")).unwrap();
    std::fs::create_dir_all(joiner.dir.join("database")).unwrap();
    write(&joiner.dir.join("daemon.toml"), &format!("name = \"m2\"\naddress = \"{}\"\n", joiner.address));
    joiner.start();
    cluster.join_member(&joiner, 0);
    wait_until("m2 ONLINE", Duration::from_secs(60), || {
        (cluster.members[0].member("m2")["status"] == "ONLINE").then_some(())
    });
}
