//! One real node: every kind of request, every value type, and the client-side guards against
//! libdqlite 1.11's hazards.
#![allow(clippy::unwrap_used)]

mod harness;

use dqlite::{BOOTSTRAP_ID, Error, Role, Value};
use harness::{TestNode, address, client};

async fn node_and_db(tag: &str) -> (TestNode, dqlite::Database) {
    let node = TestNode::start(BOOTSTRAP_ID, &address(tag));
    let db = client(vec![node.address().to_owned()]).database("test");
    (node, db)
}

#[tokio::test]
async fn leader_cluster_describe_weight_and_dump() {
    let node = TestNode::start(BOOTSTRAP_ID, &address("admin"));
    let client = client(vec![node.address().to_owned()]);
    let leader = client.leader().await.unwrap();
    assert_eq!((leader.id, leader.address.as_str()), (BOOTSTRAP_ID, node.address()));

    let mut conn = client.connect(node.address()).await.unwrap();
    assert_eq!(conn.client(0).await.unwrap(), 15000);
    let nodes = conn.cluster().await.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].role, Some(Role::Voter));
    let v0 = conn.cluster_with_format(0).await.unwrap();
    assert_eq!((v0[0].id, v0[0].role), (BOOTSTRAP_ID, None));
    assert!(conn.cluster_with_format(2).await.is_err());

    assert_eq!(conn.describe().await.unwrap(), (0, 0));
    conn.weight(7).await.unwrap();
    assert_eq!(client.describe(node.address()).await.unwrap(), (0, 7));

    let mut db = client.database("dumped");
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2)", &[]).await.unwrap();
    let files = client.dump(node.address(), "dumped").await.unwrap();
    let names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["dumped", "dumped-wal"]);
    assert!(files.iter().map(|f| f.data.len()).sum::<usize>() >= 4096);
    assert_eq!(files.iter().find(|f| !f.data.is_empty()).map(|f| f.data.len() % 4096), Some(0));
}

#[tokio::test]
async fn every_value_type_round_trips() {
    let (_node, mut db) = node_and_db("values").await;
    db.exec("CREATE TABLE v (i INTEGER, f REAL, t TEXT, b BLOB, n, d DATETIME, s DATETIME, ok BOOLEAN)", &[])
        .await
        .unwrap();
    let params: Vec<Value> = vec![
        Value::Integer(i64::MIN),
        Value::Float(-1.25),
        Value::Text("ünïcode ✓".into()),
        Value::Blob(vec![0, 255, 1, 254, 7, 7, 7, 7, 7]),
        Value::Null,
        Value::Integer(1_700_000_000),
        Value::Iso8601("2024-05-06 07:08:09+00:00".into()),
        Value::Boolean(true),
    ];
    let r = db.exec("INSERT INTO v VALUES (?, ?, ?, ?, ?, ?, ?, ?)", &params).await.unwrap();
    assert_eq!((r.last_insert_id, r.rows_affected), (1, 1));
    let result = db.query("SELECT * FROM v", &[]).await.unwrap();
    assert_eq!(result.columns, ["i", "f", "t", "b", "n", "d", "s", "ok"]);
    let row = &result.rows[0];
    assert_eq!(row.get(0), Some(&Value::Integer(i64::MIN)));
    assert_eq!(row.get(1), Some(&Value::Float(-1.25)));
    assert_eq!(row.get_by_name("t").and_then(Value::as_str), Some("ünïcode ✓"));
    assert_eq!(row.get_by_name("B"), Some(&params[3]));
    assert_eq!(row.get(4), Some(&Value::Null));
    // Declared date/time columns come back typed: integers as UNIXTIME, text as ISO8601.
    assert_eq!(row.get(5), Some(&Value::UnixTime(1_700_000_000)));
    assert_eq!(row.get(6), Some(&Value::Iso8601("2024-05-06 07:08:09+00:00".into())));
    assert_eq!(row.get(7), Some(&Value::Boolean(true)));
    assert_eq!(row.get_by_name("missing"), None);
}

