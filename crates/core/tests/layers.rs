//! The server's parts import only the parts under them (`ARCHITECTURE.md`, "Layers"). Read
//! from the source as text: every path that names another part (`crate::server::<part>`, or
//! `super::` chains that climb to the server) is one import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The server's parts from the top down: each may import only those after it.
const LAYERS: &[&str] = &["lifecycle", "rest", "domain", "state", "db", "memory", "metrics", "stop", "error"];

/// Imports that still point up, each with why; the list may only shrink.
const KNOWN_UPWARD: &[(&str, &str)] = &[];

#[test]
fn server_layers_point_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let imports = imports(&root);
    assert!(imports.len() > 50, "too few imports found ({}); is the parser still right?", imports.len());
    let mut upward = BTreeMap::<(String, String), BTreeSet<String>>::new();
    let mut hidden = Vec::new();
    for import in &imports {
        let Some(from) = rank(&import.from_part) else { continue };
        let Some(to) = rank(&import.to_part) else {
            if import.to_part.starts_with(char::is_uppercase) {
                hidden.push(format!("{}: {}", import.file, import.path));
            }
            continue;
        };
        if from == to || to > from {
            continue;
        }
        upward
            .entry((import.from_part.clone(), import.to_part.clone()))
            .or_default()
            .insert(format!("{}: {}", import.file, import.path));
    }
    let known: BTreeSet<(String, String)> = KNOWN_UPWARD
        .iter()
        .map(|(edge, _)| edge.split_once(" -> ").map(|(a, b)| (a.into(), b.into())).expect("\"from -> to\""))
        .collect();
    let mut unexpected = Vec::new();
    for ((from, to), seen) in &upward {
        if !known.contains(&(from.clone(), to.clone())) {
            unexpected
                .push(format!("{from} -> {to}:\n    {}", seen.iter().cloned().collect::<Vec<_>>().join("\n    ")));
        }
    }
    assert!(
        hidden.is_empty(),
        "imports through the server's re-exports (name the layer instead):\n{}",
        hidden.join("\n")
    );
    assert!(unexpected.is_empty(), "imports that point up a layer:\n{}", unexpected.join("\n"));
    for edge in &known {
        assert!(upward.contains_key(edge), "{} -> {} no longer points up: take it off KNOWN_UPWARD", edge.0, edge.1);
    }
}

#[test]
fn the_parser_sees_each_form_of_import() {
    let src = "use crate::server::db::{members, Db};\nuse super::super::state::State;\n\
               fn f() { crate::server::rest::servers::apply(); let s = \"crate::server::lifecycle\"; }\n\
               // crate::server::lifecycle in a comment\nmod inner { use super::super::super::domain::roles; }\n\
               #[cfg(test)]\nmod tests { use crate::server::lifecycle::app; }\n";
    let found: Vec<String> =
        paths_in(src, &["server", "domain", "membership"]).into_iter().map(|(part, _)| part).collect();
    assert_eq!(found, ["db", "state", "rest", "domain"]);
}

/// The layer's index (0 at the top), for a part of the server.
fn rank(part: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == part)
}

struct Import {
    file: String,
    from_part: String,
    to_part: String,
    path: String,
}

