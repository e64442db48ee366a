//! Reads what libraft (0.11-0.18, as libdqlite 1.11 uses it) keeps in a stopped node's data
//! directory: the index and term of the last log entry and the last raft configuration.
//!
//! Quorum recovery needs both on a member whose daemon is stopped, from a CLI that must not link
//! libdqlite, so this is plain Rust over the documented file layout:
//!
//! - `FFFFFFFFFFFFFFFF-LLLLLLLLLLLLLLLL`: a closed segment holding entries FIRST..=LAST;
//! - `open-N`: an open segment, preallocated (zero-filled past its last batch);
//! - `snapshot-TERM-INDEX-TIMESTAMP.meta`: a snapshot's metadata (with its configuration).
//!
//! A segment is an 8-byte format version (1) followed by batches: two CRC-32s (header, data),
//! the entry count, 16 bytes per entry (term, type, 3 unused bytes, data size), then the entries'
//! data. Numbers are little-endian; configurations are a format byte, a server count, and per
//! server its id, a NUL-terminated address and a role byte. Every length read is checked against
//! the bytes that are there, and files are read only up to a bound.

use std::path::{Path, PathBuf};

/// The on-disk format version libraft writes.
const FORMAT: u64 = 1;
/// The configuration encoding version.
const CONFIGURATION_FORMAT: u8 = 1;
/// Entry type of a configuration change.
const RAFT_CHANGE: u8 = 3;
/// Largest file read whole: libraft's segments are 8 MiB, but a segment holds at least one
/// entry, and an entry may be large.
const MAX_FILE: u64 = 512 * 1024 * 1024;

/// A failure reading the data directory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftLogError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not what libraft writes.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No entry and no snapshot: the directory holds no raft log.
    #[error("{} holds no raft log (no segments and no snapshot)", .0.display())]
    Empty(PathBuf),
}

/// A server of a raft configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftServer {
    /// Node id.
    pub id: u64,
    /// Address.
    pub address: String,
    /// Role as the API spells it: `voter`, `stand-by` or `spare`.
    pub role: &'static str,
}

/// What the log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftState {
    /// Index of the last entry (or of the snapshot, if no entry follows it).
    pub last_index: u64,
    /// Term of that entry.
    pub last_term: u64,
    /// The last configuration in the log.
    pub configuration: Vec<RaftServer>,
    /// Index of the entry (or snapshot) that holds it.
    pub configuration_index: u64,
}

impl RaftState {
    /// Whether this log is at least as up to date as `other` (raft's own comparison: the later
    /// last term wins, then the longer log).
    pub fn is_at_least(&self, other: &RaftState) -> bool {
        (self.last_term, self.last_index) >= (other.last_term, other.last_index)
    }
}

/// Reads the log in `dir` (a dqlite node's data directory).
pub fn read(dir: &Path) -> Result<RaftState, RaftLogError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RaftLogError::Io { path, source }
    };
    let (mut closed, mut open, mut snapshots) = (Vec::new(), Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((first, last)) = closed_segment(&name) {
            closed.push((first, last, entry.path()));
        } else if let Some(counter) = name.strip_prefix("open-").and_then(|n| n.parse::<u64>().ok()) {
            open.push((counter, entry.path()));
        } else if let Some((term, index, time)) = snapshot_meta(&name) {
            snapshots.push((index, term, time, entry.path()));
        }
    }
    closed.sort();
    open.sort();
    snapshots.sort();

    let mut state = RaftState { last_index: 0, last_term: 0, configuration: Vec::new(), configuration_index: 0 };
    if let Some((index, term, _, path)) = snapshots.last() {
        let (configuration_index, configuration) = read_snapshot_meta(path)?;
        state = RaftState { last_index: *index, last_term: *term, configuration, configuration_index };
    }
    // Open segments continue after the last closed one, or after the snapshot.
    let mut next = state.last_index + 1;
    for (first, last, path) in &closed {
        let entries = read_segment(path, true, &mut |index_in_segment, entry| {
            apply(&mut state, first + index_in_segment, entry, path)
        })?;
        if entries != last - first + 1 {
            return Err(corrupt(path, format!("holds {entries} entries, its name says {}", last - first + 1)));
        }
        next = last + 1;
    }
    for (_, path) in &open {
        let start = next;
        let entries = read_segment(path, false, &mut |i, entry| apply(&mut state, start + i, entry, path))?;
        next += entries;
    }
    if state.last_index == 0 && state.configuration.is_empty() {
        return Err(RaftLogError::Empty(dir.to_owned()));
    }
    Ok(state)
}

