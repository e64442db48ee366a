//! The only place in the workspace outside `dqlite-sys` that calls C: a thin owner of a
//! `dqlite_node *` and the trampoline through which libdqlite calls a Rust connect function.
//! Everything here is private to the crate; [`crate::node`] puts the safe API on top.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::os::fd::{IntoRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;

use dqlite_sys as sys;

pub(crate) mod sqlite;

/// A Rust function that dials a peer for raft and returns the connected socket.
pub(crate) type ConnectFn = dyn Fn(&str) -> std::io::Result<OwnedFd> + Send + Sync + 'static;

/// The boxed closure whose (thin) address libdqlite keeps as its `arg`.
struct ConnectCallback(Box<ConnectFn>);

/// A failed C call: its return code and the node's error message, if any.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: i32,
    pub(crate) message: String,
}

/// Owns a created (not necessarily started) node and frees it on drop. The owner must stop a
/// started node before dropping it.
#[derive(Debug)]
pub(crate) struct RawNode {
    ptr: NonNull<sys::dqlite_node>,
    /// The node's `struct raft`, once [`RawNode::find_raft`] found it.
    raft: Option<NonNull<RaftHead>>,
    // Declared after `ptr` and only freed in `drop` after the node is destroyed: libdqlite may
    // call the closure until then.
    connect: Option<Box<ConnectCallback>>,
}

impl std::fmt::Debug for ConnectCallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectCallback")
    }
}

// SAFETY: a dqlite_node is not tied to the thread that created it. Once started, its state is
// owned by its own loop thread; the calls made through `&mut self` (stop, destroy, setters that
// libdqlite refuses while running) are the documented way to drive it from another thread, and
// `&self` methods only read strings the node does not change while running.
unsafe impl Send for RawNode {}
// SAFETY: see above; `&self` methods only read immutable-after-start data.
unsafe impl Sync for RawNode {}

/// The first fields of libdqlite 1.11's `struct dqlite_node` (src/server.h): its loop thread,
/// then its `struct config` (src/config.h), whose checkpoint threshold no API sets. Read only
/// through [`RawNode::head`], which checks them against what the node was created with.
#[repr(C)]
struct NodeHead {
    thread: std::ffi::c_ulong,
    id: u64,
    address: *const c_char,
    heartbeat_timeout: std::ffi::c_uint,
    page_size: std::ffi::c_uint,
    checkpoint_threshold: std::ffi::c_uint,
}

impl NodeHead {
    /// What 1.11's `config__init` sets (`DEFAULT_HEARTBEAT_TIMEOUT`, `DEFAULT_PAGE_SIZE`);
    /// nothing in its API changes them.
    const HEARTBEAT_TIMEOUT: u32 = 15_000;
    const PAGE_SIZE: u32 = 4096;
}

/// The first fields of libraft 0.15's `struct raft` (raft.h), up to its heartbeat timeout,
/// which libdqlite 1.11 embeds in its node and only ever sets to 1.5× the network latency.
/// Found and checked by [`RawNode::raft`].
#[repr(C)]
struct RaftHead {
    data: *mut c_void,
    tracer: *mut c_void,
    io: *const c_void,
    fsm: *const c_void,
    id: u64,
    address: *const c_char,
    current_term: u64,
    voted_for: u64,
    /// `struct raft_log`: entries, size, front, back, offset, refs, refs_size, and the last
    /// snapshot's index and term.
    log: [u64; 9],
    configuration_servers: *mut c_void,
    configuration_n: std::ffi::c_uint,
    configuration_index: u64,
    configuration_uncommitted_index: u64,
    election_timeout: std::ffi::c_uint,
    heartbeat_timeout: std::ffi::c_uint,
}

/// How far into a 1.11 node its `struct raft` is looked for: it follows the config, the VFS,
/// the registry, the libuv loop, raft's transport, I/O and FSM (about 2.3 KiB on x86-64).
const RAFT_SEARCH_LIMIT: usize = 8192;

fn check(code: c_int) -> Result<(), i32> {
    if code == 0 { Ok(()) } else { Err(code) }
}

