//! `microctl database backup|restore|verify`: backups as ordinary SQLite files, written
//! atomically and readable only by their owner (they hold every table, join tokens included).
//! On a terminal a progress line shows what runs and for how long.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use microcluster::api::BackupSummary;
use microcluster::client::{Client, MAX_BACKUP};
use serde_json::json;

use crate::format::{Format, Listing};
use crate::progress;

/// Backups, restores and checks copy the whole database: far longer than a request's default.
const BACKUP_TIMEOUT: Duration = Duration::from_secs(600);

/// Takes a backup into `file` (replacing it only once the new one is complete), or (`-`) onto
/// standard output, the summary then going to standard error.
pub(crate) async fn backup(client: &Client, file: &Path, verify: bool, format: Format) -> anyhow::Result<String> {
    let to_stdout = file == Path::new("-");
    if to_stdout && std::io::stdout().is_terminal() {
        bail!("standard output is a terminal: redirect the backup (`> FILE`, `| ssh …`) or give a file name");
    }
    let what = if verify { "taking a backup and verifying it" } else { "taking a backup" };
    let client = client.clone().with_timeout(BACKUP_TIMEOUT);
    let (summary, bytes) =
        progress::while_running(what, format, client.backup(verify)).await.context("taking a backup")?;
    if to_stdout {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&bytes).and_then(|()| stdout.flush()).context("writing the backup to standard output")?;
        eprint!("{}", render(&summary, "backed up to standard output", format));
        return Ok(String::new());
    }
    write_private(file, &bytes)?;
    Ok(render(&summary, &format!("backed up to {}", file.display()), format))
}

/// Restores `file` into the cluster.
pub(crate) async fn restore(client: &Client, file: &Path, replace: bool, format: Format) -> anyhow::Result<String> {
    let bytes = read_backup(file)?;
    let what = format!("restoring {} ({})", file.display(), progress::size(bytes.len() as u64));
    let client = client.clone().with_timeout(BACKUP_TIMEOUT);
    let work = client.restore(bytes.into(), replace);
    let summary =
        progress::while_running(&what, format, work).await.with_context(|| format!("restoring {}", file.display()))?;
    Ok(render(&summary, &format!("restored from {}", file.display()), format))
}

/// Proves that `file` restores, without touching the cluster.
pub(crate) async fn verify(client: &Client, file: &Path, format: Format) -> anyhow::Result<String> {
    let bytes = read_backup(file)?;
    let what = format!("verifying {} ({}) by restoring it aside", file.display(), progress::size(bytes.len() as u64));
    let client = client.clone().with_timeout(BACKUP_TIMEOUT);
    let work = client.verify_backup(bytes.into());
    let summary =
        progress::while_running(&what, format, work).await.with_context(|| format!("verifying {}", file.display()))?;
    Ok(render(&summary, &format!("{} restores", file.display()), format))
}

fn read_backup(file: &Path) -> anyhow::Result<Vec<u8>> {
    if file == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .lock()
            .take(MAX_BACKUP as u64 + 1)
            .read_to_end(&mut bytes)
            .context("reading the backup from standard input")?;
        if bytes.len() > MAX_BACKUP {
            bail!("standard input holds more than {MAX_BACKUP} bytes, more than a backup may");
        }
        return Ok(bytes);
    }
    let size = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?.len();
    if size > MAX_BACKUP as u64 {
        bail!("{} has {size} bytes; a backup holds at most {MAX_BACKUP}", file.display());
    }
    std::fs::read(file).with_context(|| format!("reading {}", file.display()))
}

/// Writes `bytes` to a new file next to `path` with mode 0600, then renames it over `path`.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().with_context(|| format!("{} is not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path))
        // The rename itself, made durable: a power cut must leave the old backup or the new one.
        .and_then(|()| match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(dir) => std::fs::File::open(dir).and_then(|d| d.sync_all()),
            None => std::fs::File::open(".").and_then(|d| d.sync_all()),
        });
    if let Err(err) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// The summary: one line of totals and a table of row counts, or the object as JSON/YAML/CSV.
fn render(summary: &BackupSummary, what: &str, format: Format) -> String {
    let tables = Listing {
        header: vec!["TABLE".into(), "ROWS".into()],
        cells: summary.tables.iter().map(|t| vec![t.name.clone(), t.rows.to_string()]).collect(),
        keys: vec!["table", "rows"],
        records: summary.tables.iter().map(|t| vec![json!(t.name), json!(t.rows)]).collect(),
        json: serde_json::to_value(summary).unwrap_or_default(),
    };
    match format {
        // The people's formats: a line of totals, then the table.
        Format::Table | Format::Compact => {
            let verified = if summary.verified { ", verified by restoring and comparing" } else { "" };
            format!(
                "{what}: {} tables, {} rows, {} bytes, schema {}/{}, sha256 {}{verified}\n{}",
                summary.tables.len(),
                summary.rows,
                summary.size,
                summary.schema_internal,
                summary.schema_external,
                summary.checksum,
                tables.render(format)
            )
        }
        _ => tables.render(format),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use microcluster::api::TableRows;

    #[test]
    fn backups_are_written_privately_and_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        std::fs::write(&path, b"old").unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert!(write_private(&dir.path().join("missing/b.db"), b"x").is_err());
    }

    #[test]
    fn summaries_render_in_every_format() {
        let summary = BackupSummary {
            tables: vec![TableRows { name: "t".into(), rows: 2 }],
            rows: 2,
            checksum: "ab".into(),
            schema_internal: 1,
            schema_external: 2,
            size: 4096,
            verified: true,
        };
        let table = render(&summary, "backed up to x", Format::Table);
        assert!(table.starts_with("backed up to x: 1 tables, 2 rows, 4096 bytes, schema 1/2, sha256 ab, verified"));
        assert!(table.contains("| t     | 2    |"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&render(&summary, "", Format::Json)).unwrap();
        assert_eq!(json["checksum"], "ab");
        assert_eq!(render(&summary, "", Format::Csv), "table,rows\nt,2\n");
        let compact = render(&summary, "backed up to x", Format::Compact);
        assert!(compact.ends_with(", verified by restoring and comparing\nTABLE  ROWS\nt      2\n"), "{compact}");
    }
}
