//! Raw declarations of libdqlite 1.11's node API (`/usr/include/dqlite.h`).
//!
//! Hand-written rather than generated: the API is small and stable, and the crate's tests compile
//! a C file against the real header to prove every signature and struct layout here matches it.
//! Nothing in this crate is safe to call directly; the `dqlite` crate wraps it.
#![allow(unsafe_code, non_camel_case_types)]

use libc::{c_char, c_double, c_int, c_longlong, c_uchar, c_uint, c_ulonglong, c_void};

/// Generic error.
pub const DQLITE_ERROR: c_int = 1;
/// The library was used incorrectly (bad argument, wrong state).
pub const DQLITE_MISUSE: c_int = 2;
/// A `malloc()` failed.
pub const DQLITE_NOMEM: c_int = 3;

/// Role codes used by `dqlite_node_info_ext::dqlite_role` and the wire protocol.
pub const DQLITE_VOTER: u64 = 0;
/// Stand-by: replicates the log but does not vote.
pub const DQLITE_STANDBY: u64 = 1;
/// Spare: member of the configuration that neither replicates nor votes.
pub const DQLITE_SPARE: u64 = 2;

/// Size of the original `dqlite_node_info_ext` (four 64-bit fields).
pub const DQLITE_NODE_INFO_EXT_SZ_ORIG: u64 = 32;

/// Opaque handle to a node.
#[repr(C)]
#[derive(Debug)]
pub struct dqlite_node {
    _private: [u8; 0],
}

/// Node identifier.
pub type dqlite_node_id = c_ulonglong;

/// Outbound connect function: dial `address` and store a connected socket in `*fd`.
/// Returns 0 on success, non-zero on failure. Runs on one of libdqlite's worker threads.
pub type dqlite_connect_func =
    Option<unsafe extern "C" fn(arg: *mut c_void, address: *const c_char, fd: *mut c_int) -> c_int>;

/// Entry of a forced configuration for `dqlite_node_recover`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dqlite_node_info {
    pub id: dqlite_node_id,
    pub address: *const c_char,
}

/// Extensible entry of a forced configuration for `dqlite_node_recover_ext`.
/// `address` holds a `const char *` widened to 64 bits.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dqlite_node_info_ext {
    pub size: u64,
    pub id: u64,
    pub address: u64,
    pub dqlite_role: u64,
}

unsafe extern "C" {
    pub fn dqlite_version_number() -> c_int;

    pub fn dqlite_node_create(
        id: dqlite_node_id,
        address: *const c_char,
        data_dir: *const c_char,
        n: *mut *mut dqlite_node,
    ) -> c_int;
    pub fn dqlite_node_destroy(n: *mut dqlite_node);

    pub fn dqlite_node_set_bind_address(n: *mut dqlite_node, address: *const c_char) -> c_int;
    pub fn dqlite_node_get_bind_address(n: *mut dqlite_node) -> *const c_char;
    pub fn dqlite_node_set_connect_func(n: *mut dqlite_node, f: dqlite_connect_func, arg: *mut c_void) -> c_int;
    pub fn dqlite_node_set_network_latency(n: *mut dqlite_node, nanoseconds: c_ulonglong) -> c_int;
    pub fn dqlite_node_set_network_latency_ms(n: *mut dqlite_node, milliseconds: c_uint) -> c_int;
    pub fn dqlite_node_set_failure_domain(n: *mut dqlite_node, code: c_ulonglong) -> c_int;
    pub fn dqlite_node_set_snapshot_params(
        n: *mut dqlite_node,
        snapshot_threshold: c_uint,
        snapshot_trailing: c_uint,
    ) -> c_int;

    pub fn dqlite_node_start(n: *mut dqlite_node) -> c_int;
    pub fn dqlite_node_stop(n: *mut dqlite_node) -> c_int;

    pub fn dqlite_node_recover(n: *mut dqlite_node, infos: *mut dqlite_node_info, n_info: c_int) -> c_int;
    pub fn dqlite_node_recover_ext(n: *mut dqlite_node, infos: *mut dqlite_node_info_ext, n_info: c_int) -> c_int;

    pub fn dqlite_node_errmsg(n: *mut dqlite_node) -> *const c_char;
    pub fn dqlite_generate_node_id(address: *const c_char) -> dqlite_node_id;
}

/// Opaque SQLite connection (libdqlite's SQLite, the process's `libsqlite3`).
#[repr(C)]
#[derive(Debug)]
pub struct sqlite3 {
    _private: [u8; 0],
}

/// `sqlite3_trace_v2` event: a statement starts running.
pub const SQLITE_TRACE_STMT: c_uint = 0x01;
/// `sqlite3_trace_v2` event: a statement finished (or was reset).
pub const SQLITE_TRACE_PROFILE: c_uint = 0x02;
/// `sqlite3_trace_v2` event: the connection closes.
pub const SQLITE_TRACE_CLOSE: c_uint = 0x08;
/// Success.
pub const SQLITE_OK: c_int = 0;
/// The statement was interrupted (e.g. by a progress handler).
pub const SQLITE_INTERRUPT: c_int = 9;

/// Entry point registered with `sqlite3_auto_extension`; SQLite declares it as `void (*)(void)`
/// and calls it as `int (*)(sqlite3 *, char **, const sqlite3_api_routines *)`.
pub type sqlite3_auto_extension_entry = unsafe extern "C" fn();
/// `sqlite3_progress_handler` callback: non-zero interrupts the running statement.
pub type sqlite3_progress_callback = Option<unsafe extern "C" fn(ctx: *mut c_void) -> c_int>;
/// `sqlite3_trace_v2` callback.
pub type sqlite3_trace_callback =
    Option<unsafe extern "C" fn(event: c_uint, ctx: *mut c_void, p: *mut c_void, x: *mut c_void) -> c_int>;