/// libdqlite's version number (`major * 10000 + minor * 100 + release`).
pub(crate) fn version_number() -> i32 {
    // SAFETY: a plain query of the library's version.
    unsafe { sys::dqlite_version_number() }
}

/// Puts SQLite in multi-thread mode, without memory statistics, before anything in the process
/// initialises it; later calls do nothing.
///
/// Why: Debian's SQLite is built serialized, so every API call and every page of every
/// statement takes a connection mutex, and every allocation a global one for the statistics.
/// No connection here is ever used by two threads at once: libdqlite runs each node's
/// connections on the node's own thread, and [`crate::file`] holds its connection through
/// `&mut`. go-dqlite makes the same choice (it even goes single-thread). If SQLite was already
/// initialised (an application opened a database through it first), SQLite refuses the change
/// and keeps its mode, which is safe, only slower.
pub(crate) fn configure_sqlite() {
    static CONFIGURED: std::sync::Once = std::sync::Once::new();
    CONFIGURED.call_once(|| {
        // SAFETY: plain integer arguments, as SQLite documents for these options; SQLite
        // answers SQLITE_MISUSE instead of changing anything once it is initialised.
        let modes = unsafe {
            [
                sys::sqlite3_config(sys::SQLITE_CONFIG_MULTITHREAD),
                sys::sqlite3_config(sys::SQLITE_CONFIG_MEMSTATUS, 0 as c_int),
            ]
        };
        if modes.iter().any(|&rc| rc != sys::SQLITE_OK) {
            tracing::debug!(?modes, "SQLite was initialised before dqlite: it keeps its threading mode");
        }
    });
}

impl RawNode {
    pub(crate) fn create(id: u64, address: &CStr, data_dir: &CStr) -> Result<RawNode, Failure> {
        configure_sqlite();
        // libdqlite 1.11 names each node's VFS after a global counter it increments without a
        // lock (`config__init`, "TODO: make this thread safe"): two nodes created at the same
        // time can get the same name and then share their databases. Seen in parallel tests
        // as a fresh cluster finding another test's table.
        static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = CREATING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut ptr = std::ptr::null_mut();
        // SAFETY: both strings are valid NUL-terminated C strings for the duration of the call
        // (libdqlite copies them); `ptr` is a valid out-pointer.
        let rc = unsafe { sys::dqlite_node_create(id, address.as_ptr(), data_dir.as_ptr(), &mut ptr) };
        match NonNull::new(ptr) {
            Some(ptr) if rc == 0 => Ok(RawNode { ptr, raft: None, connect: None }),
            _ => {
                Err(Failure { code: rc, message: "dqlite_node_create failed (is the data directory writable?)".into() })
            }
        }
    }

    fn fail(&self, code: i32) -> Failure {
        Failure { code, message: self.errmsg() }
    }

    pub(crate) fn errmsg(&self) -> String {
        // SAFETY: the node is alive; errmsg returns NULL or a NUL-terminated string owned by it.
        let msg = unsafe { sys::dqlite_node_errmsg(self.ptr.as_ptr()) };
        if msg.is_null() {
            return String::new();
        }
        // SAFETY: non-null and NUL-terminated per the API; copied out immediately.
        unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned()
    }

    pub(crate) fn set_bind_address(&mut self, address: &CStr) -> Result<(), Failure> {
        // SAFETY: valid node and C string; libdqlite copies the address.
        check(unsafe { sys::dqlite_node_set_bind_address(self.ptr.as_ptr(), address.as_ptr()) })
            .map_err(|c| self.fail(c))
    }

    pub(crate) fn bind_address(&self) -> Option<String> {
        // SAFETY: valid node; the result is NULL or a NUL-terminated string owned by the node.
        let addr = unsafe { sys::dqlite_node_get_bind_address(self.ptr.as_ptr()) };
        if addr.is_null() {
            return None;
        }
        // SAFETY: as above; copied out immediately.
        Some(unsafe { CStr::from_ptr(addr) }.to_string_lossy().into_owned())
    }

