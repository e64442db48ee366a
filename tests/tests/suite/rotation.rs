//! Certificates replaced while the cluster runs (`microctl cluster certificates rotate|set`):
//! under writes, nothing acknowledged is lost and the pause is measured; afterwards the old
//! keys are refused; a member that was down catches up by itself; supplied files are checked
//! before anything changes.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use microcluster::client::{Client, Method, StatusCode};
use microcluster::tls::{self, Identity};
use microcluster_tests::checker::{self, Checker};
use microcluster_tests::{Cluster, Member, wait_until};

fn pair(dir: &Path, which: &str) -> Identity {
    Identity {
        cert_pem: std::fs::read_to_string(dir.join(format!("{which}.crt"))).unwrap(),
        key_pem: std::fs::read_to_string(dir.join(format!("{which}.key"))).unwrap(),
    }
}

/// Writes `text` to `dir/name` and returns the path, as a command line takes it.
fn write_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn fingerprint(dir: &Path, which: &str) -> String {
    pair(dir, which).fingerprint().unwrap()
}

/// What `GET /core/1.0/cluster` answers over HTTPS to a client presenting `identity` and
/// pinning `cluster`: the status, or `None` when the client refuses the server.
fn ask(member: &Member, identity: &Identity, cluster: &str) -> Option<StatusCode> {
    let config = tls::client_config(Some(identity), vec![cluster.to_owned()]).unwrap();
    let client = Client::https(member.address.clone(), config).with_timeout(Duration::from_secs(5));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    match runtime.block_on(client.raw(Method::GET, "/core/1.0/cluster", None)) {
        Ok((status, _)) => Some(status),
        Err(err) if err.is_unreachable() => None,
        Err(err) => panic!("asking {}: {err}", member.name),
    }
}

fn all_online(observer: &Member, names: &[&str], timeout: Duration) {
    wait_until(&format!("{names:?} ONLINE as {} sees them", observer.name), timeout, || {
        let members = observer.members();
        names.iter().all(|n| members.iter().any(|m| m["name"] == *n && m["status"] == "ONLINE")).then_some(())
    });
}

fn rotate(member: &Member, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["cluster", "certificates", "rotate", "--format", "json"];
    all.extend_from_slice(args);
    serde_json::from_str(&member.ctl_ok(&all)).unwrap()
}

#[test]
fn every_certificate_is_replaced_under_writes_and_the_old_keys_are_refused() {
    let cluster = Cluster::form(3);
    let m = &cluster.members;
    let old_cluster = pair(&m[0].dir, "cluster");
    let old_servers: Vec<Identity> = m.iter().map(|m| pair(&m.dir, "server")).collect();
    let old_cluster_fp = old_cluster.fingerprint().unwrap();

    checker::create_table(&m[0].socket()).unwrap();
    let checker = Checker::start((0..4).map(|w| m[w % 3].socket()).collect());
    checker.writes_flow(50, Duration::from_secs(30));
    checker.measure_pauses();

    let started = std::time::Instant::now();
    let rotated = rotate(&m[0], &[]);
    let took = started.elapsed();
    // Writes go on after it, and the longest gap between acknowledgements is measured.
    checker.writes_flow(100, Duration::from_secs(30));
    let pause = checker.longest_pause();
    eprintln!(
        "rotation of every certificate: {took:?}, longest a writer waited between two acknowledged writes {pause:?}; {rotated}"
    );
    assert!(rotated["skipped"].as_object().unwrap().is_empty(), "{rotated}");
    assert_eq!(rotated["members"].as_object().unwrap().len(), 3, "{rotated}");
    let new_cluster_fp = rotated["cluster"].as_str().unwrap().to_owned();
    assert_ne!(new_cluster_fp, old_cluster_fp);
    assert!(pause < Duration::from_secs(5), "writes paused {pause:?} during the rotation");

    for (member, old) in m.iter().zip(&old_servers) {
        assert_eq!(fingerprint(&member.dir, "cluster"), new_cluster_fp, "{}'s cluster.crt", member.name);
        let now = pair(&member.dir, "server");
        assert_ne!(now.fingerprint().unwrap(), old.fingerprint().unwrap(), "{}'s server.crt", member.name);
        assert_eq!(rotated["members"][&member.name], now.fingerprint().unwrap());
        assert!(!member.dir.join("server.next.crt").exists() && !member.dir.join("cluster.next.crt").exists());
    }
    all_online(&m[0], &["m1", "m2", "m3"], Duration::from_secs(30));
    all_online(&m[2], &["m1", "m2", "m3"], Duration::from_secs(30));

    // The new certificates work; the old ones are refused everywhere.
    let new_m2 = pair(&m[1].dir, "server");
    for member in m {
        assert_eq!(ask(member, &new_m2, &new_cluster_fp), Some(StatusCode::OK), "{}", member.name);
        assert_eq!(
            ask(member, &old_servers[1], &new_cluster_fp),
            Some(StatusCode::FORBIDDEN),
            "{} must refuse m2's old certificate",
            member.name
        );
        assert_eq!(ask(member, &new_m2, &old_cluster_fp), None, "{} presents the old cluster certificate", member.name);
    }
    // The trust stores hold one certificate per member again.
    let listed: Vec<serde_json::Value> = m[0].members();
    for entry in &listed {
        let certificate = entry["certificate"].as_str().unwrap();
        assert_eq!(certificate.matches("BEGIN CERTIFICATE").count(), 1, "{}", entry["name"]);
    }
    // A token issued now carries the new fingerprint.
    let token = m[0].ctl_ok(&["tokens", "add", "m4"]);
    let decoded = microcluster::api::JoinToken::decode(token.trim()).unwrap();
    assert_eq!(decoded.fingerprint, new_cluster_fp);

    let history = checker.stop();
    let summary = checker::verify(&m[0].socket(), &history, true).unwrap();
    eprintln!("writes: {summary}; failed: {:?}", history.failures);
    let audit = m[0].log();
    assert!(audit.contains("replaced certificates"), "the rotation is an audit line");
}