/// One decoded entry header and its data.
struct Entry<'a> {
    term: u64,
    kind: u8,
    data: &'a [u8],
}

fn apply(state: &mut RaftState, index: u64, entry: Entry<'_>, path: &Path) -> Result<(), RaftLogError> {
    if index >= state.last_index {
        state.last_index = index;
        state.last_term = entry.term;
    }
    if entry.kind == RAFT_CHANGE && index >= state.configuration_index {
        state.configuration = decode_configuration(entry.data).map_err(|reason| corrupt(path, reason))?;
        state.configuration_index = index;
    }
    Ok(())
}

fn corrupt(path: &Path, reason: impl Into<String>) -> RaftLogError {
    RaftLogError::Corrupt { path: path.to_owned(), reason: reason.into() }
}

fn closed_segment(name: &str) -> Option<(u64, u64)> {
    let (first, last) = name.split_once('-')?;
    if first.len() != 16 || last.len() != 16 {
        return None;
    }
    Some((first.parse().ok()?, last.parse().ok()?))
}

fn snapshot_meta(name: &str) -> Option<(u64, u64, u64)> {
    let rest = name.strip_prefix("snapshot-")?.strip_suffix(".meta")?;
    let mut parts = rest.splitn(3, '-').map(|p| p.parse::<u64>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, RaftLogError> {
    let size = std::fs::metadata(path).map_err(|source| RaftLogError::Io { path: path.to_owned(), source })?.len();
    if size > MAX_FILE {
        return Err(corrupt(path, format!("{size} bytes, more than a raft file holds ({MAX_FILE})")));
    }
    std::fs::read(path).map_err(|source| RaftLogError::Io { path: path.to_owned(), source })
}

/// A bounds-checked little-endian reader.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.bytes.len())?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Some(out)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
}

/// Calls `f` for each entry of a segment; returns how many there were. A closed segment must
/// be whole; an open one ends at its first batch that is not whole and valid (the preallocated
/// zeros, or a batch cut short by a crash, which libraft truncates the same way).
fn read_segment(
    path: &Path,
    closed: bool,
    f: &mut dyn FnMut(u64, Entry<'_>) -> Result<(), RaftLogError>,
) -> Result<u64, RaftLogError> {
    let bytes = read_bounded(path)?;
    let mut r = Reader { bytes: &bytes, at: 0 };
    match r.u64() {
        Some(FORMAT) => {}
        Some(0) | None if !closed => return Ok(0),
        other => return Err(corrupt(path, format!("format version {other:?}, expected {FORMAT}"))),
    }
    let mut count = 0u64;
    while r.at < bytes.len() {
        match read_batch(&mut r) {
            Some(entries) => {
                for entry in entries {
                    f(count, entry)?;
                    count += 1;
                }
            }
            None if closed => return Err(corrupt(path, format!("damaged batch at byte {}", r.at))),
            None => break,
        }
    }
    Ok(count)
}

/// One batch, or `None` if what follows is not a whole, valid batch.
fn read_batch<'a>(r: &mut Reader<'a>) -> Option<Vec<Entry<'a>>> {
    let header_crc = r.u32()?;
    let data_crc = r.u32()?;
    let header_start = r.at;
    let n = r.u64()?;
    // Each entry takes at least a 16-byte header: a count the bytes cannot hold is garbage.
    if n == 0 || n > (r.bytes.len() / 16) as u64 {
        return None;
    }
    let mut headers = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let term = r.u64()?;
        let kind = r.u8()?;
        r.take(3)?;
        let size = r.u32()? as usize;
        headers.push((term, kind, size));
    }
    if crc32(&r.bytes[header_start..r.at]) != header_crc {
        return None;
    }
    let data_start = r.at;
    let mut entries = Vec::with_capacity(headers.len());
    for (term, kind, size) in headers {
        entries.push(Entry { term, kind, data: r.take(size)? });
    }
    if crc32(&r.bytes[data_start..r.at]) != data_crc {
        return None;
    }
    Some(entries)
}

