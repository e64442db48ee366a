//! Queries on `core_monitors`: the monitoring credentials, client certificates that may read a
//! member's metrics and status and nothing else. A credential lives in the database so that
//! its revocation is one committed write every member then sees.

use dqlite::Transaction;

use super::text;

/// A monitoring credential (its private key was handed out once and is not kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MonitorRow {
    pub(crate) name: String,
    /// SHA-256 of its certificate, hex.
    pub(crate) fingerprint: String,
    /// RFC 3339, in the cluster's time.
    pub(crate) created: String,
}

/// Every credential, by name.
pub(crate) async fn list(tx: &mut Transaction<'_>) -> dqlite::Result<Vec<MonitorRow>> {
    let rows = tx.query("SELECT name, fingerprint, created FROM core_monitors ORDER BY name", &[]).await?;
    Ok(rows
        .rows
        .iter()
        .map(|r| MonitorRow { name: text(r.get(0)), fingerprint: text(r.get(1)), created: text(r.get(2)) })
        .collect())
}

/// Records a credential.
pub(crate) async fn insert(
    tx: &mut Transaction<'_>,
    name: &str,
    fingerprint: &str,
    created: &str,
) -> dqlite::Result<()> {
    tx.exec(
        "INSERT INTO core_monitors (name, fingerprint, created) VALUES (?, ?, ?)",
        &[name.into(), fingerprint.into(), created.into()],
    )
    .await
    .map(drop)
}

/// Deletes a credential by name; returns whether it existed.
pub(crate) async fn delete(tx: &mut Transaction<'_>, name: &str) -> dqlite::Result<bool> {
    let result = tx.exec("DELETE FROM core_monitors WHERE name = ?", &[name.into()]).await?;
    Ok(result.rows_affected > 0)
}
