//! The second example service (`notesd`, crates/notes), shaped like a Go microcluster service,
//! run as a 3-member cluster: its own endpoints answer through every member (an alias, a
//! `201 Created` with its location, a watch streamed as server-sent events, a file served from
//! disk, a connection switched to a protocol of its own, a question put to all members at
//! once, an operator-only deletion), its hooks keep a file in step with the membership, and
//! what a Go client sends and expects on the wire is understood.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use microcluster::client::{Client, Method, StatusCode};
use microcluster::{App, Args};
use microcluster_tests::{Cluster, Member, binaries, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn socket_client(member: &Member) -> Client {
    Client::unix(member.dir.join("control.socket")).with_timeout(Duration::from_secs(20))
}

/// `member`'s own names for what its members file lists.
fn members_file(rt: &tokio::runtime::Runtime, member: &Member) -> String {
    let (status, body) = rt.block_on(socket_client(member).raw(Method::GET, "/1.0/members-file", None)).unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    String::from_utf8(body.to_vec()).unwrap()
}

#[test]
fn a_service_ported_from_go_microcluster_runs_on_the_library() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let notesd = binaries().dir.join("notesd");
    assert!(notesd.is_file(), "{} not built (`cargo build --workspace` builds it)", notesd.display());
    let mut cluster = Cluster::start_with(3, |m| m.binary = Some(notesd.clone()));

    // GET / answers the API versions before init, as microcluster's daemon does.
    let m1 = socket_client(&cluster.members[0]);
    let versions: Vec<String> = rt.block_on(m1.query(Method::GET, "/", None::<&()>)).unwrap();
    assert_eq!(versions, ["/1.0"]);
    // Bootstrapped the way Go's `NewCluster(ctx, name, address, nil)` asks: `"config":null`.
    let (name, address) = (cluster.members[0].name.clone(), cluster.members[0].address.clone());
    let control =
        format!(r#"{{"bootstrap":true,"config":null,"join_token":"","address":"{address}","name":"{name}"}}"#);
    let (status, body) = rt.block_on(m1.raw(Method::POST, "/core/control", Some(Bytes::from(control)))).unwrap();
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    cluster.join(1, 0);
    cluster.join(2, 0);
    for member in cluster.members.iter_mut() {
        member.wait_ready(Duration::from_secs(30));
    }
    // A token that never expires is listed as microcluster lists it.
    cluster.members[0].ctl_ok(&["tokens", "add", "m9", "--expire-after", "0s"]);
    let (_, tokens) = rt.block_on(m1.raw(Method::GET, "/core/control/tokens", None)).unwrap();
    let tokens: serde_json::Value = serde_json::from_slice(&tokens).unwrap();
    let m9 = tokens["metadata"].as_array().unwrap().iter().find(|t| t["name"] == "m9").cloned().unwrap_or_default();
    assert_eq!(m9["expires_at"], "0001-01-01T00:00:00Z", "{tokens}");

    // The hooks wrote every member's file, all three listed.
    for member in &cluster.members {
        let file = wait_until("the members file", Duration::from_secs(15), || {
            let file = members_file(&rt, member);
            (file.lines().count() == 3).then_some(file)
        });
        for other in &cluster.members {
            assert!(file.contains(&format!("{} {}\n", other.name, other.address)), "{}: {file}", member.name);
        }
    }

    // Another member's file, through this one (`?target=`): passed on as the target sent it.
    let mut theirs = rt.block_on(m1.clone().use_target("m2").open(Method::GET, "/1.0/members-file", None)).unwrap();
    assert_eq!(theirs.header("content-type"), Some("text/plain; charset=utf-8"));
    let mut text = Vec::new();
    while let Some(chunk) = rt.block_on(theirs.chunk()).unwrap() {
        text.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8(text).unwrap(), members_file(&rt, &cluster.members[1]));
    let nobody = rt.block_on(m1.clone().use_target("m9").raw(Method::GET, "/1.0/members-file", None)).unwrap();
    assert_eq!(nobody.0, StatusCode::NOT_FOUND);

    // A watch through m3 sees what is written through m2.
    let m2 = socket_client(&cluster.members[1]);
    let m3 = socket_client(&cluster.members[2]);
    let mut watch = rt.block_on(m3.open(Method::GET, "/1.0/watch", None)).unwrap();
    assert_eq!(watch.header("content-type"), Some("text/event-stream"));
    let put = |client: &Client, body: &str| {
        rt.block_on(client.open(Method::PUT, "/1.0/notes/plan", Some(body.to_owned().into())))
    };
    let created = put(&m2, "first").unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.header("location"), Some("/1.0/notes/plan"));
    assert_eq!(put(&m2, "second").unwrap().status(), StatusCode::OK);
    let mut events = String::new();
    while !events.contains(r#""kind":"updated""#) {
        let chunk = rt.block_on(watch.chunk()).unwrap().expect("the watch ended");
        events.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(events.starts_with("id: 1\ndata: {\"kind\":\"created\",\"name\":\"plan\"}\n\n"), "{events}");
    drop(watch);

    // Read back through the old path (an alias) on another member; written by m2.
    let note: serde_json::Value = rt.block_on(m1.query(Method::GET, "/1.0/memos/plan", None::<&()>)).unwrap();
    assert_eq!((note["body"].as_str(), note["written_by"].as_str()), (Some("second"), Some("m2")));

    // What a handler learns from the State.
    let about: serde_json::Value = rt.block_on(m2.query(Method::GET, "/1.0/about", None::<&()>)).unwrap();
    let fingerprint_of =
        |file: &std::path::Path| microcluster::tls::fingerprint_pem(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(about["server_cert"], fingerprint_of(&cluster.members[1].dir.join("server.crt")), "{about}");
    assert_eq!(about["cluster_cert"], fingerprint_of(&cluster.members[1].dir.join("cluster.crt")), "{about}");
    assert!(cluster.members.iter().any(|m| about["leader"] == m.address), "{about}");
    assert_eq!(about["nodes"].as_array().map(Vec::len), Some(3), "{about}");
    assert_eq!(about["listeners"]["beacon"], "", "no beacon address was given: {about}");
    assert_eq!(
        (&about["runtime_extensions"], &about["notes_watch"], &about["unknown_extension"]),
        (&serde_json::json!(true), &serde_json::json!(true), &serde_json::json!(false)),
        "{about}"
    );

    // Every other member asked at once.
    let fleet: serde_json::Value = rt.block_on(m1.query(Method::GET, "/1.0/fleet", None::<&()>)).unwrap();
    assert_eq!(fleet.as_object().unwrap().keys().collect::<Vec<_>>(), ["m2", "m3"], "{fleet}");
    assert!(fleet["m2"]["version"].is_string(), "{fleet}");

    // A connection switched to the echo protocol, over the socket and over mutual TLS.
    let m2_dir = cluster.members[1].dir.clone();
    let over_tls = App::new(Args { state_dir: m2_dir }).remote_client(&cluster.members[0].address).unwrap();
    for client in [&m3, &over_tls] {
        let echoed = rt.block_on(async {
            let mut io = client.upgrade("/1.0/echo", "echo").await.unwrap();
            io.write_all(b"ping").await.unwrap();
            let mut back = [0u8; 4];
            io.read_exact(&mut back).await.unwrap();
            back
        });
        assert_eq!(&echoed, b"ping");
    }
    let refused = rt.block_on(m3.raw(Method::GET, "/1.0/echo", None)).unwrap();
    assert_eq!(refused.0, StatusCode::UPGRADE_REQUIRED);

    // Deleting is for operators: refused to a member's certificate, done over the socket.
    let denied = rt.block_on(over_tls.raw(Method::DELETE, "/1.0/notes/plan", None)).unwrap();
    assert_eq!(denied.0, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&denied.1));
    let (status, _) = rt.block_on(m3.raw(Method::DELETE, "/1.0/notes/plan", None)).unwrap();
    assert_eq!(status, StatusCode::OK);
    let gone = rt.block_on(m1.raw(Method::GET, "/1.0/notes/plan", None)).unwrap();
    assert_eq!(gone.0, StatusCode::NOT_FOUND);

    // A removal reaches the files of the members left.
    cluster.members[0].ctl_ok(&["cluster", "remove", "m3"]);
    for member in &cluster.members[..2] {
        wait_until("m3 out of the members file", Duration::from_secs(15), || {
            (!members_file(&rt, member).contains("m3 ")).then_some(())
        });
    }
}

/// An HTTPS client that accepts only the certificate in `member`'s state directory file
/// `file` (`server.crt` before init, `cluster.crt` after), presenting none of its own.
fn pinned(member: &Member, file: &str, address: &str) -> Client {
    let pem = std::fs::read_to_string(member.dir.join(file)).unwrap();
    let fingerprint = microcluster::tls::fingerprint_pem(&pem).unwrap();
    let tls = microcluster::tls::client_config(None, vec![fingerprint]).unwrap();
    Client::https(address, tls).with_timeout(Duration::from_secs(10))
}

#[test]
fn a_service_answers_peers_before_it_is_initialised() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let notesd = binaries().dir.join("notesd");
    let mut member = Member::new("m1");
    let beacon = microcluster_tests::free_address();
    member.binary = Some(notesd);
    member.args.extend(["--pre-init-address".into(), member.address.clone(), "--beacon".into(), beacon.clone()]);
    member.start();

    // Before init: the discovery endpoint and the core API's status on the pre-init address,
    // the beacon on its own, both with the member's own certificate; nobody is trusted yet.
    let early = pinned(&member, "server.crt", &member.address);
    let found: serde_json::Value = rt.block_on(early.query(Method::GET, "/1.0/discovery", None::<&()>)).unwrap();
    assert_eq!(found["initialised"], false, "{found}");
    let status: serde_json::Value = rt.block_on(early.query(Method::GET, "/core/1.0", None::<&()>)).unwrap();
    assert_eq!(status["ready"], false, "{status}");
    let notes = rt.block_on(early.raw(Method::GET, "/1.0/notes", None)).unwrap();
    assert_eq!(notes.0, StatusCode::NOT_FOUND, "only what is marked pre-init is served before init");
    let beaconed: serde_json::Value =
        rt.block_on(pinned(&member, "server.crt", &beacon).query(Method::GET, "/1.0/beacon", None::<&()>)).unwrap();
    assert_eq!(beaconed["initialised"], false, "{beaconed}");

    // Initialised at the pre-init address itself: the same endpoint, now with the cluster's
    // certificate, and the beacon restarted with it.
    member.bootstrap();
    member.wait_ready(Duration::from_secs(30));
    let found = wait_until("discovery on the member's address", Duration::from_secs(10), || {
        rt.block_on(pinned(&member, "cluster.crt", &member.address).query::<serde_json::Value>(
            Method::GET,
            "/1.0/discovery",
            None::<&()>,
        ))
        .ok()
    });
    assert_eq!((found["initialised"].as_bool(), found["name"].as_str()), (Some(true), Some("m1")), "{found}");
    let beaconed = wait_until("the beacon with the cluster's certificate", Duration::from_secs(10), || {
        rt.block_on(pinned(&member, "cluster.crt", &beacon).query::<serde_json::Value>(
            Method::GET,
            "/1.0/beacon",
            None::<&()>,
        ))
        .ok()
    });
    assert_eq!(beaconed["initialised"], true, "{beaconed}");
    assert!(rt.block_on(pinned(&member, "server.crt", &beacon).raw(Method::GET, "/1.0/beacon", None)).is_err());
}
