//! Running `microd` as an operator would: a config file that is checked before anything is
//! created, flags that beat it, text and JSON logs, and the systemd notification protocol
//! (READY, WATCHDOG, STOPPING) spoken to a datagram socket the test binds in systemd's place.
#![allow(clippy::unwrap_used)]

use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

use microcluster::client::Client;
use microcluster_tests::{Member, wait_until};

/// Writes `text` as a config file beside the member's state directory.
fn config_file(member: &Member, text: &str) -> PathBuf {
    let path = member.dir.with_file_name("microd.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A member run with `--config FILE` and `args` (instead of the harness's `--debug`).
fn configured(name: &str, config: &str, args: &[&str]) -> (Member, PathBuf) {
    let mut member = Member::new(name);
    let path = config_file(&member, config);
    member.args = ["--config", path.to_str().unwrap()].iter().chain(args).map(|a| a.to_string()).collect();
    (member, path)
}

/// The log once `line` appears in it.
fn log_with(member: &Member, line: &str) -> String {
    wait_until(&format!("{line:?} in {}'s log", member.name), Duration::from_secs(20), || {
        let log = member.log();
        log.contains(line).then_some(log)
    })
}

fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}")))
        .collect()
}

fn daemon_toml(member: &Member) -> String {
    std::fs::read_to_string(member.dir.join("daemon.toml")).unwrap_or_default()
}

#[test]
fn an_invalid_config_is_refused_by_key_before_the_state_directory_exists() {
    for (config, expected) in [
        ("hearbeat = \"1s\"\n", "unknown key \"hearbeat\" (expected one of: state_dir, heartbeat,"),
        ("heartbeat = \"ten\"\n", "key heartbeat: invalid duration \"ten\""),
        ("log_format = \"xml\"\n", "key log_format: unknown variant `xml`"),
        ("failure_domain = \"three\"\n", "key failure_domain: invalid type: string \"three\""),
        ("heartbeat = \"1s\"\n[server\n", "line 2: invalid TOML"),
    ] {
        let (mut member, path) = configured("bad", config, &[]);
        member.spawn();
        let code = member.exit_code(Duration::from_secs(20));
        let log = member.log();
        assert_eq!(code, Some(1), "{config:?}: microd did not fail; its log:\n{log}");
        let line = format!("Error: {}: {expected}", path.display());
        assert!(log.contains(&line), "{config:?}: expected {line:?} in:\n{log}");
        assert_eq!(log.lines().count(), 1, "{config:?}: one line only:\n{log}");
        assert!(!member.dir.exists(), "{config:?}: the state directory was created");
    }

    let mut member = Member::new("missing");
    member.args = vec!["--config".into(), "/nonexistent/microd.toml".into()];
    member.spawn();
    assert_eq!(member.exit_code(Duration::from_secs(20)), Some(1));
    assert!(member.log().contains("cannot read the config file /nonexistent/microd.toml"), "{}", member.log());
    assert!(!member.dir.exists());
}

#[test]
fn the_config_file_sets_logging_and_the_failure_domain() {
    let mut member = Member::new("c1");
    let elsewhere = member.dir.with_file_name("state-from-config");
    let path = config_file(
        &member,
        &format!("state_dir = {elsewhere:?}\nlog_format = \"json\"\nlog_level = \"info\"\nfailure_domain = 3\n"),
    );
    member.args = vec!["--config".into(), path.to_str().unwrap().into()];
    member.start();
    let lines = json_lines(&log_with(&member, "control socket ready"));
    assert!(lines.iter().all(|l| ["INFO", "WARN", "ERROR"].contains(&l["level"].as_str().unwrap())), "{lines:?}");
    assert!(daemon_toml(&member).contains("failure_domain = 3"), "{}", daemon_toml(&member));
    // The harness's --state-dir beats the file's state_dir.
    assert!(!elsewhere.exists());
}

#[test]
fn flags_override_the_config_file() {
    let (mut member, _) = configured(
        "c2",
        "log_format = \"json\"\nlog_level = \"error\"\nfailure_domain = 3\n",
        &["--log-format", "text", "--log-level", "info", "--failure-domain", "5"],
    );
    member.start();
    let log = log_with(&member, "control socket ready");
    assert!(log.lines().all(|line| serde_json::from_str::<serde_json::Value>(line).is_err()), "JSON lines:\n{log}");
    assert!(log.contains(" INFO "), "{log}");
    assert!(daemon_toml(&member).contains("failure_domain = 5"), "{}", daemon_toml(&member));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut member = Member::new("j1");
    member.args = vec!["--log-format".into(), "json".into(), "--debug".into()];
    member.start();
    member.bootstrap();
    let lines = json_lines(&log_with(&member, "bootstrapped a new cluster"));
    assert!(lines.len() > 3, "{lines:?}");
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line.get(key).is_some(), "no {key:?} in {line}");
        }
    }
    let bootstrapped = lines.iter().find(|l| l["message"] == "bootstrapped a new cluster").unwrap();
    assert_eq!(bootstrapped["name"], "j1", "event fields are top-level keys: {bootstrapped}");
}