#[tokio::test]
async fn prepared_statements_exec_query_and_finalize() {
    let node = TestNode::start(BOOTSTRAP_ID, &address("prepared"));
    let client = client(vec![node.address().to_owned()]);
    let mut conn = client.connect_leader().await.unwrap();
    conn.open("test").await.unwrap();
    conn.exec_sql("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)", &[]).await.unwrap();

    let insert = conn.prepare("INSERT INTO kv VALUES (?, ?)").await.unwrap();
    assert_eq!(insert.param_count(), 2);
    assert!(!insert.is_read_only());
    for i in 0..10 {
        conn.exec(&insert, &[format!("k{i}").into(), i.into()]).await.unwrap();
    }
    // Bindings persist between executions in 1.11, so a short list is refused, not sent.
    let err = conn.exec(&insert, &["k99".into()]).await.unwrap_err();
    assert!(matches!(err, Error::ParamCount { expected: 2, given: 1 }), "{err}");
    // A write statement cannot be queried.
    assert!(matches!(conn.query(&insert, &["a".into(), 1.into()]).await, Err(Error::NotReadOnly { .. })));

    let select = conn.prepare("SELECT v FROM kv WHERE k = ?").await.unwrap();
    let rows = conn.query(&select, &["k7".into()]).await.unwrap().collect().await.unwrap();
    assert_eq!(rows.rows[0].get(0), Some(&Value::Integer(7)));
    conn.finalize(select).await.unwrap();
    conn.finalize(insert).await.unwrap();

    // Only the first statement would be prepared; the rest silently dropped.
    let err = conn.prepare("INSERT INTO kv VALUES ('a', 1); DELETE FROM kv").await.unwrap_err();
    assert!(matches!(err, Error::MultipleStatements { count: 2, .. }), "{err}");
    assert!(matches!(conn.prepare("  -- nothing\n").await, Err(Error::EmptyStatement)));

    // A statement from another connection is refused before anything is sent.
    let mut other = client.connect_leader().await.unwrap();
    other.open("test").await.unwrap();
    let foreign = other.prepare("SELECT 1").await.unwrap();
    assert!(matches!(conn.query(&foreign, &[]).await, Err(Error::ForeignStatement { .. })));
}

#[tokio::test]
async fn sql_errors_are_typed_and_leave_the_connection_usable() {
    let (_node, mut db) = node_and_db("errors").await;
    let err = db.exec("SELEC 1", &[]).await.unwrap_err();
    assert_eq!(err.code(), Some(1), "{err}");
    assert!(err.to_string().contains("syntax error"), "{err}");
    let err = db.query("SELECT * FROM nope", &[]).await.unwrap_err();
    assert!(err.to_string().contains("no such table"), "{err}");
    // A failing statement in EXEC_SQL keeps the ones before it (no implicit transaction).
    let err = db.exec("CREATE TABLE a (x); INSERT INTO a VALUES (1); INSERT INTO nope VALUES (1)", &[]).await;
    assert!(err.is_err());
    let rows = db.query("SELECT count(*) FROM a", &[]).await.unwrap();
    assert_eq!(rows.rows[0].get(0), Some(&Value::Integer(1)));
}

#[tokio::test]
async fn write_statements_never_travel_the_query_path() {
    let (_node, mut db) = node_and_db("returning").await;
    db.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, x)", &[]).await.unwrap();
    // On 1.11 these would run unreplicated and abort the node at its next write.
    for sql in [
        "WITH n AS (SELECT 2 AS x) INSERT INTO t (x) SELECT x FROM n",
        "PRAGMA user_version = 3",
        "SELECT 1; DELETE FROM t",
    ] {
        let err = db.query(sql, &[]).await.unwrap_err();
        assert!(matches!(err, Error::NotReadOnly { .. } | Error::MultipleStatements { .. }), "{sql}: {err}");
    }
    // RETURNING breaks 1.11 on the EXEC path too (measured: the node aborts at its next
    // write), so it is refused everywhere before anything is sent.
    for sql in ["INSERT INTO t (x) VALUES (1) RETURNING id", "DELETE FROM t RETURNING *"] {
        assert!(matches!(db.query(sql, &[]).await, Err(Error::Returning { .. })), "{sql}");
        assert!(matches!(db.exec(sql, &[]).await, Err(Error::Returning { .. })), "{sql}");
    }
    assert!(matches!(db.exec("UPDATE t SET x = 1 RETURNING x; SELECT 1", &[]).await, Err(Error::Returning { .. })));
    // Nothing was run, and the node still takes writes (it would have aborted otherwise).
    db.exec("INSERT INTO t (x) VALUES (10)", &[]).await.unwrap();
    db.exec("INSERT INTO t (x) VALUES ('returning')", &[]).await.unwrap();
    let rows = db.query("SELECT count(*) FROM t", &[]).await.unwrap();
    assert_eq!(rows.rows[0].get(0), Some(&Value::Integer(2)));
    // Through exec, a CTE write is an ordinary replicated write.
    db.exec("WITH n AS (SELECT 2 AS x) INSERT INTO t (x) SELECT x FROM n", &[]).await.unwrap();
}

