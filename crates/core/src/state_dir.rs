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
//! join.toml                 0600  a join under way: its name, address, token and hook config
//! ```
//!
//! Every file is written durably (a temporary file, fsynced, renamed over the old one, then
//! the directory fsynced), so that after a crash or a power cut a file holds its old or its
//! new content, never nothing; removals that must stick fsync their directory too.

use std::collections::BTreeMap;
use std::error::Error;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls::{Identity, TlsError};

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
    /// A file the member needs is missing or damaged. The start stops here: a regenerated
    /// identity would be refused by the cluster, and a retry would fail the same way forever.
    #[error("{}: {problem}. {fix}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (with the cause's text).
        problem: String,
        /// What the operator can do.
        fix: String,
        /// The cause, if an error found it.
        #[source]
        source: Option<Box<dyn Error + Send + Sync>>,
    },
}

impl StateDirError {
    /// A [`StateDirError::Damaged`] for `path`: `problem`, then `fix`.
    pub(crate) fn damaged(path: impl Into<PathBuf>, problem: impl Into<String>, fix: impl Into<String>) -> Self {
        StateDirError::Damaged { path: path.into(), problem: problem.into(), fix: fix.into(), source: None }
    }
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

/// A certificate and its key as found on disk.
#[derive(Debug)]
pub(crate) enum Pair {
    /// Neither file exists.
    Absent,
    /// Both exist, parse, and belong together.
    Usable(Identity),
    /// One is missing or does not parse, or the two do not belong together.
    Damaged {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// The cause, if an error found it.
        source: Option<Box<dyn Error + Send + Sync>>,
    },
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
    #[cfg(feature = "server")]
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The control socket.
    #[cfg(feature = "server")]
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

    /// `join.toml`: the journal of a join under way (see `server::membership`).
    #[cfg(feature = "server")]
    pub(crate) fn join_path(&self) -> PathBuf {
        self.root.join("join.toml")
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
    #[cfg(feature = "server")]
    pub(crate) fn set_daemon_config(&self, config: &DaemonConfig) -> Result<(), StateDirError> {
        write_toml(&self.daemon_config_path(), config, 0o644)
    }

    /// The node identity, if this member is initialised.
    pub(crate) fn node_info(&self) -> Result<Option<NodeInfo>, StateDirError> {
        read_toml(&self.node_info_path())
    }

    /// Records the node identity (creating the database directory).
    #[cfg(feature = "server")]
    pub(crate) fn set_node_info(&self, info: &NodeInfo) -> Result<(), StateDirError> {
        create_dir(&self.database_dir(), 0o700)?;
        write_toml(&self.node_info_path(), info, 0o600)
    }

    /// This member's certificate and key (`None`: neither file exists yet).
    pub(crate) fn server_identity(&self) -> Result<Option<Identity>, StateDirError> {
        self.identity("server")
    }

    /// Stores this member's certificate and key.
    #[cfg(feature = "server")]
    pub(crate) fn set_server_identity(&self, id: &Identity) -> Result<(), StateDirError> {
        self.set_identity("server", id)
    }

    /// The cluster certificate and key, once initialised.
    pub(crate) fn cluster_identity(&self) -> Result<Option<Identity>, StateDirError> {
        self.identity("cluster")
    }

    /// Stores the cluster certificate and key.
    #[cfg(feature = "server")]
    pub(crate) fn set_cluster_identity(&self, id: &Identity) -> Result<(), StateDirError> {
        self.set_identity("cluster", id)
    }

    /// `server.crt` or `cluster.crt`.
    pub(crate) fn cert_path(&self, which: &str) -> PathBuf {
        self.root.join(format!("{which}.crt"))
    }

    /// `server.key` or `cluster.key`.
    pub(crate) fn key_path(&self, which: &str) -> PathBuf {
        self.root.join(format!("{which}.key"))
    }

    fn identity(&self, which: &str) -> Result<Option<Identity>, StateDirError> {
        match self.pair(which)? {
            Pair::Absent => Ok(None),
            Pair::Usable(id) => Ok(Some(id)),
            Pair::Damaged { path, problem, source } => {
                Err(StateDirError::Damaged { path, problem, fix: self.pair_fix(which, ""), source })
            }
        }
    }

    /// What `which.crt` and `which.key` hold. A private key readable by others is an error
    /// whatever the rest.
    pub(crate) fn pair(&self, which: &str) -> Result<Pair, StateDirError> {
        let (cert, key) = (self.cert_path(which), self.key_path(which));
        let (cert_pem, key_pem) = (read_optional(&cert)?, read_optional(&key)?);
        if key_pem.is_some() {
            let mode = fs::metadata(&key).map_err(io_err("reading", &key))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(StateDirError::KeyExposed(key));
            }
        }
        let missing = |path: PathBuf, other: &Path| Pair::Damaged {
            path,
            problem: format!("is missing, while {} exists", other.display()),
            source: None,
        };
        let identity = match (cert_pem, key_pem) {
            (None, None) => return Ok(Pair::Absent),
            (Some(_), None) => return Ok(missing(key, &cert)),
            (None, Some(_)) => return Ok(missing(cert, &key)),
            (Some(cert_pem), Some(key_pem)) => Identity { cert_pem, key_pem },
        };
        let Err(err) = identity.check() else { return Ok(Pair::Usable(identity)) };
        let (path, problem) = match &err {
            TlsError::NoCertificate { .. } | TlsError::Invalid(_) => {
                (cert, format!("is not a usable certificate: {err}"))
            }
            TlsError::KeyMismatch => (cert, format!("does not belong to {}: {err}", key.display())),
            _ => (key, format!("is not a usable private key: {err}")),
        };
        Ok(Pair::Damaged { path, problem, source: Some(Box::new(err)) })
    }

