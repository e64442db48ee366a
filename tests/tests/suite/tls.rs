//! Mutual TLS: a client certificate the cluster does not trust gets 403 everywhere except the
//! public status endpoint, and a removed member's certificate stops working.
#![allow(clippy::unwrap_used)]

use microcluster::client::{Client, Method, StatusCode};
use microcluster::{certs, tls};
use microcluster_tests::Cluster;

/// Every endpoint that needs a trusted member (all but `GET /core/1.0`).
const NON_PUBLIC: &[(Method, &str)] = &[
    (Method::GET, "/core/1.0/cluster"),
    (Method::DELETE, "/core/1.0/cluster/m2"),
    (Method::GET, "/core/1.0/ready"),
    (Method::POST, "/core/internal/sql"),
    (Method::GET, "/core/internal/sql"),
    (Method::POST, "/core/internal/truststore"),
    (Method::DELETE, "/core/internal/truststore/m2"),
    (Method::POST, "/core/internal/hooks/pre-remove"),
    (Method::PUT, "/core/internal/cluster/m1"),
    (Method::POST, "/core/internal/database"),
    (Method::DELETE, "/core/1.0/tokens/m2"),
    (Method::POST, "/core/internal/heartbeat"),
    (Method::POST, "/core/1.0/cluster/leader"),
    (Method::GET, "/core/1.0/daemon/servers"),
    (Method::PUT, "/core/1.0/daemon/servers"),
    (Method::GET, "/core/1.0/metrics"),
    (Method::GET, "/core/1.0/database/backup"),
    (Method::POST, "/core/1.0/database/restore"),
    (Method::POST, "/core/1.0/database/verify"),
    (Method::POST, "/core/1.0/doctor"),
    (Method::PUT, "/core/1.0/cluster/m2/address"),
    (Method::GET, "/core/internal/recovery"),
    (Method::POST, "/core/internal/recovery"),
    (Method::GET, "/core/internal/truststore"),
    (Method::PUT, "/core/internal/cluster/m2/address"),
    (Method::POST, "/core/internal/cluster/m2/role"),
];

fn stranger_client(cluster_dir: &std::path::Path, address: &str) -> Client {
    let cluster_cert = std::fs::read_to_string(cluster_dir.join("cluster.crt")).unwrap();
    let stranger = certs::generate("stranger", &[]).unwrap();
    let config = tls::client_config(Some(&stranger), vec![tls::fingerprint_pem(&cluster_cert).unwrap()]).unwrap();
    Client::https(address, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificates_get_403_on_every_non_public_endpoint() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::form(2)).await.unwrap();
    let m1 = &cluster.members[0];
    let client = stranger_client(&m1.dir, &m1.address);

    // Public: who is this member.
    let status = client.status().await.unwrap();
    assert_eq!(status.name, "m1");

    for (method, path) in NON_PUBLIC {
        let (code, body) = client.raw(method.clone(), path, Some("{}".into())).await.unwrap();
        assert_eq!(code, StatusCode::FORBIDDEN, "{method} {path}: {}", String::from_utf8_lossy(&body));
    }
    // Control endpoints do not exist on the network at all.
    let (code, _) = client.raw(Method::POST, "/core/control/tokens", Some("{}".into())).await.unwrap();
    assert_eq!(code, StatusCode::NOT_FOUND);

    // No client certificate at all: same answers.
    let cluster_cert = std::fs::read_to_string(m1.dir.join("cluster.crt")).unwrap();
    let anonymous = Client::https(
        m1.address.clone(),
        tls::client_config(None, vec![tls::fingerprint_pem(&cluster_cert).unwrap()]).unwrap(),
    );
    let (code, _) = anonymous.raw(Method::GET, "/core/1.0/cluster", None).await.unwrap();
    assert_eq!(code, StatusCode::FORBIDDEN);

    // A client that pins another cluster's certificate refuses to talk to this one.
    let other = certs::generate("other", &[]).unwrap();
    let wrong =
        Client::https(m1.address.clone(), tls::client_config(None, vec![other.fingerprint().unwrap()]).unwrap());
    assert!(wrong.status().await.unwrap_err().is_unreachable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_members_certificate_is_refused() {
    let cluster = tokio::task::spawn_blocking(|| Cluster::form(3)).await.unwrap();
    let m3 = &cluster.members[2];
    let identity = tls::Identity {
        cert_pem: std::fs::read_to_string(m3.dir.join("server.crt")).unwrap(),
        key_pem: std::fs::read_to_string(m3.dir.join("server.key")).unwrap(),
    };
    let cluster_fp = tls::fingerprint_pem(&std::fs::read_to_string(m3.dir.join("cluster.crt")).unwrap()).unwrap();
    let config = tls::client_config(Some(&identity), vec![cluster_fp]).unwrap();
    let as_m3 = Client::https(cluster.members[0].address.clone(), config);
    assert_eq!(as_m3.cluster_members().await.unwrap().len(), 3);

    cluster.members[0].ctl_ok(&["cluster", "remove", "m3"]);
    let err = as_m3.cluster_members().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN), "{err}");
    for (method, path) in NON_PUBLIC {
        let (code, body) = as_m3.raw(method.clone(), path, Some("{}".into())).await.unwrap();
        assert_eq!(code, StatusCode::FORBIDDEN, "{method} {path}: {}", String::from_utf8_lossy(&body));
    }
}