fn read_snapshot_meta(path: &Path) -> Result<(u64, Vec<RaftServer>), RaftLogError> {
    let bytes = read_bounded(path)?;
    let mut r = Reader { bytes: &bytes, at: 0 };
    let bad = |what: &str| corrupt(path, format!("snapshot metadata: {what}"));
    if r.u64() != Some(FORMAT) {
        return Err(bad("unknown format"));
    }
    let crc = r.u64().ok_or_else(|| bad("truncated"))? as u32;
    let checked_from = r.at;
    let index = r.u64().ok_or_else(|| bad("truncated"))?;
    let len = r.u64().ok_or_else(|| bad("truncated"))? as usize;
    let configuration = r.take(len).ok_or_else(|| bad("configuration cut short"))?;
    if crc32(&bytes[checked_from..r.at]) != crc {
        return Err(bad("checksum mismatch"));
    }
    Ok((index, decode_configuration(configuration).map_err(|reason| bad(&reason))?))
}

fn decode_configuration(data: &[u8]) -> Result<Vec<RaftServer>, String> {
    let mut r = Reader { bytes: data, at: 0 };
    if r.u8() != Some(CONFIGURATION_FORMAT) {
        return Err("unknown configuration format".into());
    }
    let n = r.u64().ok_or("configuration cut short")?;
    if n > (data.len() / 10) as u64 {
        return Err(format!("configuration claims {n} servers"));
    }
    let mut servers = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let id = r.u64().ok_or("configuration cut short")?;
        let rest = &data[r.at..];
        let end = rest.iter().position(|b| *b == 0).ok_or("address without its NUL")?;
        let address = String::from_utf8_lossy(&rest[..end]).into_owned();
        r.take(end + 1).ok_or("configuration cut short")?;
        // libraft's own role codes (not dqlite's wire codes).
        let role = match r.u8().ok_or("configuration cut short")? {
            0 => "stand-by",
            1 => "voter",
            2 => "spare",
            other => return Err(format!("unknown role {other}")),
        };
        servers.push(RaftServer { id, address, role });
    }
    Ok(servers)
}

