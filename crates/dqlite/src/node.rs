//! A dqlite node embedded in this process: create it with settings, start it, stop it.
//!
//! libdqlite runs each started node on its own thread with its own event loop; this type only
//! drives its life cycle. Facts of libdqlite 1.11 that the API enforces up front: the bind
//! address is IPv4 `a.b.c.d:port` or an abstract unix socket `@name` (no IPv6, no host names),
//! a bind address is required before start, and settings cannot change once started.

use std::ffi::CString;
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ffi::{ConnectFn, Failure, RawNode};
use crate::proto::{NodeInfo, Role};

/// How long the default raft connect function waits for a peer.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest abstract socket name (`sun_path` is 108 bytes: a leading NUL, the name, a NUL).
const MAX_ABSTRACT_NAME: usize = 106;
/// One MiB, the unit of raft segment sizes.
const MIB: usize = 1024 * 1024;

/// Errors from creating, configuring or running a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A setting was refused before reaching libdqlite.
    #[error("invalid {setting} {value:?}: {reason}")]
    Invalid {
        /// Which setting.
        setting: &'static str,
        /// The value given.
        value: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// libdqlite returned an error.
    #[error("dqlite_node_{call} failed with code {code}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Call {
        /// The C function (without the `dqlite_node_` prefix).
        call: &'static str,
        /// Its return code (1 error, 2 misuse, 3 out of memory).
        code: i32,
        /// libdqlite's error message.
        message: String,
    },
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The operation is only allowed before the node starts.
    #[error("{what} is only possible before the node starts")]
    Running {
        /// The operation.
        what: &'static str,
    },
    /// A SQLite call failed.
    #[error("{call} failed with SQLite code {code}")]
    Sqlite {
        /// The C function.
        call: &'static str,
        /// Its return code.
        code: i32,
    },
    /// The node was stopped; dqlite cannot restart a stopped node (create a new one).
    #[error("the node was stopped and cannot be started again; create a new node on the same data directory")]
    Stopped,
}

/// Errors are handed to every waiter of a shared request; `io::Error` is not `Clone`, so a copy
/// keeps its kind and message.
impl Clone for NodeError {
    fn clone(&self) -> NodeError {
        match self {
            NodeError::Invalid { setting, value, reason } => {
                NodeError::Invalid { setting, value: value.clone(), reason }
            }
            NodeError::Call { call, code, message } => NodeError::Call { call, code: *code, message: message.clone() },
            NodeError::DataDir { path, source } => {
                NodeError::DataDir { path: path.clone(), source: crate::error::copy_io(source) }
            }
            NodeError::Running { what } => NodeError::Running { what },
            NodeError::Sqlite { call, code } => NodeError::Sqlite { call, code: *code },
            NodeError::Stopped => NodeError::Stopped,
        }
    }
}

fn call_error(call: &'static str) -> impl FnOnce(Failure) -> NodeError {
    move |f| NodeError::Call { call, code: f.code, message: f.message }
}

fn c_string(setting: &'static str, value: &str) -> Result<CString, NodeError> {
    CString::new(value).map_err(|_| NodeError::Invalid {
        setting,
        value: value.to_owned(),
        reason: "contains a NUL byte",
    })
}

/// Puts a time limit on every SQL statement run by the dqlite nodes of this process (or lifts
/// it, with `None`). A statement still running when its time is up is interrupted: the client
/// gets SQLite's "interrupted" error ([`crate::Error::is_interrupted`]) and the statement's
/// changes are rolled back.
///
/// Why: libdqlite runs statements on the node's event loop, the same loop that sends raft
/// heartbeats, and in 1.11 nothing else can stop one. A runaway query (an unbounded recursive
/// CTE, a cross join of big tables) would freeze the leader for good; the cluster would elect
/// another leader and the old one would never come back. Keep the limit above the longest
/// legitimate statement (schema changes on big tables included).
///
/// Applies to connections opened after the call (libdqlite opens one when a client opens a
/// database on the leader), so call it before starting nodes.
pub fn set_statement_timeout(limit: Option<Duration>) -> Result<(), NodeError> {
    let ms = limit.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
    crate::ffi::set_statement_limit(ms).map_err(|code| NodeError::Sqlite { call: "sqlite3_auto_extension", code })
}