#[test]
fn a_member_down_during_a_rotation_catches_up_when_it_returns() {
    let mut cluster = Cluster::form(3);
    let old_m3 = fingerprint(&cluster.members[2].dir, "server");
    let m3 = &mut cluster.members[2];
    m3.signal("TERM");
    assert!(m3.wait_exit(Duration::from_secs(30)).is_some(), "m3 did not stop");

    let rotated = rotate(&cluster.members[0], &[]);
    eprintln!("with m3 down: {rotated}");
    assert!(rotated["skipped"]["m3"].is_string(), "{rotated}");
    assert_eq!(rotated["members"].as_object().unwrap().len(), 2, "{rotated}");
    let new_cluster_fp = rotated["cluster"].as_str().unwrap().to_owned();
    // Once more, so that m3 must follow two replacements of the cluster certificate.
    let rotated = rotate(&cluster.members[0], &["--cluster"]);
    let newest = rotated["cluster"].as_str().unwrap().to_owned();
    assert_ne!(newest, new_cluster_fp);

    cluster.members[2].start();
    let m3 = &cluster.members[2];
    all_online(&cluster.members[0], &["m1", "m2", "m3"], Duration::from_secs(90));
    all_online(m3, &["m1", "m2", "m3"], Duration::from_secs(30));
    assert_eq!(fingerprint(&m3.dir, "cluster"), newest, "m3 took the newest cluster certificate");
    assert_eq!(fingerprint(&m3.dir, "server"), old_m3, "m3's own certificate was left as it was");
    assert!(m3.log().contains("caught up with a certificate rotation"), "m3 says how it caught up");
    m3.ctl_ok(&["sql", "CREATE TABLE IF NOT EXISTS after_rotation (x)"]);
    m3.ctl_ok(&["sql", "INSERT INTO after_rotation VALUES (3)"]);

    // Now it is back, its own certificate can be replaced too.
    let rotated = rotate(&cluster.members[0], &["--member", "m3"]);
    assert!(rotated["members"]["m3"].is_string(), "{rotated}");
    assert_ne!(fingerprint(&m3.dir, "server"), old_m3);
    all_online(m3, &["m1", "m2", "m3"], Duration::from_secs(30));
}

