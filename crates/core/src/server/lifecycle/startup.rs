//! What a member needs on disk before it starts, checked before anything binds.
//!
//! A member is initialised when `database/node.toml` exists; raft data in `database/` without
//! it counts too (a lost `node.toml`, since a reset moves the whole directory away in one
//! step). An initialised member needs every file init gave it: `daemon.toml` with its name and
//! address, `server.crt/.key` (the certificate the cluster trusts it by, matching its own
//! trust store entry), `cluster.crt/.key` and readable trust store entries. One missing or
//! damaged stops the start with an error that names the file and what to do: a regenerated
//! certificate would be refused by the other members for good, and a retry would fail the
//! same way every second.
//!
//! A member that is not initialised needs only its own certificate, made here when it has none
//! or only half of a pair (a crash while the pair was written), unless it holds a cluster's
//! files from an init that did not finish: someone may already trust that certificate.

use std::path::Path;

use crate::state_dir::{DaemonConfig, NodeInfo, Pair, StateDir, StateDirError};
use crate::tls::Identity;
use crate::truststore::TrustStore;
use crate::{certs, raftlog, validate};

/// What the start-up found on disk.
pub(crate) struct Files {
    pub(crate) config: DaemonConfig,
    pub(crate) server: Identity,
    pub(crate) truststore: TrustStore,
    /// The node identity of an initialised member.
    pub(crate) node: Option<NodeInfo>,
}

/// Reads and checks every state file; makes the certificate of a member that is not
/// initialised when it has none.
pub(crate) fn load(dir: &StateDir) -> Result<Files, StateDirError> {
    load_files(dir).map_err(unreadable)
}

fn load_files(dir: &StateDir) -> Result<Files, StateDirError> {
    dir.finish_reset()?;
    // A certificate rotation cut short between writing a pair's key and its certificate.
    dir.finish_switch("server")?;
    dir.finish_switch("cluster")?;
    let node = node_info(dir)?;
    let truststore = TrustStore::load(dir.truststore_dir())?;
    let server = dir.pair("server")?;
    let config = daemon_config(dir, node.is_some(), &server, &truststore)?;
    let server = match node {
        Some(_) => initialised(dir, &config, server, &truststore)?,
        None => own_identity(dir, &config, server, &truststore)?,
    };
    Ok(Files { config, server, truststore, node })
}

/// The checks of [`load`] again, for an initialised member whose runtime failed to start:
/// a file damaged since is a reason to stop, not to retry.
pub(crate) fn check_initialised(dir: &StateDir) -> Result<(), StateDirError> {
    check_files(dir).map_err(unreadable)
}

fn check_files(dir: &StateDir) -> Result<(), StateDirError> {
    if node_info(dir)?.is_none() {
        return Ok(());
    }
    let truststore = TrustStore::load(dir.truststore_dir())?;
    let server = dir.pair("server")?;
    let config = daemon_config(dir, true, &server, &truststore)?;
    initialised(dir, &config, server, &truststore).map(drop)
}

/// A file that exists but cannot be read (permissions, a failing disk) is damaged too, with
/// its own fix.
fn unreadable(err: StateDirError) -> StateDirError {
    match err {
        StateDirError::Io { action: "reading", path, source } => StateDirError::Damaged {
            problem: format!("cannot be read: {source}"),
            fix: "Check that microd's user may read it (and the directories above it), and the disk's health \
                  (dmesg)"
                .into(),
            path,
            source: Some(Box::new(source)),
        },
        other => other,
    }
}

/// `node.toml`, which must be readable, and must exist next to raft data.
fn node_info(dir: &StateDir) -> Result<Option<NodeInfo>, StateDirError> {
    let path = dir.node_info_path();
    match dir.node_info() {
        Ok(Some(info)) => Ok(Some(info)),
        Ok(None) if !dir.has_raft_data()? => Ok(None),
        Ok(None) => Err(StateDirError::damaged(
            &path,
            format!("is missing, while {} holds this member's raft data", dir.database_dir().display()),
            format!(
                "{}. If this member was being removed or reset when it stopped, delete {} instead",
                node_fix(dir),
                dir.database_dir().display()
            ),
        )),
        Err(StateDirError::Invalid { reason, .. }) => {
            Err(StateDirError::damaged(&path, format!("is not valid: {reason}"), node_fix(dir)))
        }
        Err(other) => Err(other),
    }
}