/// Gives the memory the process freed back to the kernel (glibc's `malloc_trim`); whether any
/// was given back.
///
/// Why: libraft keeps a node's recent log entries, each with the pages its write changed, and
/// frees them after each snapshot; glibc keeps that freed memory mapped in the arena of
/// libdqlite's thread for later allocations. So a member goes on holding the peak of a burst of
/// writes: 107 MiB after 30 000 writes by 16 writers on three members, 67-70 MiB after this call.
/// It walks every arena under its lock (libdqlite's thread waits meanwhile), so call it when the
/// process is quiet, from a thread that may block.
pub fn release_free_memory() -> bool {
    crate::ffi::trim_heap()
}

/// Keeps glibc from holding on to memory that libdqlite's large buffers once used, for the
/// life of the process; whether glibc accepted it. Call it once, before the node runs.
///
/// Why: glibc starts with blocks of 128 KiB and more in their own mappings, unmapped when
/// freed, but each time such a block is freed it raises that threshold to the block's size (up
/// to 32 MiB) and the threshold for trimming an arena's free top to twice that. libdqlite's
/// snapshots copy the database and its WAL into buffers of MiBs, so after the first snapshot
/// those come from the arenas, and what they free at the top of a thread's arena stays
/// resident: `malloc_trim` does not trim a thread arena's top. An idle member, whose heartbeats
/// are writes, gained ~1.2 MiB at every snapshot that way; with both pinned at 1 MiB, ~0.15 MiB.
/// Blocks of 1 MiB and more then always get their own mapping, in the whole process.
pub fn pin_allocator_thresholds() -> bool {
    crate::ffi::pin_malloc_thresholds(MALLOC_THRESHOLD)
}

/// Both thresholds of [`pin_allocator_thresholds`]: above the blocks of the write path (a batch's
/// log entry, up to a few hundred KiB), which stay in the arenas without a system call each,
/// below a snapshot's. glibc's own starting value, 128 KiB, gave 2-3 % fewer writes under 16
/// writers in two alternating rounds (near this VM's noise); 1 MiB did not.
const MALLOC_THRESHOLD: i32 = 1024 * 1024;

/// Checks a bind address against what libdqlite 1.11 can bind.
pub fn validate_bind_address(address: &str) -> Result<(), NodeError> {
    let invalid = |reason| NodeError::Invalid { setting: "bind address", value: address.to_owned(), reason };
    if let Some(name) = address.strip_prefix('@') {
        if name.len() > MAX_ABSTRACT_NAME {
            return Err(invalid("abstract socket names are limited to 106 bytes"));
        }
        return Ok(());
    }
    address
        .parse::<SocketAddrV4>()
        .map(|_| ())
        .map_err(|_| invalid("libdqlite 1.11 binds only IPv4 `a.b.c.d:port` or an abstract socket `@name`"))
}

/// Settings for a node, applied in [`NodeBuilder::build`].
pub struct NodeBuilder {
    id: u64,
    address: String,
    data_dir: PathBuf,
    bind_address: Option<String>,
    connect: Option<Box<ConnectFn>>,
    latency: Option<Duration>,
    failure_domain: Option<u64>,
    snapshot: Option<(u32, u32)>,
    checkpoint: Option<u32>,
    heartbeat: Option<Duration>,
    segment: Option<usize>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("id", &self.id)
            .field("address", &self.address)
            .field("data_dir", &self.data_dir)
            .field("bind_address", &self.bind_address)
            .field("connect", &self.connect.is_some())
            .field("latency", &self.latency)
            .field("failure_domain", &self.failure_domain)
            .field("snapshot", &self.snapshot)
            .field("checkpoint", &self.checkpoint)
            .field("heartbeat", &self.heartbeat)
            .field("segment", &self.segment)
            .finish()
    }
}

impl NodeBuilder {
    /// Address to listen on: IPv4 `a.b.c.d:port`, `@name` (abstract unix socket, reachable only
    /// from this process), or `@` for an automatically named abstract socket. Defaults to the
    /// node's address when that is itself bindable.
    pub fn bind_address(mut self, address: impl Into<String>) -> Self {
        self.bind_address = Some(address.into());
        self
    }

    /// Function raft uses to reach a peer's address; it runs on a libdqlite worker thread and
    /// returns a connected socket (TCP or unix) that libdqlite takes over. The default is
    /// [`crate::connect_blocking`]: TCP with `TCP_NODELAY` (libdqlite's own dialer leaves Nagle's
    /// algorithm on, which stalls replication by up to 40 ms) or an `@abstract` socket.
    pub fn connect_func(mut self, f: impl Fn(&str) -> io::Result<OwnedFd> + Send + Sync + 'static) -> Self {
        self.connect = Some(Box::new(f));
        self
    }

