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
    for import in imports.iter().filter(|i| i.from_part != i.to_part) {
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
fn no_module_of_the_server_is_in_an_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let modules: BTreeSet<Vec<String>> = rust_files(&root).iter().map(|f| module_of(&root, f)).collect();
    // Each import as an arrow between files' modules; a module and the modules it holds (a
    // folder's `mod.rs` and its files) belong together and are no circle.
    let mut arrows = BTreeMap::<Vec<String>, BTreeSet<Vec<String>>>::new();
    for import in imports(&root) {
        let Some(to) =
            (1..=import.target.len()).rev().map(|n| import.target[..n].to_vec()).find(|m| modules.contains(m))
        else {
            continue;
        };
        if !to.starts_with(&import.from) && !import.from.starts_with(&to) {
            arrows.entry(import.from.clone()).or_default().insert(to);
        }
    }
    let reaches = |from: &Vec<String>, goal: &Vec<String>| {
        let (mut seen, mut next) = (BTreeSet::new(), vec![from.clone()]);
        while let Some(at) = next.pop() {
            for to in arrows.get(&at).into_iter().flatten() {
                if to == goal {
                    return true;
                }
                if seen.insert(to.clone()) {
                    next.push(to.clone());
                }
            }
        }
        false
    };
    let circles: Vec<String> = arrows
        .iter()
        .flat_map(|(from, tos)| {
            tos.iter().filter(|to| reaches(to, from)).map(move |to| format!("{} -> {}", from.join("::"), to.join("::")))
        })
        .collect();
    assert!(
        circles.is_empty(),
        "imports in a circle (each arrow leads back to where it starts):\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_parser_sees_each_form_of_import() {
    let src = "use crate::server::db::{members, Db};\nuse super::super::state::State;\n\
               fn f() { crate::server::rest::servers::apply(); let s = \"crate::server::lifecycle\"; }\n\
               // crate::server::lifecycle in a comment\nmod inner { use super::super::super::domain::roles; }\n\
               #[cfg(test)]\nmod tests { use crate::server::lifecycle::app; }\n";
    let found: Vec<String> =
        paths_in(src, &["server", "domain", "membership"]).into_iter().map(|(target, _)| target.join("::")).collect();
    assert_eq!(
        found,
        [
            "server::db::members",
            "server::db::Db",
            "server::state::State",
            "server::rest::servers::apply",
            "server::domain::roles"
        ]
    );
}

/// The layer's index (0 at the top), for a part of the server.
fn rank(part: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == part)
}

struct Import {
    file: String,
    /// The importing file's module path, from the crate's root.
    from: Vec<String>,
    from_part: String,
    to_part: String,
    /// What it names, from the crate's root.
    target: Vec<String>,
    path: String,
}

fn imports(root: &Path) -> Vec<Import> {
    let mut out = Vec::new();
    for file in rust_files(root) {
        let rel = file.strip_prefix(root).expect("under the root").to_string_lossy().into_owned();
        let module = module_of(root, &file);
        let Some(from_part) = module.get(1).cloned() else { continue };
        let src = std::fs::read_to_string(&file).expect("a readable source file");
        let module: Vec<&str> = module.iter().map(String::as_str).collect();
        for (target, path) in paths_in(&src, &module) {
            // A name the server re-exports for applications (`crate::server::State`) hides its
            // layer: it counts as a part of its own, which no layer may use.
            let Some(to_part) = target.get(1).filter(|_| target[0] == "server").cloned() else { continue };
            out.push(Import {
                file: rel.clone(),
                from: module.iter().map(|s| s.to_string()).collect(),
                from_part: from_part.clone(),
                to_part,
                target,
                path,
            });
        }
    }
    out
}

/// The module path of a file of the server, from the crate's root.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).expect("under the root").to_string_lossy().into_owned();
    let mut module: Vec<String> = vec!["server".into()];
    module.extend(rel.trim_end_matches(".rs").split('/').map(str::to_owned));
    if module.last().is_some_and(|m| m == "mod") {
        module.pop();
    }
    module
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

/// The paths (from the crate's root) that the code (not its comments, strings or tests) of a
/// file in `module` names, each with the path as written.
fn paths_in(src: &str, module: &[&str]) -> Vec<(Vec<String>, String)> {
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
            // `a::{b, c::D}`: each item is a path of its own.
            let mut targets = Vec::new();
            if rest[len..].starts_with('{') {
                let close = rest[len..].find('}').map_or(rest.len(), |e| len + e);
                for item in rest[len + 1..close].split(',') {
                    let item: Vec<&str> = item.trim().split("::").filter(|s| !s.is_empty() && *s != "self").collect();
                    let mut full = target.clone();
                    full.extend(item);
                    targets.push(full);
                }
            } else {
                targets.push(target);
            }
            for target in targets {
                found.push((target.iter().map(|s| s.to_string()).collect(), path.to_owned()));
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