#[tokio::test]
async fn unixtime_parameters_and_nul_text_are_refused_before_sending() {
    let (_node, mut db) = node_and_db("params").await;
    let err = db.query("SELECT ?", &[Value::UnixTime(5)]).await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedParam { index: 0 }), "{err}");
    let err = db.query("SELECT ?", &[Value::Text("a\0b".into())]).await.unwrap_err();
    assert!(matches!(err, Error::Encode(_)), "{err}");
    let err = db.query("SELECT ?", &vec![Value::Null; 256]).await.unwrap_err();
    assert!(matches!(err, Error::Encode(_)), "{err}");
    let rows = db.query("SELECT ?", &[Value::Integer(5)]).await.unwrap();
    assert_eq!(rows.rows[0].get(0), Some(&Value::Integer(5)));
}

#[tokio::test]
async fn transactions_commit_roll_back_and_survive_being_dropped() {
    let (_node, mut db) = node_and_db("tx").await;
    db.exec("CREATE TABLE t (x INTEGER)", &[]).await.unwrap();

    let mut tx = db.begin().await.unwrap();
    tx.exec("INSERT INTO t VALUES (1)", &[]).await.unwrap();
    let seen = tx.query("SELECT count(*) FROM t", &[]).await.unwrap();
    assert_eq!(seen.rows[0].get(0), Some(&Value::Integer(1)));
    tx.commit().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    tx.exec("INSERT INTO t VALUES (2)", &[]).await.unwrap();
    tx.rollback().await.unwrap();

    let result: Result<(), _> = db
        .transaction(|tx| {
            Box::pin(async move {
                tx.exec("INSERT INTO t VALUES (3)", &[]).await?;
                tx.exec("INSERT INTO nope VALUES (3)", &[]).await?;
                Ok(())
            })
        })
        .await;
    assert!(result.is_err());

    let n = db
        .transaction(|tx| {
            Box::pin(async move {
                tx.exec("INSERT INTO t VALUES (4)", &[]).await?;
                Ok(tx.query("SELECT count(*) FROM t", &[]).await?.rows.len())
            })
        })
        .await
        .unwrap();
    assert_eq!(n, 1);

    {
        let mut tx = db.begin().await.unwrap();
        tx.exec("INSERT INTO t VALUES (5)", &[]).await.unwrap();
        // Dropped without commit: rolled back before the next request.
    }
    let rows = db.query("SELECT x FROM t ORDER BY x", &[]).await.unwrap();
    let xs: Vec<_> = rows.rows.iter().map(|r| r.get(0).and_then(Value::as_i64).unwrap()).collect();
    assert_eq!(xs, [1, 4]);
}