/// What to do about a lost `node.toml`: its only content, the node id, is in the raft log's
/// configuration next to this member's address.
fn node_fix(dir: &StateDir) -> String {
    let address = dir.daemon_config().map(|c| c.address).unwrap_or_default();
    let known = (!address.is_empty())
        .then(|| raftlog::read(&dir.database_dir()).ok())
        .flatten()
        .and_then(|log| log.configuration.into_iter().find(|s| s.address == address));
    match known {
        Some(server) => format!(
            "Restore it from a backup, or write `id = \"{}\"` into it: the raft log lists this member's address \
             {address} with that node id",
            server.id
        ),
        None => "Restore it from a backup of this member: it holds the member's dqlite node id, as \
                 `id = \"<number>\"`"
            .to_owned(),
    }
}

/// `daemon.toml`; an initialised member's must name it and its address.
fn daemon_config(
    dir: &StateDir,
    initialised: bool,
    server: &Pair,
    truststore: &TrustStore,
) -> Result<DaemonConfig, StateDirError> {
    let path = dir.daemon_config_path();
    let fix = || daemon_fix(server, truststore);
    let config = match dir.daemon_config() {
        Ok(config) => config,
        Err(StateDirError::Invalid { reason, .. }) => {
            return Err(StateDirError::damaged(&path, format!("is not valid: {reason}"), fix()));
        }
        Err(other) => return Err(other),
    };
    if !initialised {
        return Ok(config);
    }
    let problem = if !path.exists() {
        "is missing".to_owned()
    } else if config.name.is_empty() {
        "names no member, though this member is initialised".to_owned()
    } else if let Err(err) = validate::member_name(&config.name) {
        format!("holds an invalid member name: {err}")
    } else if let Err(err) = validate::member_address(&config.address) {
        format!("holds no valid member address: {err}")
    } else {
        return Ok(config);
    };
    Err(StateDirError::damaged(&path, format!("{problem} ({} exists)", dir.node_info_path().display()), fix()))
}

/// What to do about a damaged `daemon.toml`: the member's name and address are in its own
/// trust store entry, found by its certificate.
fn daemon_fix(server: &Pair, truststore: &TrustStore) -> String {
    let generic = "Restore it from a backup, or correct it: it holds `name` and `address` (and the `failure_domain`, \
                   `weight` and `servers` you set)";
    let Pair::Usable(identity) = server else { return generic.to_owned() };
    let Some(entry) = identity.fingerprint().ok().and_then(|fp| truststore.snapshot().by_fingerprint(&fp).cloned())
    else {
        return generic.to_owned();
    };
    format!(
        "{generic}; this member's trust store entry says name = \"{}\" and address = \"{}\"",
        entry.member.name, entry.member.address
    )
}

/// The files only an initialised member has; returns its certificate.
fn initialised(
    dir: &StateDir,
    config: &DaemonConfig,
    server: Pair,
    truststore: &TrustStore,
) -> Result<Identity, StateDirError> {
    let fix = |which: &str| dir.pair_fix(which, &config.name);
    let needed = |which: &str, pair| match pair {
        Pair::Usable(identity) => Ok(identity),
        Pair::Absent => Err(StateDirError::damaged(
            dir.cert_path(which),
            format!(
                "is missing, and so is {}, though this member is initialised ({} exists)",
                dir.key_path(which).display(),
                dir.node_info_path().display()
            ),
            fix(which),
        )),
        Pair::Damaged { path, problem, source } => {
            Err(StateDirError::Damaged { path, problem, fix: fix(which), source })
        }
    };
    let server = needed("server", server)?;
    needed("cluster", dir.pair("cluster")?)?;
    let own = truststore.path(&config.name);
    let Some(entry) = truststore.snapshot().by_name(&config.name).cloned() else {
        return Err(StateDirError::damaged(
            &own,
            format!("is missing: it is this member's own trust store entry (daemon.toml names it {:?})", config.name),
            "Copy the file from the truststore directory of another member (every member holds the same entries)",
        ));
    };
    let fingerprint = server
        .fingerprint()
        .map_err(|e| StateDirError::damaged(dir.cert_path("server"), e.to_string(), fix("server")))?;
    // Either of two while a rotation is under way (the member may stop between its switch and
    // the cluster's dropping the old certificate).
    if !entry.holds(&fingerprint) {
        return Err(StateDirError::damaged(
            dir.cert_path("server"),
            format!(
                "is not the certificate the cluster knows this member by (that one is in {}), so the other members \
                 would refuse it",
                own.display()
            ),
            fix("server"),
        ));
    }
    Ok(server)
}