    /// What to do about a damaged `which` pair of an initialised member called `name` (empty:
    /// not known).
    pub(crate) fn pair_fix(&self, which: &str, name: &str) -> String {
        let root = self.root.display();
        let name = if name.is_empty() { "NAME" } else { name };
        if which == "cluster" {
            format!(
                "Copy cluster.crt and cluster.key from another member's state directory into {root} (every member \
                 holds the same pair) and `chmod 600 {root}/cluster.key`"
            )
        } else {
            format!(
                "Restore server.crt and server.key together from a backup of {root}: the other members trust this \
                 member by that certificate only and would refuse a new one. Without a backup, remove the member \
                 (`microctl cluster remove {name} --force` on another member), delete {root} and join it again"
            )
        }
    }

    #[cfg(feature = "server")]
    fn set_identity(&self, which: &str, id: &Identity) -> Result<(), StateDirError> {
        // The key first: a crash between the two leaves a key without its certificate (or with
        // the old one), which the start-up of a member that is not initialised yet recognises as
        // half a pair and replaces.
        write_atomic(&self.key_path(which), id.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.cert_path(which), id.cert_pem.as_bytes(), 0o644)
    }

    /// The pair a rotation keeps for `which` (`server`, `cluster` or `certificates/NAME`) until
    /// its switch: `which.next.crt` and `.key`.
    #[cfg(feature = "server")]
    pub(crate) fn next_identity(&self, which: &str) -> Result<Option<Identity>, StateDirError> {
        match self.pair(&format!("{which}.next"))? {
            Pair::Usable(id) => Ok(Some(id)),
            Pair::Absent | Pair::Damaged { .. } => Ok(None),
        }
    }

    /// Keeps `id` as `which`'s next pair.
    #[cfg(feature = "server")]
    pub(crate) fn set_next_identity(&self, which: &str, id: &Identity) -> Result<(), StateDirError> {
        self.set_identity(&format!("{which}.next"), id)
    }

    /// Forgets `which`'s next pair.
    #[cfg(feature = "server")]
    pub(crate) fn remove_next_identity(&self, which: &str) -> Result<(), StateDirError> {
        let next = format!("{which}.next");
        remove_durable(&self.cert_path(&next))?;
        remove_durable(&self.key_path(&next))
    }

    /// Makes `which`'s next pair the current one (the key first, as [`StateDir::set_identity`]
    /// does), then forgets it; `None` when there is none. A switch cut short between the two
    /// files is finished by [`StateDir::finish_switch`] at the next start.
    #[cfg(feature = "server")]
    pub(crate) fn switch_identity(&self, which: &str) -> Result<Option<Identity>, StateDirError> {
        let Some(next) = self.next_identity(which)? else { return Ok(None) };
        self.set_identity(which, &next)?;
        self.remove_next_identity(which)?;
        Ok(Some(next))
    }

    /// Finishes a switch of `which` that a crash cut short: the next key is already the current
    /// one but the certificate is still the old one. Anything else is left alone (a next pair
    /// that was never switched to is only a rotation that did not finish).
    #[cfg(feature = "server")]
    pub(crate) fn finish_switch(&self, which: &str) -> Result<(), StateDirError> {
        let Some(next) = self.next_identity(which)? else { return Ok(()) };
        let key = read_optional(&self.key_path(which))?;
        if key.as_deref() == Some(next.key_pem.as_str()) {
            tracing::warn!(pair = which, "finishing a certificate switch that was cut short");
            write_atomic(&self.cert_path(which), next.cert_pem.as_bytes(), 0o644)?;
            self.remove_next_identity(which)?;
        }
        Ok(())
    }