#[test]
fn supplied_files_are_checked_before_anything_changes() {
    let cluster = Cluster::form(2);
    let m1 = &cluster.members[0];
    let scratch = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| write_file(scratch.path(), name, text);
    let before = (fingerprint(&m1.dir, "cluster"), fingerprint(&cluster.members[1].dir, "server"));

    // A member certificate that does not name the member.
    let stranger = microcluster::certs::generate("someone-else", &[]).unwrap();
    let (cert, key) = (write("m2.crt", &stranger.cert_pem), write("m2.key", &stranger.key_pem));
    let out = m1.ctl(&["cluster", "certificates", "set", "m2", "--cert", &cert, "--key", &key]);
    assert!(!out.success);
    assert!(out.stderr.contains(&cert) && out.stderr.contains("does not name the member"), "{}", out.stderr);
    // Files swapped.
    let out = m1.ctl(&["cluster", "certificates", "set", "cluster", "--cert", &key, "--key", &cert]);
    assert!(!out.success);
    assert!(out.stderr.contains(&key) && out.stderr.contains("private key"), "{}", out.stderr);
    // A key that is not the certificate's.
    let other = microcluster::certs::generate("m2", &[]).unwrap();
    let wrong_key = write("other.key", &other.key_pem);
    let out = m1.ctl(&["cluster", "certificates", "set", "cluster", "--cert", &cert, "--key", &wrong_key]);
    assert!(!out.success);
    assert!(out.stderr.contains(&wrong_key) && out.stderr.contains("is not the private key"), "{}", out.stderr);
    // Through the API directly (no check in microctl): refused by the cluster too, unchanged.
    let bad = microcluster::api::KeyPair {
        cert: stranger.cert_pem.clone(),
        key: stranger.key_pem.clone(),
        ca: String::new(),
    };
    let body = serde_json::to_string(&bad).unwrap();
    let (status, answer) =
        checker::unix_request(&m1.socket(), "PUT", "/core/1.0/cluster/certificates/m2", &body, Duration::from_secs(30))
            .unwrap();
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("does not name"), "{answer}");
    assert_eq!((fingerprint(&m1.dir, "cluster"), fingerprint(&cluster.members[1].dir, "server")), before);

    // Good pairs are installed: a member's and the cluster's.
    // The key from standard input (`-`), as a secret store would pipe it.
    let cert = write("m2-good.crt", &other.cert_pem);
    let out = m1.ctl_stdin(&["cluster", "certificates", "set", "m2", "--cert", &cert, "--key", "-"], &other.key_pem);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(fingerprint(&cluster.members[1].dir, "server"), other.fingerprint().unwrap());
    let company = microcluster::certs::generate("cluster.example", &[]).unwrap();
    let (cert, key) = (write("cluster.crt", &company.cert_pem), write("cluster.key", &company.key_pem));
    m1.ctl_ok(&["cluster", "certificates", "set", "cluster", "--cert", &cert, "--key", &key]);
    for member in &cluster.members {
        assert_eq!(fingerprint(&member.dir, "cluster"), company.fingerprint().unwrap(), "{}", member.name);
    }
    all_online(m1, &["m1", "m2"], Duration::from_secs(30));
    all_online(&cluster.members[1], &["m1", "m2"], Duration::from_secs(30));
}

/// A CA and certificates it issues, for the test.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
        Ca { cert: params.self_signed(&key).unwrap(), key }
    }

    /// A member certificate for `name`, issued by this CA.
    fn issue(&self, name: &str) -> Identity {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Identity { cert_pem: cert.pem(), key_pem: key.serialize_pem() }
    }
}