    /// Expected network round trip; raft's heartbeat becomes 1.5× and its election timeout 15×
    /// this value (libdqlite's defaults are 500 ms and 3 s). Whole milliseconds, 1 ms to 1 h.
    pub fn network_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// Raft's heartbeat interval instead of 1.5× the network latency, leaving the election
    /// timeout at 15× (libdqlite 1.11 has no setter for one without the other). Idle raft
    /// traffic and every node's tick follow this interval, so a longer one costs an idle
    /// cluster less CPU while failures are detected as fast. Whole milliseconds, at least 1 ms
    /// and shorter than the election timeout. Applied only to libdqlite 1.11 with libraft 0.15
    /// (their layout checked field by field); never tried on another library (see
    /// [`crate::Library::takes_private_tuning`]), and on 1.11 with another layout ignored with
    /// a warning, see [`Node::heartbeat_interval`].
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat = Some(interval);
        self
    }

    /// Size of the raft log's segment files (libraft: 8 MiB). Each time a segment fills up,
    /// libraft closes its kernel AIO context with `io_destroy`, which waits for an RCU grace
    /// period (tens of milliseconds on a small VM) on the node's event loop: every node stalls
    /// at once, since they roll at the same entry. Bigger segments roll less often, at the cost
    /// of disk space (libraft keeps two prepared segments besides the open one). Whole MiB,
    /// 1 MiB to 1 GiB. Applied only to libdqlite 1.11 with libraft 0.15 (the node's
    /// `struct raft` is found and checked as for [`NodeBuilder::heartbeat_interval`]); never
    /// tried on another library.
    pub fn raft_segment_size(mut self, bytes: usize) -> Self {
        self.segment = Some(bytes);
        self
    }

    /// Failure domain reported by DESCRIBE, used to spread roles across domains.
    pub fn failure_domain(mut self, code: u64) -> Self {
        self.failure_domain = Some(code);
        self
    }

    /// Take a snapshot every `threshold` log entries and keep `trailing` entries after it
    /// (defaults 1024 and 8192; `trailing` must be at least 4 and at least `threshold`).
    pub fn snapshot_params(mut self, threshold: u32, trailing: u32) -> Self {
        self.snapshot = Some((threshold, trailing));
        self
    }

    /// Checkpoint each node's WAL once it holds `frames` frames (libdqlite 1.11: 1000, which
    /// its API cannot change). Every applied entry costs a follower a rebuild of its WAL index,
    /// a pass over the whole WAL (1.11's `VfsApply` invalidates the index, and its checkpoint
    /// check opens a connection after each entry), and libraft acknowledges an entry only
    /// after applying the previous one, so a smaller WAL shortens every replicated commit.
    /// Applied only to libdqlite 1.11, whose private layout is known (checked field by field
    /// against what the node was created with); never tried on another library, see
    /// [`Node::checkpoint_threshold`]. At least 1.
    pub fn checkpoint_threshold(mut self, frames: u32) -> Self {
        self.checkpoint = Some(frames);
        self
    }

    /// Creates the node (and its data directory, mode 0700) and applies every setting. The
    /// node is not started.
    pub fn build(self) -> Result<Node, NodeError> {
        let bind_address = match self.bind_address {
            Some(addr) => addr,
            None if validate_bind_address(&self.address).is_ok() => self.address.clone(),
            None => {
                return Err(NodeError::Invalid {
                    setting: "address",
                    value: self.address,
                    reason: "is not bindable by libdqlite 1.11; set a bind address (`a.b.c.d:port` or `@name`)",
                });
            }
        };
        validate_bind_address(&bind_address)?;
        let latency_ms = match self.latency {
            None => None,
            Some(d) => {
                Some(u32::try_from(d.as_millis()).ok().filter(|ms| (1..=3_600_000).contains(ms)).ok_or_else(|| {
                    NodeError::Invalid {
                        setting: "network latency",
                        value: format!("{d:?}"),
                        reason: "must be between 1 ms and 1 h",
                    }
                })?)
            }
        };
        if let Some((threshold, trailing)) = self.snapshot
            && (trailing < 4 || trailing < threshold)
        {
            return Err(NodeError::Invalid {
                setting: "snapshot params",
                value: format!("threshold {threshold}, trailing {trailing}"),
                reason: "trailing must be at least 4 and at least the threshold",
            });
        }
        // libdqlite's own timeouts unless the latency is set: heartbeat 500 ms, election 3 s.
        let timeouts = latency_ms.map_or((3000, 500), |ms| (ms * 15, ms * 15 / 10));
        let heartbeat_ms = match self.heartbeat {
            None => None,
            Some(d) => {
                Some(u32::try_from(d.as_millis()).ok().filter(|ms| (1..timeouts.0).contains(ms)).ok_or_else(|| {
                    NodeError::Invalid {
                        setting: "heartbeat interval",
                        value: format!("{d:?}"),
                        reason: "must be at least 1 ms and shorter than the election timeout (15× the network latency)",
                    }
                })?)
            }
        };
        if let Some(bytes) = self.segment
            && (bytes % MIB != 0 || !(MIB..=1024 * MIB).contains(&bytes))
        {
            return Err(NodeError::Invalid {
                setting: "raft segment size",
                value: bytes.to_string(),
                reason: "must be whole MiB, from 1 MiB to 1 GiB",
            });
        }
        if self.checkpoint == Some(0) {
            return Err(NodeError::Invalid {
                setting: "checkpoint threshold",
                value: "0".into(),
                reason: "must be at least 1 frame",
            });
        }
        create_private_dir(&self.data_dir)?;
        let dir = self.data_dir.to_str().ok_or_else(|| NodeError::Invalid {
            setting: "data directory",
            value: self.data_dir.display().to_string(),
            reason: "is not valid UTF-8",
        })?;
        let address = c_string("address", &self.address)?;
        let mut raw =
            RawNode::create(self.id, &address, &c_string("data directory", dir)?).map_err(call_error("create"))?;
        raw.set_bind_address(&c_string("bind address", &bind_address)?).map_err(call_error("set_bind_address"))?;
        let connect = self.connect.unwrap_or_else(|| {
            Box::new(|address: &str| crate::dialer::connect_blocking(address, DEFAULT_CONNECT_TIMEOUT))
        });
        raw.set_connect_func(connect).map_err(call_error("set_connect_func"))?;
        if let Some(ms) = latency_ms {
            raw.set_network_latency_ms(ms).map_err(call_error("set_network_latency_ms"))?;
        }
        if let Some(code) = self.failure_domain {
            raw.set_failure_domain(code).map_err(call_error("set_failure_domain"))?;
        }
        if let Some((threshold, trailing)) = self.snapshot {
            raw.set_snapshot_params(threshold, trailing).map_err(call_error("set_snapshot_params"))?;
        }
        // 1.11's private settings: on another library nothing is tried (see `crate::library`);
        // on 1.11 a layout that fails its checks is a surprise worth a warning.
        let library = crate::library();
        if !library.takes_private_tuning() {
            return Ok(Node {
                raw,
                id: self.id,
                address: self.address,
                data_dir: self.data_dir,
                state: NodeState::Created,
            });
        }
        if let Some(frames) = self.checkpoint
            && !raw.set_checkpoint_threshold(self.id, &address, frames)
        {
            tracing::warn!(%library, "libdqlite's node layout is not the one known: its checkpoint threshold stays its own (replicated writes are slower)");
        }
        let raft = (heartbeat_ms.is_some() || self.segment.is_some()) && raw.find_raft(self.id, &address, timeouts);
        if let Some(ms) = heartbeat_ms
            && !(raft && raw.set_heartbeat_timeout(ms))
        {
            tracing::warn!(%library, "libraft is not 0.15: raft's heartbeat stays 1.5× the network latency (idle members use more CPU)");
        }
        if let Some(bytes) = self.segment
            && !(raft && raw.set_segment_size(bytes))
        {
            tracing::warn!(%library, "libraft is not 0.15: raft's log segments stay 8 MiB (writes stall more often)");
        }
        Ok(Node { raw, id: self.id, address: self.address, data_dir: self.data_dir, state: NodeState::Created })
    }
}

