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
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=microd",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "User=microd",
        "UMask=0077",
        "ProtectProc=invisible",
        "ProcSubset=pid",
        "PrivateMounts=yes",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(line), "{line} missing from the unit:\n{unit}");
    }
    let sysusers = std::fs::read_to_string(root.join("usr/lib/sysusers.d/microd.conf")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u microd ")), "{sysusers}");
    // systemd's own judgement of the unit (lower is better; 2.5 before this hardening).
    match Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(root.join("etc/systemd/system/microd.service"))
        .output()
    {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let level: f64 = text
                .lines()
                .find_map(|l| l.split("Overall exposure level for microd.service: ").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
            eprintln!("systemd-analyze security: exposure {level}");
            assert!(level <= 1.5, "the unit's exposure is {level}");
        }
        other => {
            eprintln!("SKIPPED the exposure check: systemd-analyze security --offline is not available ({other:?})")
        }
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

/// Under systemd, `StateDirectory=` tells microd where its state is (`$STATE_DIRECTORY`), and
/// a state directory the unit leaves read-only is an error that says what to add.
#[test]
fn microd_follows_the_units_state_directory_and_says_what_a_read_only_one_needs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut daemon = Command::new(&binaries().microd)
        .env("STATE_DIRECTORY", &state)
        .env_remove("STATE_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = state.join("control.socket");
    let found = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        socket.exists()
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(found, "no control socket in $STATE_DIRECTORY");

    // A read-only file system, as ProtectSystem=strict makes everything but the unit's own.
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"]).arg(&ro).status();
    if !mounted.is_ok_and(|s| s.success()) {
        return eprintln!("SKIPPED the read-only part: cannot mount a tmpfs here (needs root)");
    }
    let out = Command::new(&binaries().microd)
        .arg("--state-dir")
        .arg(ro.join("state"))
        .env("INVOCATION_ID", "0123456789abcdef")
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&ro).status();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("ReadWritePaths=") && stderr.contains("systemctl edit microd"), "{stderr}");
}
