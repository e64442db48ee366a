//! A monitoring credential (`microctl monitoring add`): it reads every member's metrics and
//! status over HTTPS, is refused on every other core endpoint, and is refused everywhere as
//! soon as it is revoked through any member.
#![allow(clippy::unwrap_used)]

use microcluster::api::paths;
use microcluster::client::{Client, Method, StatusCode};
use microcluster::tls::{self, Identity};
use microcluster_tests::{Cluster, Member};

fn monitor_client(identity: &Identity, member: &Member) -> Client {
    let cluster_pem = std::fs::read_to_string(member.dir.join("cluster.crt")).unwrap();
    let tls = tls::client_config(Some(identity), vec![tls::fingerprint_pem(&cluster_pem).unwrap()]).unwrap();
    Client::https(member.address.clone(), tls)
}

#[test]
fn a_monitoring_credential_reads_metrics_and_status_only_until_revoked() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cluster = Cluster::form(3);
    let out = tempfile::tempdir().unwrap();
    let printed =
        cluster.members[0].ctl_ok(&["monitoring", "add", "prometheus", "--out", out.path().to_str().unwrap()]);
    assert_eq!(printed.lines().count(), 2, "{printed}");
    let identity = Identity {
        cert_pem: std::fs::read_to_string(out.path().join("prometheus.crt")).unwrap(),
        key_pem: std::fs::read_to_string(out.path().join("prometheus.key")).unwrap(),
    };
    let listed = cluster.members[1].ctl_ok(&["monitoring", "list", "--format", "json"]);
    assert!(listed.contains("\"prometheus\"") && listed.contains(&identity.fingerprint().unwrap()), "{listed}");

    // Every member serves it its metrics and its status.
    for member in &cluster.members {
        let client = monitor_client(&identity, member);
        let metrics = rt.block_on(client.metrics()).unwrap();
        assert!(metrics.contains("microcluster_build_info"), "{}: {metrics}", member.name);
        assert_eq!(rt.block_on(client.status()).unwrap().name, member.name);
    }

    // Every other core route and method is refused (or not served over HTTPS at all).
    let client = monitor_client(&identity, &cluster.members[1]);
    let public = [
        (Method::GET, paths::ROOT),
        (Method::GET, paths::STATUS),
        (Method::GET, paths::METRICS),
        // Join requests are for strangers: refused on their own terms (the body).
        (Method::POST, paths::INTERNAL_CLUSTER),
    ];
    let mut refused = 0;
    for path in paths::ALL {
        let path = paths::fill(path, &["m1"]);
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let (status, body) =
                rt.block_on(client.raw(method.clone(), &path, Some(bytes::Bytes::from_static(b"{}")))).unwrap();
            let text = String::from_utf8_lossy(&body);
            if public.iter().any(|(m, p)| *m == method && paths::fill(p, &["m1"]) == path) {
                assert_ne!(status, StatusCode::FORBIDDEN, "{method} {path}: {text}");
                continue;
            }
            assert!(
                [StatusCode::FORBIDDEN, StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&status),
                "{method} {path}: {status} {text}"
            );
            if status == StatusCode::FORBIDDEN {
                assert!(text.contains("monitoring credential"), "{method} {path}: {text}");
                refused += 1;
            }
        }
    }
    assert!(refused >= 20, "only {refused} refusals: the routes were not reached");
    // The application's endpoints that want members refuse it too.
    let (status, _) = rt.block_on(client.raw(Method::GET, "/1.0/greeting", None)).unwrap();
    assert_ne!(status, StatusCode::OK);

    // Revoked through another member: refused by every member at once.
    cluster.members[2].ctl_ok(&["monitoring", "revoke", "prometheus"]);
    for member in &cluster.members {
        let (status, body) =
            rt.block_on(monitor_client(&identity, member).raw(Method::GET, paths::METRICS, None)).unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{}: {}", member.name, String::from_utf8_lossy(&body));
    }
    let listed = cluster.members[0].ctl_ok(&["monitoring", "list", "--format", "json"]);
    assert_eq!(listed.trim(), "[]");
    // Its name is free again; a second revocation says there is nothing to revoke.
    let again = cluster.members[0].ctl(&["monitoring", "revoke", "prometheus"]);
    assert!(!again.success && again.stderr.contains("no monitoring credential named"), "{again:?}");
}
