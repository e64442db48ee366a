//! The fault suite: real members, writers through different members, and faults injected
//! while they write; after each fault and at the end the checker proves nothing acknowledged
//! was lost and nothing was applied twice.
//!
//! `make test` runs a quick version of each fault; `make test-faults` sets
//! `MICROCLUSTER_FAULTS=full` for the full counts (20 leader kills, a 10 s freeze, ...).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use microcluster_tests::checker::{self, Checker};
use microcluster_tests::{Cluster, Member, until_not_503, wait_until};

fn full() -> bool {
    std::env::var("MICROCLUSTER_FAULTS").is_ok_and(|v| v == "full")
}

/// Writers through members 0..n (four writers, spread over the members).
fn writers(cluster: &Cluster) -> Checker {
    checker::create_table(&cluster.members[0].socket()).unwrap();
    let sockets = (0..4).map(|w| cluster.members[w % cluster.members.len()].socket()).collect();
    Checker::start(sockets)
}

/// Checks the writes so far through `member`. A member may still be without a leader right
/// after a fault (an election that a resumed voter set off): it says so with a 503, and the
/// check is asked again; what is judged is the data, not availability at that instant.
fn verify_now(member: &Member, checker: &Checker) {
    let history = checker.history();
    until_not_503(&format!("after a fault, through {}", member.name), || {
        checker::verify(&member.socket(), &history, false)
    });
}

fn online(cluster: &Cluster, observer: usize, name: &str, timeout: Duration) {
    wait_until(&format!("{name} ONLINE"), timeout, || {
        (cluster.members[observer].member(name)["status"] == "ONLINE").then_some(())
    });
}

#[test]
fn the_checker_catches_lost_and_duplicated_writes() {
    let cluster = Cluster::form(1);
    let checker = writers(&cluster);
    checker.writes_flow(50, Duration::from_secs(30));
    let history = checker.stop();
    let socket = cluster.members[0].socket();
    checker::verify(&socket, &history, true).unwrap();
    // Drop one acknowledged write: the checker must notice.
    let (writer, seq) = history.acknowledged.iter().find_map(|(w, s)| s.first().map(|s| (*w, *s))).unwrap();
    checker::sql(&socket, &format!("DELETE FROM checker WHERE writer = {writer} AND seq = {seq}")).unwrap();
    let err = checker::verify(&socket, &history, true).unwrap_err();
    assert!(err.contains("acknowledged but missing") && err.contains(&seq.to_string()), "{err}");
    // Apply it twice: the checker must notice that too.
    for _ in 0..2 {
        checker::sql(&socket, &format!("INSERT INTO checker VALUES ({writer}, {seq})")).unwrap();
    }
    let err = checker::verify(&socket, &history, true).unwrap_err();
    assert!(err.contains("more than once"), "{err}");
    // And a value nobody wrote.
    checker::sql(&socket, &format!("DELETE FROM checker WHERE writer = {writer} AND seq = {seq}")).unwrap();
    checker::sql(&socket, &format!("INSERT INTO checker VALUES ({writer}, {seq}), ({writer}, 999999999)")).unwrap();
    let err = checker::verify(&socket, &history, true).unwrap_err();
    assert!(err.contains("never written"), "{err}");
}

#[test]
fn killing_the_leader_again_and_again_loses_nothing() {
    let rounds = if full() { 20 } else { 3 };
    let mut cluster = Cluster::form(3);
    let checker = writers(&cluster);
    checker.writes_flow(50, Duration::from_secs(30));
    let mut outages = Vec::new();
    for round in 1..=rounds {
        let victim = cluster.leader();
        cluster.members[victim].kill();
        outages.push(checker.writes_flow(20, Duration::from_secs(60)));
        cluster.members[victim].start();
        let observer = (victim + 1) % 3;
        let name = cluster.members[victim].name.clone();
        online(&cluster, observer, &name, Duration::from_secs(60));
        verify_now(&cluster.members[observer], &checker);
        eprintln!("round {round}: killed {name}, writes flowed again after {:?}", outages.last().unwrap());
    }
    let history = checker.stop();
    cluster.members[0].wait_ready(Duration::from_secs(60));
    let summary = checker::verify(&cluster.members[0].socket(), &history, true).unwrap();
    eprintln!("{rounds} leader kills: {summary}; failures {:?}", history.failures);
}

#[test]
fn a_killed_voter_a_frozen_voter_and_a_full_stop_lose_nothing() {
    let mut cluster = Cluster::form(3);
    let checker = writers(&cluster);
    checker.writes_flow(50, Duration::from_secs(30));

    // kill -9 a voter that does not lead.
    eprintln!("killing a voter");
    let victim = (cluster.leader() + 1) % 3;
    cluster.members[victim].kill();
    checker.writes_flow(50, Duration::from_secs(60));
    cluster.members[victim].start();
    verify_now(&cluster.members[(victim + 1) % 3], &checker);

    // Freeze a voter (SIGSTOP), then let it go.
    eprintln!("freezing a voter");
    let frozen = (cluster.leader() + 2) % 3;
    cluster.members[frozen].signal("STOP");
    std::thread::sleep(Duration::from_secs(if full() { 10 } else { 3 }));
    checker.writes_flow(20, Duration::from_secs(60));
    cluster.members[frozen].signal("CONT");
    checker.writes_flow(20, Duration::from_secs(60));
    verify_now(&cluster.members[frozen], &checker);

    // Every member at once, then all back.
    eprintln!("killing every member");
    for m in &mut cluster.members {
        m.kill();
    }
    for m in &mut cluster.members {
        m.start();
    }
    checker.writes_flow(50, Duration::from_secs(60));
    let history = checker.stop();
    // Writes flow as soon as two members are back; the one that checks may still be opening.
    cluster.members[0].wait_ready(Duration::from_secs(60));
    let summary = checker::verify(&cluster.members[0].socket(), &history, true).unwrap();
    eprintln!("voter kill, freeze, full stop: {summary}; failures {:?}", history.failures);
}

