//! A file system that forgets, on command, whatever was not made durable: the way a power cut
//! treats a disk, after etcd's LazyFS. Mounted through FUSE in a thread of the test process.
//!
//! It follows POSIX strictly, not what one file system happens to do:
//!
//! - a file's data and size become durable with `fsync`/`fdatasync` on it, or with a write
//!   through a descriptor opened `O_DSYNC`/`O_SYNC` (or an `RWF_DSYNC` write); its mode with
//!   `fsync` only;
//! - a directory's entries (create, unlink, rename, mkdir, rmdir, socket) become durable with an
//!   `fsync` of that directory, never through the file: a file created, written and fsynced
//!   whose directory was not fsynced is gone after a cut (ext4 would usually keep it, because its
//!   journal commits everything before the fsync; that leniency hides exactly the missing
//!   directory fsync after a rename this is here to catch);
//! - a truncate or `fallocate` changes the size, which is durable like data.
//!
//! The durable state lives in memory (directories, modes) and in one backing file per inode
//! (data), so a cut is an in-memory reset plus deleting backing files nothing durable refers
//! to. [`PowerFs::cut_power`] unmounts first: the processes using the mount must have been
//! killed, the kernel's caches go with the mount, and no request of a dead process can arrive
//! after the cut.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// Why this machine cannot mount the file system (FUSE needs root and `/dev/fuse` here), if
/// it cannot.
pub fn unavailable() -> Option<String> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned));
    if uid.as_deref() != Some("0") {
        return Some("mounting the power-loss file system needs root".into());
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").is_err() {
        return Some("/dev/fuse cannot be opened (no FUSE in this kernel or container)".into());
    }
    // A container may hand out /dev/fuse and still refuse the mount.
    let tmp = match tempfile::tempdir() {
        Ok(tmp) => tmp,
        Err(e) => return Some(format!("no temporary directory to try a mount in: {e}")),
    };
    PowerFs::mount(&tmp.path().join("probe")).err().map(|e| format!("a FUSE file system cannot be mounted here: {e}"))
}

/// What cuts have dropped so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    /// Power cuts.
    pub cuts: u64,
    /// Bytes written but never made durable.
    pub bytes: u64,
    /// Write calls whose data was not durable.
    pub writes: u64,
    /// Size changes (truncate, fallocate, extension) that were not durable.
    pub sizes: u64,
    /// Directory entries whose change (create, unlink, rename, ...) was not durable.
    pub entries: u64,
    /// Files and directories that existed before the cut and not after it.
    pub inodes: u64,
}

impl std::ops::AddAssign for Dropped {
    fn add_assign(&mut self, o: Dropped) {
        self.cuts += o.cuts;
        self.bytes += o.bytes;
        self.writes += o.writes;
        self.sizes += o.sizes;
        self.entries += o.entries;
        self.inodes += o.inodes;
    }
}

/// A mounted power-loss file system; unmounted when dropped.
#[derive(Debug)]
pub struct PowerFs {
    mountpoint: PathBuf,
    state: Arc<Mutex<State>>,
    session: Option<BackgroundSession>,
    dropped: Dropped,
    /// How long an unmount waits for the mount's last users to let go.
    patience: Duration,
    _store: tempfile::TempDir,
}

impl PowerFs {
    /// Mounts an empty file system at `mountpoint` (created if missing), its durable data in a
    /// temporary directory.
    pub fn mount(mountpoint: &Path) -> io::Result<PowerFs> {
        std::fs::create_dir_all(mountpoint)?;
        let store = tempfile::Builder::new().prefix("powerfs-store-").tempdir()?;
        let state = Arc::new(Mutex::new(State::new(store.path().to_owned())));
        let mut fs = PowerFs {
            mountpoint: mountpoint.to_owned(),
            state,
            session: None,
            dropped: Dropped::default(),
            patience: Duration::from_secs(10),
            _store: store,
        };
        fs.attach()?;
        Ok(fs)
    }