#[tokio::test]
async fn three_thousand_rows_stream_and_interrupt() {
    let (node, mut db) = node_and_db("stream").await;
    harness::three_thousand_rows(&mut db).await;

    // All rows arrive in order across many ~4 KiB ROWS messages.
    let all = db.query("SELECT i, pad FROM big ORDER BY i", &[]).await.unwrap();
    assert_eq!(all.rows.len(), 3000);
    assert!(all.rows.iter().enumerate().all(|(n, r)| r.get(0) == Some(&Value::Integer(n as i64 + 1))));

    let client = client(vec![node.address().to_owned()]);
    let mut conn = client.connect_leader().await.unwrap();
    conn.open("test").await.unwrap();

    // Interrupt after the first row: the connection drains to EMPTY and stays usable.
    let mut rows = conn.query_sql("SELECT i FROM big", &[]).await.unwrap();
    assert_eq!(rows.next().await.unwrap().unwrap().get(0), Some(&Value::Integer(1)));
    rows.interrupt().await.unwrap();
    let count = conn.query_sql("SELECT count(*) FROM big", &[]).await.unwrap().collect().await.unwrap();
    assert_eq!(count.rows[0].get(0), Some(&Value::Integer(3000)));

    // Dropping a half-read result is fine too: the rest is drained before the next request.
    let mut rows = conn.query_sql("SELECT i FROM big", &[]).await.unwrap();
    rows.next().await.unwrap();
    drop(rows);
    conn.exec_sql("INSERT INTO big VALUES (0, 'x')", &[]).await.unwrap();

    // A result bigger than the caller allows fails cleanly.
    let rows = conn.query_sql("SELECT * FROM big", &[]).await.unwrap();
    assert!(matches!(rows.collect_limited(100).await, Err(Error::TooManyRows { limit: 100 })));
    let rows = conn.query_sql("SELECT count(*) FROM big", &[]).await.unwrap().collect().await.unwrap();
    assert_eq!(rows.rows[0].get(0), Some(&Value::Integer(3001)));
}

#[tokio::test]
async fn concurrent_writers_on_two_connections_get_busy() {
    let node = TestNode::start(BOOTSTRAP_ID, &address("busy"));
    let client = client(vec![node.address().to_owned()]);
    let mut a = client.connect_leader().await.unwrap();
    let mut b = client.connect_leader().await.unwrap();
    a.open("test").await.unwrap();
    b.open("test").await.unwrap();
    a.exec_sql("CREATE TABLE t (x)", &[]).await.unwrap();
    a.exec_sql("BEGIN; INSERT INTO t VALUES (1)", &[]).await.unwrap();
    // Neither libdqlite 1.11 nor 1.18 has a busy timeout: the second writer fails at once.
    let err = b.exec_sql("INSERT INTO t VALUES (2)", &[]).await.unwrap_err();
    assert!(err.is_busy(), "{err}");
    assert!(err.to_string().contains("database is locked"), "{err}");
    a.exec_sql("COMMIT", &[]).await.unwrap();
    b.exec_sql("INSERT INTO t VALUES (2)", &[]).await.unwrap();

    // BEGIN IMMEDIATE reports the lock at BEGIN, before any statement ran.
    let client2 = client.clone();
    let mut db_a = client.database("test");
    let mut db_b = client2.database("test");
    let tx = db_a.begin_immediate().await.unwrap();
    let err = db_b.begin_immediate().await.unwrap_err();
    assert!(err.is_busy(), "{err}");
    tx.commit().await.unwrap();
    db_b.begin_immediate().await.unwrap().rollback().await.unwrap();
}

#[tokio::test]
async fn a_transaction_begun_with_statements_keeps_all_or_nothing() {
    let node = TestNode::start(BOOTSTRAP_ID, &address("beginwith"));
    let client = client(vec![node.address().to_owned()]);
    let mut db = client.database("test");
    db.exec("CREATE TABLE t (x INTEGER UNIQUE)", &[]).await.unwrap();

    let (tx, last) = db.begin_immediate_with("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)").await.unwrap();
    assert_eq!((last.last_insert_id, last.rows_affected), (2, 1));
    tx.commit().await.unwrap();

    // The second statement fails: the first is rolled back with it, and the handle goes on.
    let err = db.begin_immediate_with("INSERT INTO t VALUES (3); INSERT INTO t VALUES (1)").await.unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    db.exec("INSERT INTO t VALUES (4)", &[]).await.unwrap();

    // Another connection holds the write lock: busy, before anything ran.
    let mut other = client.database("test");
    let held = other.begin_immediate().await.unwrap();
    let err = db.begin_immediate_with("INSERT INTO t VALUES (5)").await.unwrap_err();
    assert!(err.is_busy(), "{err}");
    held.rollback().await.unwrap();
    let (tx, _) = db.begin_immediate_with("INSERT INTO t VALUES (6)").await.unwrap();
    tx.commit().await.unwrap();

    let rows = db.query("SELECT x FROM t ORDER BY x", &[]).await.unwrap();
    let xs: Vec<_> = rows.rows.iter().map(|r| r.get(0).and_then(Value::as_i64).unwrap()).collect();
    assert_eq!(xs, [1, 2, 4, 6]);
}

