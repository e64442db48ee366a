//! A small real file system for a member's state: ext4 on a loop device, made and removed by
//! the test. Unlike tmpfs, ext4 reserves blocks, allocates extents, journals, and fails a
//! write part-way when it runs out of room, as a member's disk in production does.
//!
//! Needs root (`losetup`, `mount`) and `mkfs.ext4` (e2fsprogs); [`LoopDisk::ext4`] says why
//! it cannot when they are missing, so a test can print `SKIPPED` and pass.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An ext4 file system in a file, mounted on a temporary directory; unmounted and detached when
/// dropped.
#[derive(Debug)]
pub struct LoopDisk {
    /// Where it is mounted.
    pub path: PathBuf,
    device: String,
    _tmp: tempfile::TempDir,
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl LoopDisk {
    /// Makes a `size_mb` MiB ext4 file system (no blocks reserved for root, so "full" means
    /// full for the daemon too) and mounts it; or says why it cannot.
    pub fn ext4(size_mb: u64) -> Result<LoopDisk, String> {
        let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = tmp.path().join("disk.img");
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(size_mb << 20).map_err(|e| e.to_string())?;
        drop(file);
        let image_arg = image.to_str().ok_or("temporary path is not UTF-8")?;
        run("mkfs.ext4", &["-q", "-F", "-m", "0", image_arg])?;
        let device = run("losetup", &["--find", "--show", image_arg])?;
        let path = tmp.path().join("mnt");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        if let Err(err) = run("mount", &["-o", "errors=remount-ro", &device, path.to_str().unwrap_or_default()]) {
            let _ = run("losetup", &["-d", &device]);
            return Err(err);
        }
        Ok(LoopDisk { path, device, _tmp: tmp })
    }

    /// Bytes still free for an unprivileged writer.
    pub fn available(&self) -> u64 {
        let out = run("df", &["--output=avail", "-B1", self.path.to_str().unwrap_or_default()]).unwrap_or_default();
        out.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or(0)
    }

    /// Fills the file system with `filler` files of 1 MiB until a write fails; returns them.
    /// Call it again to take what was freed meanwhile.
    pub fn fill(&self) -> Vec<PathBuf> {
        static ROUND: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let round = ROUND.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let chunk = vec![0x5au8; 1 << 20];
        let mut files = Vec::new();
        for i in 0.. {
            let path = self.path.join(format!("filler-{round}-{i}"));
            let Ok(mut file) = std::fs::File::create(&path) else { break };
            files.push(path);
            if file.write_all(&chunk).and_then(|()| file.sync_all()).is_err() {
                break;
            }
        }
        // What is left below a MiB goes too.
        let tail = self.path.join(format!("filler-{round}-tail"));
        if let Ok(mut file) = std::fs::File::create(&tail) {
            files.push(tail);
            while file.write_all(&chunk[..4096]).is_ok() {}
            let _ = file.sync_all();
        }
        files
    }

    /// Removes filler files until at least `bytes` are free.
    pub fn free(&self, files: &mut Vec<PathBuf>, bytes: u64) {
        while self.available() < bytes {
            let Some(file) = files.pop() else { break };
            let _ = std::fs::remove_file(&file);
            let _ = run("sync", &[&self.path.to_string_lossy()]);
        }
    }

    /// Makes ext4 record an error, as a failing disk does: mounted with `errors=remount-ro`,
    /// the file system turns read-only at once under whatever has files open on it, until it
    /// is unmounted and checked ([`LoopDisk::repair`]).
    pub fn fail(&self) -> Result<(), String> {
        let device = self.device.rsplit('/').next().unwrap_or_default();
        std::fs::write(format!("/sys/fs/ext4/{device}/trigger_fs_error"), "1")
            .map_err(|e| format!("triggering an ext4 error on {device}: {e}"))
    }

    /// Unmounts, checks (`e2fsck -fy`) and mounts again, as an operator does after an error;
    /// nothing may have it open.
    pub fn repair(&self) -> Result<(), String> {
        let path = self.path.to_str().unwrap_or_default();
        let mut last = String::new();
        // A check that leaves an error behind gets the mount read-only again: check once more.
        for _ in 0..3 {
            run("umount", &[path])?;
            // e2fsck exits 1 when it fixed something: that is success here.
            let _ = Command::new("e2fsck").args(["-fy", &self.device]).output().map_err(|e| e.to_string())?;
            run("mount", &["-o", "errors=remount-ro", &self.device, path])?;
            let probe = self.path.join(".repaired");
            match std::fs::write(&probe, b"ok").and_then(|()| std::fs::remove_file(&probe)) {
                Ok(()) => return Ok(()),
                Err(err) => last = err.to_string(),
            }
        }
        Err(format!("{path} is still not writable after three checks: {last}"))
    }

    /// Where the file system is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", self.path.to_str().unwrap_or_default()]);
        let _ = run("losetup", &["-d", &self.device]);
    }
}