#[test]
fn a_ca_once_required_must_have_issued_every_members_certificate() {
    let cluster = Cluster::form(2);
    let (m1, m2) = (&cluster.members[0], &cluster.members[1]);
    let scratch = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| write_file(scratch.path(), name, text);
    let ca = Ca::new();
    let ca_file = write("ca.pem", &ca.cert.pem());

    // The members' certificates are self-signed: the CA is refused, nothing changes.
    let out = m1.ctl(&["cluster", "certificates", "ca", "set", &ca_file]);
    assert!(!out.success);
    assert!(out.stderr.contains("m1, m2 are not issued by that CA"), "{}", out.stderr);
    assert!(!m1.dir.join("cluster.ca").exists() && !m2.dir.join("cluster.ca").exists());
    // A member certificate given as the CA is refused by microctl, naming the file.
    let not_a_ca = write("not-a-ca.pem", &pair(&m1.dir, "server").cert_pem);
    let out = m1.ctl(&["cluster", "certificates", "ca", "set", &not_a_ca]);
    assert!(!out.success && out.stderr.contains(&not_a_ca) && out.stderr.contains("not a CA"), "{}", out.stderr);

    // Certificates the CA issued first, then the CA.
    for member in [m1, m2] {
        let issued = ca.issue(&member.name);
        let (cert, key) = (
            write(&format!("{}.crt", member.name), &issued.cert_pem),
            write(&format!("{}.key", member.name), &issued.key_pem),
        );
        let out = m1.ctl_ok(&["cluster", "certificates", "set", &member.name, "--cert", &cert, "--key", &key]);
        assert_eq!(fingerprint(&member.dir, "server"), issued.fingerprint().unwrap(), "{out}");
    }
    let out = m1.ctl_ok(&["cluster", "certificates", "ca", "set", &ca_file]);
    assert!(out.contains("required"), "{out}");
    for member in [m1, m2] {
        assert_eq!(std::fs::read_to_string(member.dir.join("cluster.ca")).unwrap(), ca.cert.pem(), "{}", member.name);
    }
    all_online(m1, &["m1", "m2"], Duration::from_secs(30));
    m2.ctl_ok(&["sql", "CREATE TABLE IF NOT EXISTS with_ca (x)"]);
    m2.ctl_ok(&["sql", "INSERT INTO with_ca VALUES (1)"]);

    // A certificate made here would not be the CA's: refused.
    let out = m1.ctl(&["cluster", "certificates", "rotate", "--member", "m2"]);
    assert!(!out.success && out.stderr.contains("requires members' certificates issued by its CA"), "{}", out.stderr);
    // Everything, then, is the cluster certificate (not a member's): it is still replaced.
    let rotated = rotate(m1, &[]);
    assert!(rotated["cluster"].is_string() && rotated["members"].as_object().unwrap().is_empty(), "{rotated}");
    // A joiner with a self-signed certificate is refused, saying why.
    let mut m3 = Member::new("m3");
    m3.start();
    let token = m1.ctl_ok(&["tokens", "add", "m3"]);
    let out = m3.ctl(&["init", "m3", &m3.address, "--token", token.trim()]);
    assert!(!out.success && out.stderr.contains("issued by its CA"), "{}", out.stderr);
    all_online(m2, &["m1", "m2"], Duration::from_secs(30));

    // Cleared: pinning alone again.
    let out = m1.ctl_ok(&["cluster", "certificates", "ca", "clear"]);
    assert!(out.contains("not required"), "{out}");
    assert!(!m1.dir.join("cluster.ca").exists() && !m2.dir.join("cluster.ca").exists());
}

async fn hello(
    _state: microcluster::State,
    _req: microcluster::server::rest::Request,
) -> microcluster::server::rest::HandlerResult {
    microcluster::server::rest::Response::sync("hello")
}

/// The answer of `GET /1.0/hello` on an extension listener to a client pinning `fingerprint`,
/// or `None` when the client refuses what the listener presents.
fn hello_from(rt: &tokio::runtime::Runtime, address: &str, fingerprint: &str) -> Option<String> {
    let client = Client::https(address, tls::client_config(None, vec![fingerprint.to_owned()]).unwrap())
        .with_timeout(Duration::from_secs(5));
    match rt.block_on(client.query::<String>(Method::GET, "/1.0/hello", None::<&()>)) {
        Ok(answer) => Some(answer),
        Err(err) if err.is_unreachable() => None,
        Err(err) => panic!("{address}: {err}"),
    }
}

