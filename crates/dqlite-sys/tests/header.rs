//! Checks the hand-written declarations against the real `dqlite.h`, then drives a node through
//! the raw API. The C side states each signature exactly as `src/lib.rs` declares it and lets the
//! compiler compare it with the header, so a drift in either shows up as a failed test.
#![allow(unsafe_code, clippy::unwrap_used)]

use dqlite_sys::*;
use std::ffi::{CStr, CString};
use std::process::Command;

/// The signatures of `src/lib.rs`, written in C. Keep the two in step.
const SIGNATURE_CHECKS: &str = r#"
#include <dqlite.h>
#include <stddef.h>
#define SAME(f, T) _Static_assert(__builtin_types_compatible_p(__typeof__(&f), T), #f " differs")
SAME(dqlite_version_number, int (*)(void));
SAME(dqlite_node_create, int (*)(unsigned long long, const char *, const char *, dqlite_node **));
SAME(dqlite_node_destroy, void (*)(dqlite_node *));
SAME(dqlite_node_set_bind_address, int (*)(dqlite_node *, const char *));
SAME(dqlite_node_get_bind_address, const char *(*)(dqlite_node *));
SAME(dqlite_node_set_connect_func, int (*)(dqlite_node *, int (*)(void *, const char *, int *), void *));
SAME(dqlite_node_set_network_latency, int (*)(dqlite_node *, unsigned long long));
SAME(dqlite_node_set_network_latency_ms, int (*)(dqlite_node *, unsigned));
SAME(dqlite_node_set_failure_domain, int (*)(dqlite_node *, unsigned long long));
SAME(dqlite_node_set_snapshot_params, int (*)(dqlite_node *, unsigned, unsigned));
SAME(dqlite_node_start, int (*)(dqlite_node *));
SAME(dqlite_node_stop, int (*)(dqlite_node *));
SAME(dqlite_node_recover, int (*)(dqlite_node *, dqlite_node_info *, int));
SAME(dqlite_node_recover_ext, int (*)(dqlite_node *, dqlite_node_info_ext *, int));
SAME(dqlite_node_errmsg, const char *(*)(dqlite_node *));
SAME(dqlite_generate_node_id, unsigned long long (*)(const char *));
_Static_assert(sizeof(dqlite_node_id) == 8, "node id");
_Static_assert(sizeof(dqlite_node_info) == 16, "node info");
_Static_assert(offsetof(dqlite_node_info, address) == 8, "node info address");
_Static_assert(sizeof(dqlite_node_info_ext) == DQLITE_NODE_INFO_EXT_SZ_ORIG, "node info ext");
_Static_assert(offsetof(dqlite_node_info_ext, id) == 8, "ext id");
_Static_assert(offsetof(dqlite_node_info_ext, address) == 16, "ext address");
_Static_assert(offsetof(dqlite_node_info_ext, dqlite_role) == 24, "ext role");
_Static_assert(DQLITE_ERROR == 1 && DQLITE_MISUSE == 2 && DQLITE_NOMEM == 3, "codes");
#include <sqlite3.h>
SAME(sqlite3_auto_extension, int (*)(void (*)(void)));
SAME(sqlite3_progress_handler, void (*)(sqlite3 *, int, int (*)(void *), void *));
SAME(sqlite3_trace_v2, int (*)(sqlite3 *, unsigned, int (*)(unsigned, void *, void *, void *), void *));
_Static_assert(SQLITE_TRACE_STMT == 0x01 && SQLITE_TRACE_PROFILE == 0x02 && SQLITE_TRACE_CLOSE == 0x08, "trace");
_Static_assert(SQLITE_OK == 0 && SQLITE_INTERRUPT == 9, "sqlite codes");
SAME(sqlite3_config, int (*)(int, ...));
_Static_assert(SQLITE_CONFIG_MULTITHREAD == 2 && SQLITE_CONFIG_MEMSTATUS == 9, "config options");
SAME(sqlite3_db_mutex, sqlite3_mutex *(*)(sqlite3 *));
SAME(sqlite3_open_v2, int (*)(const char *, sqlite3 **, int, const char *));
SAME(sqlite3_close_v2, int (*)(sqlite3 *));
SAME(sqlite3_errmsg, const char *(*)(sqlite3 *));
SAME(sqlite3_prepare_v2, int (*)(sqlite3 *, const char *, int, sqlite3_stmt **, const char **));
SAME(sqlite3_step, int (*)(sqlite3_stmt *));
SAME(sqlite3_finalize, int (*)(sqlite3_stmt *));
SAME(sqlite3_column_count, int (*)(sqlite3_stmt *));
SAME(sqlite3_column_name, const char *(*)(sqlite3_stmt *, int));
SAME(sqlite3_column_type, int (*)(sqlite3_stmt *, int));
SAME(sqlite3_column_int64, sqlite3_int64 (*)(sqlite3_stmt *, int));
SAME(sqlite3_column_double, double (*)(sqlite3_stmt *, int));
SAME(sqlite3_column_text, const unsigned char *(*)(sqlite3_stmt *, int));
SAME(sqlite3_column_blob, const void *(*)(sqlite3_stmt *, int));
SAME(sqlite3_column_bytes, int (*)(sqlite3_stmt *, int));
_Static_assert(SQLITE_OPEN_READONLY == 1 && SQLITE_OPEN_READWRITE == 2 && SQLITE_OPEN_CREATE == 4, "open flags");
_Static_assert(SQLITE_ROW == 100 && SQLITE_DONE == 101, "step codes");
_Static_assert(SQLITE_INTEGER == 1 && SQLITE_FLOAT == 2 && SQLITE_TEXT == 3 && SQLITE_BLOB == 4 && SQLITE_NULL == 5, "types");
"#;