    pub(crate) fn set_connect_func(&mut self, f: Box<ConnectFn>) -> Result<(), Failure> {
        let callback = Box::new(ConnectCallback(f));
        let arg = &*callback as *const ConnectCallback as *mut c_void;
        // SAFETY: `arg` points into a box kept in `self.connect` until after the node is
        // destroyed, and the trampoline only reads through it.
        let rc = unsafe { sys::dqlite_node_set_connect_func(self.ptr.as_ptr(), Some(connect_trampoline), arg) };
        check(rc).map_err(|c| self.fail(c))?;
        self.connect = Some(callback);
        Ok(())
    }

    pub(crate) fn set_network_latency_ms(&mut self, ms: u32) -> Result<(), Failure> {
        // SAFETY: valid node.
        check(unsafe { sys::dqlite_node_set_network_latency_ms(self.ptr.as_ptr(), ms) }).map_err(|c| self.fail(c))
    }

    pub(crate) fn set_failure_domain(&mut self, code: u64) -> Result<(), Failure> {
        // SAFETY: valid node.
        check(unsafe { sys::dqlite_node_set_failure_domain(self.ptr.as_ptr(), code) }).map_err(|c| self.fail(c))
    }

    pub(crate) fn set_snapshot_params(&mut self, threshold: u32, trailing: u32) -> Result<(), Failure> {
        // SAFETY: valid node.
        check(unsafe { sys::dqlite_node_set_snapshot_params(self.ptr.as_ptr(), threshold, trailing) })
            .map_err(|c| self.fail(c))
    }

    /// The node's own settings at the start of libdqlite 1.11's private `struct dqlite_node`,
    /// or `None` unless every field that can be checked holds what this node was created with
    /// (so a different layout is never read as this one).
    fn head(&self, id: u64, address: &CStr) -> Option<*mut NodeHead> {
        if !crate::library::is_private_layout(version_number()) {
            return None;
        }
        let head = self.ptr.as_ptr().cast::<NodeHead>();
        // SAFETY: on 1.11 the node (allocated by sqlite3_malloc, 8-aligned) begins with these
        // fields, and it is far larger than them. libdqlite writes the ones read here only
        // while creating the node (the threshold, which we may write, is not read here).
        let (node_id, node_address, heartbeat, page_size) =
            unsafe { ((*head).id, (*head).address, (*head).heartbeat_timeout, (*head).page_size) };
        let known = node_id == id
            && heartbeat == NodeHead::HEARTBEAT_TIMEOUT
            && page_size == NodeHead::PAGE_SIZE
            && !node_address.is_null()
            // SAFETY: non-null, and on 1.11 a NUL-terminated copy of the address it owns.
            && unsafe { CStr::from_ptr(node_address) } == address;
        known.then_some(head)
    }