/// libraft's CRC-32: polynomial 0x04c11db7, most significant bit first, no reflection, initial
/// value 0, no final xor (the table of gcc's libiberty).
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = (i as u32) << 24;
            let mut bit = 0;
            while bit < 8 {
                c = if c & 0x8000_0000 != 0 { (c << 1) ^ 0x04c1_1db7 } else { c << 1 };
                bit += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    data.iter().fold(0u32, |crc, b| (crc << 8) ^ TABLE[(((crc >> 24) ^ u32::from(*b)) & 0xff) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configuration(servers: &[(u64, &str, u8)]) -> Vec<u8> {
        let mut out = vec![CONFIGURATION_FORMAT];
        out.extend((servers.len() as u64).to_le_bytes());
        for (id, address, role) in servers {
            out.extend(id.to_le_bytes());
            out.extend(address.as_bytes());
            out.push(0);
            out.push(*role);
        }
        while out.len() % 8 != 0 {
            out.push(0);
        }
        out
    }

    fn batch(entries: &[(u64, u8, Vec<u8>)]) -> Vec<u8> {
        let mut header = (entries.len() as u64).to_le_bytes().to_vec();
        let mut data = Vec::new();
        for (term, kind, payload) in entries {
            header.extend(term.to_le_bytes());
            header.extend([*kind, 0, 0, 0]);
            header.extend((payload.len() as u32).to_le_bytes());
            data.extend(payload);
        }
        let mut out = crc32(&header).to_le_bytes().to_vec();
        out.extend(crc32(&data).to_le_bytes());
        out.extend(header);
        out.extend(data);
        out
    }

    fn segment(batches: &[Vec<u8>], zeros: usize) -> Vec<u8> {
        let mut out = FORMAT.to_le_bytes().to_vec();
        batches.iter().for_each(|b| out.extend(b));
        out.extend(vec![0; zeros]);
        out
    }

    #[test]
    fn crc_matches_libiberty() {
        // The MSB-first CRC-32 (CRC-32/MPEG-2 without its initial 0xffffffff): check value of "123456789".
        assert_eq!(crc32(b"123456789"), 0x89a1_897f);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn closed_and_open_segments_give_the_last_entry_and_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let boot = configuration(&[(1, "10.0.0.1:9001", 1)]);
        std::fs::write(dir.path().join("0000000000000001-0000000000000001"), segment(&[batch(&[(1, 3, boot)])], 0))
            .unwrap();
        let three = configuration(&[(1, "10.0.0.1:9001", 1), (7, "10.0.0.2:9001", 0), (9, "[::1]:9001", 2)]);
        let open = segment(
            &[batch(&[(1, 1, vec![0; 16]), (2, 3, three)]), batch(&[(2, 1, vec![1; 8]), (3, 2, vec![])])],
            4096,
        );
        std::fs::write(dir.path().join("open-1"), open).unwrap();
        std::fs::write(dir.path().join("open-2"), vec![0; 4096]).unwrap();
        std::fs::write(dir.path().join("metadata1"), vec![1; 32]).unwrap();
        let state = read(dir.path()).unwrap();
        assert_eq!((state.last_index, state.last_term, state.configuration_index), (5, 3, 3));
        assert_eq!(
            state.configuration,
            vec![
                RaftServer { id: 1, address: "10.0.0.1:9001".into(), role: "voter" },
                RaftServer { id: 7, address: "10.0.0.2:9001".into(), role: "stand-by" },
                RaftServer { id: 9, address: "[::1]:9001".into(), role: "spare" },
            ]
        );
        let other = RaftState { last_index: 9, last_term: 2, ..state.clone() };
        assert!(state.is_at_least(&other), "a later term beats a longer log");
    }

    #[test]
    fn a_torn_batch_ends_an_open_segment_but_damages_a_closed_one() {
        let dir = tempfile::tempdir().unwrap();
        let conf = configuration(&[(1, "a:1", 1)]);
        let good = batch(&[(1, 3, conf.clone())]);
        let mut torn = batch(&[(1, 1, vec![5; 64])]);
        let len = torn.len();
        torn[len - 1] ^= 0xff;
        std::fs::write(dir.path().join("open-1"), segment(&[good.clone(), torn.clone()], 100)).unwrap();
        assert_eq!(read(dir.path()).unwrap().last_index, 1);
        std::fs::remove_file(dir.path().join("open-1")).unwrap();
        std::fs::write(dir.path().join("0000000000000001-0000000000000002"), segment(&[good, torn], 0)).unwrap();
        let err = read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("damaged batch"), "{err}");
    }

    #[test]
    fn snapshots_and_their_configuration_count() {
        let dir = tempfile::tempdir().unwrap();
        let conf = configuration(&[(1, "a:1", 1), (2, "b:1", 1)]);
        let mut meta = FORMAT.to_le_bytes().to_vec();
        let mut checked = 40u64.to_le_bytes().to_vec();
        checked.extend((conf.len() as u64).to_le_bytes());
        checked.extend(&conf);
        meta.extend(u64::from(crc32(&checked)).to_le_bytes());
        meta.extend(&checked);
        std::fs::write(dir.path().join("snapshot-4-50-123.meta"), &meta).unwrap();
        std::fs::write(dir.path().join("snapshot-4-50-123"), b"data").unwrap();
        let state = read(dir.path()).unwrap();
        assert_eq!((state.last_index, state.last_term, state.configuration_index), (50, 4, 40));
        assert_eq!(state.configuration.len(), 2);
        // Entries after the snapshot continue its index.
        std::fs::write(dir.path().join("open-3"), segment(&[batch(&[(5, 1, vec![0; 8])])], 64)).unwrap();
        assert_eq!(read(dir.path()).unwrap().last_index, 51);
        // A damaged checksum is refused.
        let len = meta.len();
        meta[len - 1] ^= 1;
        std::fs::write(dir.path().join("snapshot-4-50-123.meta"), &meta).unwrap();
        assert!(read(dir.path()).unwrap_err().to_string().contains("checksum"));
    }

    #[test]
    fn garbage_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path()), Err(RaftLogError::Empty(_))));
        let mut seed = 7u64;
        for round in 0..200 {
            let mut bytes = FORMAT.to_le_bytes().to_vec();
            for _ in 0..(round * 13 % 700) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                bytes.push((seed >> 33) as u8);
            }
            std::fs::write(dir.path().join("open-1"), &bytes).unwrap();
            let _ = read(dir.path());
            std::fs::write(dir.path().join("0000000000000001-0000000000000009"), &bytes).unwrap();
            let _ = read(dir.path());
            std::fs::remove_file(dir.path().join("0000000000000001-0000000000000009")).unwrap();
            let _ = decode_configuration(&bytes[8..]);
        }
    }
}
