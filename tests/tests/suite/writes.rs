//! The write path under concurrency: many writers at once never see "database is locked",
//! their requests are committed together (group commit), and a request that fails fails alone,
//! with its own error, while the requests it was batched with commit.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use microcluster_tests::checker;
use microcluster_tests::{Cluster, Member};

/// `microcluster_write_batch_size` as (batches, batches of one request) from a member's metrics.
fn batches(member: &Member) -> (u64, u64) {
    (
        member.metric("microcluster_write_batch_size_count"),
        member.metric("microcluster_write_batch_size_bucket{le=\"1\"}"),
    )
}

const FORWARDED: &str = "microcluster_sql_writes_forwarded_total ";

#[test]
fn concurrent_writers_are_committed_together_and_fail_alone() {
    let cluster = Cluster::form(3);
    let sockets: Vec<PathBuf> = cluster.members.iter().map(|m| m.socket()).collect();
    checker::sql(&sockets[0], "CREATE TABLE w (k TEXT PRIMARY KEY, writer INTEGER)").unwrap();
    let (before, before_single) = batches(&cluster.members[0]);

    // 16 writers, most through member 1 (one queue), some through the others; every tenth
    // request reuses a key and must fail with a constraint error, alone.
    let (ok, conflicts, other) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..16)
        .map(|w| {
            let socket = sockets[if w < 12 { 0 } else { w % 3 }].clone();
            let (ok, conflicts, other, errors) = (ok.clone(), conflicts.clone(), other.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut mine = 0;
                for i in 0..60 {
                    if i % 7 == 6 {
                        // Only this writer writes its rows: the count must be exactly its own,
                        // whichever batch the update lands in.
                        let out = checker::sql(&socket, &format!("UPDATE w SET writer = {w} WHERE writer = {w}"));
                        match out {
                            Ok(out) => assert_eq!(out["metadata"]["Results"][0]["rows_affected"], mine, "{out}"),
                            Err(err) => errors.lock().unwrap().push(err),
                        }
                    }
                    let key = if i % 10 == 9 { format!("{w}-{}", i - 1) } else { format!("{w}-{i}") };
                    match checker::sql(&socket, &format!("INSERT INTO w (k, writer) VALUES ('{key}', {w})")) {
                        Ok(out) => {
                            assert_eq!(out["metadata"]["Results"][0]["rows_affected"], 1, "{out}");
                            mine += 1;
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(err) if err.contains("409") && err.contains("UNIQUE constraint failed") => {
                            conflicts.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(err) => {
                            other.fetch_add(1, Ordering::SeqCst);
                            errors.lock().unwrap().push(err);
                        }
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "{} unexpected errors, e.g. {:?}", errors.len(), &errors[..errors.len().min(3)]);
    assert_eq!(
        (ok.load(Ordering::SeqCst), conflicts.load(Ordering::SeqCst), other.load(Ordering::SeqCst)),
        (16 * 54, 16 * 6, 0)
    );
    let count = checker::sql(&sockets[1], "SELECT count(*), count(DISTINCT k) FROM w").unwrap();
    assert_eq!(count["metadata"]["Results"][0]["rows"][0], serde_json::json!([16 * 54, 16 * 54]));

    // Member 1's queue committed requests together.
    let (after, single) = batches(&cluster.members[0]);
    let grouped = (after - single) - (before - before_single);
    eprintln!("member 1: {} batches for its requests, {grouped} of them with several requests", after - before);
    assert!(grouped > 0, "no batch held more than one request");
    // Batches of plain writes ran as one text, and those holding a conflict were undone and
    // run one by one (the conflicts above failed alone all the same).
    let merged = cluster.members[0].metric("microcluster_write_batches_merged_total{outcome=\"merged\"}");
    let undone = cluster.members[0].metric("microcluster_write_batches_merged_total{outcome=\"undone\"}");
    eprintln!("member 1: {merged} merged batches, {undone} undone");
    assert!(merged > 0 && undone > 0, "merged {merged}, undone {undone}");
    // Batches waited for the writers their last commit answered (whether all of them came back
    // in time depends on this machine's load: only that the queue waited is certain).
    let full = cluster.members[0].metric("microcluster_write_gathers_total{outcome=\"full\"}");
    let timeout = cluster.members[0].metric("microcluster_write_gathers_total{outcome=\"timeout\"}");
    eprintln!("member 1: waited for its writers {full} times in full, {timeout} times in vain");
    assert!(full + timeout > 0, "the queue never waited for the writers of its last commit");
    drop(cluster);
}

#[test]
fn writes_through_followers_run_in_the_leader_queue_and_keep_their_errors() {
    let cluster = Cluster::form(3);
    let sockets: Vec<PathBuf> = cluster.members.iter().map(|m| m.socket()).collect();
    let list = cluster.members[0].members();
    let leader_name = list.iter().find(|m| m["leader"] == true).map(|m| m["name"].clone()).unwrap();
    let leader = cluster.members.iter().position(|m| leader_name == m.name.as_str()).unwrap();
    checker::sql(&sockets[leader], "CREATE TABLE f (k INTEGER PRIMARY KEY)").unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for (n, i) in followers.iter().enumerate() {
        let k = n * 10;
        let out = checker::sql(&sockets[*i], &format!("INSERT INTO f VALUES ({k}); INSERT INTO f VALUES ({})", k + 1));
        assert_eq!(out.unwrap()["metadata"]["Results"][1]["rows_affected"], 1);
        checker::sql(&sockets[*i], &format!("BEGIN; INSERT INTO f VALUES ({}); COMMIT", k + 2)).unwrap();
        // The leader's error comes back as it was: status, message, nothing applied.
        let err = checker::sql(&sockets[*i], &format!("INSERT INTO f VALUES ({}); INSERT INTO f VALUES ({k})", k + 3));
        let err = err.unwrap_err();
        assert!(err.contains("409") && err.contains("UNIQUE constraint failed"), "{err}");
        // Reads are answered where they arrive, and so is text that mixes them with writes.
        let before = cluster.members[*i].metric(FORWARDED);
        checker::sql(&sockets[*i], "SELECT count(*) FROM f").unwrap();
        assert_eq!(cluster.members[*i].metric(FORWARDED), before, "a read was forwarded");
        let mixed = checker::sql(
            &sockets[*i],
            &format!("INSERT INTO f VALUES ({}); SELECT k FROM f WHERE k = {}", k + 5, k + 5),
        );
        assert_eq!(mixed.unwrap()["metadata"]["Results"][1]["rows"], serde_json::json!([[k + 5]]));
        assert_eq!(cluster.members[*i].metric(FORWARDED), before, "text with a read was forwarded");
        assert_eq!(before, 3, "member {i} forwarded {before} writes, not 3");
    }
    assert_eq!(cluster.members[leader].metric(FORWARDED), 0, "the leader forwarded writes");
    let rows = checker::sql(&sockets[leader], "SELECT k FROM f ORDER BY k").unwrap();
    assert_eq!(rows["metadata"]["Results"][0]["rows"], serde_json::json!([[0], [1], [2], [5], [10], [11], [12], [15]]));
    drop(cluster);
}

/// SQLite's `changes()` keeps the count of the last INSERT, UPDATE or DELETE: a statement that
/// changes no row (DDL, a transaction statement) must not report the one before it, whether
/// the text runs on the leader or is forwarded there.
#[test]
fn every_statement_reports_its_own_rows_affected() {
    let cluster = Cluster::form(2);
    let text = "CREATE TABLE r5 (x); INSERT INTO r5 VALUES (1), (2), (3), (4), (5); CREATE TABLE b (y); \
                DROP TABLE b; UPDATE r5 SET x = x + 1 WHERE x > 3; \
                WITH t(v) AS (VALUES (9)) INSERT INTO r5 SELECT v FROM t; DELETE FROM r5 WHERE x = 99; \
                SELECT count(*) FROM r5";
    for (i, member) in cluster.members.iter().enumerate() {
        let text = text
            .replace("r5", &format!("r5_{i}"))
            .replace(" b ", &format!(" b{i} "))
            .replace("TABLE b;", &format!("TABLE b{i};"));
        let out = checker::sql(&member.socket(), &text).unwrap();
        let counts: Vec<&serde_json::Value> =
            out["metadata"]["Results"].as_array().unwrap().iter().map(|r| &r["rows_affected"]).collect();
        assert_eq!(counts, [0, 5, 0, 0, 2, 1, 0, 0], "through {}: {out}", member.name);
        let text = format!("BEGIN; INSERT INTO r5_{i} VALUES (7); COMMIT; CREATE INDEX i{i} ON r5_{i} (x)");
        let out = checker::sql(&member.socket(), &text).unwrap();
        let counts: Vec<&serde_json::Value> =
            out["metadata"]["Results"].as_array().unwrap().iter().map(|r| &r["rows_affected"]).collect();
        assert_eq!(counts, [0, 1, 0, 0], "through {}: {out}", member.name);
    }
}