    /// `cluster.endorsements`: how the cluster certificate came to be what it is (each
    /// replacement signed by the key it replaced), for members that missed a rotation.
    #[cfg(feature = "server")]
    pub(crate) fn endorsements(&self) -> Result<Vec<crate::tls::Endorsement>, StateDirError> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            endorsement: Vec<crate::tls::Endorsement>,
        }
        Ok(read_toml::<File>(&self.root.join("cluster.endorsements"))?.map(|f| f.endorsement).unwrap_or_default())
    }

    /// Records the cluster certificate's replacements (the last [`ENDORSEMENTS_KEPT`]).
    #[cfg(feature = "server")]
    pub(crate) fn set_endorsements(&self, chain: &[crate::tls::Endorsement]) -> Result<(), StateDirError> {
        #[derive(serde::Serialize)]
        struct File<'a> {
            endorsement: &'a [crate::tls::Endorsement],
        }
        let kept = &chain[chain.len().saturating_sub(ENDORSEMENTS_KEPT)..];
        write_toml(&self.root.join("cluster.endorsements"), &File { endorsement: kept }, 0o644)
    }

    /// Sets (or, empty, removes) the CA members' certificates must be issued by.
    #[cfg(feature = "server")]
    pub(crate) fn set_cluster_ca(&self, pem: &str) -> Result<(), StateDirError> {
        let path = self.root.join("cluster.ca");
        if pem.is_empty() { remove_durable(&path) } else { write_atomic(&path, pem.as_bytes(), 0o644) }
    }

    /// Where the database directory goes while a reset removes it.
    #[cfg(feature = "server")]
    fn removing_dir(&self) -> PathBuf {
        self.root.join(".database.removing")
    }

    /// Whether `database/` holds anything but `node.toml` and our temporary files: raft data,
    /// which exists only once the member was initialised.
    #[cfg(feature = "server")]
    pub(crate) fn has_raft_data(&self) -> Result<bool, StateDirError> {
        let dir = self.database_dir();
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err("reading", &dir)(e)),
        };
        for entry in listing {
            let name = entry.map_err(io_err("reading", &dir))?.file_name();
            if name != "node.toml" && !name.as_encoded_bytes().starts_with(b".") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes everything that makes this member part of a cluster: the database, the cluster
    /// certificate, the trust store, a join's journal and the name/address. Keeps `server.crt`
    /// and the socket.
    #[cfg(feature = "server")]
    pub(crate) fn reset(&self) -> Result<(), StateDirError> {
        // The database directory, node.toml with it, leaves in one durable rename first: a reset
        // cut short must never leave raft data without node.toml, which reads as an initialised
        // member whose node.toml was lost (and stops the start).
        let (database, aside) = (self.database_dir(), self.removing_dir());
        remove_dir_optional(&aside)?;
        match fs::rename(&database, &aside) {
            Ok(()) => sync_dir(&self.root)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("moving aside", &database)(e)),
        }
        remove_dir_optional(&aside)?;
        remove_dir_optional(&self.truststore_dir())?;
        for file in ["cluster.crt", "cluster.key", "join.toml"] {
            remove_optional(&self.root.join(file))?;
        }
        sync_dir(&self.root)?;
        let mut config = self.daemon_config()?;
        config.name.clear();
        config.address.clear();
        self.set_daemon_config(&config)
    }

    /// Finishes a reset that a crash cut short after the database directory was moved aside.
    #[cfg(feature = "server")]
    pub(crate) fn finish_reset(&self) -> Result<(), StateDirError> {
        remove_dir_optional(&self.removing_dir())
    }
}

/// How many replacements of the cluster certificate a member keeps the endorsements of: a
/// member away for more rotations than that is rejoined by hand.
#[cfg(feature = "server")]
pub(crate) const ENDORSEMENTS_KEPT: usize = 16;

/// Creates a directory (and parents) with `mode`, and tightens the mode if it already existed.
/// Each directory it creates is made durable in its parent.
pub(crate) fn create_dir(path: &Path, mode: u32) -> Result<(), StateDirError> {
    let created: Vec<&Path> = path.ancestors().take_while(|dir| !dir.exists()).collect();
    fs::DirBuilder::new().recursive(true).mode(mode).create(path).map_err(io_err("creating", path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("setting permissions on", path))?;
    for dir in created {
        sync_dir(parent(dir))?;
    }
    Ok(())
}

/// Reads a file that may not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, StateDirError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", path)(e)),
    }
}

