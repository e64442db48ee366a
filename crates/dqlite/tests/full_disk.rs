//! How libraft (as libdqlite embeds it) meets a full disk, reduced to one follower: once it
//! cannot create its next log segment (preallocated at the segment size), it persists nothing
//! more and falls behind, silently; once the file system has room for a whole segment again,
//! its next append creates one and it catches up by itself. microd reports the first state
//! (`microcluster::server::state::disk`) and restarts the node only if raft still has no segment long
//! after space returned; this test pins the library behaviour that relies on.
//!
//! Three voters, one of them (a follower) with its data directory on a 24 MiB tmpfs, 4 MiB
//! segments and a snapshot every 64 entries. A leader in the same state goes on once space
//! returns (each append asks for a segment again); a follower does not. Needs root (mount);
//! elsewhere it says why and passes.
#![allow(clippy::unwrap_used)]

mod harness;

use std::io::Write;
use std::time::{Duration, Instant};

use dqlite::Node;
use harness::{LATENCY, address};

struct Tmpfs {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u32) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn start(id: u64, dir: &std::path::Path, address: &str) -> Node {
    let mut node = Node::builder(id, address, dir)
        .network_latency(LATENCY)
        .raft_segment_size(4 << 20)
        .snapshot_params(64, 64)
        .connect_func(|addr| dqlite::connect_blocking(addr, Duration::from_secs(1)))
        .build()
        .unwrap();
    node.start().unwrap();
    node
}

/// Inserts a 4 KiB row; whether it was acknowledged within `within`.
async fn insert(db: &mut dqlite::Database, within: Duration) -> bool {
    let row = "INSERT INTO t VALUES (zeroblob(4096))";
    matches!(tokio::time::timeout(within, db.exec(row, &[])).await, Ok(Ok(_)))
}

/// Whether libraft holds an open segment in `dir`.
fn open_segment(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with("open-"))
}

/// Whether leadership can be handed to `id` (which must hold the whole log to win).
async fn transfer_to(client: &dqlite::Client, id: u64) -> bool {
    if client.transfer(id).await.is_err() {
        return false;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if client.leader().await.is_ok_and(|l| l.id == id) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// What [`full_disk_episode`] leaves: the cluster, the follower that went through it, its
/// data directory and the file system (kept mounted).
struct Episode {
    cluster: harness::TestCluster,
    client: dqlite::Client,
    db: dqlite::Database,
    follower: Node,
    id: u64,
    address: String,
    data: std::path::PathBuf,
    _fs: Tmpfs,
}

/// Three voters, the follower under test on a 24 MiB tmpfs; its disk fills up and stays full
/// under writes until it has no segment to write to, then space comes back. `None` without
/// root.
async fn full_disk_episode(tag: &str) -> Option<Episode> {
    let fs = match Tmpfs::mount(24) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED: a small tmpfs cannot be mounted here ({why})");
            return None;
        }
    };
    let cluster = harness::TestCluster::start(tag, &[dqlite::Role::Voter]).await;
    let client = cluster.client.clone();
    let data = fs.path.join("node");
    std::fs::create_dir(&data).unwrap();
    let follower_address = address(tag);
    let id = dqlite::generate_id(&follower_address);
    let follower = start(id, &data, &follower_address);
    client.add(id, &follower_address).await.unwrap();
    client.assign(id, dqlite::Role::Voter).await.unwrap();
    client.set_servers(cluster.addresses().into_iter().chain([follower_address.clone()]));
    let mut db = client.database("test");
    db.exec("CREATE TABLE t (b BLOB)", &[]).await.unwrap();
    for _ in 0..100 {
        assert!(insert(&mut db, Duration::from_secs(5)).await, "writes before the disk filled up");
    }
    // Fill what is left, and keep it full (libraft frees the unused tail of every segment it
    // closes), while the others write, until the follower has no segment left to write to.
    let filler = fs.path.join("filler");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&filler).unwrap();
    let mut stuck = false;
    for _ in 0..3000 {
        while file.write_all(&[0u8; 4096]).is_ok() {}
        assert!(insert(&mut db, Duration::from_secs(5)).await, "the two other voters stopped committing");
        if !open_segment(&data) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if !open_segment(&data) {
                stuck = true;
                break;
            }
        }
    }
    drop(file);
    assert!(stuck, "the follower kept a segment to write to on a full disk");
    std::fs::remove_file(&filler).unwrap();
    Some(Episode { cluster, client, db, follower, id, address: follower_address, data, _fs: fs })
}

