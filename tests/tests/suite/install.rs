//! `make install`'s recipe, staged: `make install-files` with this build's binaries into a
//! temporary DESTDIR puts the binaries, the unit (pointing at PREFIX), the default config (kept
//! when it exists), man pages and completions where a Debian system looks for them. The
//! release build `make install` runs first is left out: it is the ordinary `cargo build`.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use microcluster_tests::binaries;

fn stage(destdir: &std::path::Path) -> std::process::Output {
    Command::new("make")
        .arg("-C")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .arg("install-files")
        .arg(format!("RELEASE={}", binaries().dir.display()))
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg("PREFIX=/usr")
        .output()
        .unwrap()
}

#[test]
fn install_puts_everything_in_place_and_keeps_an_edited_config() {
    if Command::new("make").arg("--version").output().is_err() {
        eprintln!("SKIPPED: make is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = stage(dir.path());
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let root = dir.path();
    for binary in ["usr/bin/microd", "usr/bin/microctl"] {
        let mode = std::fs::metadata(root.join(binary)).unwrap().permissions().mode();
        assert_eq!(mode & 0o755, 0o755, "{binary}");
    }
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/microd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/microd --config /etc/microd/microd.toml"), "{unit}");
    for line in ["Type=notify", "WatchdogSec=", "StateDirectory=microd", "ProtectSystem=strict", "NoNewPrivileges=yes"]
    {
        assert!(unit.contains(line), "{line} missing from the unit:\n{unit}");
    }
    let config = root.join("etc/microd/microd.toml");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/microd.toml")).unwrap()
    );
    for page in ["microd.1", "microctl.1", "microctl-cluster-recover.1", "microctl-database-backup.1"] {
        let text = std::fs::read_to_string(root.join("usr/share/man/man1").join(page)).unwrap();
        assert!(text.contains(".TH"), "{page}");
        if !page.contains('-') {
            for section in [".SH ENVIRONMENT", ".SH FILES", ".SH \"EXIT STATUS\""] {
                assert!(text.contains(section), "{section} missing from {page}");
            }
        }
    }
    for completion in [
        "usr/share/bash-completion/completions/microctl",
        "usr/share/zsh/site-functions/_microctl",
        "usr/share/fish/vendor_completions.d/microctl.fish",
    ] {
        assert!(std::fs::metadata(root.join(completion)).unwrap().len() > 1000, "{completion}");
    }
    // A second install keeps the operator's config.
    std::fs::write(&config, "heartbeat = \"5s\"\n").unwrap();
    assert!(stage(dir.path()).status.success());
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "heartbeat = \"5s\"\n");
}
