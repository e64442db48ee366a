//! A DUMP becomes an ordinary SQLite file holding every committed row, and such a file reads
//! back row by row (real nodes, real libsqlite3).
#![allow(clippy::unwrap_used)]

mod harness;

use dqlite::file::{SqliteFile, write_dump};
use dqlite::{BOOTSTRAP_ID, Role, Value};
use harness::{TestCluster, TestNode, address, client};

#[tokio::test]
async fn a_dump_becomes_a_file_with_every_committed_row() {
    let node = TestNode::start(BOOTSTRAP_ID, &address("file"));
    let client = client(vec![node.address().to_owned()]);
    let mut db = client.database("app");
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB, score REAL)", &[]).await.unwrap();
    // Enough rows that most live in the WAL, not yet in the main file.
    for chunk in 0..20 {
        let values: Vec<String> =
            (0..100).map(|i| format!("({}, 'row{0}', x'00ff', {}.5)", chunk * 100 + i, i)).collect();
        db.exec(&format!("INSERT INTO t VALUES {}", values.join(",")), &[]).await.unwrap();
    }
    db.exec("CREATE INDEX t_name ON t (name)", &[]).await.unwrap();
    let files = client.dump(node.address(), "app").await.unwrap();
    assert!(files.iter().any(|f| f.name == "app-wal" && !f.data.is_empty()), "the WAL holds data");

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("backup.db");
    tokio::task::spawn_blocking({
        let out = out.clone();
        move || write_dump(&files, "app", &out)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the output is left");

    let mut file = SqliteFile::open_read_only(&out).unwrap();
    assert_eq!(file.query("PRAGMA integrity_check").unwrap(), vec![vec![Value::Text("ok".into())]]);
    assert_eq!(
        file.query("SELECT count(*), sum(id) FROM t").unwrap(),
        vec![vec![Value::Integer(2000), Value::Integer(1999 * 2000 / 2)]]
    );
    let mut seen = 0;
    let columns = file
        .for_each_row("SELECT id, name, data, score, NULL FROM t WHERE id = 1234", |row| {
            seen += 1;
            assert_eq!(
                row,
                vec![
                    Value::Integer(1234),
                    Value::Text("row1234".into()),
                    Value::Blob(vec![0, 255]),
                    Value::Float(34.5),
                    Value::Null
                ]
            );
            Ok::<(), dqlite::file::FileError>(())
        })
        .unwrap();
    assert_eq!((seen, columns), (1, vec!["id".into(), "name".into(), "data".into(), "score".into(), "NULL".into()]));
    let indexes = file.query("SELECT name FROM sqlite_master WHERE type = 'index'").unwrap();
    assert_eq!(indexes, vec![vec![Value::Text("t_name".into())]]);
    // Read-only means read-only.
    assert!(file.execute("DELETE FROM t").is_err());
    // Writing over an existing file is refused rather than silently merged.
    let again = client.dump(node.address(), "app").await.unwrap();
    assert!(write_dump(&again, "app", &out).is_err());
}

#[tokio::test]
async fn a_followers_dump_has_the_replicated_rows() {
    let cluster = TestCluster::start("file-follower", &[Role::Voter, Role::Voter]).await;
    let mut db = cluster.client.database("app");
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3)", &[]).await.unwrap();
    let follower = cluster.nodes[2].address().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("f.db");
    let count = harness::eventually("the follower to apply the rows", std::time::Duration::from_secs(10), || {
        let (client, follower, out) = (cluster.client.clone(), follower.clone(), out.clone());
        async move {
            let files = client.dump(&follower, "app").await.ok()?;
            let _ = std::fs::remove_file(&out);
            write_dump(&files, "app", &out).ok()?;
            let rows = SqliteFile::open_read_only(&out).ok()?.query("SELECT count(*) FROM t").ok()?;
            (rows == vec![vec![Value::Integer(3)]]).then_some(3)
        }
    })
    .await;
    assert_eq!(count, 3);
}
