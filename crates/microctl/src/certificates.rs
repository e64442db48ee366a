//! `microctl cluster certificates rotate|set`: replacing the cluster's certificates while it
//! runs, with new ones or with pairs the operator supplies as files.

use std::path::Path;

use anyhow::Context;
use microcluster::api::{CertificatesRotated, KeyPair};
use microcluster::cert_check::{self, Purpose, Supplied};
use serde_json::json;

use crate::format::Listing;

/// Reads a supplied pair for `name` (`cluster` or a member's name) and checks it here, before
/// anything is sent: a bad file is refused naming the file and the problem.
/// With `ca` (only for `cluster`), the CA every member's certificate must be issued by from then
/// on.
pub(crate) fn read_pair(name: &str, cert: &Path, key: &Path, ca: Option<&Path>) -> anyhow::Result<KeyPair> {
    anyhow::ensure!(ca.is_none() || name == "cluster", "--ca goes with the cluster's certificate (`set cluster`)");
    anyhow::ensure!(
        [Some(cert), Some(key), ca].iter().flatten().filter(|p| **p == Path::new("-")).count() <= 1,
        "only one of the files can be standard input (`-`)"
    );
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    let purpose = if name == "cluster" { Purpose::Cluster } else { Purpose::Member(name) };
    let (cert_path, key_path) = (cert.display().to_string(), key.display().to_string());
    cert_check::check_pair(
        purpose,
        Supplied { path: &cert_path, pem: &cert_pem },
        Supplied { path: &key_path, pem: &key_pem },
        None,
        std::time::SystemTime::now(),
    )?;
    let ca = match ca {
        Some(path) => read_ca(path)?,
        None => String::new(),
    };
    Ok(KeyPair { cert: cert_pem, key: key_pem, ca })
}

/// Reads a CA file and checks it here (each certificate a CA, valid now).
pub(crate) fn read_ca(path: &Path) -> anyhow::Result<String> {
    let pem = read(path)?;
    let shown = path.display().to_string();
    cert_check::check_ca(Supplied { path: &shown, pem: &pem }, std::time::SystemTime::now())?;
    Ok(pem)
}

/// A file's text, or (`-`) standard input's, at most 1 MiB.
fn read(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        use std::io::Read;
        let mut text = String::new();
        std::io::stdin().lock().take(1024 * 1024 + 1).read_to_string(&mut text).context("reading standard input")?;
        anyhow::ensure!(text.len() <= 1024 * 1024, "standard input: more than 1 MiB is not a certificate or key");
        return Ok(text);
    }
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    // Certificates and keys are a few kilobytes; anything far larger is not one.
    anyhow::ensure!(
        meta.len() <= 1024 * 1024,
        "{}: {} bytes is too large for a certificate or key",
        path.display(),
        meta.len()
    );
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// WHAT, NEW FINGERPRINT (or why a member was skipped).
pub(crate) fn listing(rotated: &CertificatesRotated) -> Listing {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    if let Some(cluster) = &rotated.cluster {
        rows.push(("cluster".into(), "replaced".into(), cluster.clone()));
    }
    for (member, fingerprint) in &rotated.members {
        rows.push((format!("member {member}"), "replaced".into(), fingerprint.clone()));
    }
    for (server, fingerprint) in &rotated.servers {
        rows.push((format!("server {server}"), "replaced".into(), fingerprint.clone()));
    }
    for (member, why) in &rotated.skipped {
        rows.push((format!("member {member}"), "skipped".into(), why.clone()));
    }
    match rotated.ca {
        Some(true) => rows.push(("CA".into(), "required".into(), "members' certificates must be issued by it".into())),
        Some(false) => rows.push(("CA".into(), "not required".into(), "pinning alone".into())),
        None => {}
    }
    let header = ["CERTIFICATE", "OUTCOME", "FINGERPRINT OR REASON"].map(String::from).to_vec();
    let cells = rows.iter().map(|(a, b, c)| vec![a.clone(), b.clone(), c.clone()]).collect();
    let records = rows.iter().map(|(a, b, c)| vec![json!(a), json!(b), json!(c)]).collect();
    Listing {
        header,
        cells,
        keys: vec!["certificate", "outcome", "detail"],
        records,
        json: serde_json::to_value(rotated).unwrap_or_default(),
    }
}