/// Removes a file that may not exist; the caller syncs the directory if the removal must
/// survive a power cut (see [`remove_durable`]).
#[cfg(feature = "server")]
pub(crate) fn remove_optional(path: &Path) -> Result<(), StateDirError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

/// Removes a file that may not exist, for good: a file that comes back after a power cut (a
/// trust entry of a removed member) would undo the removal.
#[cfg(feature = "server")]
pub(crate) fn remove_durable(path: &Path) -> Result<(), StateDirError> {
    remove_optional(path)?;
    sync_dir(parent(path))
}

/// Renames `from` to `to` durably (both directories synced).
#[cfg(feature = "server")]
pub(crate) fn rename_durable(from: &Path, to: &Path) -> Result<(), StateDirError> {
    fs::rename(from, to).map_err(io_err("renaming", from))?;
    sync_dir(parent(to))?;
    if parent(from) != parent(to) {
        sync_dir(parent(from))?;
    }
    Ok(())
}

/// Removes a directory tree that may not exist.
#[cfg(feature = "server")]
fn remove_dir_optional(path: &Path) -> Result<(), StateDirError> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
        _ => Ok(()),
    }
}

/// fsyncs a directory: names created, renamed or removed in it are durable only after this.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StateDirError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("syncing", dir))
}

fn parent(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

pub(crate) fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StateDirError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| StateDirError::Invalid { path: path.to_owned(), reason: toml_reason(&text, &e) })
}

/// A TOML error on one line (its own text quotes the source over several): `line L, column C:
/// message`.
fn toml_reason(text: &str, err: &toml::de::Error) -> String {
    let Some(at) = err.span().map(|span| span.start.min(text.len())) else { return err.message().to_owned() };
    let before = text.as_bytes().get(..at).unwrap_or_default();
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let column = before.iter().rev().take_while(|b| **b != b'\n').count() + 1;
    format!("line {line}, column {column}: {}", err.message())
}

#[cfg(feature = "server")]
pub(crate) fn write_toml<T: Serialize>(path: &Path, value: &T, mode: u32) -> Result<(), StateDirError> {
    let text =
        toml::to_string(value).map_err(|e| StateDirError::Invalid { path: path.to_owned(), reason: e.to_string() })?;
    write_atomic(path, text.as_bytes(), mode)
}

/// Replaces `path` with `contents` durably: readers never see half a file, and after a crash
/// or a power cut the file holds the old or the new content. The temporary file is hidden
/// (`.NAME.tmpPID`) so that no loader takes it for a state file.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), StateDirError> {
    let dir = parent(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new().create(true).truncate(true).write(true).mode(mode).open(&tmp)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        // The data reaches the disk before the rename publishes it: otherwise a power cut can
        // leave the new name on an empty file.
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err("writing", path))?;
    // The rename itself lives in the directory, and is lost in a power cut until it is synced.
    sync_dir(dir)
}

