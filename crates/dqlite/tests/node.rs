//! The node's life cycle against the real library: settings validated up front, start/stop,
//! restart on the same data, and forced recovery of a cluster that lost its quorum.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dqlite::{BOOTSTRAP_ID, Node, NodeError, NodeInfo, Role, Value};

mod harness;
use harness::{TestCluster, address, client, start_in};

#[test]
fn settings_libdqlite_would_refuse_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["[::1]:9001", "localhost:9001", "127.0.0.1", "::1"] {
        let err = Node::builder(1, "@a", dir.path()).bind_address(bad).build().unwrap_err();
        assert!(matches!(err, NodeError::Invalid { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("IPv4"), "{err}");
        assert!(Node::new(1, bad, dir.path()).is_err());
    }
    let long = format!("@{}", "x".repeat(200));
    assert!(Node::new(1, long, dir.path()).is_err());
    let err = Node::builder(1, "@a", dir.path()).network_latency(Duration::ZERO).build().unwrap_err();
    assert!(err.to_string().contains("network latency"), "{err}");
    let err = Node::builder(1, "@a", dir.path()).snapshot_params(1024, 512).build().unwrap_err();
    assert!(err.to_string().contains("snapshot"), "{err}");
    let err = Node::builder(1, "@a", dir.path()).snapshot_params(2, 3).build().unwrap_err();
    assert!(err.to_string().contains("at least 4"), "{err}");
    let err = Node::builder(1, "@a", dir.path()).checkpoint_threshold(0).build().unwrap_err();
    assert!(err.to_string().contains("checkpoint threshold"), "{err}");
    // The election timeout is 15× the latency (libdqlite's 3 s when none is set).
    for (latency, heartbeat) in [(Some(Duration::from_millis(20)), 300), (None, 3000), (None, 0)] {
        let mut builder = Node::builder(1, "@a", dir.path()).heartbeat_interval(Duration::from_millis(heartbeat));
        if let Some(latency) = latency {
            builder = builder.network_latency(latency);
        }
        let err = builder.build().unwrap_err();
        assert!(err.to_string().contains("heartbeat interval"), "{err}");
    }
    for bytes in [0, 1 << 19, (3 << 20) / 2, 2 << 30] {
        let err = Node::builder(1, "@a", dir.path()).raft_segment_size(bytes).build().unwrap_err();
        assert!(err.to_string().contains("raft segment size"), "{bytes}: {err}");
    }
    assert!(Node::new(1, "nul\0here", dir.path()).is_err());
}

#[tokio::test]
async fn raft_log_segments_take_the_size_set() {
    const MIB: u64 = 1024 * 1024;
    // 1.11's private setting; never tried on another library, whose segments stay 8 MiB.
    let set = if dqlite::library().takes_private_tuning() { 24 * MIB } else { 8 * MIB };
    for (segment, expected) in [(None, 8 * MIB), (Some(24 * MIB), set)] {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = Node::builder(BOOTSTRAP_ID, address("segment"), dir.path());
        if let Some(bytes) = segment {
            builder = builder.raft_segment_size(usize::try_from(bytes).unwrap());
        }
        let mut node = builder.build().unwrap();
        node.start().unwrap();
        let mut db = client(vec![node.address().to_owned()]).database("test");
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)", &[]).await.unwrap();
        // libraft preallocates every open segment (`open-N`) at the segment size.
        let sizes: Vec<u64> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with("open-"))
            .map(|e| e.metadata().unwrap().len())
            .collect();
        assert!(!sizes.is_empty(), "no open segment in {}", dir.path().display());
        assert!(sizes.iter().all(|&len| len == expected), "segment {segment:?}: open segments of {sizes:?} bytes");
        drop(db);
        tokio::task::spawn_blocking(move || node.stop().unwrap()).await.unwrap();
    }
}

#[test]
fn a_name_other_than_the_bind_address_needs_a_bind_address() {
    let dir = tempfile::tempdir().unwrap();
    let err = Node::new(1, "node1.example:9001", dir.path()).unwrap_err();
    assert!(err.to_string().contains("set a bind address"), "{err}");
    let mut node = Node::builder(1, "node1.example:9001", dir.path()).bind_address("@").build().unwrap();
    node.start().unwrap();
    // `@` asks for an automatically named abstract socket.
    assert!(node.bind_address().unwrap().starts_with('@'));
    assert!(node.bind_address().unwrap().len() > 1);
}