#[test]
fn declarations_match_the_installed_header() {
    let dir = std::env::temp_dir().join(format!("dqlite-sys-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("check.c");
    std::fs::write(&source, SIGNATURE_CHECKS).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=gnu11", "-Werror", "-fsyntax-only"])
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("running {cc}: {e} (a C compiler is needed to check dqlite.h)"));
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success(), "dqlite.h disagrees with src/lib.rs:\n{}", String::from_utf8_lossy(&out.stderr));
    // The Rust side of the same layouts.
    assert_eq!(std::mem::size_of::<dqlite_node_info>(), 16);
    assert_eq!(std::mem::size_of::<dqlite_node_info_ext>() as u64, DQLITE_NODE_INFO_EXT_SZ_ORIG);
}

#[test]
fn a_node_starts_and_stops_through_the_raw_api() {
    let dir = std::env::temp_dir().join(format!("dqlite-sys-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let address = CString::new(format!("@dqlite-sys-test-{}", std::process::id())).unwrap();
    let data_dir = CString::new(dir.to_str().unwrap()).unwrap();
    unsafe {
        assert!(dqlite_version_number() >= 11000);
        let mut node = std::ptr::null_mut();
        assert_eq!(dqlite_node_create(1, address.as_ptr(), data_dir.as_ptr(), &mut node), 0);
        assert!(!node.is_null());
        assert_eq!(dqlite_node_set_bind_address(node, address.as_ptr()), 0);
        assert_eq!(dqlite_node_set_network_latency_ms(node, 0), DQLITE_MISUSE);
        assert_eq!(dqlite_node_set_network_latency_ms(node, 20), 0);
        assert_eq!(dqlite_node_set_snapshot_params(node, 1024, 512), DQLITE_MISUSE);
        assert_eq!(dqlite_node_start(node), 0, "{:?}", CStr::from_ptr(dqlite_node_errmsg(node)));
        let bound = CStr::from_ptr(dqlite_node_get_bind_address(node));
        assert_eq!(bound.to_bytes(), address.as_bytes());
        assert_eq!(dqlite_node_stop(node), 0);
        dqlite_node_destroy(node);
        assert_ne!(dqlite_generate_node_id(address.as_ptr()), 0);
    }
    std::fs::remove_dir_all(&dir).ok();
}
