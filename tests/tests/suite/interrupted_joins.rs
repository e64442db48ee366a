//! Joins cut short at every step, on the joiner and on the leader. `MICROD_FAULT_POINT` (a hook
//! of debug builds, see ARCHITECTURE.md) makes a daemon SIGKILL itself at a named step. After
//! each cut, within a bounded time: the join completed or was rolled back by itself (when it
//! was rolled back, `init` simply works again), no PENDING row is left, `doctor --check` finds
//! nothing, the member is ONLINE with the role the cluster needs, and it serves a write and a
//! read.
//!
//! `make test` cuts at each point once; `MICROCLUSTER_FAULTS=full` (`make test-faults`) twice,
//! and also abandons a joiner for good at three points instead of one.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use microcluster::api::{DoctorReport, ServerStatus};
use microcluster::client::Client;
use microcluster_tests::{Cluster, CtlOutput, Member, wait_until};

/// On the joiner, in the order a join reaches them.
const JOINER_POINTS: [&str; 5] =
    ["join:before-admit", "join:after-admit", "join:after-files", "join:after-add", "join:before-post-join"];
/// On the leader that admits the joiner and chooses its role.
const LEADER_POINTS: [&str; 4] =
    ["admit:after-insert", "admit:before-answer", "role:before-assign", "role:after-assign"];
/// How long a cut join may take to be finished or undone, and the member to serve.
const SETTLE: Duration = Duration::from_secs(90);

fn full() -> bool {
    std::env::var("MICROCLUSTER_FAULTS").is_ok_and(|v| v == "full")
}

fn arm(member: &mut Member, points: &str) {
    disarm(member);
    member.env.push(("MICROD_FAULT_POINT".into(), points.into()));
}

fn disarm(member: &mut Member) {
    member.env.retain(|(key, _)| key != "MICROD_FAULT_POINT");
}

fn init(joiner: &Member, token: &str) -> CtlOutput {
    joiner.ctl(&["init", &joiner.name, &joiner.address, "--token", token])
}

/// `GET /core/1.0` over the member's control socket (`None` while it does not answer).
fn status(member: &Member) -> Option<ServerStatus> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(Client::unix(member.socket()).with_timeout(Duration::from_secs(5)).status()).ok()
}

/// `cluster list` through `observer`, or `None` if it cannot answer right now.
fn members(observer: &Member) -> Option<Vec<serde_json::Value>> {
    let out = observer.ctl(&["cluster", "list", "--format", "json"]);
    if !out.success {
        return None;
    }
    serde_json::from_str(&out.stdout).ok()
}

