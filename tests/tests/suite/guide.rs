//! The operator's guide (`docs/operator.md`), run as written (and the library guide's commands,
//! `docs/library.md`, with the kv example): every `sh` block but the install
//! blocks (which build release binaries or a package and install them system-wide; `make
//! test-deb` runs the tutorial against the installed package),
//! in order, in one `bash -euo pipefail`, with this build's binaries first in `PATH`. Only the
//! paths under `/tmp/` and the addresses `127.0.0.1:9xxx` are replaced, by a temporary
//! directory and free loopback addresses, so that the run never collides with anything.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use microcluster_tests::{binaries, free_address};

/// Kills the guide's process group (its `microd`s included), whatever happens.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0)]).status();
    }
}

/// The `sh` blocks of a document, without the ones that install.
fn blocks(section: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks.retain(|b| !b.contains("make install") && !b.contains("apt install"));
    blocks
}

/// Replaces `/tmp/` with `tmp` and each `127.0.0.1:PORT` with a free address of its own.
fn localise(script: &str, tmp: &str) -> String {
    let mut addresses: BTreeMap<String, String> = BTreeMap::new();
    let mut out = String::new();
    let mut rest = script;
    while let Some(at) = rest.find("127.0.0.1:") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "127.0.0.1:".len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let original = &rest[at..at + "127.0.0.1:".len() + digits];
        out.push_str(addresses.entry(original.to_owned()).or_insert_with(free_address));
        rest = &rest[at + original.len()..];
    }
    out.push_str(rest);
    out.replace("/tmp/", &format!("{tmp}/"))
}

/// Runs `script` in `bash -euo pipefail -x` in `dir`, with this build's binaries first in `PATH`,
/// in a process group of its own that is killed at the end whatever happens; returns whether it
/// succeeded and everything it printed (commands echoed, so a failure shows where it happened).
fn run(script: &str, dir: &std::path::Path, limit: Duration) -> (std::process::ExitStatus, String) {
    let path = dir.join("guide.sh");
    std::fs::write(&path, format!("set -euo pipefail\nset -x\n{script}")).unwrap();
    let log = dir.join("guide.log");
    let out = std::fs::File::create(&log).unwrap();
    let bin = binaries().microd.parent().unwrap().to_owned();
    let child = Command::new("bash")
        .arg(&path)
        .current_dir(dir)
        .env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()))
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .process_group(0)
        .spawn()
        .unwrap();
    let _group = Group(child.id());
    let mut child = child;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            panic!("the guide did not finish in {limit:?}:\n{}", std::fs::read_to_string(&log).unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("the guide ran in {:.1} s", started.elapsed().as_secs_f64());
    (status, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn the_operators_guide_works_as_written() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operator.md")).unwrap();
    let blocks = blocks(&guide);
    assert!(blocks.len() >= 10, "the guide has {} runnable blocks", blocks.len());
    let tmp = tempfile::Builder::new().prefix("guide-").tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap().to_owned();
    let script = localise(&blocks.concat(), &dir);
    let (status, output) = run(&script, tmp.path(), Duration::from_secs(300));
    if std::env::var_os("GUIDE_LOG").is_some() {
        eprintln!("{output}");
    }
    assert!(status.success(), "the guide failed ({status}):\n{output}");
    // What the guide promises along the way, in its own output.
    for expected in [
        "written through mc2",
        "backed up to",
        "verified by restoring and comparing",
        "restored from",
        "0 problems",
        "microcluster_members{",
        "Recovery",
        "dropped mc2, mc3",
    ] {
        assert!(output.contains(expected), "{expected:?} missing from the guide's output:\n{output}");
    }
    // After the recovery mc1 is alone: the lost members are gone from its list.
    let after = &output[output.rfind("Recovery ").unwrap()..];
    assert!(after.contains("| mc1 ") && !after.contains("| mc2 ") && !after.contains("| mc3 "), "{after}");
    // The row written before the disaster came back three times: read on mc3, restored, recovered.
    assert!(output.matches("| written through mc2").count() >= 3, "{output}");
    assert_eq!(std::fs::read_to_string(tmp.path().join("notes.csv")).unwrap(), "id,body\n1,written through mc2\n");
}

/// The library guide's commands (`docs/library.md`): the kv example started, initialised and
/// used with curl, with this build's `kv` and `microctl` in place of the release build the
/// guide makes first.
#[test]
fn the_library_guide_works_as_written() {
    let kv = binaries().dir.join("examples/kv");
    assert!(kv.exists(), "{} is missing: `cargo build -p microcluster --example kv` builds it", kv.display());
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/library.md")).unwrap();
    let blocks = blocks(&guide);
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    let tmp = tempfile::Builder::new().prefix("library-guide-").tempdir().unwrap();
    let built: String = blocks[0].lines().filter(|l| !l.starts_with("cargo build")).map(|l| format!("{l}\n")).collect();
    let script = localise(&built, tmp.path().to_str().unwrap())
        .replace("./target/release/examples/kv", kv.to_str().unwrap())
        .replace("./target/release/microctl", binaries().microctl.to_str().unwrap());
    assert!(!script.contains("./target/release"), "{script}");
    let (status, output) = run(&script, tmp.path(), Duration::from_secs(120));
    assert!(status.success(), "the library guide failed ({status}):\n{output}");
    // `curl http://…/hello` printed the value the PUT stored.
    assert!(output.contains(r#""metadata":"world"}"#), "no `world` in the guide's output:\n{output}");
}

#[test]
fn localising_replaces_addresses_consistently_and_paths() {
    let out = localise("a 127.0.0.1:9001 b 127.0.0.1:9002 c 127.0.0.1:9001 /tmp/mc1", "/x");
    let words: Vec<&str> = out.split(' ').collect();
    assert_eq!(words[1], words[5]);
    assert_ne!(words[1], words[3]);
    assert!(!out.contains(":9001"));
    assert!(out.ends_with(" /x/mc1"));
}
