//! `microctl cluster list --local`: the members as this member's own files describe them, with
//! no request to any daemon, so it works while the daemon is stopped or the cluster has lost its
//! quorum.
//!
//! Go microcluster reads its dqlite node store (`database/cluster.yaml`) for this. Ours keeps
//! no such file: the same facts (node id, address, role) come from the last raft configuration
//! in the dqlite data directory (`STATE/database`, read by [`microcluster::raftlog`], which
//! never links libdqlite), and the names from the trust store (`STATE/truststore/*.toml`),
//! joined by address.
//!
//! Reading while the daemon runs is safe: it only reads, and takes no lock the daemon needs.
//! What it sees may be a moment old or about to change: libraft appends to the open segment
//! while we read it (a batch written half-way reads as the end of the log, so the listing shows
//! the configuration before it), renames a full segment or deletes old ones after a snapshot
//! (the file is gone when we open it: we read the directory again), and the last configuration
//! in a log may not be committed yet (raft itself acts on the latest one it holds, committed or
//! not, and a new leader may still replace it). A trust store entry is replaced whole
//! (renamed), so a name is either the old or the new one.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use microcluster::raftlog::{self, RaftLogError, RaftServer, RaftState};
use serde_json::json;

use crate::format::Listing;

/// Reads of the raft log that race with libraft (see the module documentation) are retried
/// this many times.
const READ_ATTEMPTS: u32 = 5;
/// Pause between those reads.
const READ_PAUSE: Duration = Duration::from_millis(50);

/// One member of the last raft configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LocalMember {
    /// dqlite node id.
    pub(crate) id: u64,
    /// Name from the trust store (empty: no entry has this address).
    pub(crate) name: String,
    /// Address.
    pub(crate) address: String,
    /// `voter`, `stand-by` or `spare`.
    pub(crate) role: &'static str,
}

/// The members in the state directory `dir`'s files, by node id.
pub(crate) fn members(dir: &Path) -> anyhow::Result<Vec<LocalMember>> {
    if !dir.is_dir() {
        bail!("{} does not exist or is not a directory (is --state-dir right?)", dir.display());
    }
    let log = read_log(&dir.join("database"))?;
    let names = trust_names(&dir.join("truststore"))?;
    Ok(join(&log.configuration, &names))
}

/// The last configuration of the raft log in `database`, retrying reads that raced with the
/// daemon; a log that does not exist yet is an error that says so.
fn read_log(database: &Path) -> anyhow::Result<RaftState> {
    let not_initialised = || {
        anyhow!(
            "{} holds no raft log yet: this member is not initialised (run `microctl init` first), so it has no \
             members to list",
            database.display()
        )
    };
    let mut attempt = 1;
    loop {
        match raftlog::read(database) {
            Ok(state) if state.configuration.is_empty() => return Err(not_initialised()),
            Ok(state) => return Ok(state),
            Err(RaftLogError::Empty(_)) => return Err(not_initialised()),
            Err(RaftLogError::Io { path, source })
                if path == database && source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(not_initialised());
            }
            Err(err) if attempt < READ_ATTEMPTS && raced(&err) => {
                attempt += 1;
                std::thread::sleep(READ_PAUSE);
            }
            Err(err) => return Err(err).context("reading the last raft configuration"),
        }
    }
}

/// Whether a failed read may have raced with libraft: a file renamed or deleted between the
/// listing and its read, or read while it changed. Anything else (permissions, say) fails the
/// same way again.
fn raced(err: &RaftLogError) -> bool {
    match err {
        RaftLogError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
        RaftLogError::Corrupt { .. } => true,
        _ => false,
    }
}

/// Names by address, from the trust store's `*.toml` entries (none if it does not exist). An
/// entry that cannot be read is an error naming its file, as it is for the daemon, which would
/// not start with it.
fn trust_names(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(err) => return Err(err).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names = BTreeMap::new();
    for entry in listing {
        let path = entry.with_context(|| format!("reading {}", dir.display()))?.path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            // Removed between the listing and the read: the member was just removed.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let (name, address) = trust_entry(&text).with_context(|| format!("reading {}", path.display()))?;
        names.insert(address, name);
    }
    Ok(names)
}

/// The name and address of one trust store entry.
fn trust_entry(text: &str) -> anyhow::Result<(String, String)> {
    let table: toml::Table = text.parse()?;
    let field = |key: &str| {
        table.get(key).and_then(toml::Value::as_str).map(str::to_owned).ok_or_else(|| anyhow!("no {key} in the entry"))
    };
    Ok((field("name")?, field("address")?))
}

/// The configuration's servers with their names, sorted by node id (as Go's listing sorts its
/// first column).
pub(crate) fn join(servers: &[RaftServer], names: &BTreeMap<String, String>) -> Vec<LocalMember> {
    let mut members: Vec<LocalMember> = servers
        .iter()
        .map(|s| LocalMember {
            id: s.id,
            name: names.get(&s.address).cloned().unwrap_or_default(),
            address: s.address.clone(),
            role: s.role,
        })
        .collect();
    members.sort_by_key(|m| m.id);
    members
}

