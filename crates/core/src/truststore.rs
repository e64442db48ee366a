//! The trust store: the members this member trusts, by name, with their certificates.
//!
//! Kept on disk as `truststore/<name>.toml` (so raft can be let in through the tunnel before
//! the database is up) and in memory as a swappable snapshot that the request path reads on
//! every request: a member removed from the store is refused on its next request.

use std::collections::BTreeMap;
#[cfg(feature = "server")]
use std::collections::HashMap;
use std::path::Path;
#[cfg(feature = "server")]
use std::path::PathBuf;
#[cfg(feature = "server")]
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::{Deserialize, Serialize};

use crate::api::ClusterMemberLocal;
use crate::state_dir::{StateDirError, read_toml};
#[cfg(feature = "server")]
use crate::state_dir::{create_dir, remove_durable, write_toml};
use crate::tls;
use crate::validate;

/// A trust store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum TrustError {
    /// The files could not be read or written.
    #[error(transparent)]
    Files(#[from] StateDirError),
    /// An entry is invalid.
    #[error("invalid trust store entry {name:?}: {reason}")]
    Invalid {
        /// Member name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// One trusted member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrustEntry {
    /// Name, address and certificate PEM.
    pub(crate) member: ClusterMemberLocal,
    /// SHA-256 of the certificate (the first, while a new one is being rolled out).
    pub(crate) fingerprint: String,
    /// SHA-256 of every certificate the entry holds: two while the member's certificate is
    /// being replaced (the old one first), so that either is accepted during the switch.
    pub(crate) fingerprints: Vec<String>,
}

impl TrustEntry {
    /// Validates a member's identity and computes its fingerprint.
    pub(crate) fn new(member: ClusterMemberLocal) -> Result<TrustEntry, TrustError> {
        let invalid = |reason: String| TrustError::Invalid { name: member.name.clone(), reason };
        validate::member_name(&member.name).map_err(|e| invalid(e.to_string()))?;
        validate::member_address(&member.address).map_err(|e| invalid(e.to_string()))?;
        let fingerprints = tls::fingerprints_pem(&member.certificate).map_err(|e| invalid(e.to_string()))?;
        let fingerprint = fingerprints.first().cloned().unwrap_or_default();
        Ok(TrustEntry { member, fingerprint, fingerprints })
    }

    /// Whether the entry holds the certificate with this fingerprint.
    #[cfg(feature = "server")]
    pub(crate) fn holds(&self, fingerprint: &str) -> bool {
        self.fingerprints.iter().any(|f| f.eq_ignore_ascii_case(fingerprint))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    name: String,
    address: String,
    certificate: String,
}

/// An immutable view of the store.
#[derive(Debug, Default)]
pub(crate) struct Members {
    by_name: BTreeMap<String, TrustEntry>,
    #[cfg(feature = "server")]
    by_fingerprint: HashMap<String, String>,
    /// The CA members' certificates must be issued by, if the cluster requires one.
    #[cfg(feature = "server")]
    ca: Option<Arc<String>>,
}

impl Members {
    fn build(entries: impl IntoIterator<Item = TrustEntry>) -> Members {
        let by_name: BTreeMap<_, _> = entries.into_iter().map(|e| (e.member.name.clone(), e)).collect();
        #[cfg(feature = "server")]
        let by_fingerprint =
            by_name.values().flat_map(|e| e.fingerprints.iter().map(|f| (f.clone(), e.member.name.clone()))).collect();
        Members {
            by_name,
            #[cfg(feature = "server")]
            by_fingerprint,
            #[cfg(feature = "server")]
            ca: None,
        }
    }

    /// The same members, trusted by a certificate only if `ca` (when given) issued it: a
    /// member is then known by name still, but its requests are refused.
    #[cfg(feature = "server")]
    fn with_ca(self, ca: Option<Arc<String>>) -> Members {
        let Some(ca_pem) = &ca else { return Members { ca, ..self } };
        let now = std::time::SystemTime::now();
        let mut by_fingerprint = HashMap::new();
        for entry in self.by_name.values() {
            for pem in certificates(&entry.member.certificate) {
                let purpose = crate::cert_check::Purpose::Member(&entry.member.name);
                let Ok(fingerprint) = tls::fingerprint_pem(pem) else { continue };
                if crate::cert_check::chains_to(pem, ca_pem, purpose, now) {
                    by_fingerprint.insert(fingerprint, entry.member.name.clone());
                } else {
                    tracing::warn!(
                        member = entry.member.name,
                        fingerprint,
                        "a member's certificate is not issued by the cluster's CA (cluster.ca): its requests are refused"
                    );
                }
            }
        }
        Members { by_name: self.by_name, by_fingerprint, ca }
    }

    /// The CA members' certificates must be issued by (PEM), if any.
    #[cfg(feature = "server")]
    pub(crate) fn ca(&self) -> Option<&str> {
        self.ca.as_deref().map(String::as_str)
    }

    /// The member whose certificate has this fingerprint.
    #[cfg(feature = "server")]
    pub(crate) fn by_fingerprint(&self, fingerprint: &str) -> Option<&TrustEntry> {
        self.by_fingerprint.get(fingerprint).and_then(|name| self.by_name.get(name))
    }

    /// The member with this name.
    #[cfg(feature = "server")]
    pub(crate) fn by_name(&self, name: &str) -> Option<&TrustEntry> {
        self.by_name.get(name)
    }

    /// The member at this address.
    pub(crate) fn by_address(&self, address: &str) -> Option<&TrustEntry> {
        self.by_name.values().find(|e| e.member.address == address)
    }

    /// Every member, by name.
    #[cfg(feature = "server")]
    pub(crate) fn iter(&self) -> impl Iterator<Item = &TrustEntry> {
        self.by_name.values()
    }

    /// Every member's address.
    #[cfg(feature = "server")]
    pub(crate) fn addresses(&self) -> Vec<String> {
        self.by_name.values().map(|e| e.member.address.clone()).collect()
    }
}

/// Each certificate in PEM text, as PEM text of its own.
#[cfg(feature = "server")]
fn certificates(pem: &str) -> impl Iterator<Item = &str> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut rest = pem;
    std::iter::from_fn(move || {
        let end = rest.find(END)? + END.len();
        let (one, after) = rest.split_at(end);
        rest = after;
        Some(one.trim_start())
    })
}

/// The trust entries in `dir` (none if it does not exist). An entry that cannot be read stops
/// the read, naming its file: skipping it would refuse that member's raft traffic and
/// heartbeats without a word.
pub(crate) fn read(dir: &Path) -> Result<Members, StateDirError> {
    let mut entries = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(listing) => {
            for item in listing {
                let path = item
                    .map_err(|source| StateDirError::Io { action: "reading", path: dir.to_owned(), source })?
                    .path();
                if path.extension().is_some_and(|e| e == "toml")
                    && let Some(entry) = load_entry(&path)?
                {
                    entries.push(entry);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StateDirError::Io { action: "reading", path: dir.to_owned(), source });
        }
    }
    Ok(Members::build(entries))
}

/// The trust store of one member.
#[cfg(feature = "server")]
#[derive(Debug)]
pub(crate) struct TrustStore {
    dir: PathBuf,
    current: RwLock<Arc<Members>>,
    /// Held by `add` and `remove` from the file to the swap, so that the files and the
    /// snapshot change together (readers only take `current`).
    writing: Mutex<()>,
    /// When each member was last removed, so that a heartbeat whose list was read before the
    /// removal cannot bring it back (see [`TrustStore::add_unless_removed`]).
    removed: Mutex<HashMap<String, std::time::Instant>>,
}

#[cfg(feature = "server")]
impl TrustStore {
    /// Loads the store from `dir` (see [`read`]).
    /// The CA, if any, is `cluster.ca` beside `dir` (see [`TrustStore::set_ca`]).
    pub(crate) fn load(dir: impl Into<PathBuf>) -> Result<TrustStore, StateDirError> {
        let dir = dir.into();
        let ca = match dir.parent() {
            Some(root) => crate::state_dir::read_optional(&root.join("cluster.ca"))?.map(Arc::new),
            None => None,
        };
        let members = read(&dir)?.with_ca(ca);
        Ok(TrustStore {
            dir,
            current: RwLock::new(Arc::new(members)),
            writing: Mutex::new(()),
            removed: Mutex::default(),
        })
    }

    /// The current members.
    pub(crate) fn snapshot(&self) -> Arc<Members> {
        self.current.read().map(|m| m.clone()).unwrap_or_default()
    }

    /// Replaces the members with `change(current)`, the caller holding `writing`: concurrent
    /// admissions on the leader would otherwise each build on the same old snapshot, and all
    /// but one newcomer would be dropped (then refused on the dqlite tunnel).
    fn update(&self, change: impl FnOnce(&Members) -> Members) {
        let current = self.snapshot();
        let ca = current.ca.clone();
        let next = Arc::new(change(&current).with_ca(ca));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
    }

    /// Trusts a member (replacing an entry of the same name).
    pub(crate) fn add(&self, member: ClusterMemberLocal) -> Result<TrustEntry, TrustError> {
        let entry = TrustEntry::new(member)?;
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        self.write_entry(entry)
    }

    /// Like [`TrustStore::add`], unless `member` was removed less than `grace` ago (then
    /// `None`): for lists that may have been read before the removal. An explicit `add`
    /// (an admission) always goes through. The check and the change happen under `writing`,
    /// so that a removal cannot slip between them.
    pub(crate) fn add_unless_removed(
        &self,
        member: ClusterMemberLocal,
        grace: std::time::Duration,
    ) -> Result<Option<TrustEntry>, TrustError> {
        let entry = TrustEntry::new(member)?;
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let removed = self.removed.lock().unwrap_or_else(PoisonError::into_inner).get(&entry.member.name).copied();
        if removed.is_some_and(|at| at.elapsed() < grace) {
            return Ok(None);
        }
        self.write_entry(entry).map(Some)
    }

    /// Writes `entry`'s file and puts it in the snapshot; the caller holds `writing`.
    fn write_entry(&self, entry: TrustEntry) -> Result<TrustEntry, TrustError> {
        create_dir(&self.dir, 0o700)?;
        let file = EntryFile {
            name: entry.member.name.clone(),
            address: entry.member.address.clone(),
            certificate: entry.member.certificate.clone(),
        };
        self.removed.lock().unwrap_or_else(PoisonError::into_inner).remove(&entry.member.name);
        let before = self.snapshot().by_name(&entry.member.name).map(|e| e.member.clone());
        write_toml(&self.path(&entry.member.name), &file, 0o644)?;
        match before {
            None => tracing::info!(
                target: "audit",
                member = entry.member.name,
                address = entry.member.address,
                fingerprint = entry.fingerprint,
                "trusts a member"
            ),
            Some(before) if before != entry.member => tracing::info!(
                target: "audit",
                member = entry.member.name,
                address = entry.member.address,
                fingerprint = entry.fingerprint,
                "trusts a member's new address or certificate"
            ),
            Some(_) => {}
        }
        self.update(|current| {
            let others = current.iter().filter(|e| e.member.name != entry.member.name).cloned();
            Members::build(others.chain(std::iter::once(entry.clone())))
        });
        Ok(entry)
    }

    /// Requires members' certificates to be issued by `ca` (PEM) from now on, or (`None`) stops
    /// requiring it. The caller keeps `cluster.ca` on disk.
    pub(crate) fn set_ca(&self, ca: Option<String>) {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let entries: Vec<TrustEntry> = self.snapshot().iter().cloned().collect();
        let next = Arc::new(Members::build(entries).with_ca(ca.map(Arc::new)));
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
    }

    /// Stops trusting a member; false if it was not trusted.
    pub(crate) fn remove(&self, name: &str) -> Result<bool, TrustError> {
        validate::member_name(name)
            .map_err(|e| TrustError::Invalid { name: name.to_owned(), reason: e.to_string() })?;
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        if self.snapshot().by_name(name).is_none() {
            return Ok(false);
        }
        remove_durable(&self.path(name))?;
        let fingerprint = self.snapshot().by_name(name).map(|e| e.fingerprint.clone()).unwrap_or_default();
        self.update(|current| Members::build(current.iter().filter(|e| e.member.name != name).cloned()));
        tracing::info!(target: "audit", member = name, fingerprint, "no longer trusts a member");
        self.removed.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), std::time::Instant::now());
        Ok(true)
    }

    /// Forgets every member (the files are removed by the state directory's reset).
    pub(crate) fn clear(&self) {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let forgotten = self.snapshot().iter().count();
        self.update(|_| Members::default());
        if forgotten > 0 {
            tracing::info!(target: "audit", members = forgotten, "no longer trusts any member (reset)");
        }
    }

    /// How long ago `name`'s entry was written (`None`: no entry, or no time for it).
    pub(crate) fn age(&self, name: &str) -> Option<std::time::Duration> {
        std::fs::metadata(self.path(name)).ok()?.modified().ok()?.elapsed().ok()
    }

    /// The file of `name`'s entry.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.toml"))
    }
}

