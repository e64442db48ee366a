//! `microctl monitoring add|list|revoke`: monitoring credentials, client certificates that may
//! read every member's metrics and status over HTTPS and nothing else (for Prometheus, say).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use microcluster::api::{MonitorCredential, MonitorRecord};
use serde_json::json;

use crate::format::Listing;

/// Writes the credential's certificate and key as `DIR/NAME.crt` and `DIR/NAME.key` (0600),
/// refusing to replace existing files; returns their paths.
pub(crate) fn write(credential: &MonitorCredential, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join(format!("{}.crt", credential.name));
    let key = dir.join(format!("{}.key", credential.name));
    for path in [&cert, &key] {
        if path.exists() {
            bail!("{} exists already; move it away or give another --out directory", path.display());
        }
    }
    for (path, text, mode) in [(&key, &credential.key, 0o600), (&cert, &credential.certificate, 0o644)] {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
        file.sync_all().with_context(|| format!("writing {}", path.display()))?;
    }
    Ok((cert, key))
}

/// NAME, FINGERPRINT, CREATED.
pub(crate) fn listing(monitors: &[MonitorRecord]) -> Listing {
    let header = ["NAME", "FINGERPRINT", "CREATED"].map(String::from).to_vec();
    let cells = monitors.iter().map(|m| vec![m.name.clone(), m.fingerprint.clone(), m.created.clone()]).collect();
    let records = monitors.iter().map(|m| vec![json!(m.name), json!(m.fingerprint), json!(m.created)]).collect();
    Listing { header, cells, keys: vec!["name", "fingerprint", "created"], records, json: json!(monitors) }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_credential_is_written_once_with_its_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let credential = MonitorCredential {
            name: "prometheus".into(),
            fingerprint: "ab".into(),
            certificate: "CERT".into(),
            key: "KEY".into(),
        };
        let (cert, key) = write(&credential, dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&cert).unwrap(), "CERT");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let again = write(&credential, dir.path()).unwrap_err().to_string();
        assert!(again.contains("exists already"), "{again}");
    }
}