/// The certificate of a member that is not initialised, made when missing.
fn own_identity(
    dir: &StateDir,
    config: &DaemonConfig,
    server: Pair,
    truststore: &TrustStore,
) -> Result<Identity, StateDirError> {
    match server {
        Pair::Usable(identity) => return Ok(identity),
        Pair::Absent => {}
        Pair::Damaged { path, problem, source } => {
            if holds_cluster_files(dir, truststore) {
                let fix = format!(
                    "This member is not initialised, but holds a cluster's certificate or trust store from an init \
                     that did not finish, so its certificate may be trusted already: restore the file from a \
                     backup; or remove the member from that cluster if it got in (`microctl cluster remove {} \
                     --force`), delete {} and start again",
                    if config.name.is_empty() { "NAME" } else { &config.name },
                    dir.root().display()
                );
                return Err(StateDirError::Damaged { path, problem, fix, source });
            }
            tracing::warn!(
                file = %path.display(),
                "{problem}; this member is not initialised, so nothing trusts its certificate yet: making a new one"
            );
        }
    }
    let name = if config.name.is_empty() { hostname() } else { config.name.clone() };
    let identity = certs::generate(&name, &[]).map_err(|e| StateDirError::Damaged {
        path: dir.cert_path("server"),
        problem: format!("could not be made: {e}"),
        fix: "Check the system's random number generator".into(),
        source: Some(Box::new(e)),
    })?;
    dir.set_server_identity(&identity)?;
    Ok(identity)
}

/// Whether an init that did not finish left a cluster's files here.
fn holds_cluster_files(dir: &StateDir, truststore: &TrustStore) -> bool {
    let exists = |path: &Path| path.exists();
    exists(&dir.cert_path("cluster"))
        || exists(&dir.key_path("cluster"))
        || truststore.snapshot().iter().next().is_some()
}