fn imports(root: &Path) -> Vec<Import> {
    let mut out = Vec::new();
    for file in rust_files(root) {
        let rel = file.strip_prefix(root).expect("under the root").to_string_lossy().into_owned();
        let mut module: Vec<String> = vec!["server".into()];
        module.extend(rel.trim_end_matches(".rs").split('/').map(str::to_owned));
        if module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        let Some(from_part) = module.get(1).cloned() else { continue };
        let src = std::fs::read_to_string(&file).expect("a readable source file");
        let module: Vec<&str> = module.iter().map(String::as_str).collect();
        for (to_part, path) in paths_in(&src, &module) {
            if to_part != from_part {
                out.push(Import { file: rel.clone(), from_part: from_part.clone(), to_part, path });
            }
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a readable source folder") {
        let path = entry.expect("a readable source folder").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The server parts that the code (not its comments, strings or tests) of a file in `module`
/// names, each with the path as written.
fn paths_in(src: &str, module: &[&str]) -> Vec<(String, String)> {
    let code = strip(src);
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    // Inline modules (name, brace depth inside them), for what `super` means where.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let mut pending_mod: Option<String> = None;
    while i < bytes.len() {
        let rest = &code[i..];
        if rest.starts_with("#[cfg(test)]") {
            // Tests may reach anywhere: skip the item (to its closing brace or semicolon).
            let mut j = i + "#[cfg(test)]".len();
            while j < bytes.len() && bytes[j] != b'{' && bytes[j] != b';' {
                j += 1;
            }
            let mut open = 0usize;
            while j < bytes.len() {
                match bytes[j] {
                    b'{' => open += 1,
                    b'}' => open -= 1,
                    _ => {}
                }
                j += 1;
                if open == 0 {
                    break;
                }
            }
            i = j;
            continue;
        }
        let c = bytes[i];
        if c == b'{' {
            depth += 1;
            if let Some(name) = pending_mod.take() {
                inline.push((name, depth));
            }
            i += 1;
            continue;
        }
        if c == b'}' {
            if inline.last().is_some_and(|(_, d)| *d == depth) {
                inline.pop();
            }
            depth = depth.saturating_sub(1);
            i += 1;
            continue;
        }
        if c == b';' {
            pending_mod = None;
        }
        let at_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':');
        if at_word && rest.starts_with("mod ") {
            let name: String = rest[4..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            pending_mod = Some(name);
            i += 4;
            continue;
        }
        if at_word && (rest.starts_with("crate::server::") || rest.starts_with("super::")) {
            let len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
            let path = &rest[..len];
            let mut here: Vec<&str> = module.to_vec();
            here.extend(inline.iter().map(|(n, _)| n.as_str()));
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let target: Vec<&str> = if segments[0] == "crate" {
                segments[1..].to_vec()
            } else {
                let ups = segments.iter().take_while(|s| **s == "super").count();
                let mut base = here[..here.len().saturating_sub(ups)].to_vec();
                base.extend(&segments[ups..]);
                base
            };
            let mut parts = Vec::new();
            if target.len() >= 2 && target[0] == "server" {
                // A name the server re-exports for applications (`crate::server::State`) hides
                // its layer: reported as a part of its own, which no layer may use.
                parts.push(target[1].to_owned());
            } else if target == ["server"] && rest[len..].starts_with('{') {
                // `crate::server::{a::B, c}`: each item names a part.
                let close = rest[len..].find('}').map_or(rest.len(), |e| len + e);
                for item in rest[len + 1..close].split(',') {
                    let first = item.trim().split("::").next().unwrap_or("");
                    if !first.is_empty() {
                        parts.push(first.to_owned());
                    }
                }
            }
            for part in parts {
                found.push((part, path.to_owned()));
            }
            i += len;
            continue;
        }
        i += 1;
    }
    found
}

/// `src` with comments, string literals and char literals blanked (same length).
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = b[i..].iter().position(|c| *c == b'\n').map_or(b.len(), |e| i + e);
            blank(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'r' && (b[i..].starts_with(b"r#\"") || b[i..].starts_with(b"r\"")) {
            let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let start = i + 2 + hashes;
            let end = src[start..].find(&close).map_or(b.len(), |e| start + e + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'\'' {
            // A char literal ('x', '\n', '{'), not a lifetime ('a).
            let len = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..].iter().position(|c| *c == b'\'').map(|e| e + 3)
            } else {
                let ch = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                (b.get(i + 1 + ch) == Some(&b'\'')).then_some(ch + 2)
            };
            match len {
                Some(len) => {
                    blank(&mut out, i, i + len);
                    i += len;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_default()
}