#[test]
fn a_bad_microd_log_is_reported_even_at_the_error_level() {
    let mut member = Member::new("e1");
    member.args = vec!["--log-level".into(), "error".into()];
    member.env.push(("MICROD_LOG".into(), "info,heartbeat=loud".into()));
    member.start();
    let log = log_with(&member, "MICROD_LOG=\"info,heartbeat=loud\" ignored");
    assert!(log.contains("ERROR"), "{log}");
    // The level it fell back to: error, so the info line of a started socket is not there.
    assert!(!log.contains("control socket ready"), "{log}");
}

#[test]
fn under_systemd_text_logs_carry_no_timestamp_and_the_journal_gets_priorities() {
    // INVOCATION_ID alone (standard error is not the journal): no timestamps, no prefix.
    let mut member = Member::new("s1");
    member.args = vec!["--verbose".into()];
    member.env.push(("INVOCATION_ID".into(), "0123456789abcdef".into()));
    member.start();
    let log = log_with(&member, "control socket ready");
    assert!(log.lines().all(|line| line.starts_with(" INFO ") || line.starts_with(" WARN ")), "{log}");

    // JOURNAL_STREAM naming standard error (here the log file): syslog priority prefixes.
    let mut member = Member::new("s2");
    member.args = vec!["--verbose".into()];
    std::fs::create_dir_all(member.dir.parent().unwrap()).unwrap();
    let log = std::fs::File::create(member.log_path()).unwrap().metadata().unwrap();
    member.env.push(("JOURNAL_STREAM".into(), format!("{}:{}", log.dev(), log.ino())));
    member.start();
    let log = log_with(&member, "control socket ready");
    assert!(log.contains("<6> INFO microcluster::server::lifecycle::app: control socket ready"), "{log}");
    assert!(log.contains("<4> WARN "), "{log}");
    assert!(log.lines().all(|line| line.starts_with("<6>") || line.starts_with("<4>")), "{log}");
}

/// Collects the datagrams `socket` receives until `done` holds for them.
fn notifications(socket: &UnixDatagram, seen: &mut Vec<String>, what: &str, done: impl Fn(&[String]) -> bool) {
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 1024];
    wait_until(what, Duration::from_secs(20), || {
        while let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        done(seen).then_some(())
    });
}

fn count(seen: &[String], line: &str) -> usize {
    seen.iter().filter(|message| message.lines().any(|l| l == line)).count()
}

/// One status request, no retry.
fn status_answers(member: &Member) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(Client::unix(member.socket()).with_timeout(Duration::from_secs(5)).status()).is_ok()
}

#[test]
fn systemd_hears_ready_after_the_socket_answers_then_watchdog_pings_then_stopping() {
    let mut member = Member::new("n1");
    let path = member.dir.with_file_name("notify.socket");
    let socket = UnixDatagram::bind(&path).unwrap();
    member.env.push(("NOTIFY_SOCKET".into(), path.to_str().unwrap().into()));
    member.env.push(("WATCHDOG_USEC".into(), "1000000".into()));
    member.spawn();

    let mut seen = Vec::new();
    notifications(&socket, &mut seen, "READY=1", |seen| count(seen, "READY=1") > 0);
    assert!(status_answers(&member), "READY=1 came before the control socket answered");
    assert!(seen[0].starts_with("READY=1\nSTATUS=Database is not yet initialized"), "{seen:?}");

    notifications(&socket, &mut seen, "three WATCHDOG=1", |seen| count(seen, "WATCHDOG=1") >= 3);
    member.signal("TERM");
    notifications(&socket, &mut seen, "STOPPING=1", |seen| count(seen, "STOPPING=1") > 0);
    assert!(member.wait_exit(Duration::from_secs(30)).is_some(), "microd did not stop on SIGTERM");
    assert_eq!(count(&seen, "READY=1"), 1, "{seen:?}");
    assert_eq!(count(&seen, "STOPPING=1"), 1, "{seen:?}");
}

#[test]
fn an_abstract_notify_socket_hears_ready_and_a_shutdown_request_stops() {
    let name = format!("microd-operator-test-{}", std::process::id());
    let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let mut member = Member::new("n2");
    member.env.push(("NOTIFY_SOCKET".into(), format!("@{name}")));
    member.spawn();

    let mut seen = Vec::new();
    notifications(&socket, &mut seen, "READY=1", |seen| count(seen, "READY=1") > 0);
    assert!(status_answers(&member), "READY=1 came before the control socket answered");
    member.ctl_ok(&["shutdown"]);
    notifications(&socket, &mut seen, "STOPPING=1", |seen| count(seen, "STOPPING=1") > 0);
    assert!(member.wait_exit(Duration::from_secs(30)).is_some());
    // No WATCHDOG_USEC: no pings.
    assert_eq!(count(&seen, "WATCHDOG=1"), 0, "{seen:?}");
}