/// What to do about a damaged entry.
pub(crate) const ENTRY_FIX: &str = "Copy the file from the truststore directory of another member (every member \
     holds the same entries), or delete it if that member has left the cluster";

/// The entry in `path`; `None` if it was removed since the directory was listed.
fn load_entry(path: &Path) -> Result<Option<TrustEntry>, StateDirError> {
    let damaged = |problem: String| StateDirError::damaged(path, problem, ENTRY_FIX);
    let file: EntryFile = match read_toml(path) {
        Ok(Some(file)) => file,
        Ok(None) => return Ok(None),
        Err(StateDirError::Invalid { reason, .. }) => return Err(damaged(format!("is not a valid entry: {reason}"))),
        Err(other) => return Err(other),
    };
    if path.file_stem().and_then(|s| s.to_str()) != Some(file.name.as_str()) {
        return Err(damaged(format!("holds the entry of {:?}, not of the member its name says", file.name)));
    }
    TrustEntry::new(ClusterMemberLocal { name: file.name, address: file.address, certificate: file.certificate })
        .map(Some)
        .map_err(|err| StateDirError::Damaged {
            path: path.to_owned(),
            problem: format!("is not a valid entry: {err}"),
            fix: ENTRY_FIX.into(),
            source: Some(Box::new(err)),
        })
}

