//! `bench layers CALLGRIND_OUT REQUESTS`: a callgrind profile's instructions split by layer
//! (the self cost of each function, grouped by the library or Rust crate it belongs to), per
//! request. `profile.sh` beside this file records the profiles.

use std::collections::HashMap;
use std::process::Command;

use crate::Error;

/// Name prefixes of ring's C and assembly functions (AES-GCM, X25519, P-384/P-256, bignums).
const RING_C: [&str; 10] =
    ["ring_core_", "aes_", "gcm_", "_aesni", "ChaCha20", "x25519", "fe_", "p384_", "p256_", "nistz"];

/// The layer a function belongs to, from its name and object file.
fn layer(function: &str, object: &str) -> &'static str {
    let libraries = [
        ("libsqlite3", "SQLite (parse, prepare, VDBE, B-tree)"),
        ("libdqlite", "libdqlite (gateway, FSM, VFS)"),
        ("libraft", "libraft (log, replication, CRC)"),
        ("libuv", "libuv (dqlite's event loop)"),
        ("liblz4", "lz4 (raft snapshots)"),
    ];
    if let Some((_, name)) = libraries.iter().find(|(lib, _)| object.contains(lib)) {
        return name;
    }
    if object.contains("libc.so") || object.contains("libm.so") || function.starts_with("./") {
        return if ["malloc", "free", "realloc", "calloc"].iter().any(|m| function.contains(m)) {
            "libc malloc/free"
        } else {
            "libc other (memcpy, memset, mutexes)"
        };
    }
    // The first path inside a Rust name: `<hyper::proto::... as ...>::poll` belongs to hyper.
    let name = function.rsplit_once(".rs:").map_or(function, |(_, f)| f).trim_start_matches("???:");
    let path = name.trim_start_matches(['<', '&', '*']).trim_start_matches("mut ").trim_start_matches("dyn ");
    let crate_name = path.split("::").next().unwrap_or_default();
    match crate_name {
        "hyper" | "http" | "httparse" | "hyper_util" | "http_body" | "http_body_util" => "HTTP (hyper)",
        "serde_json" | "serde" | "serde_core" => "JSON (serde, serde_json)",
        "tokio" | "mio" => "tokio (scheduler, I/O, timers)",
        "rustls" | "ring" | "tokio_rustls" | "webpki" | "rustls_webpki" => "TLS (rustls, ring)",
        // ring's assembly (AES-GCM, SHA, field arithmetic) has C names.
        _ if RING_C.iter().any(|p| path.starts_with(p)) => "TLS (rustls, ring)",
        "tracing" | "tracing_core" | "tracing_subscriber" => "logging (tracing)",
        "dqlite" if path.starts_with("dqlite::sql_text") => "SQL tokenizer (dqlite::sql_text)",
        "dqlite" => "dqlite client (wire encode/decode, connection)",
        "microcluster" | "microd" => "ours: dispatch, handlers, write queue",
        "alloc" | "core" | "std" | "hashbrown" | "bytes" | "__rustc" | "smallvec" => {
            "Rust std (alloc, collections, fmt)"
        }
        _ if object.is_empty() || name.starts_with("0x") => "no symbol (valgrind, vdso)",
        _ => "other Rust crates",
    }
}

/// Runs `callgrind_annotate` on `file` and prints instructions per request by layer.
pub(crate) fn layers(file: &str, requests: usize) -> Result<(), Error> {
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=100", file])
        .output()
        .map_err(|e| format!("running callgrind_annotate (apt-get install valgrind): {e}"))?;
    if !out.status.success() {
        return Err(format!("callgrind_annotate {file}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut by_layer: HashMap<&str, u64> = HashMap::new();
    // The costliest function of each layer, to show what a layer holds.
    let mut top: HashMap<&str, (u64, String)> = HashMap::new();
    let mut total = 0u64;
    for line in text.lines() {
        // `  1,234 ( 0.12%)  file:function [object]`
        let Some((count, rest)) = line.trim_start().split_once(" (") else { continue };
        let Ok(count) = count.replace(',', "").parse::<u64>() else { continue };
        let Some((_, entry)) = rest.split_once(")  ") else { continue };
        if entry.contains("PROGRAM TOTALS") {
            continue;
        }
        let (function, object) = match entry.rsplit_once(" [") {
            Some((f, o)) if o.ends_with(']') => (f, o),
            _ => (entry, ""),
        };
        let name = layer(function, object);
        *by_layer.entry(name).or_default() += count;
        let best = top.entry(name).or_default();
        if count > best.0 {
            *best = (count, function.trim_start_matches("???:").chars().take(70).collect());
        }
        total += count;
    }
    let mut rows: Vec<(&str, u64)> = by_layer.into_iter().collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.1));
    let per = |n: u64| n as f64 / requests.max(1) as f64;
    println!("| layer (self cost) | instructions per request | share | costliest function |");
    println!("|---|---:|---:|---|");
    for (name, count) in rows {
        let share = count as f64 * 100.0 / total.max(1) as f64;
        let function = top.get(name).map(|t| t.1.replace('|', "\\|")).unwrap_or_default();
        println!("| {name} | {:.0} | {share:.1} % | `{function}` |", per(count));
    }
    println!("| **total** | **{:.0}** | 100 % | |", per(total));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::layer;

    #[test]
    fn names_map_to_layers() {
        assert_eq!(
            layer("???:sqlite3Parser'2", "/usr/lib/x86_64-linux-gnu/libsqlite3.so.0.8.6"),
            "SQLite (parse, prepare, VDBE, B-tree)"
        );
        assert_eq!(layer("./malloc/./malloc/malloc.c:_int_free", "/usr/lib/libc.so.6"), "libc malloc/free");
        assert_eq!(
            layer("???:<hyper::proto::h1::dispatch::Dispatcher<D> as core::future::Future>::poll", "/x/microd"),
            "HTTP (hyper)"
        );
        assert_eq!(
            layer("???:<dqlite::sql_text::Lexer as core::iter::Iterator>::next", "/x/microd"),
            "SQL tokenizer (dqlite::sql_text)"
        );
        assert_eq!(
            layer("???:dqlite::connection::Connection::roundtrip", "/x/microd"),
            "dqlite client (wire encode/decode, connection)"
        );
    }
}