    /// libdqlite 1.11's checkpoint threshold (WAL frames), if this library's layout is 1.11's.
    pub(crate) fn checkpoint_threshold(&self, id: u64, address: &CStr) -> Option<u32> {
        // SAFETY: `head` checked the layout; an aligned 32-bit read, atomic like the writes.
        self.head(id, address).map(|head| unsafe {
            std::sync::atomic::AtomicU32::from_ptr(&raw mut (*head).checkpoint_threshold)
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Sets the checkpoint threshold, which 1.11 has no setter for; `false` (and nothing
    /// written) unless the layout is 1.11's. Also while the node runs.
    pub(crate) fn set_checkpoint_threshold(&self, id: u64, address: &CStr, frames: u32) -> bool {
        let Some(head) = self.head(id, address) else { return false };
        // SAFETY: `head` checked the layout, so this is the aligned `unsigned` field. The loop
        // thread of a running node reads it (with a plain load, once per applied entry in
        // `maybeCheckpoint`) and never writes it; an aligned 32-bit store cannot tear, and a
        // read that still sees the old value only moves one checkpoint. Ours is atomic so that
        // two callers on our side never race each other.
        let field = unsafe { &raw mut (*head).checkpoint_threshold };
        // SAFETY: as above; the field lives as long as the node, which outlives `&self`.
        unsafe { std::sync::atomic::AtomicU32::from_ptr(field) }.store(frames, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// The node's `struct raft` (not running yet), or `None` unless the layout is 1.11's with
    /// libraft 0.15's `struct raft` in it: the first 8-aligned place whose id, address, I/O and
    /// FSM pointers (into the node, before it) and both timeouts are what libdqlite's init and
    /// `set_network_latency_ms` put there.
    fn raft(&self, id: u64, address: &CStr, election_ms: u32, heartbeat_ms: u32) -> Option<NonNull<RaftHead>> {
        self.head(id, address)?;
        let base = self.ptr.as_ptr().cast::<u8>();
        (std::mem::size_of::<NodeHead>()..RAFT_SEARCH_LIMIT).step_by(8).find_map(|offset| {
            // SAFETY: on 1.11 (checked by `head`) the node holds a `struct raft` inside this
            // range, and the search stops at the first place that matches, so it reads no
            // further than that struct's own fields. The node is not running: nothing else
            // touches it. Pointers are compared before any is followed.
            unsafe {
                let raft = base.add(offset).cast::<RaftHead>();
                let inside = |p: *const c_void| (base as usize..raft as usize).contains(&(p as usize));
                let found = (*raft).id == id
                    && inside((*raft).io)
                    && inside((*raft).fsm)
                    && (*raft).election_timeout == election_ms
                    && (*raft).heartbeat_timeout == heartbeat_ms
                    && !(*raft).address.is_null()
                    && CStr::from_ptr((*raft).address) == address;
                found.then(|| NonNull::new_unchecked(raft))
            }
        })
    }

    /// Finds the node's `struct raft` before it starts, for [`RawNode::set_heartbeat_timeout`]
    /// and [`RawNode::set_segment_size`]: `election_ms` and `heartbeat_ms` are the timeouts
    /// libdqlite gave it. `false` unless it is where 1.11 and libraft 0.15 put it.
    pub(crate) fn find_raft(&mut self, id: u64, address: &CStr, (election_ms, heartbeat_ms): (u32, u32)) -> bool {
        if self.raft.is_none() {
            self.raft = self.raft(id, address, election_ms, heartbeat_ms);
        }
        self.raft.is_some()
    }

    /// Sets raft's heartbeat interval to `new_ms` before the node starts (libraft also ticks at
    /// that interval); libdqlite 1.11 only sets it to 1.5× the latency. `false`, and nothing
    /// written, unless [`RawNode::find_raft`] found the node's `struct raft`.
    pub(crate) fn set_heartbeat_timeout(&mut self, new_ms: u32) -> bool {
        let Some(raft) = self.raft else { return false };
        // SAFETY: found and checked by `find_raft`; the node is not running, so this plain
        // store is what `raft_set_heartbeat_timeout` does.
        unsafe { (*raft.as_ptr()).heartbeat_timeout = new_ms };
        true
    }

    /// Sets the size of the raft log segments the node prepares, before it starts, through
    /// libraft's own setter on the node's `raft_io`. `false`, and nothing changed, unless
    /// [`RawNode::find_raft`] found the node's `struct raft` and libraft exports the setter.
    pub(crate) fn set_segment_size(&mut self, bytes: usize) -> bool {
        let (Some(raft), Some(set)) = (self.raft, sys::raft_uv_set_segment_size()) else { return false };
        // SAFETY: `io` points into the node (checked by `find_raft`) at the `raft_io` that
        // `dqlite_node_create` initialised with `raft_uv_init`, which is what the setter
        // takes; the node is not running, so nothing reads the size meanwhile.
        unsafe { set((*raft.as_ptr()).io.cast_mut(), bytes) };
        true
    }

    /// Raft's heartbeat interval in ms, if [`RawNode::find_raft`] found it. Also
    /// while the node runs: its loop thread reads the field and never writes it.
    pub(crate) fn heartbeat_timeout(&self) -> Option<u32> {
        self.raft.map(|raft| {
            // SAFETY: the field lives as long as the node; an aligned 32-bit atomic read of a
            // value no thread writes after start.
            unsafe { std::sync::atomic::AtomicU32::from_ptr(&raw mut (*raft.as_ptr()).heartbeat_timeout) }
                .load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    pub(crate) fn start(&mut self) -> Result<(), Failure> {
        // SAFETY: valid, not yet started node with a bind address (checked by the caller).
        check(unsafe { sys::dqlite_node_start(self.ptr.as_ptr()) }).map_err(|c| self.fail(c))
    }

    pub(crate) fn stop(&mut self) -> Result<(), Failure> {
        // SAFETY: valid node that the caller knows to be running.
        check(unsafe { sys::dqlite_node_stop(self.ptr.as_ptr()) }).map_err(|c| self.fail(c))
    }

    /// Forces the raft configuration to `nodes` (id, address, role code). Offline only.
    pub(crate) fn recover(&mut self, nodes: &[(u64, CString, u64)]) -> Result<(), Failure> {
        let mut infos: Vec<sys::dqlite_node_info_ext> = nodes
            .iter()
            .map(|(id, address, role)| sys::dqlite_node_info_ext {
                size: sys::DQLITE_NODE_INFO_EXT_SZ_ORIG,
                id: *id,
                address: address.as_ptr() as u64,
                dqlite_role: *role,
            })
            .collect();
        let n = c_int::try_from(infos.len())
            .map_err(|_| Failure { code: sys::DQLITE_MISUSE, message: "too many nodes".into() })?;
        // SAFETY: `infos` and the address strings it points to outlive the call; libdqlite
        // copies what it keeps.
        check(unsafe { sys::dqlite_node_recover_ext(self.ptr.as_ptr(), infos.as_mut_ptr(), n) })
            .map_err(|c| self.fail(c))
    }
}

impl Drop for RawNode {
    fn drop(&mut self) {
        // SAFETY: the node is valid and (by the owner's contract) not running; nothing uses the
        // pointer afterwards. The connect closure is freed only after this returns.
        unsafe { sys::dqlite_node_destroy(self.ptr.as_ptr()) };
        drop(self.connect.take());
    }
}

/// Called by libdqlite on one of its worker threads to open a raft connection.
unsafe extern "C" fn connect_trampoline(arg: *mut c_void, address: *const c_char, fd: *mut c_int) -> c_int {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `arg` is the ConnectCallback registered in `set_connect_func`, alive until the
        // node is destroyed, which cannot happen while libdqlite is calling us.
        let callback = unsafe { &*(arg as *const ConnectCallback) };
        // SAFETY: libdqlite passes the peer's NUL-terminated address.
        let address = unsafe { CStr::from_ptr(address) }.to_string_lossy();
        (callback.0)(&address)
    }));
    match outcome {
        Ok(Ok(socket)) => {
            // SAFETY: `fd` is libdqlite's valid out-pointer; it takes ownership of the socket.
            unsafe { *fd = socket.into_raw_fd() };
            0
        }
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "raft connect function failed");
            sys::DQLITE_ERROR
        }
        Err(_) => {
            tracing::error!("raft connect function panicked");
            sys::DQLITE_ERROR
        }
    }
}

/// glibc's `malloc_trim(0)`: gives every whole free page in the allocator's arenas back to the
/// kernel; whether any was given back.
pub(crate) fn trim_heap() -> bool {
    // SAFETY: no arguments to check; glibc walks its own arenas under their locks.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// glibc's `mallopt`: blocks of at least `bytes` get their own mapping, and an arena's free top
/// is given back once it exceeds `bytes`; both fixed, which also turns off glibc's raising of
/// them as large blocks are freed. Whether glibc took both.
pub(crate) fn pin_malloc_thresholds(bytes: i32) -> bool {
    // SAFETY: plain integer settings; glibc applies them under the main arena's lock.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, bytes) == 1 }
}

/// `dqlite_generate_node_id`: a digest of the address and the current time.
pub(crate) fn generate_node_id(address: &CStr) -> u64 {
    // SAFETY: valid C string; the function only reads it.
    unsafe { sys::dqlite_generate_node_id(address.as_ptr()) }
}

/// The statement time limit in milliseconds (0: none), read by every connection's progress
/// handler.
static STATEMENT_LIMIT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static STATEMENT_LIMIT_INSTALLED: std::sync::Once = std::sync::Once::new();
/// How many SQLite VM steps pass between two looks at the clock.
const PROGRESS_STEPS: c_int = 1000;

/// Sets the time limit of every SQL statement run by any SQLite connection this process opens
/// from now on (libdqlite opens one per client database on the leader). The first call
/// registers the hooks with SQLite; returns SQLite's code if that fails.
pub(crate) fn set_statement_limit(limit_ms: u64) -> Result<(), c_int> {
    configure_sqlite();
    STATEMENT_LIMIT_MS.store(limit_ms, std::sync::atomic::Ordering::Relaxed);
    let mut result = Ok(());
    STATEMENT_LIMIT_INSTALLED.call_once(|| {
        // SAFETY: SQLite calls the entry point with the real (wider) signature; casting the
        // function pointer to `void (*)(void)` is how its API takes it.
        let entry = unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn(*mut sys::sqlite3, *mut *mut c_char, *const c_void) -> c_int,
                sys::sqlite3_auto_extension_entry,
            >(watch_connection)
        };
        // SAFETY: registering a static function.
        let rc = unsafe { sys::sqlite3_auto_extension(Some(entry)) };
        if rc != sys::SQLITE_OK {
            result = Err(rc);
        }
    });
    result
}

/// When the statement running on one connection started (milliseconds on [`clock_ms`]; 0:
/// none is running).
struct StatementClock(std::sync::atomic::AtomicU64);

fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let ms = EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX).saturating_add(1)
}

/// Called by SQLite for every new connection: starts timing its statements.
unsafe extern "C" fn watch_connection(db: *mut sys::sqlite3, _err: *mut *mut c_char, _api: *const c_void) -> c_int {
    let clock = Box::into_raw(Box::new(StatementClock(std::sync::atomic::AtomicU64::new(0))));
    let mask = sys::SQLITE_TRACE_STMT | sys::SQLITE_TRACE_PROFILE | sys::SQLITE_TRACE_CLOSE;
    // SAFETY: `db` is the connection being opened; `clock` lives until its CLOSE event.
    unsafe {
        if sys::sqlite3_trace_v2(db, mask, Some(on_trace), clock.cast()) != sys::SQLITE_OK {
            drop(Box::from_raw(clock));
            return sys::SQLITE_OK;
        }
        sys::sqlite3_progress_handler(db, PROGRESS_STEPS, Some(on_progress), clock.cast());
    }
    sys::SQLITE_OK
}

unsafe extern "C" fn on_trace(event: std::ffi::c_uint, ctx: *mut c_void, _p: *mut c_void, x: *mut c_void) -> c_int {
    let clock = ctx.cast::<StatementClock>();
    if event == sys::SQLITE_TRACE_CLOSE {
        // SAFETY: the box made in `watch_connection`; SQLite sends no event after CLOSE.
        drop(unsafe { Box::from_raw(clock) });
        return 0;
    }
    // SAFETY: alive until CLOSE.
    let started = unsafe { &(*clock).0 };
    let ordering = std::sync::atomic::Ordering::Relaxed;
    if event == sys::SQLITE_TRACE_STMT {
        // STMT also fires for each trigger program of a running statement, with a comment
        // ("-- trigger name") as its text: those do not restart the clock.
        // SAFETY: for STMT, X is the statement's NUL-terminated text.
        let trigger = !x.is_null() && unsafe { CStr::from_ptr(x.cast::<c_char>()) }.to_bytes().starts_with(b"--");
        if !trigger {
            started.store(clock_ms(), ordering);
        }
    } else if event == sys::SQLITE_TRACE_PROFILE {
        started.store(0, ordering);
    }
    0
}

unsafe extern "C" fn on_progress(ctx: *mut c_void) -> c_int {
    let ordering = std::sync::atomic::Ordering::Relaxed;
    let limit = STATEMENT_LIMIT_MS.load(ordering);
    // SAFETY: alive until CLOSE, after which SQLite runs no statement on the connection.
    let started = unsafe { (*ctx.cast::<StatementClock>()).0.load(ordering) };
    c_int::from(limit != 0 && started != 0 && clock_ms().saturating_sub(started) > limit)
}
