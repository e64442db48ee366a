//! The library's promises, checked through the example daemon: hooks fire in the documented
//! order and places, failing init hooks leave nothing behind, an application listener can be
//! moved at run time and trusts only members, and schema extensions apply once cluster-wide.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use microcluster::client::{Client, StatusCode};
use microcluster::{certs, tls};
use microcluster_tests::{Cluster, Member, free_address, wait_until};

fn hook_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Index of the first line starting with `prefix`, failing with the whole record otherwise.
fn at(lines: &[String], prefix: &str) -> usize {
    lines
        .iter()
        .position(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{}", lines.join("\n")))
}

#[test]
fn hooks_fire_in_order_and_in_place() {
    let record = tempfile::NamedTempFile::new().unwrap();
    let path = record.path().to_owned();
    let mut cluster = Cluster::start_with(3, |m| m.env.push(("MICROD_HOOK_FILE".into(), path.display().to_string())));
    cluster.members[0].bootstrap();
    cluster.join(1, 0);
    cluster.join(2, 0);
    let greeter = free_address();
    cluster.members[0].ctl_ok(&["servers", "set", "greeter", &greeter]);
    wait_until("the config update hooks", Duration::from_secs(10), || {
        let lines = hook_lines(&path);
        (lines.iter().filter(|l| l.contains("on-daemon-config-update m1")).count() == 2).then_some(())
    });
    cluster.members[0].ctl_ok(&["cluster", "remove", "m3"]);
    cluster.members[1].signal("TERM");
    assert!(cluster.members[1].wait_exit(Duration::from_secs(15)).is_some());

    let lines = hook_lines(&path);
    let order = |steps: &[&str]| {
        let positions: Vec<usize> = steps.iter().map(|s| at(&lines, s)).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{steps:?} out of order:\n{}", lines.join("\n"));
    };
    order(&["m1 pre-init bootstrap=true", "m1 post-bootstrap", "m1 on-start"]);
    order(&["m2 pre-init bootstrap=false", "m2 pre-join", "m1 on-new-member m2", "m2 post-join", "m2 on-start"]);
    // OnNewMember runs on every existing member before the joiner's PostJoin.
    order(&["m3 pre-join", "m1 on-new-member m3", "m3 post-join"]);
    order(&["m3 pre-join", "m2 on-new-member m3", "m3 post-join"]);
    // The member leaving runs PreRemove; the members left run PostRemove.
    order(&["m3 pre-remove force=false", "m1 post-remove", "m2 post-remove"]);
    assert!(!lines.iter().any(|l| l.starts_with("m3 post-remove")));
    // Only the leader runs OnHeartbeat; the config change reached the two others.
    assert!(lines.iter().filter(|l| l.contains(" on-heartbeat")).all(|l| l.starts_with("m1 ")));
    assert!(lines.iter().any(|l| l.starts_with("m2 on-daemon-config-update m1")));
    assert!(lines.iter().any(|l| l.starts_with("m3 on-daemon-config-update m1")));
    assert!(!lines.iter().any(|l| l.starts_with("m1 on-daemon-config-update")));
    at(&lines, "m2 on-stop");
}

#[test]
fn failing_pre_join_and_post_bootstrap_hooks_leave_no_half_state() {
    let cluster = Cluster::form(2);
    let mut joiner = Member::new("m3");
    joiner.env.push(("MICROD_FAIL_HOOK".into(), "pre-join".into()));
    joiner.start();
    let token = cluster.members[0].ctl_ok(&["tokens", "add", "m3"]);
    let out = joiner.ctl(&["init", "m3", &joiner.address, "--token", token.trim()]);
    assert!(!out.success && out.stderr.contains("PreJoin hook failed"), "{out:?}");
    for m in &cluster.members {
        let names: Vec<String> = m.members().iter().map(|m| m["name"].as_str().unwrap().to_owned()).collect();
        assert_eq!(names, ["m1", "m2"]);
        assert!(!m.dir.join("truststore/m3.toml").exists());
    }
    assert!(!joiner.dir.join("database").exists() && !joiner.dir.join("cluster.crt").exists());

    let mut lone = Member::new("m9");
    lone.env.push(("MICROD_FAIL_HOOK".into(), "post-bootstrap".into()));
    lone.start();
    let out = lone.ctl(&["init", "m9", &lone.address, "--bootstrap"]);
    assert!(!out.success && out.stderr.contains("PostBootstrap hook failed"), "{out:?}");
    assert!(!lone.dir.join("database").exists() && !lone.dir.join("cluster.crt").exists());
    // Without the failing hook the same member bootstraps.
    lone.kill();
    lone.env.clear();
    lone.start();
    lone.bootstrap();
}

#[test]
fn schema_extensions_apply_once_cluster_wide() {
    let cluster = Cluster::form(3);
    let rows =
        cluster.members[2].ctl_ok(&["sql", "SELECT type, version, count(*) FROM schemas GROUP BY type, version"]);
    for expected in [
        "| 0    | 1       | 1        |",
        "| 0    | 2       | 1        |",
        "| 1    | 1       | 1        |",
        "| 1    | 2       | 1        |",
    ] {
        assert!(rows.contains(expected), "{expected} missing in\n{rows}");
    }
    assert_eq!(rows.lines().count(), 4 + 4, "{rows}");
}

fn client_as(dir: &Path, address: &str) -> Client {
    let identity = tls::Identity {
        cert_pem: std::fs::read_to_string(dir.join("server.crt")).unwrap(),
        key_pem: std::fs::read_to_string(dir.join("server.key")).unwrap(),
    };
    let cluster = tls::fingerprint_pem(&std::fs::read_to_string(dir.join("cluster.crt")).unwrap()).unwrap();
    Client::https(address, tls::client_config(Some(&identity), vec![cluster]).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_listener_moves_at_run_time_and_trusts_only_members() {
    let mut cluster = tokio::task::spawn_blocking(|| Cluster::form(2)).await.unwrap();
    let (first, second) = (free_address(), free_address());
    cluster.members[0].ctl_ok(&["servers", "set", "greeter", &first]);
    assert!(cluster.members[0].ctl_ok(&["servers", "list"]).contains(&first));

    let as_m2 = client_as(&cluster.members[1].dir, &first);
    let hello: String = as_m2.query(microcluster::client::Method::GET, "/1.0/greeting", None::<&()>).await.unwrap();
    assert_eq!(hello, "hello m2, this is m1");

    let cluster_cert = std::fs::read_to_string(cluster.members[0].dir.join("cluster.crt")).unwrap();
    let stranger = tls::client_config(
        Some(&certs::generate("stranger", &[]).unwrap()),
        vec![tls::fingerprint_pem(&cluster_cert).unwrap()],
    )
    .unwrap();
    let as_stranger = Client::https(first.clone(), stranger.clone());
    let (code, _) = as_stranger.raw(microcluster::client::Method::GET, "/1.0/greeting", None).await.unwrap();
    assert_eq!(code, StatusCode::FORBIDDEN);
    let public: String =
        as_stranger.query(microcluster::client::Method::GET, "/1.0/greeting/public", None::<&()>).await.unwrap();
    assert_eq!(public, "hello stranger, this is m1");

    // Move it without restarting: the old address stops answering, the new one answers.
    cluster.members[0].ctl_ok(&["servers", "set", "greeter", &second]);
    assert!(as_m2.status().await.unwrap_err().is_unreachable());
    let moved = client_as(&cluster.members[1].dir, &second);
    let hello: String = moved.query(microcluster::client::Method::GET, "/1.0/greeting", None::<&()>).await.unwrap();
    assert_eq!(hello, "hello m2, this is m1");
    // A taken address is refused and the listener stays where it was.
    let out = cluster.members[0].ctl(&["servers", "set", "greeter", &cluster.members[1].address]);
    assert!(!out.success && out.stderr.contains("cannot listen"), "{out:?}");
    assert!(cluster.members[0].ctl_ok(&["servers", "list"]).contains(&second));

    // The address is kept across restarts.
    cluster.members[0].signal("TERM");
    assert!(cluster.members[0].wait_exit(Duration::from_secs(15)).is_some());
    cluster.members[0].start();
    cluster.members[0].wait_ready(Duration::from_secs(30));
    let hello: String = moved.query(microcluster::client::Method::GET, "/1.0/greeting", None::<&()>).await.unwrap();
    assert_eq!(hello, "hello m2, this is m1");
}
