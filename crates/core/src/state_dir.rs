//! The state directory: where every file of a member lives, with the permissions each needs,
//! the lock that keeps a second daemon out, and the small TOML files we own.
//!
//! ```text
//! control.socket            0660  unix HTTP API
//! microd.lock                     flock held while a daemon runs
//! daemon.toml               0644  name, address, servers
//! server.crt / server.key   0644 / 0600  this member's identity
//! cluster.crt / cluster.key 0644 / 0600  shared cluster certificate (after init)
//! truststore/<name>.toml    0644  trusted members (dir 0700)
//! database/                 0700  dqlite data and node.toml (id, address)
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls::Identity;

/// A state directory operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateDirError {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another daemon holds the lock.
    #[error("another microd is already running with state directory {0} (it holds {0}/microd.lock); stop it first")]
    Locked(PathBuf),
    /// A file's content is invalid.
    #[error("invalid {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A private key that others may read.
    #[error("refusing to use {0}: the private key is readable by other users; run `chmod 600 {0}`")]
    KeyExposed(PathBuf),
}

fn io_err<'p>(action: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> StateDirError + 'p {
    move |source| StateDirError::Io { action, path: path.to_owned(), source }
}

/// Per-member settings kept in `daemon.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DaemonConfig {
    /// Member name (empty until init).
    #[serde(default)]
    pub(crate) name: String,
    /// Member address `ip:port` (empty until init).
    #[serde(default)]
    pub(crate) address: String,
    /// Failure domain: members in different domains are preferred for roles.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) failure_domain: u64,
    /// Weight: members with a lower weight are preferred for roles.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) weight: u64,
    /// Addresses of additional listeners, by server name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) servers: BTreeMap<String, ServerConfig>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// An additional listener's settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerConfig {
    /// Listen address `ip:port`.
    pub(crate) address: String,
}

/// The dqlite node's identity, kept in `database/node.toml`; its presence means "initialised".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeInfo {
    /// dqlite node id (a string: TOML integers are signed 64-bit, ids use all 64 bits).
    #[serde(with = "u64_string")]
    pub(crate) id: u64,
}

mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&value.to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// Paths and file helpers of one state directory.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    root: PathBuf,
}

/// Holds the state directory's lock until dropped.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
}

impl StateDir {
    /// Opens (creating it, mode 0711) the state directory at `root`, made absolute.
    pub(crate) fn open(root: impl AsRef<Path>) -> Result<StateDir, StateDirError> {
        let root = root.as_ref();
        let root = if root.is_absolute() {
            root.to_owned()
        } else {
            std::env::current_dir().map_err(io_err("resolving", root))?.join(root)
        };
        create_dir(&root, 0o711)?;
        Ok(StateDir { root })
    }

    /// The directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The control socket.
    pub(crate) fn socket(&self) -> PathBuf {
        self.root.join("control.socket")
    }

    /// `daemon.toml`.
    pub(crate) fn daemon_config_path(&self) -> PathBuf {
        self.root.join("daemon.toml")
    }

    /// The trust store directory.
    pub(crate) fn truststore_dir(&self) -> PathBuf {
        self.root.join("truststore")
    }

    /// The dqlite data directory.
    pub(crate) fn database_dir(&self) -> PathBuf {
        self.root.join("database")
    }

    /// `database/node.toml`.
    pub(crate) fn node_info_path(&self) -> PathBuf {
        self.database_dir().join("node.toml")
    }

    /// Takes the lock that keeps a second daemon off this directory.
    pub(crate) fn lock(&self) -> Result<Lock, StateDirError> {
        let path = self.root.join("microd.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(Lock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(StateDirError::Locked(self.root.clone())),
            Err(fs::TryLockError::Error(e)) => Err(io_err("locking", &path)(e)),
        }
    }

    /// Reads `daemon.toml` (defaults when absent).
    pub(crate) fn daemon_config(&self) -> Result<DaemonConfig, StateDirError> {
        read_toml(&self.daemon_config_path()).map(Option::unwrap_or_default)
    }

    /// Writes `daemon.toml`.
    pub(crate) fn set_daemon_config(&self, config: &DaemonConfig) -> Result<(), StateDirError> {
        write_toml(&self.daemon_config_path(), config, 0o644)
    }

    /// The node identity, if this member is initialised.
    pub(crate) fn node_info(&self) -> Result<Option<NodeInfo>, StateDirError> {
        read_toml(&self.node_info_path())
    }

    /// Records the node identity (creating the database directory).
    pub(crate) fn set_node_info(&self, info: &NodeInfo) -> Result<(), StateDirError> {
        create_dir(&self.database_dir(), 0o700)?;
        write_toml(&self.node_info_path(), info, 0o600)
    }

    /// This member's certificate and key, generated for `name` when missing.
    pub(crate) fn server_identity(&self) -> Result<Option<Identity>, StateDirError> {
        self.identity("server")
    }

    /// Stores this member's certificate and key.
    pub(crate) fn set_server_identity(&self, id: &Identity) -> Result<(), StateDirError> {
        self.set_identity("server", id)
    }