/// On Ubuntu 24.04 (libdqlite 1.16 with libraft 0.22) the follower stays stuck instead (3 runs
/// of 3, by hand: that platform is not in CI); microd's own full-disk handling, which restarts
/// the node once the disk has had room for 3 s, passes there (`tests/tests/suite/full_disk.rs`).
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_stops_writing_its_log_on_a_full_disk_and_resumes_when_a_segment_fits() {
    let Some(mut episode) = full_disk_episode("full-disk").await else { return };
    // Space is back: the follower's next append creates a segment, and it catches up.
    for _ in 0..200 {
        assert!(insert(&mut episode.db, Duration::from_secs(5)).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let resumed = open_segment(&episode.data);
    let leads = transfer_to(&episode.client, episode.id).await;
    let library = dqlite::library();
    eprintln!("{library}, with space back: an open segment = {resumed}; leadership transferred to it = {leads}");
    if (11_600..11_700).contains(&library.number()) {
        assert!(!resumed, "{library}: the follower resumed by itself: update this test and the README");
    } else {
        assert!(
            resumed && leads,
            "{library}: the follower did not resume by itself once the disk had room for a segment"
        );
    }
    episode.cluster.nodes.clear();
}

/// Seen in 2 of 3 runs: the follower that resumed by itself and was made leader does not
/// answer a count over the table (the request times out after 10 s). microd therefore
/// restarts a member's node once it recovers from a full or failing disk. Kept as a
/// reproduction to run by hand.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a libdqlite 1.11 hang seen in most runs: a reproduction to run by hand with --ignored"]
async fn a_follower_that_resumed_after_a_full_disk_answers_reads_as_leader() {
    let Some(mut episode) = full_disk_episode("full-disk-read").await else { return };
    for _ in 0..200 {
        assert!(insert(&mut episode.db, Duration::from_secs(5)).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(transfer_to(&episode.client, episode.id).await, "no transfer to the follower");
    let rows = episode.db.query("SELECT count(*) FROM t", &[]).await.unwrap();
    eprintln!("rows read on it as leader: {:?}", rows.rows[0].values());
    episode.cluster.nodes.clear();
}

/// Seen in 2 of about 20 runs (never in microd's end-to-end tests): after such an episode and
/// a restart of the follower, made leader, a count over the table crashed the process with
/// SIGSEGV in libdqlite's VFS (`memcpy` under `sqlite3BtreeCount`, from `leader.barrier` →
/// `query.batch`). Kept as a reproduction to run by hand; it takes the test process down.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a libdqlite 1.11 crash (SIGSEGV) seen in some runs: a reproduction to run by hand with --ignored"]
async fn a_follower_restarted_after_a_full_disk_reads_without_crashing() {
    let Some(episode) = full_disk_episode("full-disk-restart").await else { return };
    let Episode { cluster, client, mut db, follower, id, address: follower_address, data, _fs } = episode;
    for _ in 0..200 {
        assert!(insert(&mut db, Duration::from_secs(5)).await);
    }
    tokio::task::spawn_blocking(move || drop(follower)).await.unwrap();
    let _follower = start(id, &data, &follower_address);
    let mut caught_up = false;
    for _ in 0..20 {
        if transfer_to(&client, id).await {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(caught_up, "leadership could not be handed to the follower after its restart");
    let rows = db.query("SELECT count(*) FROM t", &[]).await.unwrap();
    eprintln!("rows after the follower's restart, read on it as leader: {:?}", rows.rows[0].values());
    drop(cluster);
}
