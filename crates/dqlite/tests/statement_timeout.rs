//! The statement time limit (process-wide, so in a test binary of its own): a runaway query is
//! interrupted on the node, the caller gets a clear error, and the node keeps serving.
#![allow(clippy::unwrap_used)]

mod harness;

use std::time::{Duration, Instant};

use dqlite::BOOTSTRAP_ID;
use harness::{TestNode, address, client};

const UNBOUNDED: &str = "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c)";

#[tokio::test]
async fn runaway_statements_are_interrupted_and_the_node_keeps_serving() {
    dqlite::set_statement_timeout(Some(Duration::from_millis(300))).unwrap();
    let node = TestNode::start(BOOTSTRAP_ID, &address("timeout"));
    let mut db = client(vec![node.address().to_owned()]).database("test");
    db.exec("CREATE TABLE t (x)", &[]).await.unwrap();

    // A query that computes forever without returning a row.
    let start = Instant::now();
    let err = db.query(&format!("{UNBOUNDED} SELECT count(*) FROM c"), &[]).await.unwrap_err();
    assert!(err.is_interrupted(), "{err}");
    assert!(start.elapsed() < Duration::from_secs(20), "took {:?}", start.elapsed());

    // One that streams rows forever: the client stops reading at its limit, and the node
    // stops the statement at the time limit, which ends the stream.
    let err = db.query_limited(&format!("{UNBOUNDED} SELECT n FROM c"), &[], 1000).await.unwrap_err();
    assert!(matches!(err, dqlite::Error::TooManyRows { limit: 1000 }), "{err}");

    // Read to its end, a stream of rows the node interrupts part-way ends with that error.
    let mut streamed = 0u64;
    let mut rows =
        db.query_rows(&format!("{UNBOUNDED} SELECT n, hex(zeroblob(100)) AS pad FROM c"), &[]).await.unwrap();
    let err = loop {
        match rows.next().await {
            Ok(Some(_)) => streamed += 1,
            Ok(None) => panic!("an endless query ended after {streamed} rows"),
            Err(err) => break err,
        }
    };
    drop(rows);
    assert!(err.is_interrupted(), "after {streamed} rows: {err}");
    assert!(streamed > 0);

    // A write that runs too long changes nothing.
    let err = db.exec(&format!("INSERT INTO t {UNBOUNDED} SELECT n FROM c"), &[]).await.unwrap_err();
    assert!(err.is_interrupted(), "{err}");
    let rows = db.query("SELECT count(*) FROM t", &[]).await.unwrap();
    assert_eq!(rows.rows[0].values()[0].as_i64(), Some(0));

    // Quick statements are untouched, including many in a row on the same connection.
    for i in 0..200 {
        db.exec("INSERT INTO t VALUES (?)", &[i.into()]).await.unwrap();
    }
    let rows = db.query("SELECT count(*) FROM t", &[]).await.unwrap();
    assert_eq!(rows.rows[0].values()[0].as_i64(), Some(200));

    // Lifted, a long (but finite) statement runs to its end.
    dqlite::set_statement_timeout(None).unwrap();
    let rows = db.query(&format!("{UNBOUNDED} SELECT count(*) FROM (SELECT n FROM c LIMIT 3000000)"), &[]).await;
    assert_eq!(rows.unwrap().rows[0].values()[0].as_i64(), Some(3_000_000));
}