    /// The cluster certificate and key, once initialised.
    pub(crate) fn cluster_identity(&self) -> Result<Option<Identity>, StateDirError> {
        self.identity("cluster")
    }

    /// Stores the cluster certificate and key.
    pub(crate) fn set_cluster_identity(&self, id: &Identity) -> Result<(), StateDirError> {
        self.set_identity("cluster", id)
    }

    fn identity(&self, which: &str) -> Result<Option<Identity>, StateDirError> {
        let cert = self.root.join(format!("{which}.crt"));
        let key = self.root.join(format!("{which}.key"));
        let (Some(cert_pem), Some(key_pem)) = (read_optional(&cert)?, read_optional(&key)?) else {
            return Ok(None);
        };
        let mode = fs::metadata(&key).map_err(io_err("reading", &key))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(StateDirError::KeyExposed(key));
        }
        Ok(Some(Identity { cert_pem, key_pem }))
    }

    fn set_identity(&self, which: &str, id: &Identity) -> Result<(), StateDirError> {
        write_atomic(&self.root.join(format!("{which}.key")), id.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.root.join(format!("{which}.crt")), id.cert_pem.as_bytes(), 0o644)
    }

    /// Removes everything that makes this member part of a cluster: the database, the cluster
    /// certificate, the trust store and the name/address. Keeps `server.crt` and the socket.
    pub(crate) fn reset(&self) -> Result<(), StateDirError> {
        for dir in [self.database_dir(), self.truststore_dir()] {
            match fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(io_err("removing", &dir)(e));
                }
                _ => {}
            }
        }
        for file in ["cluster.crt", "cluster.key"] {
            remove_optional(&self.root.join(file))?;
        }
        let mut config = self.daemon_config()?;
        config.name.clear();
        config.address.clear();
        self.set_daemon_config(&config)
    }
}

/// Creates a directory (and parents) with `mode`, and tightens the mode if it already existed.
pub(crate) fn create_dir(path: &Path, mode: u32) -> Result<(), StateDirError> {
    fs::DirBuilder::new().recursive(true).mode(mode).create(path).map_err(io_err("creating", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("setting permissions on", path))
}

/// Reads a file that may not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, StateDirError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", path)(e)),
    }
}

/// Removes a file that may not exist.
pub(crate) fn remove_optional(path: &Path) -> Result<(), StateDirError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StateDirError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    toml::from_str(&text).map(Some).map_err(|e| StateDirError::Invalid { path: path.to_owned(), reason: e.to_string() })
}

pub(crate) fn write_toml<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), StateDirError> {
    let text =
        toml::to_string(value).map_err(|e| StateDirError::Invalid { path: path.to_owned(), reason: e.to_string() })?;
    write_atomic(path, text.as_bytes(), mode)
}

/// Writes through a temporary file and a rename, so readers never see half a file.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), StateDirError> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new().create(true).truncate(true).write(true).mode(mode).open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err("writing", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keeps_a_second_daemon_out() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let lock = state.lock().unwrap();
        assert!(matches!(state.lock(), Err(StateDirError::Locked(_))));
        drop(lock);
        state.lock().unwrap();
    }

    #[test]
    fn config_node_info_identity_and_reset() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path().join("s")).unwrap();
        assert_eq!(fs::metadata(state.root()).unwrap().permissions().mode() & 0o777, 0o711);
        assert_eq!(state.daemon_config().unwrap(), DaemonConfig::default());
        let config = DaemonConfig { name: "mc1".into(), address: "127.0.0.1:9001".into(), ..Default::default() };
        state.set_daemon_config(&config).unwrap();
        assert_eq!(state.daemon_config().unwrap(), config);
        state.set_node_info(&NodeInfo { id: u64::MAX - 1 }).unwrap();
        assert_eq!(state.node_info().unwrap(), Some(NodeInfo { id: u64::MAX - 1 }));
        let id = Identity { cert_pem: "c".into(), key_pem: "k".into() };
        state.set_cluster_identity(&id).unwrap();
        let key_mode = fs::metadata(state.root().join("cluster.key")).unwrap().permissions().mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert_eq!(state.cluster_identity().unwrap().unwrap().key_pem, "k");
        state.reset().unwrap();
        assert_eq!(state.node_info().unwrap(), None);
        assert!(state.cluster_identity().unwrap().is_none());
        assert_eq!(state.daemon_config().unwrap().name, "");
    }

    #[test]
    fn exposed_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.set_server_identity(&Identity { cert_pem: "c".into(), key_pem: "k".into() }).unwrap();
        fs::set_permissions(dir.path().join("server.key"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(state.server_identity(), Err(StateDirError::KeyExposed(_))));
    }

    #[test]
    fn bad_toml_is_reported_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        fs::write(state.daemon_config_path(), "name = 3").unwrap();
        let err = state.daemon_config().unwrap_err();
        assert!(err.to_string().contains("daemon.toml"), "{err}");
    }
}