#[tokio::test]
async fn text_sent_behind_a_barrier_answers_as_exec_sql_does() {
    let node = TestNode::start(BOOTSTRAP_ID, &address("behind"));
    let mut conn = client(vec![node.address().to_owned()]).connect_leader().await.unwrap();
    conn.open("test").await.unwrap();
    conn.exec_sql("CREATE TABLE t (x INTEGER UNIQUE)", &[]).await.unwrap();
    // The result is the text's last statement's; parameters bind to its first.
    let sql = "INSERT INTO t VALUES (?); INSERT INTO t VALUES (2); INSERT INTO t VALUES (3)";
    let last = conn.exec_sql_behind_barrier(sql, &[Value::Integer(1)]).await.unwrap();
    assert_eq!((last.last_insert_id, last.rows_affected), (3, 1));
    // A failing statement fails the call with its own error; the connection goes on.
    let err =
        conn.exec_sql_behind_barrier("INSERT INTO t VALUES (4); INSERT INTO t VALUES (1)", &[]).await.unwrap_err();
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    let err = conn.exec_sql_behind_barrier("SELEC 1", &[]).await.unwrap_err();
    assert!(err.to_string().contains("syntax error"), "{err}");
    let rows = conn.query_sql("SELECT x FROM t ORDER BY x", &[]).await.unwrap().collect().await.unwrap();
    let xs: Vec<_> = rows.rows.iter().map(|r| r.get(0).and_then(Value::as_i64).unwrap()).collect();
    assert_eq!(xs, [1, 2, 3, 4]);
}

#[tokio::test]
async fn execute_routes_each_statement() {
    let (_node, mut db) = node_and_db("execute").await;
    let outcomes =
        db.execute("CREATE TABLE t (x); INSERT INTO t VALUES ('a;b'); SELECT x FROM t; -- done\n").await.unwrap();
    assert_eq!(outcomes.len(), 3);
    match &outcomes[2] {
        dqlite::Outcome::Rows(rows) => {
            assert_eq!(rows.rows[0].get(0), Some(&Value::Text("a;b".into())))
        }
        other => panic!("expected rows, got {other:?}"),
    }
    assert!(matches!(&outcomes[1], dqlite::Outcome::Exec(r) if r.rows_affected == 1));
}

/// libdqlite 1.11 never answers a HEARTBEAT, so none can be sent; later libraries answer it,
/// but the client has no need of one, so the guard stays on every version.
#[tokio::test]
async fn heartbeat_requests_are_never_answered_by_1_11_so_none_can_be_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = TestNode::start(BOOTSTRAP_ID, &address("heartbeat"));
    let mut raw = dqlite::connect_abstract(&node.address()[1..]).unwrap();
    raw.write_all(&1u64.to_le_bytes()).await.unwrap();
    // HEARTBEAT (type 2) with a timestamp: libdqlite 1.11 never replies.
    let mut frame = dqlite::proto::Header { words: 1, kind: 2, flags: 0, extra: 0 }.encode().to_vec();
    frame.extend_from_slice(&0u64.to_le_bytes());
    raw.write_all(&frame).await.unwrap();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(std::time::Duration::from_millis(500), raw.read(&mut buf)).await;
    let library = dqlite::library();
    if library.number() < 11_200 {
        assert!(read.is_err(), "{library} answered a HEARTBEAT: {read:?}");
    } else {
        assert!(matches!(read, Ok(Ok(8))), "{library} did not answer a HEARTBEAT: {read:?}");
    }
    // Our encoder has no way to produce one (see proto::request tests), so our clients cannot stall.
}