/// ID, NAME, ADDRESS, ROLE; JSON objects as Go's `DqliteMember` (`id`, `address`, `role`,
/// `name`).
pub(crate) fn listing(members: &[LocalMember]) -> Listing {
    let header = ["ID", "NAME", "ADDRESS", "ROLE"].map(String::from).to_vec();
    let cells =
        members.iter().map(|m| vec![m.id.to_string(), m.name.clone(), m.address.clone(), m.role.to_owned()]).collect();
    let records = members.iter().map(|m| vec![json!(m.id), json!(m.name), json!(m.address), json!(m.role)]).collect();
    let json = members
        .iter()
        .map(|m| json!({"id": m.id, "address": m.address, "role": m.role, "name": m.name}))
        .collect::<Vec<_>>();
    Listing { header, cells, keys: vec!["id", "name", "address", "role"], records, json: json.into() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;

    fn server(id: u64, address: &str, role: &'static str) -> RaftServer {
        RaftServer { id, address: address.into(), role }
    }

    fn three() -> Vec<LocalMember> {
        let servers = [
            server(9_876_543_210_123, "127.0.0.1:9002", "voter"),
            server(1, "127.0.0.1:9001", "voter"),
            server(42, "127.0.0.1:9003", "stand-by"),
        ];
        let names = BTreeMap::from([
            ("127.0.0.1:9001".to_owned(), "mc1".to_owned()),
            ("127.0.0.1:9002".to_owned(), "mc2".to_owned()),
        ]);
        join(&servers, &names)
    }

    #[test]
    fn members_are_sorted_by_id_and_named_by_address() {
        let members = three();
        let rows: Vec<(u64, &str, &str)> = members.iter().map(|m| (m.id, m.name.as_str(), m.role)).collect();
        // No trust entry at 127.0.0.1:9003: no name.
        assert_eq!(rows, [(1, "mc1", "voter"), (42, "", "stand-by"), (9_876_543_210_123, "mc2", "voter")]);
    }

    #[test]
    fn listing_in_every_format() {
        let listing = listing(&three());
        assert_eq!(
            listing.render(Format::Table),
            "+---------------+------+----------------+----------+\n\
             |      ID       | NAME |    ADDRESS     |   ROLE   |\n\
             +---------------+------+----------------+----------+\n\
             | 1             | mc1  | 127.0.0.1:9001 | voter    |\n\
             | 42            |      | 127.0.0.1:9003 | stand-by |\n\
             | 9876543210123 | mc2  | 127.0.0.1:9002 | voter    |\n\
             +---------------+------+----------------+----------+\n"
        );
        assert_eq!(
            listing.render(Format::Compact),
            "ID             NAME  ADDRESS         ROLE\n\
             1              mc1   127.0.0.1:9001  voter\n\
             42                   127.0.0.1:9003  stand-by\n\
             9876543210123  mc2   127.0.0.1:9002  voter\n"
        );
        assert_eq!(
            listing.render(Format::Csv),
            "id,name,address,role\n1,mc1,127.0.0.1:9001,voter\n42,,127.0.0.1:9003,stand-by\n\
             9876543210123,mc2,127.0.0.1:9002,voter\n"
        );
        let json: serde_json::Value = serde_json::from_str(&listing.render(Format::Json)).unwrap();
        assert_eq!(json[0], json!({"id": 1, "name": "mc1", "address": "127.0.0.1:9001", "role": "voter"}));
        assert_eq!(json[2]["id"], json!(9_876_543_210_123_u64));
        assert!(listing.render(Format::Yaml).starts_with("- id: 1\n  name: \"mc1\"\n"));
    }

    #[test]
    fn trust_entries_give_name_and_address() {
        let text =
            "name = \"mc1\"\naddress = \"127.0.0.1:9001\"\ncertificate = \"\"\"\n-----BEGIN CERTIFICATE-----\n\"\"\"\n";
        assert_eq!(trust_entry(text).unwrap(), ("mc1".to_owned(), "127.0.0.1:9001".to_owned()));
        assert!(trust_entry("name = \"mc1\"\n").unwrap_err().to_string().contains("no address"));
        assert!(trust_entry("name = ").is_err());
    }

    #[test]
    fn a_member_without_a_raft_log_is_not_initialised() {
        let tmp = tempfile::tempdir().unwrap();
        let message = |dir: &Path| format!("{:#}", members(dir).unwrap_err());
        // No state directory at all.
        assert!(message(&tmp.path().join("nope")).contains("does not exist"), "{}", message(&tmp.path().join("nope")));
        // A state directory of a member never initialised: no database directory.
        assert!(message(tmp.path()).contains("not initialised"), "{}", message(tmp.path()));
        // A database directory holding only node.toml.
        std::fs::create_dir(tmp.path().join("database")).unwrap();
        std::fs::write(tmp.path().join("database/node.toml"), "id = \"1\"\n").unwrap();
        assert!(message(tmp.path()).contains("holds no raft log yet"), "{}", message(tmp.path()));
    }

    #[test]
    fn a_damaged_trust_entry_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("mc1.toml"), "name = \"mc1\"\naddress = \"127.0.0.1:9001\"\n").unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "not an entry").unwrap();
        let names = trust_names(tmp.path()).unwrap();
        assert_eq!(names, BTreeMap::from([("127.0.0.1:9001".to_owned(), "mc1".to_owned())]));
        std::fs::write(tmp.path().join("mc2.toml"), "name = [").unwrap();
        let err = format!("{:#}", trust_names(tmp.path()).unwrap_err());
        assert!(err.contains("mc2.toml"), "{err}");
        assert!(trust_names(&tmp.path().join("missing")).unwrap().is_empty());
    }
}