#[test]
fn removing_and_rejoining_a_member_under_load_loses_nothing() {
    let cluster = Cluster::form(4);
    let checker = writers(&cluster);
    checker.writes_flow(50, Duration::from_secs(30));
    // m4 is a stand-by; m3 a voter. Remove a voter under load, then bring it back.
    cluster.members[0].ctl_ok(&["cluster", "remove", "m3"]);
    checker.writes_flow(50, Duration::from_secs(60));
    wait_until("m3 to reset", Duration::from_secs(30), || {
        (!cluster.members[2].dir.join("cluster.crt").exists()).then_some(())
    });
    cluster.join(2, 1);
    online(&cluster, 0, "m3", Duration::from_secs(60));
    checker.writes_flow(50, Duration::from_secs(60));
    let history = checker.stop();
    let summary = checker::verify(&cluster.members[1].socket(), &history, true).unwrap();
    eprintln!("remove and re-join under load: {summary}; failures {:?}", history.failures);
}

/// A small tmpfs, unmounted on drop.
struct SmallDisk {
    path: std::path::PathBuf,
    _tmp: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts one, or says why it cannot (it needs root).
    fn mount(size_mb: u32) -> Result<SmallDisk, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = tmp.path().join("disk");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(SmallDisk { path, _tmp: tmp })
    }

    fn remount(&self, mode: &str) {
        let out = std::process::Command::new("mount").args(["-o", &format!("remount,{mode}")]).arg(&self.path).output();
        assert!(out.is_ok_and(|o| o.status.success()), "remounting {mode}");
    }

    /// Writes a file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_member_whose_disk_fills_up_or_turns_read_only_harms_no_one_else() {
    let disk = match SmallDisk::mount(256) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("SKIPPED: a small filesystem for a member's state cannot be mounted here ({why})");
            return;
        }
    };
    let mut cluster = Cluster::form(2);
    let mut m3 = Member::at("m3", &microcluster_tests::free_address(), &disk.path);
    m3.args = vec!["--debug".into(), "--heartbeat".into(), "1s".into()];
    m3.start();
    cluster.join_member(&m3, 0);
    cluster.members.push(m3);
    online(&cluster, 0, "m3", Duration::from_secs(30));
    checker::create_table(&cluster.members[0].socket()).unwrap();
    // Writers through the two healthy members.
    let checker = Checker::start((0..4).map(|w| cluster.members[w % 2].socket()).collect());
    checker.writes_flow(100, Duration::from_secs(30));

    // The disk fills up under a running member.
    let filler = disk.fill();
    // The healthy majority keeps writing; nothing acknowledged is lost.
    checker.writes_flow(300, Duration::from_secs(60));
    verify_now(&cluster.members[0], &checker);
    let m3 = &mut cluster.members[2];
    let log = m3.log();
    eprintln!("m3 with a full disk: running = {}", m3.is_running());
    // Given room again, it catches up (restarted if it gave up, which it must explain).
    std::fs::remove_file(filler).unwrap();
    if !m3.is_running() {
        assert!(log.contains("No space left"), "m3 stopped without saying why:\n{log}");
        m3.kill();
        m3.start();
    }
    online(&cluster, 0, "m3", Duration::from_secs(60));
    checker.writes_flow(100, Duration::from_secs(30));

    // A read-only state directory: the member refuses to start, saying why.
    let m3 = &mut cluster.members[2];
    m3.signal("TERM");
    assert!(m3.wait_exit(Duration::from_secs(20)).is_some(), "m3 did not stop");
    disk.remount("ro");
    let mut child = std::process::Command::new(&microcluster_tests::binaries().microd)
        .arg("--state-dir")
        .arg(&disk.path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status =
        wait_until("microd on a read-only state dir to give up", Duration::from_secs(30), || child.try_wait().unwrap());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "microd ran on a read-only state directory");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    checker.writes_flow(100, Duration::from_secs(30));
    disk.remount("rw");
    let m3 = &mut cluster.members[2];
    m3.start();
    online(&cluster, 0, "m3", Duration::from_secs(60));
    checker.writes_flow(100, Duration::from_secs(30));
    let history = checker.stop();
    cluster.members[2].wait_ready(Duration::from_secs(60));
    let summary = checker::verify(&cluster.members[2].socket(), &history, true).unwrap();
    eprintln!("disk full and read-only on one member: {summary}");
}