#[test]
fn start_stop_are_idempotent_and_a_stopped_node_stays_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::builder(BOOTSTRAP_ID, address("life"), dir.path().join("nested/data"))
        .failure_domain(3)
        .snapshot_params(64, 128)
        .network_latency(Duration::from_millis(5))
        .build()
        .unwrap();
    assert!(dir.path().join("nested/data").is_dir());
    node.start().unwrap();
    node.start().unwrap();
    assert!(node.is_running());
    node.set_failure_domain(4).unwrap();
    assert!(matches!(node.recover(&[]), Err(NodeError::Running { .. })));
    node.stop().unwrap();
    node.stop().unwrap();
    assert!(!node.is_running());
    assert!(matches!(node.start(), Err(NodeError::Stopped)));
}

/// WAL frames in a dump's `-wal` file (32-byte header, then 24-byte frame headers and pages).
fn wal_frames(files: &[dqlite::File]) -> usize {
    let wal = files.iter().find(|f| f.name.ends_with("-wal")).map_or(0, |f| f.data.len());
    wal.saturating_sub(32) / (24 + 4096)
}

#[tokio::test]
async fn a_lower_checkpoint_threshold_keeps_the_wal_short() {
    if !dqlite::library().takes_private_tuning() {
        return another_library_keeps_its_own_checkpoint_threshold().await;
    }
    let mut frames = Vec::new();
    for threshold in [None, Some(8)] {
        let dir = tempfile::tempdir().unwrap();
        let address = address("ckpt");
        let builder = Node::builder(BOOTSTRAP_ID, address.clone(), dir.path()).network_latency(harness::LATENCY);
        let mut node = match threshold {
            Some(frames) => builder.checkpoint_threshold(frames),
            None => builder,
        }
        .build()
        .unwrap();
        // libdqlite 1.11's own default, or ours.
        assert_eq!(node.checkpoint_threshold(), Some(threshold.unwrap_or(1000)));
        node.start().unwrap();
        let client = client(vec![address.clone()]);
        let mut db = client.database("ckpt");
        db.exec("CREATE TABLE t (x)", &[]).await.unwrap();
        commit_rows(&mut db, 60).await;
        let count = db.query("SELECT count(*) FROM t", &[]).await.unwrap();
        assert_eq!(count.rows[0].get(0), Some(&Value::Integer(60)));
        frames.push(wal_frames(&client.dump(&address, "ckpt").await.unwrap()));
        if threshold.is_some() {
            // Changed while running: from the next entry on, the WAL grows again.
            assert!(!node.set_checkpoint_threshold(0));
            assert!(node.set_checkpoint_threshold(1000));
            assert_eq!(node.checkpoint_threshold(), Some(1000));
            commit_rows(&mut db, 40).await;
            frames.push(wal_frames(&client.dump(&address, "ckpt").await.unwrap()));
        }
    }
    assert!(frames[0] >= 60, "libdqlite's default keeps every commit in the WAL: {frames:?}");
    assert!(frames[1] < 8 + 4, "a threshold of 8 checkpoints every few commits: {frames:?}");
    assert!(frames[2] >= 40, "raised to 1000 while running, no checkpoint: {frames:?}");
}

/// Commits `rows` one-row inserts into `t`, each a WAL frame or more (the table's leaf page).
async fn commit_rows(db: &mut dqlite::Database, rows: i64) {
    for i in 0..rows {
        db.exec("INSERT INTO t VALUES (?)", &[Value::Integer(i)]).await.unwrap();
    }
}

/// Not 1.11: the threshold is neither read nor written, and the library's own (1000) holds.
async fn another_library_keeps_its_own_checkpoint_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let address = address("ckpt");
    let mut node = Node::builder(BOOTSTRAP_ID, address.clone(), dir.path())
        .network_latency(harness::LATENCY)
        .checkpoint_threshold(8)
        .build()
        .unwrap();
    assert_eq!(node.checkpoint_threshold(), None, "{}", dqlite::library());
    assert!(!node.set_checkpoint_threshold(8));
    node.start().unwrap();
    let client = client(vec![address.clone()]);
    let mut db = client.database("ckpt");
    db.exec("CREATE TABLE t (x)", &[]).await.unwrap();
    commit_rows(&mut db, 60).await;
    let frames = wal_frames(&client.dump(&address, "ckpt").await.unwrap());
    assert!(frames >= 60, "{}: the WAL was checkpointed after {frames} frames", dqlite::library());
    drop(db);
    tokio::task::spawn_blocking(move || node.stop().unwrap()).await.unwrap();
}

#[test]
fn binding_a_taken_tcp_port_fails_cleanly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let err = Node::new(BOOTSTRAP_ID, address, dir.path()).unwrap_err();
    assert!(matches!(err, NodeError::Call { call: "set_bind_address", .. }), "{err}");
}

#[tokio::test]
async fn data_survives_a_restart_on_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let addr = address("restart");
    let node = start_in(BOOTSTRAP_ID, &addr, dir.path());
    let mut db = client(vec![addr.clone()]).database("test");
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES ('kept')", &[]).await.unwrap();
    tokio::task::spawn_blocking(move || drop(node)).await.unwrap();

    let _node = start_in(BOOTSTRAP_ID, &addr, dir.path());
    let mut db = client(vec![addr]).database("test");
    let rows = db.query("SELECT x FROM t", &[]).await.unwrap();
    assert_eq!(rows.rows[0].get(0), Some(&Value::Text("kept".into())));
}

