//! Queries on `core_cluster_members`.

use dqlite::{Row, Transaction, Value};

use super::{int, text};

/// A member row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberRow {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) certificate: String,
    pub(crate) schema_internal: u64,
    pub(crate) schema_external: u64,
    pub(crate) heartbeat: String,
    pub(crate) role: String,
    pub(crate) api_extensions: Vec<String>,
}

const COLUMNS: &str = "name, address, certificate, schema_internal, schema_external, heartbeat, role, api_extensions";

fn from_row(row: &Row) -> MemberRow {
    let extensions = text(row.get(7));
    MemberRow {
        name: text(row.get(0)),
        address: text(row.get(1)),
        certificate: text(row.get(2)),
        schema_internal: int(row.get(3)).max(0) as u64,
        schema_external: int(row.get(4)).max(0) as u64,
        heartbeat: text(row.get(5)),
        role: text(row.get(6)),
        api_extensions: serde_json::from_str(&extensions).unwrap_or_default(),
    }
}

/// Every member, by name.
pub(crate) async fn list(tx: &mut Transaction<'_>) -> dqlite::Result<Vec<MemberRow>> {
    let rows = tx.query(&format!("SELECT {COLUMNS} FROM core_cluster_members ORDER BY name"), &[]).await?;
    Ok(rows.rows.iter().map(from_row).collect())
}

/// Inserts a member.
pub(crate) async fn insert(tx: &mut Transaction<'_>, m: &MemberRow) -> dqlite::Result<()> {
    let extensions = serde_json::to_string(&m.api_extensions).unwrap_or_else(|_| "[]".into());
    tx.exec(
        &format!("INSERT INTO core_cluster_members ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"),
        &[
            m.name.as_str().into(),
            m.address.as_str().into(),
            m.certificate.as_str().into(),
            Value::Integer(m.schema_internal as i64),
            Value::Integer(m.schema_external as i64),
            m.heartbeat.as_str().into(),
            m.role.as_str().into(),
            extensions.into(),
        ],
    )
    .await
    .map(drop)
}

/// Deletes a member by name; returns whether it existed.
pub(crate) async fn delete(tx: &mut Transaction<'_>, name: &str) -> dqlite::Result<bool> {
    let result = tx.exec("DELETE FROM core_cluster_members WHERE name = ?", &[name.into()]).await?;
    Ok(result.rows_affected > 0)
}

/// Records the certificate (or, during a rotation, the two) a member is known by.
pub(crate) async fn set_certificate(tx: &mut Transaction<'_>, name: &str, certificate: &str) -> dqlite::Result<()> {
    tx.exec("UPDATE core_cluster_members SET certificate = ? WHERE name = ?", &[certificate.into(), name.into()])
        .await
        .map(drop)
}

/// Records a member's new address.
pub(crate) async fn set_address(tx: &mut Transaction<'_>, name: &str, address: &str) -> dqlite::Result<()> {
    tx.exec("UPDATE core_cluster_members SET address = ? WHERE name = ?", &[address.into(), name.into()])
        .await
        .map(drop)
}

/// Records the software a member runs.
pub(crate) async fn set_software(
    tx: &mut Transaction<'_>,
    name: &str,
    schema_internal: u64,
    schema_external: u64,
    extensions: &[String],
) -> dqlite::Result<()> {
    let extensions = serde_json::to_string(extensions).unwrap_or_else(|_| "[]".into());
    tx.exec(
        "UPDATE core_cluster_members SET schema_internal = ?, schema_external = ?, api_extensions = ? WHERE name = ?",
        &[
            Value::Integer(schema_internal as i64),
            Value::Integer(schema_external as i64),
            extensions.into(),
            name.into(),
        ],
    )
    .await
    .map(drop)
}

/// Sets a member's role and heartbeat time.
pub(crate) async fn set_heartbeat(
    tx: &mut Transaction<'_>,
    name: &str,
    role: &str,
    heartbeat: &str,
) -> dqlite::Result<()> {
    tx.exec(
        "UPDATE core_cluster_members SET role = ?, heartbeat = ? WHERE name = ?",
        &[role.into(), heartbeat.into(), name.into()],
    )
    .await
    .map(drop)
}