/// `sqlite3_config`: multi-thread mode (no locking of a connection's own structures).
pub const SQLITE_CONFIG_MULTITHREAD: c_int = 2;
/// `sqlite3_config`: whether SQLite counts its memory use (under a global mutex).
pub const SQLITE_CONFIG_MEMSTATUS: c_int = 9;

// Process-wide SQLite settings, made before SQLite initialises.
unsafe extern "C" {
    pub fn sqlite3_config(op: c_int, ...) -> c_int;
}

// The few SQLite calls used to put a time limit on the statements libdqlite runs for clients.
unsafe extern "C" {
    pub fn sqlite3_auto_extension(entry: Option<sqlite3_auto_extension_entry>) -> c_int;
    pub fn sqlite3_progress_handler(db: *mut sqlite3, ops: c_int, f: sqlite3_progress_callback, ctx: *mut c_void);
    pub fn sqlite3_trace_v2(db: *mut sqlite3, mask: c_uint, f: sqlite3_trace_callback, ctx: *mut c_void) -> c_int;
}

/// Opaque prepared SQLite statement.
#[repr(C)]
#[derive(Debug)]
pub struct sqlite3_stmt {
    _private: [u8; 0],
}

/// `sqlite3_open_v2` flag: open read-only.
pub const SQLITE_OPEN_READONLY: c_int = 0x0000_0001;
/// `sqlite3_open_v2` flag: open for reading and writing.
pub const SQLITE_OPEN_READWRITE: c_int = 0x0000_0002;
/// `sqlite3_open_v2` flag: create the file if it does not exist.
pub const SQLITE_OPEN_CREATE: c_int = 0x0000_0004;
/// `sqlite3_step`: a row is ready.
pub const SQLITE_ROW: c_int = 100;
/// `sqlite3_step`: the statement finished.
pub const SQLITE_DONE: c_int = 101;
/// Column type: integer.
pub const SQLITE_INTEGER: c_int = 1;
/// Column type: floating point.
pub const SQLITE_FLOAT: c_int = 2;
/// Column type: text.
pub const SQLITE_TEXT: c_int = 3;
/// Column type: blob.
pub const SQLITE_BLOB: c_int = 4;
/// Column type: NULL.
pub const SQLITE_NULL: c_int = 5;

// Plain SQLite files outside dqlite (backups): open, run statements, read rows.
unsafe extern "C" {
    pub fn sqlite3_open_v2(filename: *const c_char, db: *mut *mut sqlite3, flags: c_int, vfs: *const c_char) -> c_int;
    pub fn sqlite3_close_v2(db: *mut sqlite3) -> c_int;
    pub fn sqlite3_errmsg(db: *mut sqlite3) -> *const c_char;
    /// The connection's mutex; NULL unless SQLite runs serialized.
    pub fn sqlite3_db_mutex(db: *mut sqlite3) -> *mut c_void;
    pub fn sqlite3_prepare_v2(
        db: *mut sqlite3,
        sql: *const c_char,
        n_byte: c_int,
        stmt: *mut *mut sqlite3_stmt,
        tail: *mut *const c_char,
    ) -> c_int;
    pub fn sqlite3_step(stmt: *mut sqlite3_stmt) -> c_int;
    pub fn sqlite3_finalize(stmt: *mut sqlite3_stmt) -> c_int;
    pub fn sqlite3_column_count(stmt: *mut sqlite3_stmt) -> c_int;
    pub fn sqlite3_column_name(stmt: *mut sqlite3_stmt, i: c_int) -> *const c_char;
    pub fn sqlite3_column_type(stmt: *mut sqlite3_stmt, i: c_int) -> c_int;
    pub fn sqlite3_column_int64(stmt: *mut sqlite3_stmt, i: c_int) -> c_longlong;
    pub fn sqlite3_column_double(stmt: *mut sqlite3_stmt, i: c_int) -> c_double;
    pub fn sqlite3_column_text(stmt: *mut sqlite3_stmt, i: c_int) -> *const c_uchar;
    pub fn sqlite3_column_blob(stmt: *mut sqlite3_stmt, i: c_int) -> *const c_void;
    pub fn sqlite3_column_bytes(stmt: *mut sqlite3_stmt, i: c_int) -> c_int;
}

/// `raft_uv_set_segment_size(struct raft_io *io, size_t size)` of the libraft loaded with
/// libdqlite (libraft 0.15 on Debian 12, `libraft.so.2`), or `None` when no loaded library
/// exports it. Looked up at run time rather than linked: Debian installs libraft without its
/// development symlink and header, and newer libdqlite releases carry raft inside themselves.
pub fn raft_uv_set_segment_size() -> Option<unsafe extern "C" fn(io: *mut c_void, size: usize)> {
    // SAFETY: a symbol of that name is libraft's function of this signature (raft.h since 0.9).
    symbol(c"raft_uv_set_segment_size")
        .map(|sym| unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_void, usize)>(sym) })
}

/// Looks `name` (NUL-terminated) up among the loaded objects.
fn symbol(name: &std::ffi::CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with a NUL-terminated name only searches the loaded objects.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!sym.is_null()).then_some(sym)
}