#[cfg(test)]
#[cfg(feature = "server")]
#[cfg(feature = "server")]
mod tests {
    use super::*;
    use crate::certs;

    fn member(name: &str, port: u16) -> ClusterMemberLocal {
        let id = certs::generate(name, &[]).unwrap();
        ClusterMemberLocal { name: name.into(), address: format!("127.0.0.1:{port}"), certificate: id.cert_pem }
    }

    #[test]
    fn add_remove_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let store = TrustStore::load(dir.path().join("truststore")).unwrap();
        assert_eq!(store.snapshot().iter().count(), 0);
        let a = store.add(member("mc1", 9001)).unwrap();
        store.add(member("mc2", 9002)).unwrap();
        let snap = store.snapshot();
        assert_eq!(snap.by_fingerprint(&a.fingerprint).unwrap().member.name, "mc1");
        assert_eq!(snap.by_address("127.0.0.1:9002").unwrap().member.name, "mc2");
        assert_eq!(snap.addresses(), ["127.0.0.1:9001", "127.0.0.1:9002"]);

        let reloaded = TrustStore::load(dir.path().join("truststore")).unwrap();
        assert_eq!(reloaded.snapshot().iter().count(), 2);

        assert!(store.remove("mc1").unwrap());
        assert!(!store.remove("mc1").unwrap());
        assert!(store.snapshot().by_fingerprint(&a.fingerprint).is_none());
        assert_eq!(TrustStore::load(dir.path().join("truststore")).unwrap().snapshot().iter().count(), 1);
    }

    #[test]
    fn a_stale_list_cannot_bring_back_a_member_just_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = TrustStore::load(dir.path().join("truststore")).unwrap();
        let gone = member("mc3", 9003);
        store.add(gone.clone()).unwrap();
        assert!(store.remove("mc3").unwrap());
        let grace = std::time::Duration::from_secs(60);
        assert!(store.add_unless_removed(gone.clone(), grace).unwrap().is_none());
        assert!(store.snapshot().by_name("mc3").is_none());
        // Past the grace, or after an explicit admission, lists add it again.
        assert!(store.add_unless_removed(gone.clone(), std::time::Duration::ZERO).unwrap().is_some());
        assert!(store.remove("mc3").unwrap());
        store.add(gone.clone()).unwrap();
        assert!(store.add_unless_removed(gone, grace).unwrap().is_some());
    }

    #[test]
    fn concurrent_adds_keep_every_member() {
        let dir = tempfile::tempdir().unwrap();
        let store = TrustStore::load(dir.path().join("truststore")).unwrap();
        let members: Vec<_> = (0..16u16).map(|i| member(&format!("mc{i}"), 9000 + i)).collect();
        std::thread::scope(|scope| {
            for m in &members {
                let store = &store;
                scope.spawn(move || store.add(m.clone()).unwrap());
            }
        });
        assert_eq!(store.snapshot().iter().count(), 16);
        std::thread::scope(|scope| {
            for m in &members[..8] {
                let store = &store;
                scope.spawn(move || store.remove(&m.name).unwrap());
            }
        });
        let names: Vec<_> = store.snapshot().iter().map(|e| e.member.name.clone()).collect();
        assert_eq!(names.len(), 8, "{names:?}");
        assert!(names.iter().all(|n| n.trim_start_matches("mc").parse::<u16>().unwrap() >= 8), "{names:?}");
    }

    #[test]
    fn invalid_entries_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = TrustStore::load(dir.path()).unwrap();
        let mut bad = member("mc1", 9001);
        bad.name = "../evil".into();
        assert!(store.add(bad).is_err());
        let mut bad = member("mc1", 9001);
        bad.certificate = "garbage".into();
        assert!(store.add(bad).is_err());
        assert!(store.remove("../x").is_err());
    }
}
