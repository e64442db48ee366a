//! Backups end to end: an online backup of a cluster under write load is a consistent SQLite
//! file that restores into a new cluster with every row; bad files and clusters that already
//! hold data are refused with nothing changed.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use microcluster_tests::checker::{self, Checker};
use microcluster_tests::{Cluster, Member, wait_until};

fn count(member: &Member, table: &str) -> i64 {
    let out = checker::sql(&member.socket(), &format!("SELECT count(*) FROM {table}")).unwrap();
    out["metadata"]["Results"][0]["rows"][0][0].as_i64().unwrap()
}

fn summary(member: &Member, args: &[&str]) -> serde_json::Value {
    let text = member.ctl_ok(&[args, &["-f", "json"]].concat());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn an_online_backup_restores_into_a_new_cluster_with_every_row() {
    let cluster = Cluster::form(3);
    let (m1, m2) = (&cluster.members[0], &cluster.members[1]);
    m1.ctl_ok(&["sql", "INSERT INTO extended_table (key, value) VALUES ('a', 'é'), ('b', '')"]);
    m1.ctl_ok(&[
        "sql",
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB, score REAL); \
                       CREATE INDEX blobs_score ON blobs (score); \
                       INSERT INTO blobs VALUES (1, x'00ff10', 2.5), (2, zeroblob(3000), -1e300)",
    ]);
    checker::create_table(&m1.socket()).unwrap();
    let writers = Checker::start(cluster.members.iter().map(Member::socket).collect());
    wait_until("writes", Duration::from_secs(30), || (writers.acknowledged() > 100).then_some(()));

    // Taken through a follower while four writers write, and proven to restore.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.db");
    let before = writers.history();
    let taken = summary(m2, &["database", "backup", file.to_str().unwrap(), "--verify"]);
    let history = writers.stop();
    assert_eq!(taken["verified"], true, "{taken}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), taken["size"].as_u64().unwrap());
    let tables: Vec<&str> = taken["tables"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(tables.contains(&"blobs") && tables.contains(&"checker") && tables.contains(&"extended_table"));
    assert!(!tables.iter().any(|t| t.starts_with("core_") || *t == "schemas"), "{tables:?}");
    let backed_up = taken["tables"].as_array().unwrap().iter().find(|t| t["name"] == "checker").unwrap()["rows"]
        .as_u64()
        .unwrap() as usize;
    assert!(backed_up >= before.acknowledged_count(), "the backup has every write acknowledged before it started");
    assert!(backed_up <= history.acknowledged_count() + history.unknown_count());

    // A new cluster: restored, compared, and then refused a second time unless told to replace.
    let mut fresh = Member::new("fresh");
    fresh.start();
    fresh.bootstrap();
    let restored = summary(&fresh, &["database", "restore", file.to_str().unwrap()]);
    assert_eq!((restored["checksum"].clone(), restored["verified"].clone()), (taken["checksum"].clone(), true.into()));
    assert_eq!(count(&fresh, "checker") as usize, backed_up);
    let blobs = checker::sql(&fresh.socket(), "SELECT hex(data), score FROM blobs WHERE id = 1").unwrap();
    assert_eq!(blobs["metadata"]["Results"][0]["rows"][0], serde_json::json!(["00FF10", 2.5]));
    let index = checker::sql(&fresh.socket(), "SELECT name FROM sqlite_master WHERE name = 'blobs_score'").unwrap();
    assert_eq!(index["metadata"]["Results"][0]["rows"][0][0], "blobs_score");
    // The fresh cluster's membership is its own.
    let members = fresh.members();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["name"], "fresh");

    let again = fresh.ctl(&["database", "restore", file.to_str().unwrap()]);
    assert_eq!(again.code, Some(1), "{again:?}");
    assert!(again.stderr.contains("already holds data in") && again.stderr.contains("--replace"), "{}", again.stderr);
    fresh.ctl_ok(&["sql", "INSERT INTO extended_table (key, value) VALUES ('local', 'x')"]);
    let replaced = summary(&fresh, &["database", "restore", file.to_str().unwrap(), "--replace"]);
    assert_eq!(replaced["checksum"], taken["checksum"]);
    assert_eq!(count(&fresh, "extended_table"), 2, "the local row was replaced");

    // The file is a plain SQLite database holding the core tables too.
    let verified = summary(&fresh, &["database", "verify", file.to_str().unwrap()]);
    assert_eq!(verified["checksum"], taken["checksum"]);
    drop(cluster);
}

#[test]
fn bad_backups_are_refused_and_change_nothing() {
    let mut member = Member::new("solo");
    member.start();
    member.bootstrap();
    member.ctl_ok(&["sql", "INSERT INTO extended_table (key, value) VALUES ('keep', 'me')"]);
    let dir = tempfile::tempdir().unwrap();

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 10_000]).unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    // A valid SQLite file that is not a microcluster backup.
    let foreign = dir.path().join("foreign.db");
    {
        let mut other = Member::new("other");
        other.start();
        other.bootstrap();
        other.ctl_ok(&["database", "backup", foreign.to_str().unwrap()]);
    }
    for (file, why) in [
        (&garbage, "file is not a database"),
        (&empty, "request body is empty"),
        (&dir.path().join("missing.db"), "No such file"),
    ] {
        for command in ["restore", "verify"] {
            let out = member.ctl(&["database", command, file.to_str().unwrap()]);
            assert_eq!(out.code, Some(1), "{command} {file:?}: {out:?}");
            assert!(out.stderr.contains(why), "{command} {file:?}: {}", out.stderr);
        }
    }
    // A backup of another cluster restores only into an empty one.
    let out = member.ctl(&["database", "restore", foreign.to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("already holds data in extended_table (1 rows)"), "{}", out.stderr);

    // A backup from other software (an extra schema update) is refused outright.
    let newer = dir.path().join("newer.db");
    {
        let mut upgraded = Member::new("upgraded");
        upgraded.env.push(("MICROD_TEST_UPGRADE".into(), "1".into()));
        upgraded.start();
        upgraded.bootstrap();
        upgraded.ctl_ok(&["database", "backup", newer.to_str().unwrap()]);
    }
    let out = member.ctl(&["database", "restore", newer.to_str().unwrap(), "--replace"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("schema versions 2/3") && out.stderr.contains("this cluster 2/2"), "{}", out.stderr);

    // Nothing changed, and no scratch files are left behind.
    assert_eq!(count(&member, "extended_table"), 1);
    let scratch: Vec<_> = std::fs::read_dir(member.dir.join("scratch")).unwrap().collect();
    assert!(scratch.is_empty(), "{scratch:?}");
    // A backup into a directory that does not exist fails before anything is written.
    let out = member.ctl(&["database", "backup", dir.path().join("no/such/dir.db").to_str().unwrap()]);
    assert_eq!(out.code, Some(1), "{out:?}");
}

#[test]
fn a_backup_streams_to_standard_output_and_restores_from_standard_input() {
    use std::process::{Command, Stdio};
    let cluster = Cluster::form(1);
    let m1 = &cluster.members[0];
    m1.ctl_ok(&["sql", "CREATE TABLE piped (x INTEGER)"]);
    m1.ctl_ok(&["sql", "INSERT INTO piped VALUES (1), (2), (3)"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("piped.db");

    // `backup -`: the file on standard output, the summary on standard error.
    let out = Command::new(&microcluster_tests::binaries().microctl)
        .arg("--state-dir")
        .arg(&m1.dir)
        .args(["database", "backup", "-", "-f", "json"])
        .stdout(std::fs::File::create(&file).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let told: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), told["size"].as_u64().unwrap());
    assert!(std::fs::read(&file).unwrap().starts_with(b"SQLite format 3\0"));
    assert_eq!(summary(m1, &["database", "verify", file.to_str().unwrap()])["verified"], true);

    // `restore -` into a new cluster, from standard input.
    let mut fresh = Member::new("fresh");
    fresh.start();
    fresh.bootstrap();
    let out = Command::new(&microcluster_tests::binaries().microctl)
        .arg("--state-dir")
        .arg(&fresh.dir)
        .args(["database", "restore", "-"])
        .stdin(std::fs::File::open(&file).unwrap())
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(count(&fresh, "piped"), 3);
}