    fn attach(&mut self) -> io::Result<()> {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("powerfs".into()), MountOption::DefaultPermissions];
        config.n_threads = Some(1);
        let ops = Ops { state: self.state.clone() };
        self.session = Some(fuser::spawn_mount(ops, &self.mountpoint, &config)?);
        Ok(())
    }

    /// Unmounts, waiting a while for the processes that still use it to let go.
    fn detach(&mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else { return Ok(()) };
        let deadline = Instant::now() + self.patience;
        loop {
            let out = Command::new("umount").arg(&self.mountpoint).output()?;
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                self.session = Some(session);
                return Err(io::Error::other(format!(
                    "unmounting {}: {}",
                    self.mountpoint.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The session's thread sees the connection end; joining it means no request is still
        // being served when the state changes.
        session.join()
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Cuts the power: unmounts (everyone using the mount must have been killed), forgets
    /// everything that was not durable, and mounts what is left. Returns what this cut dropped.
    pub fn cut_power(&mut self) -> io::Result<Dropped> {
        self.detach()?;
        let dropped = lock(&self.state).cut();
        self.dropped += dropped;
        self.attach()?;
        Ok(dropped)
    }

    /// Makes everything durable, as `syncfs` would.
    pub fn sync_all(&self) {
        lock(&self.state).sync_all();
    }

    /// What all cuts so far dropped.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if self.detach().is_err() {
            // Something still uses it (a test failed with a process running): detach lazily so
            // the test process can exit, and let the kernel clean up once it is let go. The
            // session's thread serves the last user until then, so it is not waited for.
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
            drop(self.session.take());
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while serving a request must not leave every later request failing as well.
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

const ROOT: u64 = 1;
const TTL: Duration = Duration::ZERO;
const BLOCK: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Socket,
}

impl Kind {
    fn file_type(self) -> FileType {
        match self {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
            Kind::Socket => FileType::Socket,
        }
    }
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    mode: u32,
    durable_mode: u32,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Live size.
    size: u64,
    /// Size of the backing file (the durable content).
    durable_size: u64,
    /// Durable bytes at or past this offset were truncated away since the last sync, and read
    /// as zeros unless written again. Never above `size` or `durable_size`.
    visible: u64,
    /// Bytes written since the last sync, by offset; extents never overlap.
    overlay: BTreeMap<u64, Vec<u8>>,
    /// Writes and size changes since the last sync (for the figures).
    pending_writes: u64,
    pending_sizes: u64,
    backing: Option<File>,
    /// Directories: live and durable entries.
    entries: BTreeMap<OsString, u64>,
    durable_entries: BTreeMap<OsString, u64>,
    /// Directories: the live parent (for `..`).
    parent: u64,
    /// Live directory entries naming it.
    links: u32,
    /// Open file handles.
    open: u32,
}

impl Node {
    fn new(kind: Kind, mode: u32, uid: u32, gid: u32, parent: u64) -> Node {
        let now = SystemTime::now();
        Node {
            kind,
            mode,
            durable_mode: mode,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            size: 0,
            durable_size: 0,
            visible: 0,
            overlay: BTreeMap::new(),
            pending_writes: 0,
            pending_sizes: 0,
            backing: None,
            entries: BTreeMap::new(),
            durable_entries: BTreeMap::new(),
            parent,
            links: 0,
            open: 0,
        }
    }

    /// Drops overlay bytes at or past `end`.
    fn trim_overlay(&mut self, end: u64) {
        let beyond: Vec<u64> = self.overlay.range(end..).map(|(k, _)| *k).collect();
        for k in beyond {
            self.overlay.remove(&k);
        }
        if let Some((&start, data)) = self.overlay.range_mut(..end).next_back()
            && start + data.len() as u64 > end
        {
            data.truncate((end - start) as usize);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        // Cut every extent overlapping [offset, end) down to what lies outside it.
        let overlapping: Vec<u64> = self
            .overlay
            .range(..end)
            .filter(|(start, bytes)| **start + bytes.len() as u64 > offset)
            .map(|(start, _)| *start)
            .collect();
        for start in overlapping {
            let Some(bytes) = self.overlay.remove(&start) else { continue };
            let stop = start + bytes.len() as u64;
            if start < offset {
                self.overlay.insert(start, bytes[..(offset - start) as usize].to_vec());
            }
            if stop > end {
                self.overlay.insert(end, bytes[(end - start) as usize..].to_vec());
            }
        }
        // Sequential writes extend the extent before them rather than adding one each.
        match self.overlay.range_mut(..offset).next_back() {
            Some((&start, bytes)) if start + bytes.len() as u64 == offset => bytes.extend_from_slice(data),
            _ => {
                self.overlay.insert(offset, data.to_vec());
            }
        }
        if end > self.size {
            self.size = end;
        }
        self.pending_writes += 1;
        self.mtime = SystemTime::now();
    }

    fn set_size(&mut self, size: u64) {
        if size < self.size {
            self.trim_overlay(size);
            self.visible = self.visible.min(size);
        }
        if size != self.size {
            self.pending_sizes += 1;
        }
        self.size = size;
        self.mtime = SystemTime::now();
    }

    fn read(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = (offset + len).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        let durable_end = end.min(self.visible).min(self.durable_size);
        if offset < durable_end
            && let Some(file) = &self.backing
        {
            file.read_exact_at(&mut buf[..(durable_end - offset) as usize], offset)?;
        }
        // The extent starting before `offset` may reach into the range too.
        let first = self.overlay.range(..=offset).next_back().map(|(k, _)| *k).unwrap_or(offset);
        for (&start, bytes) in self.overlay.range(first..end) {
            let stop = start + bytes.len() as u64;
            let (from, to) = (start.max(offset), stop.min(end));
            if from < to {
                buf[(from - offset) as usize..(to - offset) as usize]
                    .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
            }
        }
        Ok(buf)
    }

    fn attr(&self, ino: u64) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: self.size,
            blocks: self.size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind: self.kind.file_type(),
            perm: (self.mode & 0o7777) as u16,
            nlink: if self.kind == Kind::Dir { 2 } else { self.links },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK,
            flags: 0,
        }
    }
}

#[derive(Debug)]
enum Handle {
    File(u64),
    Dir(Vec<(u64, FileType, OsString)>),
}

#[derive(Debug)]
struct State {
    store: PathBuf,
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
}

type Result<T> = std::result::Result<T, Errno>;

impl State {
    fn new(store: PathBuf) -> State {
        let mut root = Node::new(Kind::Dir, 0o755, 0, 0, ROOT);
        root.links = 1;
        State { store, nodes: HashMap::from([(ROOT, root)]), next_ino: ROOT + 1, handles: HashMap::new(), next_fh: 1 }
    }

    fn node(&self, ino: u64) -> Result<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, ino: u64) -> Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&Node> {
        let node = self.node(ino)?;
        if node.kind == Kind::Dir { Ok(node) } else { Err(Errno::ENOTDIR) }
    }

    fn child(&self, parent: u64, name: &OsStr) -> Result<u64> {
        self.dir(parent)?.entries.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr> {
        let ino = match name.as_encoded_bytes() {
            b"." => parent,
            b".." => self.dir(parent)?.parent,
            _ => self.child(parent, name)?,
        };
        Ok(self.node(ino)?.attr(ino))
    }

    /// Adds a new node named `name` in `parent`.
    fn add(&mut self, parent: u64, name: &OsStr, kind: Kind, mode: u32, req: &Request) -> Result<u64> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let mut node = Node::new(kind, mode & 0o7777, req.uid(), req.gid(), parent);
        node.links = 1;
        self.nodes.insert(ino, node);
        let dir = self.node_mut(parent)?;
        dir.entries.insert(name.to_owned(), ino);
        dir.mtime = SystemTime::now();
        Ok(ino)
    }

    fn open_handle(&mut self, handle: Handle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        if let Handle::File(ino) = handle
            && let Some(node) = self.nodes.get_mut(&ino)
        {
            node.open += 1;
        }
        self.handles.insert(fh, handle);
        fh
    }

    fn unlink(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<()> {
        let ino = self.child(parent, name)?;
        let node = self.node(ino)?;
        match (want_dir, node.kind == Kind::Dir) {
            (false, true) => return Err(Errno::EISDIR),
            (true, false) => return Err(Errno::ENOTDIR),
            (true, true) if !node.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let dir = self.node_mut(parent)?;
        dir.entries.remove(name);
        dir.mtime = SystemTime::now();
        let node = self.node_mut(ino)?;
        node.links = node.links.saturating_sub(1);
        node.ctime = SystemTime::now();
        self.collect();
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return Err(Errno::EINVAL);
        }
        let ino = self.child(parent, name)?;
        self.dir(new_parent)?;
        let is_dir = self.node(ino)?.kind == Kind::Dir;
        if is_dir {
            // Not into itself or below it.
            let mut at = new_parent;
            while at != ROOT {
                if at == ino {
                    return Err(Errno::EINVAL);
                }
                at = self.node(at)?.parent;
            }
        }
        if let Ok(target) = self.child(new_parent, new_name) {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            if target == ino {
                return Ok(());
            }
            let target_node = self.node(target)?;
            match (is_dir, target_node.kind == Kind::Dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !target_node.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            let target_node = self.node_mut(target)?;
            target_node.links = target_node.links.saturating_sub(1);
        }
        let now = SystemTime::now();
        let from = self.node_mut(parent)?;
        from.entries.remove(name);
        from.mtime = now;
        let to = self.node_mut(new_parent)?;
        to.entries.insert(new_name.to_owned(), ino);
        to.mtime = now;
        let node = self.node_mut(ino)?;
        node.parent = if is_dir { new_parent } else { node.parent };
        node.ctime = now;
        self.collect();
        Ok(())
    }

    /// Makes a file's data and size durable (`fdatasync`), and its mode too with `meta`.
    fn sync_file(&mut self, ino: u64, meta: bool) -> Result<()> {
        let store = self.store.join(ino.to_string());
        let node = self.node_mut(ino)?;
        if meta {
            node.durable_mode = node.mode;
        }
        if node.kind != Kind::File {
            return Ok(());
        }
        if node.overlay.is_empty() && node.size == node.durable_size && node.visible == node.durable_size {
            return Ok(());
        }
        if node.backing.is_none() {
            let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&store);
            node.backing = Some(file.map_err(|_| Errno::EIO)?);
        }
        let Some(file) = &node.backing else { return Err(Errno::EIO) };
        let io = (|| -> io::Result<()> {
            if node.visible < node.durable_size {
                file.set_len(node.visible)?;
            }
            for (offset, bytes) in &node.overlay {
                file.write_all_at(bytes, *offset)?;
            }
            file.set_len(node.size)
        })();
        io.map_err(|_| Errno::EIO)?;
        node.overlay.clear();
        node.durable_size = node.size;
        node.visible = node.size;
        node.pending_writes = 0;
        node.pending_sizes = 0;
        Ok(())
    }

    fn sync_dir(&mut self, ino: u64, meta: bool) -> Result<()> {
        let node = self.node_mut(ino)?;
        if meta {
            node.durable_mode = node.mode;
        }
        node.durable_entries = node.entries.clone();
        self.collect();
        Ok(())
    }

    fn sync_all(&mut self) {
        let inos: Vec<u64> = self.nodes.keys().copied().collect();
        for ino in inos {
            let _ = self.sync_file(ino, true);
            let _ = self.sync_dir(ino, true);
        }
    }

    /// Forgets nodes nothing refers to: no live or durable entry, no open handle.
    fn collect(&mut self) {
        let mut seen = HashSet::from([ROOT]);
        let mut todo: Vec<u64> = vec![ROOT];
        todo.extend(self.nodes.iter().filter(|(_, n)| n.open > 0).map(|(ino, _)| *ino));
        seen.extend(todo.iter().copied());
        while let Some(ino) = todo.pop() {
            let Some(node) = self.nodes.get(&ino) else { continue };
            for child in node.entries.values().chain(node.durable_entries.values()) {
                if seen.insert(*child) {
                    todo.push(*child);
                }
            }
        }
        self.forget_all_but(&seen);
    }

    fn forget_all_but(&mut self, keep: &HashSet<u64>) -> u64 {
        let gone: Vec<u64> = self.nodes.keys().filter(|ino| !keep.contains(ino)).copied().collect();
        for ino in &gone {
            if let Some(node) = self.nodes.remove(ino)
                && node.backing.is_some()
            {
                drop(node);
                let _ = std::fs::remove_file(self.store.join(ino.to_string()));
            }
        }
        gone.len() as u64
    }

    /// The power cut: every node back to its durable state; what no durable entry reaches goes.
    fn cut(&mut self) -> Dropped {
        let mut dropped = Dropped { cuts: 1, ..Dropped::default() };
        self.handles.clear();
        for node in self.nodes.values_mut() {
            dropped.bytes += node.overlay.values().map(|b| b.len() as u64).sum::<u64>();
            dropped.writes += node.pending_writes;
            dropped.sizes += node.pending_sizes;
            let live = &node.entries;
            let durable = &node.durable_entries;
            dropped.entries += live.iter().filter(|(k, v)| durable.get(*k) != Some(v)).count() as u64;
            dropped.entries += durable.keys().filter(|k| !live.contains_key(*k)).count() as u64;
            node.overlay.clear();
            node.size = node.durable_size;
            node.visible = node.durable_size;
            node.pending_writes = 0;
            node.pending_sizes = 0;
            node.mode = node.durable_mode;
            node.entries = node.durable_entries.clone();
            node.open = 0;
            node.links = 0;
        }
        // Reachable from the root through durable entries, and the links and parents they give.
        let mut seen = HashSet::from([ROOT]);
        let mut todo = vec![ROOT];
        let mut links: HashMap<u64, (u32, u64)> = HashMap::new();
        while let Some(ino) = todo.pop() {
            let Some(node) = self.nodes.get(&ino) else { continue };
            for child in node.entries.values() {
                let entry = links.entry(*child).or_insert((0, ino));
                entry.0 += 1;
                if seen.insert(*child) {
                    todo.push(*child);
                }
            }
        }
        dropped.inodes = self.forget_all_but(&seen);
        for (ino, (count, parent)) in links {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.links = count;
                node.parent = parent;
            }
        }
        if let Some(root) = self.nodes.get_mut(&ROOT) {
            root.links = 1;
            root.parent = ROOT;
        }
        dropped
    }
}

/// The FUSE side: every request takes the one lock, so a request is atomic and ordered with
/// respect to every other.
struct Ops {
    state: Arc<Mutex<State>>,
}

fn dsync(flags: OpenFlags) -> bool {
    flags.0 & (libc::O_DSYNC | libc::O_SYNC) != 0
}

impl Filesystem for Ops {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match lock(&self.state).lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match lock(&self.state).node(ino.0) {
            Ok(node) => reply.attr(&TTL, &node.attr(ino.0)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = lock(&self.state);
        let node = match state.node_mut(ino.0) {
            Ok(node) => node,
            Err(e) => return reply.error(e),
        };
        let time = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => t,
            TimeOrNow::Now => SystemTime::now(),
        };
        if let Some(size) = size {
            if node.kind == Kind::Dir {
                return reply.error(Errno::EISDIR);
            }
            node.set_size(size);
        }
        if let Some(mode) = mode {
            node.mode = mode & 0o7777;
        }
        node.uid = uid.unwrap_or(node.uid);
        node.gid = gid.unwrap_or(node.gid);
        node.atime = atime.map(time).unwrap_or(node.atime);
        node.mtime = mtime.map(time).unwrap_or(node.mtime);
        node.ctime = SystemTime::now();
        reply.attr(&TTL, &node.attr(ino.0));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFSOCK => Kind::Socket,
            _ => return reply.error(Errno::EPERM),
        };
        let mut state = lock(&self.state);
        match state
            .add(parent.0, name, kind, mode & !umask, req)
            .and_then(|ino| state.lookup(parent.0, name).map(|a| (ino, a)))
        {
            Ok((_, attr)) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let mut state = lock(&self.state);
        match state.add(parent.0, name, Kind::Dir, mode & !umask, req).and_then(|_| state.lookup(parent.0, name)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.state).unlink(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match lock(&self.state).unlink(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        match lock(&self.state).rename(parent.0, name, newparent.0, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = lock(&self.state);
        match state.node(ino.0).map(|n| n.kind) {
            Ok(Kind::File) => {
                let fh = state.open_handle(Handle::File(ino.0));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Ok(Kind::Dir) => reply.error(Errno::EISDIR),
            Ok(Kind::Socket) => reply.error(Errno::ENXIO),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let state = lock(&self.state);
        match state.node(ino.0).and_then(|n| n.read(offset, u64::from(size)).map_err(|_| Errno::EIO)) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = lock(&self.state);
        let result = state.node_mut(ino.0).and_then(|node| {
            if node.kind != Kind::File {
                return Err(Errno::EBADF);
            }
            node.write(offset, data);
            Ok(())
        });
        // The kernel marks each write of an O_DSYNC/O_SYNC descriptor (or an RWF_DSYNC write)
        // in its flags: such a write is durable when it returns, as if followed by fdatasync.
        let result = result.and_then(|()| if dsync(flags) { state.sync_file(ino.0, false) } else { Ok(()) });
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = lock(&self.state);
        if let Some(Handle::File(ino)) = state.handles.remove(&fh.0) {
            if let Some(node) = state.nodes.get_mut(&ino) {
                node.open = node.open.saturating_sub(1);
            }
            state.collect();
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        match lock(&self.state).sync_file(ino.0, !datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut state = lock(&self.state);
        let listing = state.dir(ino.0).map(|dir| {
            // A snapshot, so that entries removed while a reader goes through the directory
            // (as remove_dir_all does) shift nothing under it.
            let mut listing =
                vec![(ino.0, FileType::Directory, ".".into()), (dir.parent, FileType::Directory, "..".into())];
            for (name, child) in &dir.entries {
                let kind = state.nodes.get(child).map_or(FileType::RegularFile, |n| n.kind.file_type());
                listing.push((*child, kind, name.clone()));
            }
            listing
        });
        match listing {
            Ok(listing) => {
                let fh = state.open_handle(Handle::Dir(listing));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let state = lock(&self.state);
        let Some(Handle::Dir(listing)) = state.handles.get(&fh.0) else { return reply.error(Errno::EBADF) };
        for (i, (ino, kind, name)) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        lock(&self.state).handles.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        match lock(&self.state).sync_dir(ino.0, !datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(1 << 24, 1 << 24, 1 << 24, 1 << 20, 1 << 20, BLOCK, 255, BLOCK);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = lock(&self.state);
        let ino = match state.child(parent.0, name) {
            Ok(_) if flags & libc::O_EXCL != 0 => Err(Errno::EEXIST),
            Ok(ino) => Ok(ino),
            Err(_) => state.add(parent.0, name, Kind::File, mode & !umask, req),
        };
        let ino = match ino {
            Ok(ino) if state.nodes.get(&ino).is_some_and(|n| n.kind == Kind::File) => ino,
            Ok(_) => return reply.error(Errno::EISDIR),
            Err(e) => return reply.error(e),
        };
        if flags & libc::O_TRUNC != 0
            && let Some(node) = state.nodes.get_mut(&ino)
        {
            node.set_size(0);
        }
        let fh = state.open_handle(Handle::File(ino));
        match state.node(ino) {
            Ok(node) => reply.created(&TTL, &node.attr(ino), Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let mut state = lock(&self.state);
        let node = match state.node_mut(ino.0) {
            Ok(node) => node,
            Err(e) => return reply.error(e),
        };
        // Plain allocation (posix_fallocate, libraft's segments) is all anyone here asks for;
        // sparse regions read as zeros, so it only has to grow the size.
        match mode {
            0 => {
                if offset + length > node.size {
                    node.set_size(offset + length);
                }
                reply.ok();
            }
            libc::FALLOC_FL_KEEP_SIZE => reply.ok(),
            _ => reply.error(Errno::EOPNOTSUPP),
        }
    }
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ops")
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, File, OpenOptions};
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    use super::*;

    /// A mount in a temporary directory, or `None` (the test says why and passes).
    fn mount() -> Option<(tempfile::TempDir, PowerFs)> {
        if let Some(why) = unavailable() {
            eprintln!("SKIPPED: {why}");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let fs = PowerFs::mount(&tmp.path().join("mnt")).unwrap();
        Some((tmp, fs))
    }

    fn sync_dir(path: &Path) {
        File::open(path).unwrap().sync_all().unwrap();
    }

    fn read(path: &Path) -> Option<Vec<u8>> {
        fs::read(path).ok()
    }

    #[test]
    fn what_was_never_synced_vanishes() {
        let Some((_tmp, mut fs)) = mount() else { return };
        let file = fs.path().join("a");
        fs::write(&file, b"hello").unwrap();
        fs::create_dir(fs.path().join("d")).unwrap();
        assert_eq!(read(&file).as_deref(), Some(&b"hello"[..]), "reads see what was written");
        let dropped = fs.cut_power().unwrap();
        assert_eq!(read(&file), None);
        assert!(!fs.path().join("d").exists());
        assert_eq!((dropped.bytes, dropped.writes, dropped.entries, dropped.inodes), (5, 1, 2, 2), "{dropped:?}");
    }

    #[test]
    fn a_synced_file_keeps_what_came_before_its_fsync_and_loses_what_came_after() {
        let Some((_tmp, mut fs)) = mount() else { return };
        let path = fs.path().join("log");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"before").unwrap();
        file.sync_data().unwrap();
        file.write_all(b" after").unwrap();
        drop(file);
        sync_dir(fs.path());
        assert_eq!(read(&path).as_deref(), Some(&b"before after"[..]));
        let dropped = fs.cut_power().unwrap();
        assert_eq!(read(&path).as_deref(), Some(&b"before"[..]));
        assert_eq!((dropped.bytes, dropped.writes), (6, 1), "{dropped:?}");
        // Overwriting synced data in the middle, unsynced: the old bytes come back.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"XY", 1).unwrap();
        drop(file);
        assert_eq!(read(&path).as_deref(), Some(&b"bXYore"[..]));
        fs.cut_power().unwrap();
        assert_eq!(read(&path).as_deref(), Some(&b"before"[..]));
    }

    #[test]
    fn a_new_file_needs_its_directory_synced_even_when_the_file_was() {
        let Some((_tmp, mut fs)) = mount() else { return };
        let path = fs.path().join("new");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"data").unwrap();
        file.sync_all().unwrap();
        drop(file);
        fs.cut_power().unwrap();
        assert_eq!(read(&path), None, "the entry was never made durable");
    }

    #[test]
    fn a_rename_is_undone_unless_its_directory_is_synced() {
        let Some((_tmp, mut fs)) = mount() else { return };
        let (path, tmp) = (fs.path().join("config"), fs.path().join("config.tmp"));
        fs::write(&path, b"old").unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        sync_dir(fs.path());
        // write_atomic without the directory fsync.
        let replace = |fs: &PowerFs| {
            let mut file = File::create(&tmp).unwrap();
            file.write_all(b"new").unwrap();
            file.sync_all().unwrap();
            fs::rename(&tmp, &path).unwrap();
            assert_eq!(read(fs.path().join("config").as_path()).as_deref(), Some(&b"new"[..]));
        };
        replace(&fs);
        fs.cut_power().unwrap();
        assert_eq!(read(&path).as_deref(), Some(&b"old"[..]), "the rename was not durable");
        assert_eq!(read(&tmp), None);
        // With it, the new content stays.
        replace(&fs);
        sync_dir(fs.path());
        fs.cut_power().unwrap();
        assert_eq!(read(&path).as_deref(), Some(&b"new"[..]));
        assert_eq!(read(&tmp), None);
    }

    #[test]
    fn unlink_mkdir_and_rmdir_last_only_once_their_directory_is_synced() {
        let Some((_tmp, mut fs)) = mount() else { return };
        let (file, dir) = (fs.path().join("f"), fs.path().join("d"));
        fs::write(&file, b"kept").unwrap();
        File::open(&file).unwrap().sync_all().unwrap();
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("inner"), b"x").unwrap();
        sync_dir(&dir);
        sync_dir(fs.path());
        fs::remove_file(&file).unwrap();
        fs::remove_file(dir.join("inner")).unwrap();
        fs::remove_dir(&dir).unwrap();
        fs.cut_power().unwrap();
        assert_eq!(read(&file).as_deref(), Some(&b"kept"[..]));
        assert_eq!(read(&dir.join("inner")).as_deref(), Some(&b""[..]), "the entry was synced, its data never");
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_file(&file).unwrap();
        sync_dir(fs.path());
        fs.cut_power().unwrap();
        assert!(!file.exists() && !dir.exists());
    }

    #[test]
    fn truncation_and_growth_are_durable_like_data() {
        let Some((_tmp, mut fs)) = mount() else { return };
        let path = fs.path().join("t");
        fs::write(&path, b"abcdef").unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        sync_dir(fs.path());
        // Truncated, then extended past the old end: the cut-off bytes read as zeros.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(2).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"yz", 6).unwrap();
        drop(file);
        assert_eq!(read(&path).as_deref(), Some(&b"ab\0\0\0\0yz"[..]));
        fs.cut_power().unwrap();
        assert_eq!(read(&path).as_deref(), Some(&b"abcdef"[..]), "the truncate was not durable");
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(2).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"yz", 6).unwrap();
        file.sync_data().unwrap();
        file.set_len(100).unwrap();
        drop(file);
        fs.cut_power().unwrap();
        assert_eq!(read(&path).as_deref(), Some(&b"ab\0\0\0\0yz"[..]));
        // O_TRUNC on open is a truncate too.
        File::create(&path).unwrap();
        assert_eq!(read(&path).as_deref(), Some(&b""[..]));
        fs.cut_power().unwrap();
        assert_eq!(read(&path).as_deref(), Some(&b"ab\0\0\0\0yz"[..]));
    }

    #[test]
    fn writes_through_an_o_dsync_descriptor_are_durable_at_once() {
        let Some((_tmp, mut fs)) = mount() else { return };
        let path = fs.path().join("segment");
        let mut file = OpenOptions::new().create(true).write(true).custom_flags(libc::O_DSYNC).open(&path).unwrap();
        sync_dir(fs.path());
        file.write_all(b"entry 1;").unwrap();
        file.write_all(b"entry 2;").unwrap();
        drop(file);
        let dropped = fs.cut_power().unwrap();
        assert_eq!(read(&path).as_deref(), Some(&b"entry 1;entry 2;"[..]));
        assert_eq!(dropped.bytes, 0, "{dropped:?}");
    }

    #[test]
    fn a_mode_change_lasts_once_the_file_is_fsynced() {
        let Some((_tmp, mut fs)) = mount() else { return };
        let path = fs.path().join("server.key");
        OpenOptions::new().create(true).truncate(true).write(true).mode(0o644).open(&path).unwrap().sync_all().unwrap();
        sync_dir(fs.path());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(mode(&path), 0o600);
        fs.cut_power().unwrap();
        assert_eq!(mode(&path), 0o644, "chmod without fsync");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        File::open(&path).unwrap().sync_all().unwrap();
        fs.cut_power().unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn an_unlinked_file_stays_readable_while_open() {
        let Some((_tmp, fs)) = mount() else { return };
        let path = fs.path().join("open");
        fs::write(&path, b"still here").unwrap();
        let file = File::open(&path).unwrap();
        fs::remove_file(&path).unwrap();
        let mut buf = [0u8; 10];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut buf, 0).unwrap();
        assert_eq!(&buf, b"still here");
    }

    #[test]
    fn a_unix_socket_and_a_lock_file_work_on_it() {
        let Some((_tmp, mut fs)) = mount() else { return };
        let socket = fs.path().join("control.socket");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let mut client = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        client.write_all(b"ping").unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        std::io::Read::read_exact(&mut server, &mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        let lock = File::create(fs.path().join("microd.lock")).unwrap();
        lock.try_lock().unwrap();
        assert!(File::open(fs.path().join("microd.lock")).unwrap().try_lock().is_err(), "a second lock is refused");
        // Anyone still using the mount stops a cut, rather than being cut from under; the
        // mount goes on serving.
        fs.patience = Duration::from_millis(200);
        let err = fs.cut_power().unwrap_err();
        assert!(err.to_string().contains("busy"), "{err}");
        assert!(fs.path().join("microd.lock").exists());
        drop((listener, client, server, lock));
        fs.cut_power().unwrap();
        assert!(!socket.exists(), "the socket's entry was never synced");
    }

    #[test]
    fn many_entries_can_be_listed_and_removed_while_listing() {
        let Some((_tmp, fs)) = mount() else { return };
        let dir = fs.path().join("many");
        fs::create_dir(&dir).unwrap();
        for i in 0..500 {
            fs::write(dir.join(format!("file-with-a-long-name-{i:04}")), b"x").unwrap();
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 500);
        fs::remove_dir_all(&dir).unwrap();
        assert!(!dir.exists());
    }
}