#[cfg(test)]
#[cfg(feature = "server")]
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

    #[cfg(feature = "server")]
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
        fs::write(state.database_dir().join("open-1"), b"raft").unwrap();
        assert!(state.has_raft_data().unwrap());
        let id = generated("mc1");
        state.set_cluster_identity(&id).unwrap();
        let key_mode = fs::metadata(state.root().join("cluster.key")).unwrap().permissions().mode();
        assert_eq!(key_mode & 0o777, 0o600);
        assert_eq!(state.cluster_identity().unwrap().unwrap().key_pem, id.key_pem);
        state.reset().unwrap();
        assert_eq!(state.node_info().unwrap(), None);
        assert!(!state.has_raft_data().unwrap());
        assert!(state.cluster_identity().unwrap().is_none());
        assert_eq!(state.daemon_config().unwrap().name, "");
        assert_eq!(listing(state.root()), ["daemon.toml"]);
    }

    /// A real pair where the server feature can make one; otherwise text, for the tests that
    /// never parse it.
    fn generated(name: &str) -> Identity {
        #[cfg(feature = "server")]
        return crate::certs::generate(name, &[]).unwrap();
        #[cfg(not(feature = "server"))]
        Identity { cert_pem: format!("c {name}"), key_pem: format!("k {name}") }
    }

    /// The names in a directory, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn durable_writes_leave_only_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        assert_eq!(listing(dir.path()), ["node.toml"]);
        // A write that cannot happen names the file and leaves nothing behind.
        let err = write_atomic(&dir.path().join("missing/x.toml"), b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("missing/x.toml"), "{err}");
        rename_durable(&path, &dir.path().join("moved.toml")).unwrap();
        remove_durable(&dir.path().join("moved.toml")).unwrap();
        remove_durable(&dir.path().join("moved.toml")).unwrap();
        assert!(listing(dir.path()).is_empty());
    }

    /// A crash between the temporary file and the rename leaves a hidden file that nothing
    /// takes for a state file: neither the trust store nor the raft data check.
    #[test]
    fn a_write_cut_short_leaves_a_hidden_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        fs::create_dir_all(state.database_dir()).unwrap();
        fs::write(state.database_dir().join(".node.toml.tmp42"), b"id = ").unwrap();
        assert!(!state.has_raft_data().unwrap());
        assert_eq!(state.node_info().unwrap(), None);
        fs::create_dir_all(state.truststore_dir()).unwrap();
        fs::write(state.truststore_dir().join(".mc1.toml.tmp42"), b"name = ").unwrap();
        let store = crate::truststore::TrustStore::load(state.truststore_dir()).unwrap();
        assert_eq!(store.snapshot().iter().count(), 0);
    }

    #[test]
    fn new_directories_get_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_dir(&nested, 0o700).unwrap();
        assert_eq!(fs::metadata(&nested).unwrap().permissions().mode() & 0o777, 0o700);
        fs::set_permissions(&nested, fs::Permissions::from_mode(0o755)).unwrap();
        create_dir(&nested, 0o700).unwrap();
        assert_eq!(fs::metadata(&nested).unwrap().permissions().mode() & 0o777, 0o700);
    }

    /// A reset moves the database directory (node.toml with it) away in one step; one cut
    /// short after that is finished at the next start.
    #[test]
    fn a_reset_cut_short_never_leaves_raft_data_without_node_toml() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.set_node_info(&NodeInfo { id: 7 }).unwrap();
        fs::write(state.database_dir().join("open-1"), b"raft").unwrap();
        // As a reset leaves it when it stops right after the move.
        fs::rename(state.database_dir(), state.removing_dir()).unwrap();
        assert_eq!(state.node_info().unwrap(), None);
        assert!(!state.has_raft_data().unwrap());
        state.finish_reset().unwrap();
        assert!(!state.removing_dir().exists());
        // A reset over the remains of an earlier one.
        state.set_node_info(&NodeInfo { id: 8 }).unwrap();
        fs::create_dir_all(state.removing_dir().join("x")).unwrap();
        state.reset().unwrap();
        assert!(!state.removing_dir().exists() && !state.database_dir().exists());
    }

    #[cfg(feature = "server")]
    #[test]
    fn pairs_absent_usable_half_and_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        assert!(matches!(state.pair("server").unwrap(), Pair::Absent));
        let (mine, other) = (generated("mc1"), generated("mc2"));
        state.set_server_identity(&mine).unwrap();
        assert!(matches!(state.pair("server").unwrap(), Pair::Usable(id) if id.cert_pem == mine.cert_pem));
        let damaged_file = |state: &StateDir| match state.pair("server").unwrap() {
            Pair::Damaged { path, .. } => path.file_name().unwrap().to_string_lossy().into_owned(),
            other => panic!("{other:?}"),
        };
        // Half a pair, as a crash between the two writes leaves it.
        fs::remove_file(state.cert_path("server")).unwrap();
        assert_eq!(damaged_file(&state), "server.crt");
        let err = state.server_identity().unwrap_err().to_string();
        assert!(err.contains("server.crt: is missing") && err.contains("Restore server.crt and server.key"), "{err}");
        fs::write(state.cert_path("server"), &mine.cert_pem).unwrap();
        fs::write(state.key_path("server"), "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
            .unwrap();
        assert_eq!(damaged_file(&state), "server.key");
        fs::write(state.key_path("server"), &other.key_pem).unwrap();
        assert_eq!(damaged_file(&state), "server.crt");
        fs::write(state.cert_path("server"), "garbage").unwrap();
        assert_eq!(damaged_file(&state), "server.crt");
    }

    #[test]
    fn exposed_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        state.set_server_identity(&generated("mc1")).unwrap();
        fs::set_permissions(dir.path().join("server.key"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(state.server_identity(), Err(StateDirError::KeyExposed(_))));
    }

    #[test]
    fn bad_toml_is_reported_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        fs::write(state.daemon_config_path(), "weight = 1\nname = 3").unwrap();
        let err = state.daemon_config().unwrap_err().to_string();
        assert!(err.contains("daemon.toml"), "{err}");
        assert!(err.contains("line 2, column 8: invalid type"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