fn create_private_dir(path: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| NodeError::DataDir { path: path.to_owned(), source })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    Created,
    Running,
    Stopped,
}

/// A dqlite node. Dropping a running node stops it first.
#[derive(Debug)]
pub struct Node {
    raw: RawNode,
    id: u64,
    address: String,
    data_dir: PathBuf,
    state: NodeState,
}

impl Node {
    /// Settings for a node with this id, the address peers and clients know it by, and the
    /// directory holding its raft log and snapshots.
    pub fn builder(id: u64, address: impl Into<String>, data_dir: impl Into<PathBuf>) -> NodeBuilder {
        NodeBuilder {
            id,
            address: address.into(),
            data_dir: data_dir.into(),
            bind_address: None,
            connect: None,
            latency: None,
            failure_domain: None,
            snapshot: None,
            checkpoint: None,
            heartbeat: None,
            segment: None,
        }
    }

    /// A node with default settings that binds its own address (which must be `a.b.c.d:port`
    /// or `@name`). A node whose id is [`crate::BOOTSTRAP_ID`] (or 1) bootstraps a one-node
    /// cluster on its first start.
    pub fn new(id: u64, address: impl Into<String>, data_dir: impl Into<PathBuf>) -> Result<Node, NodeError> {
        Node::builder(id, address, data_dir).build()
    }