#[tokio::test]
async fn a_survivor_recovers_a_cluster_that_lost_quorum() {
    let mut cluster = TestCluster::start("recover", &[Role::Voter, Role::Voter]).await;
    let mut db = cluster.client.database("test");
    db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1), (2), (3)", &[]).await.unwrap();
    drop(db);
    // Keep the first node's directory and identity; lose the other two for good.
    let survivor = cluster.nodes.remove(0);
    let (id, addr) = (survivor.id(), survivor.address().to_owned());
    let harness::TestNode { node, dir } = survivor;
    let others = std::mem::take(&mut cluster.nodes);
    tokio::task::spawn_blocking(move || {
        drop(node);
        drop(others);
    })
    .await
    .unwrap();

    let mut node = Node::builder(id, addr.clone(), dir.path()).network_latency(harness::LATENCY).build().unwrap();
    node.recover(&[NodeInfo { id, address: addr.clone(), role: Some(Role::Voter) }]).unwrap();
    node.start().unwrap();
    let client = client(vec![addr]);
    assert_eq!(client.cluster().await.unwrap().len(), 1);
    let mut db = client.database("test");
    db.exec("INSERT INTO t VALUES (4)", &[]).await.unwrap();
    let rows = db.query("SELECT count(*) FROM t", &[]).await.unwrap();
    assert_eq!(rows.rows[0].get(0), Some(&Value::Integer(4)));
    tokio::task::spawn_blocking(move || drop(node)).await.unwrap();
}

/// libdqlite 1.11 names each node's VFS from a counter it bumps without a lock; nodes created
/// on several threads at once could share one name and so one set of databases. The crate
/// creates nodes one at a time. (The race window is a few instructions wide, so without that
/// lock this fails only now and then; it was seen as a parallel test finding another's table.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_created_at_once_keep_their_databases_apart() {
    const NODES: usize = 12;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(NODES));
    let threads: Vec<_> = (0..NODES)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let (dir, addr) = (tempfile::tempdir().unwrap(), address("apart"));
                barrier.wait();
                (start_in(BOOTSTRAP_ID, &addr, dir.path()), dir)
            })
        })
        .collect();
    let nodes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, (node, _)) in nodes.iter().enumerate() {
        let mut db = client(vec![node.address().to_owned()]).database("test");
        db.exec(&format!("CREATE TABLE t{i} (x)"), &[]).await.unwrap();
    }
    for (i, (node, _)) in nodes.iter().enumerate() {
        let mut db = client(vec![node.address().to_owned()]).database("test");
        let rows = db.query("SELECT name FROM sqlite_master WHERE type = 'table'", &[]).await.unwrap();
        let names: Vec<_> = rows.rows.iter().map(|r| r.get(0).cloned()).collect();
        assert_eq!(names, [Some(Value::Text(format!("t{i}")))], "node {i} sees other nodes' tables");
    }
    tokio::task::spawn_blocking(move || drop(nodes)).await.unwrap();
}