fn hostname() -> String {
    // /etc/hostname where /proc/sys is hidden (systemd's `ProcSubset=pid`).
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    if validate::member_name(&name).is_ok() { name } else { "microcluster".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ClusterMemberLocal;

    /// A state directory as init leaves it for `m1`, trusting `m1` and `m2`.
    fn initialised_dir() -> (tempfile::TempDir, StateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path().join("state")).unwrap();
        let server = certs::generate("m1", &[]).unwrap();
        dir.set_server_identity(&server).unwrap();
        dir.set_cluster_identity(&certs::generate("m1", &[]).unwrap()).unwrap();
        let config = DaemonConfig { name: "m1".into(), address: "127.0.0.1:9001".into(), ..DaemonConfig::default() };
        dir.set_daemon_config(&config).unwrap();
        let store = TrustStore::load(dir.truststore_dir()).unwrap();
        let trust = |name: &str, port: u16, certificate: String| {
            store.add(ClusterMemberLocal { name: name.into(), address: format!("127.0.0.1:{port}"), certificate })
        };
        trust("m1", 9001, server.cert_pem).unwrap();
        trust("m2", 9002, certs::generate("m2", &[]).unwrap().cert_pem).unwrap();
        dir.set_node_info(&NodeInfo { id: 5 }).unwrap();
        (tmp, dir)
    }

    fn write(dir: &StateDir, file: &str, text: &str) {
        std::fs::write(dir.root().join(file), text).unwrap();
    }

    fn remove(dir: &StateDir, file: &str) {
        std::fs::remove_file(dir.root().join(file)).unwrap();
    }

    #[test]
    fn an_initialised_member_needs_every_file() {
        let (_tmp, dir) = initialised_dir();
        let files = load(&dir).unwrap();
        assert_eq!((files.node, files.config.name.as_str()), (Some(NodeInfo { id: 5 }), "m1"));
        check_initialised(&dir).unwrap();

        type Damage = fn(&StateDir);
        let cases: [(&str, Damage, &str, &str); 12] = [
            ("server.crt", |d| remove(d, "server.crt"), "is missing", "cluster remove m1 --force"),
            ("server.crt", |d| (remove(d, "server.crt"), remove(d, "server.key")).1, "and so is", "backup"),
            ("server.key", |d| write(d, "server.key", "garbage"), "private key", "backup"),
            ("cluster.key", |d| write(d, "cluster.key", "garbage"), "private key", "another member"),
            ("cluster.crt", |d| (remove(d, "cluster.crt"), remove(d, "cluster.key")).1, "and so is", "another member"),
            ("daemon.toml", |d| write(d, "daemon.toml", ""), "names no member", "name = \"m1\""),
            ("daemon.toml", |d| remove(d, "daemon.toml"), "is missing", "address = \"127.0.0.1:9001\""),
            ("daemon.toml", |d| write(d, "daemon.toml", "name = \"m1\"\naddress = \"x\""), "address", "name = \"m1\""),
            ("database/node.toml", |d| write(d, "database/node.toml", "id = 5"), "line 1, column 6", "id = \""),
            ("truststore/m1.toml", |d| remove(d, "truststore/m1.toml"), "own trust store entry", "another member"),
            ("truststore/m2.toml", |d| write(d, "truststore/m2.toml", "name = \"m3\""), "not a valid entry", "another"),
            (
                "server.crt",
                |d| d.set_server_identity(&certs::generate("m1", &[]).unwrap()).unwrap(),
                "not the certificate the cluster knows",
                "backup",
            ),
        ];
        for (file, damage, problem, fix) in cases {
            let (_tmp, dir) = initialised_dir();
            damage(&dir);
            for err in [load(&dir).err(), check_initialised(&dir).err()] {
                let Some(StateDirError::Damaged { path, problem: said, fix: told, .. }) = err else {
                    panic!("{file}: {err:?}");
                };
                assert_eq!(path, dir.root().join(file), "{said}");
                assert!(said.contains(problem), "{file}: {said}");
                assert!(told.contains(fix), "{file}: {told}");
            }
        }
    }

    /// What cannot be read is named with its cause (a directory where the file should be
    /// gives EISDIR even to root, unlike permissions).
    #[test]
    fn an_unreadable_file_is_named_with_its_cause() {
        let (_tmp, dir) = initialised_dir();
        remove(&dir, "cluster.crt");
        std::fs::create_dir(dir.root().join("cluster.crt")).unwrap();
        let err = load(&dir).err().unwrap();
        let StateDirError::Damaged { path, problem, fix, .. } = &err else { panic!("{err:?}") };
        assert_eq!(path, &dir.root().join("cluster.crt"));
        assert!(problem.starts_with("cannot be read: ") && fix.contains("may read it"), "{err}");
    }

    #[test]
    fn raft_data_without_node_toml_is_an_initialised_member_that_lost_it() {
        let (_tmp, dir) = initialised_dir();
        std::fs::write(dir.database_dir().join("metadata1"), b"raft").unwrap();
        remove(&dir, "database/node.toml");
        let err = load(&dir).err().unwrap().to_string();
        assert!(err.contains("node.toml: is missing, while"), "{err}");
        assert!(err.contains("delete"), "{err}");
        // A reset cut short after it moved the directory aside is finished instead.
        std::fs::rename(dir.database_dir(), dir.root().join(".database.removing")).unwrap();
        assert!(load(&dir).unwrap().node.is_none());
        assert!(!dir.root().join(".database.removing").exists());
    }

    #[test]
    fn a_fresh_member_makes_its_certificate_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let first = load(&dir).unwrap();
        assert!(first.node.is_none());
        assert_eq!(load(&dir).unwrap().server.cert_pem, first.server.cert_pem);
        // Half a pair (a crash between its two writes) is replaced.
        remove(&dir, "server.crt");
        let again = load(&dir).unwrap();
        assert_ne!(again.server.key_pem, first.server.key_pem);
        again.server.check().unwrap();
    }

    /// A member whose init stopped after it received the cluster's files: its certificate may
    /// be trusted already, so a damaged one is not replaced behind the operator's back.
    #[test]
    fn an_init_that_did_not_finish_keeps_its_certificate() {
        let (_tmp, dir) = initialised_dir();
        remove(&dir, "database/node.toml");
        assert!(load(&dir).unwrap().node.is_none());
        remove(&dir, "server.crt");
        let err = load(&dir).err().unwrap().to_string();
        assert!(err.contains("server.crt: is missing") && err.contains("did not finish"), "{err}");
    }
}