    /// Node id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address peers and clients know the node by.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Changes the checkpoint threshold (see [`NodeBuilder::checkpoint_threshold`]), also
    /// while the node runs: it takes effect at the next applied entry. `false` when libdqlite
    /// is not 1.11 (nothing changed) or `frames` is 0.
    pub fn set_checkpoint_threshold(&self, frames: u32) -> bool {
        let Ok(address) = CString::new(self.address.as_str()) else { return false };
        frames > 0 && self.raw.set_checkpoint_threshold(self.id, &address, frames)
    }

    /// The WAL frames at which this node checkpoints, when libdqlite is 1.11 (see
    /// [`NodeBuilder::checkpoint_threshold`]); `None` with another version.
    pub fn checkpoint_threshold(&self) -> Option<u32> {
        let address = CString::new(self.address.as_str()).ok()?;
        self.raw.checkpoint_threshold(self.id, &address)
    }

    /// Raft's heartbeat interval, when [`NodeBuilder::heartbeat_interval`] (or
    /// [`NodeBuilder::raft_segment_size`]) found the node's `struct raft`.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.raw.heartbeat_timeout().map(|ms| Duration::from_millis(ms.into()))
    }

    /// The address actually bound (e.g. the generated name for `@`).
    pub fn bind_address(&self) -> Option<String> {
        self.raw.bind_address()
    }

    /// Whether the node is running.
    pub fn is_running(&self) -> bool {
        self.state == NodeState::Running
    }

    /// Changes the failure domain (allowed while running).
    pub fn set_failure_domain(&mut self, code: u64) -> Result<(), NodeError> {
        self.raw.set_failure_domain(code).map_err(call_error("set_failure_domain"))
    }

    /// Forces the raft configuration to exactly `nodes` (a node without a role becomes a
    /// voter). For disaster recovery after losing quorum: run it on the surviving node(s)
    /// before starting them.
    pub fn recover(&mut self, nodes: &[NodeInfo]) -> Result<(), NodeError> {
        if self.state != NodeState::Created {
            return Err(NodeError::Running { what: "recover" });
        }
        let nodes = nodes
            .iter()
            .map(|n| Ok((n.id, c_string("address", &n.address)?, n.role.unwrap_or(Role::Voter).code())))
            .collect::<Result<Vec<_>, NodeError>>()?;
        self.raw.recover(&nodes).map_err(call_error("recover_ext"))
    }

    /// Starts the node: bootstraps it if its id says so and its directory is empty, opens its
    /// raft log and starts serving. Returns once the node accepts connections.
    pub fn start(&mut self) -> Result<(), NodeError> {
        match self.state {
            NodeState::Running => Ok(()),
            NodeState::Stopped => Err(NodeError::Stopped),
            NodeState::Created => {
                self.raw.start().map_err(call_error("start"))?;
                self.state = NodeState::Running;
                Ok(())
            }
        }
    }

    /// Stops the node: closes client connections and joins its thread. Idempotent. Blocks for
    /// a few tens of milliseconds; call it from a blocking context in async code.
    pub fn stop(&mut self) -> Result<(), NodeError> {
        if self.state != NodeState::Running {
            return Ok(());
        }
        self.state = NodeState::Stopped;
        self.raw.stop().map_err(call_error("stop"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(node = self.id, error = %err, "stopping dqlite node on drop");
        }
    }
}