/// A connect function that counts the bytes raft sends through it: each connection is piped
/// through a socketpair by two threads.
fn counting_connect(sent: Arc<AtomicUsize>) -> impl Fn(&str) -> std::io::Result<OwnedFd> + Send + Sync + 'static {
    move |address: &str| {
        let peer = UnixStream::from(dqlite::connect_blocking(address, Duration::from_secs(1))?);
        let (ours, theirs) = UnixStream::pair()?;
        let (mut from_raft, mut to_peer) = (theirs.try_clone()?, peer.try_clone()?);
        let sent = sent.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = from_raft.read(&mut buf) {
                sent.fetch_add(n, Ordering::Relaxed);
                if to_peer.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to_peer.shutdown(std::net::Shutdown::Both);
        });
        let (mut from_peer, mut to_raft) = (peer, theirs);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_peer, &mut to_raft);
            let _ = to_raft.shutdown(std::net::Shutdown::Both);
        });
        Ok(ours.into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_longer_heartbeat_interval_sends_fewer_heartbeats_and_keeps_the_leader() {
    let mut sent_idle = Vec::new();
    let private = dqlite::library().takes_private_tuning();
    for heartbeat in [None, Some(Duration::from_millis(150))] {
        let sent = Arc::new(AtomicUsize::new(0));
        let (dir, leader_address) = (tempfile::tempdir().unwrap(), address("heartbeat"));
        let mut builder = Node::builder(BOOTSTRAP_ID, leader_address.clone(), dir.path())
            .network_latency(harness::LATENCY)
            .connect_func(counting_connect(sent.clone()));
        if let Some(interval) = heartbeat {
            builder = builder.heartbeat_interval(interval);
        }
        let mut leader = builder.build().unwrap();
        // 1.11's private setting; never tried on another library.
        let heartbeat = heartbeat.filter(|_| private);
        assert_eq!(leader.heartbeat_interval(), heartbeat, "the setting did not reach libraft");
        leader.start().unwrap();
        let follower = harness::TestNode::start(2, &address("heartbeat"));
        let client = client(vec![leader_address.clone()]);
        client.add(follower.id(), follower.address()).await.unwrap();
        client.assign(follower.id(), Role::Voter).await.unwrap();
        let mut db = client.database("test");
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)", &[]).await.unwrap();

        // Idle for 1.5 s: only heartbeats flow from the leader to its follower.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = sent.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sent_idle.push(sent.load(Ordering::Relaxed) - before);

        // Still one leader (5 heartbeats per shortest election timeout), still replicating.
        assert_eq!(client.leader().await.unwrap().address, leader_address);
        assert_eq!(leader.heartbeat_interval(), heartbeat, "libdqlite reset the heartbeat");
        db.exec("INSERT INTO t VALUES (2)", &[]).await.unwrap();
        drop(db);
        tokio::task::spawn_blocking(move || {
            drop(follower);
            drop(leader);
        })
        .await
        .unwrap();
    }
    // 1.5× the 20 ms latency (30 ms) against 150 ms: about five times the bytes.
    let [default, longer] = sent_idle[..] else { unreachable!() };
    eprintln!("idle bytes leader -> follower in 1.5 s: heartbeat 30 ms {default}, 150 ms {longer}");
    if private {
        assert!(longer > 0 && longer * 3 < default, "30 ms: {default} bytes, 150 ms: {longer} bytes");
    } else {
        assert!(longer * 2 > default, "{}: the heartbeat changed: {default} against {longer} bytes", dqlite::library());
    }
}

/// The raft log's barrier entries (libraft's `RAFT_BARRIER`, type 2) in a stopped node's data
/// directory: each segment is a format word, then batches of two CRCs, an entry count, 16
/// bytes of header per entry (term, type, 3 unused, size) and the entries' data.
fn barriers_in_log(dir: &std::path::Path) -> usize {
    let mut barriers = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let segment = name.starts_with("open-") || name.split('-').all(|part| part.len() == 16);
        if !segment || name.contains("snapshot") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let word = |at: usize| bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
        let mut at = 8;
        while let Some(n) = word(at + 8).filter(|&n| n > 0 && n < 1 << 20) {
            let headers = at + 16;
            let mut data = 0;
            for i in 0..n as usize {
                let header = headers + i * 16;
                barriers += usize::from(bytes[header + 8] == 2);
                data += u32::from_le_bytes(bytes[header + 12..header + 16].try_into().unwrap()) as usize;
            }
            at = headers + n as usize * 16 + data;
        }
    }
    barriers
}

#[tokio::test]
async fn text_behind_a_barrier_waits_for_one_barrier_not_one_per_statement() {
    // Every commit checkpoints the leader's WAL, so every next text finds the log one entry
    // (libdqlite's checkpoint command) ahead of what is applied, for a moment.
    const ROUNDS: usize = 20;
    let text = format!("BEGIN IMMEDIATE;{}COMMIT", "INSERT INTO t VALUES (1);".repeat(8));
    let mut counts = Vec::new();
    for behind in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut node =
            Node::builder(BOOTSTRAP_ID, address("chain"), dir.path()).checkpoint_threshold(1).build().unwrap();
        node.start().unwrap();
        let mut conn = client(vec![node.address().to_owned()]).connect_leader().await.unwrap();
        conn.open("test").await.unwrap();
        conn.exec_sql("CREATE TABLE t (x)", &[]).await.unwrap();
        for _ in 0..ROUNDS {
            if behind {
                conn.exec_sql_behind_barrier(&text, &[]).await.unwrap();
            } else {
                conn.exec_sql(&text, &[]).await.unwrap();
            }
        }
        drop(conn);
        tokio::task::spawn_blocking(move || node.stop().unwrap()).await.unwrap();
        counts.push(barriers_in_log(dir.path()));
    }
    let [plain, behind] = counts[..] else { unreachable!() };
    eprintln!("barrier entries for {ROUNDS} texts of 10 statements: plain {plain}, behind a barrier {behind}");
    // libraft 0.15 runs a barrier's callback before it counts the barrier applied: in plain
    // EXEC_SQL each later statement of the text may take a barrier of its own.
    assert!(behind <= ROUNDS + 1, "{behind} barriers for {ROUNDS} texts (plain EXEC_SQL: {plain})");
}