#[test]
fn extension_listeners_present_their_new_certificates_without_a_restart() {
    use microcluster::server::rest::{Action, Endpoint, Resources};
    use microcluster::{App, Args, DaemonArgs, Server};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let (address, dedicated, shared) =
        (microcluster_tests::free_address(), microcluster_tests::free_address(), microcluster_tests::free_address());
    let resources =
        || vec![Resources::new("1.0", vec![Endpoint::new("hello").get(Action::new(hello).allow_untrusted())])];
    let args = DaemonArgs {
        shutdown_signals: Vec::new(),
        heartbeat_interval: Duration::from_secs(1),
        servers: vec![
            Server::listener("public", resources()).default_address(dedicated.clone()).dedicated_certificate(),
            Server::listener("shared", resources()).default_address(shared.clone()),
        ],
        ..DaemonArgs::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = App::new(Args { state_dir: dir.clone() });
    let daemon = rt.spawn({
        let app = App::new(Args { state_dir: dir.clone() });
        async move {
            app.start_until(args, async move {
                let _ = stopped.await;
            })
            .await
        }
    });
    rt.block_on(async {
        for _ in 0..200 {
            if tokio::net::UnixStream::connect(dir.join("control.socket")).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the daemon's socket never answered");
    });
    rt.block_on(app.new_cluster("e1", &address, Default::default())).unwrap();
    let (old_dedicated, old_cluster) = (fingerprint(&dir, "certificates/public"), fingerprint(&dir, "cluster"));
    wait_until("the listeners", Duration::from_secs(30), || hello_from(&rt, &dedicated, &old_dedicated));
    assert_eq!(hello_from(&rt, &shared, &old_cluster).as_deref(), Some("hello"));

    let control = Client::unix(dir.join("control.socket")).with_timeout(Duration::from_secs(60));
    let rotated = rt.block_on(control.rotate_certificates(&Default::default())).unwrap();
    let new_dedicated = fingerprint(&dir, "certificates/public");
    assert_eq!(rotated.servers.get("e1/public"), Some(&new_dedicated), "{rotated:?}");
    assert_ne!(new_dedicated, old_dedicated);
    let new_cluster = rotated.cluster.clone().unwrap();
    // The same listeners, now presenting the new certificates; the old ones are gone.
    assert_eq!(hello_from(&rt, &dedicated, &new_dedicated).as_deref(), Some("hello"));
    assert_eq!(hello_from(&rt, &dedicated, &old_dedicated), None);
    assert_eq!(hello_from(&rt, &shared, &new_cluster).as_deref(), Some("hello"));
    assert_eq!(hello_from(&rt, &shared, &old_cluster), None);
    // Rotating it alone.
    let only = microcluster::api::CertificatesRotate { servers: vec!["public".into()], ..Default::default() };
    let rotated = rt.block_on(control.rotate_certificates(&only)).unwrap();
    assert!(rotated.cluster.is_none() && rotated.members.is_empty(), "{rotated:?}");
    assert_ne!(fingerprint(&dir, "certificates/public"), new_dedicated);
    let unknown = microcluster::api::CertificatesRotate { servers: vec!["shared".into()], ..Default::default() };
    let refused = rt.block_on(control.rotate_certificates(&unknown)).unwrap_err();
    assert!(
        refused.to_string().contains("no extension server called \"shared\" has a dedicated certificate"),
        "{refused}"
    );

    stop.send(()).unwrap();
    rt.block_on(daemon).unwrap().unwrap();
}

#[test]
fn a_ca_changes_with_every_member_or_not_at_all() {
    let mut cluster = Cluster::form(3);
    let scratch = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| write_file(scratch.path(), name, text);
    let ca = Ca::new();
    let ca_file = write("ca.pem", &ca.cert.pem());
    for i in 0..3 {
        let name = cluster.members[i].name.clone();
        let issued = ca.issue(&name);
        let (cert, key) =
            (write(&format!("{name}.crt"), &issued.cert_pem), write(&format!("{name}.key"), &issued.key_pem));
        cluster.members[0].ctl_ok(&["cluster", "certificates", "set", &name, "--cert", &cert, "--key", &key]);
    }
    let m3 = &mut cluster.members[2];
    m3.signal("TERM");
    assert!(m3.wait_exit(Duration::from_secs(30)).is_some(), "m3 did not stop");

    // m3 cannot take it: refused, and m1 and m2 do not require it either.
    let out = cluster.members[0].ctl(&["cluster", "certificates", "ca", "set", &ca_file]);
    assert!(
        !out.success && out.stderr.contains("only with every member") && out.stderr.contains("m3"),
        "{}",
        out.stderr
    );
    for member in &cluster.members[..2] {
        assert!(!member.dir.join("cluster.ca").exists(), "{} kept the CA", member.name);
    }
    all_online(&cluster.members[0], &["m1", "m2"], Duration::from_secs(30));

    // With m3 back, it is taken everywhere.
    cluster.members[2].start();
    all_online(&cluster.members[0], &["m1", "m2", "m3"], Duration::from_secs(60));
    cluster.members[0].ctl_ok(&["cluster", "certificates", "ca", "set", &ca_file]);
    for member in &cluster.members {
        assert!(member.dir.join("cluster.ca").exists(), "{} has no CA", member.name);
    }
}