/// After the cut and the restart of whatever was killed: waits until `joiner` has joined by
/// itself, or is left uninitialised while the cluster holds nothing of its join, and then runs
/// `init` again (with `token`, or a new token when the cluster says that one is used up).
/// With `at_once`, `init` is run again right away, as an operator whose command failed would.
/// Returns how the join ended.
fn finish_join(observer: &Member, joiner: &Member, mut token: String, at_once: bool) -> &'static str {
    let again = |token: &mut String| -> bool {
        let out = init(joiner, token);
        if out.success {
            return true;
        }
        assert!(!out.stderr.trim().is_empty(), "{}: init failed without saying why: {out:?}", joiner.name);
        if out.stderr.contains("invalid join token") || out.stderr.contains("expired") {
            let issued = observer.ctl(&["tokens", "add", &joiner.name]);
            if issued.success {
                *token = issued.stdout.trim().to_owned();
            }
        }
        eprintln!("{}: init again refused for now: {}", joiner.name, out.stderr.trim());
        false
    };
    if at_once && again(&mut token) {
        return "init run again at once succeeded";
    }
    let deadline = Instant::now() + SETTLE;
    loop {
        assert!(
            Instant::now() < deadline,
            "{}: neither joined nor rolled back after {SETTLE:?}\n--- its log ---\n{}\n--- {}'s log ---\n{}",
            joiner.name,
            joiner.log(),
            observer.name,
            observer.log()
        );
        if let Some(s) = status(joiner)
            && s.ready
            && s.name == joiner.name
        {
            return "the join completed by itself";
        }
        let uninitialised = status(joiner).is_some_and(|s| !s.ready && s.status.contains("not yet initialized"));
        let held = members(observer).is_none_or(|list| list.iter().any(|m| m["name"] == joiner.name.as_str()));
        if uninitialised && !held && again(&mut token) {
            return "rolled back, then init run again";
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The single number `select` returns, read through `member` (`None` while it cannot answer,
/// e.g. between leaders as the roles move).
fn count(member: &Member, select: &str) -> Option<u64> {
    let out = member.ctl(&["sql", "-f", "json", select]);
    if !out.success {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    Some(value["Results"][0]["rows"][0][0].as_u64().unwrap_or_else(|| panic!("not a count: {out:?}")))
}

/// Waits until every one of `names` is ONLINE as seen from `observer`, nothing is PENDING
/// (neither in the list nor in the table) and `roles` holds for the list; returns the list.
fn settled(
    observer: &Member,
    names: &[String],
    roles: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let pending_rows = "SELECT count(*) FROM core_cluster_members WHERE role = 'PENDING'";
    let deadline = Instant::now() + SETTLE;
    let mut last = None;
    loop {
        if let Some(list) = members(observer) {
            let pending = list.iter().any(|m| m["role"] == "PENDING" || m["status"] == "PENDING")
                || count(observer, pending_rows) != Some(0);
            let all = names.iter().all(|n| list.iter().any(|m| m["name"] == n.as_str() && m["status"] == "ONLINE"));
            if list.len() == names.len() && all && !pending && roles(&list) {
                return list;
            }
            last = Some(list);
        }
        if Instant::now() >= deadline {
            let summary: Vec<String> = last
                .iter()
                .flatten()
                .map(|m| format!("{} {} {} {}", m["name"], m["role"], m["status"], m["status_reason"]))
                .collect();
            panic!(
                "{names:?} not all ONLINE with nothing PENDING after {SETTLE:?}, seen from {}: {summary:#?}\n--- its \
                 log ---\n{}",
                observer.name,
                observer.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `doctor --check` finds nothing (and so changed nothing), within 30 s: a member restarted
/// after the cut learns the newcomer from the next heartbeat.
fn assert_doctor_clean(member: &Member) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = member.ctl(&["doctor", "--check", "-f", "json"]);
        let report: DoctorReport = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("doctor on {}: {e}: {out:?}\n--- log ---\n{}", member.name, member.log()));
        let problems: Vec<_> = report.checks.iter().filter(|c| c.status != "OK").collect();
        if out.success && report.problems == 0 && problems.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "doctor: {problems:#?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A write through `member`, read back through `member` and `other`.
fn assert_serves(member: &Member, other: &Member) {
    let insert = format!("INSERT INTO notes (who) VALUES ('{}')", member.name);
    wait_until(&format!("a write through {}", member.name), Duration::from_secs(30), || {
        member.ctl(&["sql", &insert]).success.then_some(())
    });
    let select = format!("SELECT count(*) AS n FROM notes WHERE who = '{}'", member.name);
    for reader in [member, other] {
        let deadline = Instant::now() + Duration::from_secs(30);
        let n = loop {
            if let Some(n) = count(reader, &select) {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "no read through {} in 30 s: {:?}\n--- cluster ---\n{:#?}\n--- its log ---\n{}\n--- {}'s log ---\n{}",
                reader.name,
                reader.ctl(&["sql", &select]),
                members(other)
                    .unwrap_or_default()
                    .iter()
                    .map(|m| format!("{} {} {} leader={}", m["name"], m["role"], m["status"], m["leader"]))
                    .collect::<Vec<_>>(),
                reader.log(),
                other.name,
                other.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(n, 1, "read through {}", reader.name);
    }
}

/// The role the k-th member of a cluster gets (counting from 1) when all the others are online.
fn role_of(k: usize) -> &'static str {
    match k {
        1..=3 => "voter",
        4..=6 => "stand-by",
        _ => "spare",
    }
}

/// Which of `members` leads, as the first of them that answers sees it, once the leader
/// itself answers too (right after a kill the others may still name the dead one).
fn leader_index(members: &[Member]) -> usize {
    wait_until("a known leader that answers", SETTLE, || {
        members.iter().find_map(|m| {
            let list = self::members(m)?;
            let name = list.iter().find(|m| m["leader"] == true)?["name"].as_str()?.to_owned();
            let leader = members.iter().position(|c| c.name == name)?;
            self::members(&members[leader]).map(|_| leader)
        })
    })
}

fn role<'l>(list: &'l [serde_json::Value], name: &str) -> &'l str {
    list.iter().find(|m| m["name"] == name).and_then(|m| m["role"].as_str()).unwrap_or_default()
}

#[test]
fn a_joiner_killed_at_any_step_ends_joined_or_rolled_back() {
    let cluster = Cluster::form(1);
    let m1 = &cluster.members[0];
    m1.ctl_ok(&["sql", "CREATE TABLE notes (who TEXT)"]);
    let mut names = vec![m1.name.clone()];
    let mut joiners = Vec::new();
    let rounds = if full() { 2 } else { 1 };
    for round in 0..rounds {
        for (i, point) in JOINER_POINTS.iter().enumerate() {
            let name = format!("j{}", joiners.len());
            let mut joiner = Member::new(&name);
            arm(&mut joiner, point);
            joiner.start();
            let token = m1.ctl_ok(&["tokens", "add", &name]).trim().to_owned();
            let out = init(&joiner, &token);
            assert!(!out.success, "{point}: the joiner was not killed: {out:?}\n{}", joiner.log());
            assert!(joiner.wait_exit(Duration::from_secs(10)).is_some(), "{point}: {name} still runs");
            disarm(&mut joiner);
            joiner.start();
            // Left to itself in one round, `init` run again at once in the other.
            let at_once = (round + i) % 2 == 1;
            let how = finish_join(m1, &joiner, token, at_once);
            names.push(name.clone());
            let expected = role_of(names.len());
            let list = settled(m1, &names, |list| role(list, &name) == expected);
            assert_doctor_clean(m1);
            assert_serves(&joiner, m1);
            eprintln!("{point}: {name} killed there, restarted: {how}; ONLINE as {}", role(&list, &name));
            joiners.push(joiner);
        }
    }
}

#[test]
fn a_leader_killed_during_a_join_leaves_nothing_half_done() {
    // Every member, joiners included, is armed with every point, each for its own joiner:
    // whichever member leads when jk joins is killed at point k (a point is reached once per
    // join: the joiner's retry is answered by re-admission, which reaches none of them), then
    // restarted.
    let points = if full() { [LEADER_POINTS, LEADER_POINTS].concat() } else { LEADER_POINTS.to_vec() };
    let armed = points.iter().enumerate().map(|(k, p)| format!("{p}@j{k}")).collect::<Vec<_>>().join(",");
    let mut cluster = Cluster::start_with(3, |m| arm(m, &armed));
    cluster.members[0].bootstrap();
    cluster.join(1, 0);
    cluster.join(2, 0);
    cluster.members[0].ctl_ok(&["sql", "CREATE TABLE notes (who TEXT)"]);
    let mut all = std::mem::take(&mut cluster.members);
    for (k, point) in points.iter().enumerate() {
        let leader = leader_index(&all);
        let name = format!("j{k}");
        let mut joiner = Member::new(&name);
        arm(&mut joiner, &armed);
        joiner.start();
        let token = all[leader].ctl_ok(&["tokens", "add", &name]).trim().to_owned();
        let out = init(&joiner, &token);
        let victim = all[leader].name.clone();
        let how = if out.success {
            "init succeeded through another member"
        } else {
            eprintln!("{point}: init failed: {}", out.stderr.trim());
            finish_join(&all[leader_index(&all)], &joiner, token, false)
        };
        assert!(all[leader].wait_exit(Duration::from_secs(30)).is_some(), "{point}: {victim} was not killed");
        // Before the killed leader returns: once it does, the joiner may have been promoted in
        // its place and be demoted again, and the check would judge that move rather than the
        // join (a demoted member serving is `health.rs`'s to test).
        assert_serves(&joiner, &all[leader_index(&all)]);
        all[leader].start();
        all.push(joiner);
        // Voters and stand-bys as the cluster wants them (the roles move while the killed
        // member is away, and back once it returns), seen from the leader, a voter.
        let names: Vec<String> = all.iter().map(|m| m.name.clone()).collect();
        let n = names.len();
        let observer = &all[leader_index(&all)];
        let list = settled(observer, &names, |list| {
            let count = |role: &str| list.iter().filter(|m| m["role"] == role).count();
            (count("voter"), count("stand-by")) == (3, (n - 3).min(3))
        });
        assert_doctor_clean(observer);
        eprintln!(
            "{point}: {victim}, the leader, killed there while {name} joined: {how}; {name} is {}",
            role(&list, &name)
        );
    }
}

#[test]
fn a_joiner_gone_for_good_is_rolled_back_and_its_name_joins_again() {
    let points: &[&str] =
        if full() { &["join:after-admit", "join:after-files", "join:after-add"] } else { &["join:after-add"] };
    let cluster = Cluster::form(1);
    let m1 = &cluster.members[0];
    m1.ctl_ok(&["sql", "CREATE TABLE notes (who TEXT)"]);
    let mut names = vec![m1.name.clone()];
    let mut replacements = Vec::new();
    for (k, point) in points.iter().enumerate() {
        let name = format!("g{k}");
        let token = m1.ctl_ok(&["tokens", "add", &name]).trim().to_owned();
        {
            let mut lost = Member::new(&name);
            arm(&mut lost, point);
            lost.start();
            assert!(!init(&lost, &token).success, "{point}: the joiner was not killed");
            // Dropped: its state directory goes with it, and it never comes back.
        }
        // A new machine under the same name (another certificate) joins once the cluster has
        // rolled the abandoned join back; the same command is repeated until then.
        let mut replacement = Member::new(&name);
        replacement.start();
        let started = Instant::now();
        let how = finish_join(m1, &replacement, token, true);
        names.push(name.clone());
        let expected = role_of(names.len());
        settled(m1, &names, |list| role(list, &name) == expected);
        assert_doctor_clean(m1);
        assert_serves(&replacement, m1);
        eprintln!("{point}: {name} abandoned there; its replacement {how} after {:?}", started.elapsed());
        replacements.push(replacement);
    }
}
