//! Backups of the cluster database: a consistent copy (dqlite DUMP from the leader, made one
//! ordinary SQLite file), restoring such a file into a cluster, and proving that one restores
//! (into a scratch dqlite node that lives only for the check).
//!
//! A backup holds every table, but a restore copies only the application's: the membership,
//! tokens and schema records of the cluster being restored into are its own. Both sides of a
//! check are summarised the same way (rows per table and a SHA-256 over every row in a fixed
//! order), so "verified" means the restored tables hold exactly the backup's rows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dqlite::Value;
use dqlite::file::{FileError, SqliteFile, write_dump};

use crate::server::db::DB_NAME;
use crate::server::db::schema::Versions;
use crate::server::error::{Error, ErrorKind};
use crate::server::state::State;

mod copy;
mod summary;
use crate::api::BackupSummary;
use copy::{Sink, copy_rows};
use summary::{compare, summarize_db, summarize_file};

/// The largest backup: one DUMP answer (libdqlite 1.11 sends the whole database in one message).
pub(crate) const MAX_BACKUP: usize = dqlite::DEFAULT_MAX_MESSAGE as usize;

/// Tables that belong to the cluster, not to the application: kept in a backup, never restored.
const CORE_TABLES: [&str; 4] = ["schemas", "core_cluster_members", "core_token_records", "core_monitors"];
/// dqlite's limit on parameters per statement.
const MAX_PARAMS: usize = 255;

/// A backup as it leaves the daemon.
#[derive(Debug)]
pub(crate) struct Backup {
    /// The SQLite file.
    pub(crate) bytes: Vec<u8>,
    /// What it holds.
    pub(crate) summary: BackupSummary,
}

/// A private scratch directory under the state directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(state: &State, kind: &str) -> Result<Scratch, Error> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = state.state_dir().join("scratch").join(format!("{kind}-{nanos}"));
        std::fs::create_dir_all(&path)
            .map_err(|e| Error::internal(format!("creating the scratch directory {}: {e}", path.display())))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(state.state_dir().join("scratch"), std::fs::Permissions::from_mode(0o700));
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A backup file SQLite cannot read is the caller's (400); a file system failure is ours.
impl From<FileError> for Error {
    fn from(err: FileError) -> Error {
        match err {
            FileError::Sqlite { .. } => Error::invalid(err.to_string()),
            _ => Error::wrap(err),
        }
    }
}

fn file_error(what: &str) -> impl Fn(FileError) -> Error + '_ {
    move |err| Error::from(err).context(what)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::internal(format!("backup task failed: {e}")))?
}

/// Takes a backup: the leader's copy of the database (consistent: libdqlite answers a DUMP
/// between transactions), as one SQLite file; with `verify`, first proves it restores.
pub(crate) async fn take(state: &State, verify: bool) -> Result<Backup, Error> {
    let runtime = state.online_runtime()?;
    let client = runtime.db.client().clone();
    let leader = client.leader().await.map_err(Error::from)?;
    let files = client.dump(&leader.address, DB_NAME).await.map_err(|e| Error::from(e).context("dumping"))?;
    let scratch = Scratch::new(state, "backup")?;
    let path = scratch.0.join("backup.db");
    let (bytes, summary) = blocking({
        let path = path.clone();
        move || {
            write_dump(&files, DB_NAME, &path).map_err(file_error("writing the dump"))?;
            let mut file = SqliteFile::open_read_only(&path).map_err(file_error("reading the backup"))?;
            let summary = summarize_file(&mut file)?;
            let bytes = std::fs::read(&path).map_err(|e| Error::internal(format!("reading the backup: {e}")))?;
            Ok((bytes, summary))
        }
    })
    .await?;
    let summary = if verify { verify_file(state, &path, summary).await? } else { summary };
    let size = bytes.len() as u64;
    Ok(Backup { bytes, summary: BackupSummary { size, ..summary } })
}

/// Proves that a backup file restores: into a scratch node, compared with the file.
pub(crate) async fn verify(state: &State, body: bytes::Bytes) -> Result<BackupSummary, Error> {
    let scratch = Scratch::new(state, "verify")?;
    let path = scratch.0.join("backup.db");
    let summary = blocking({
        let path = path.clone();
        move || {
            std::fs::write(&path, &body).map_err(|e| Error::internal(format!("storing the upload: {e}")))?;
            let mut file = open_backup(&path)?;
            summarize_file(&mut file)
        }
    })
    .await?;
    let summary = verify_file(state, &path, summary).await?;
    Ok(BackupSummary { size: std::fs::metadata(&path).map_or(0, |m| m.len()), ..summary })
}

/// Restores a backup into this cluster's application tables. Refuses when the schema versions
/// differ, or (without `replace`) when a table already holds rows. Large backups are copied in
/// several transactions; the result is then compared with the file.
pub(crate) async fn restore(state: &State, body: bytes::Bytes, replace: bool) -> Result<BackupSummary, Error> {
    let runtime = state.online_runtime()?;
    let scratch = Scratch::new(state, "restore")?;
    let path = scratch.0.join("backup.db");
    let size = body.len() as u64;
    let (expected, schema) = blocking({
        let path = path.clone();
        move || {
            std::fs::write(&path, &body).map_err(|e| Error::internal(format!("storing the upload: {e}")))?;
            let mut file = open_backup(&path)?;
            Ok((summarize_file(&mut file)?, read_schema(&mut file)?))
        }
    })
    .await?;
    let db = &runtime.db;
    let ours = crate::server::db::schema::applied(db).await?;
    let theirs = Versions { internal: expected.schema_internal, external: expected.schema_external };
    if ours != theirs {
        return Err(Error::conflict(format!(
            "the backup has schema versions {}/{} (internal/application), this cluster {}/{}: restore it into a \
             cluster running the software that made it",
            theirs.internal, theirs.external, ours.internal, ours.external
        )));
    }

    // Which tables exist here, and which already hold rows.
    let existing = db.query("SELECT name FROM sqlite_master WHERE type = 'table'", &[]).await?;
    let existing: Vec<String> = existing.rows.iter().map(|r| crate::server::db::text(r.get(0))).collect();
    let mut occupied = Vec::new();
    for table in schema.tables.iter().filter(|t| existing.contains(&t.name)) {
        let count = db.query(&format!("SELECT count(*) FROM {}", ident(&table.name)), &[]).await?;
        let rows = count.rows.first().map_or(0, |r| crate::server::db::int(r.get(0)));
        if rows > 0 {
            occupied.push(format!("{} ({rows} rows)", table.name));
        }
    }
    if !occupied.is_empty() && !replace {
        return Err(Error::conflict(format!(
            "this cluster already holds data in {}: restore into a new cluster, or replace it (--replace)",
            occupied.join(", ")
        )));
    }
    let created: Vec<TableDef> = schema.tables.iter().filter(|t| !existing.contains(&t.name)).cloned().collect();
    let mut prepare: Vec<(String, Vec<Value>)> = created.iter().map(|t| (t.sql.clone(), Vec::new())).collect();
    if replace {
        prepare.extend(
            schema
                .tables
                .iter()
                .filter(|t| existing.contains(&t.name))
                .map(|t| (format!("DELETE FROM {}", ident(&t.name)), Vec::new())),
        );
    }
    let mut sink = Sink::Cluster(db);
    sink.apply(prepare).await.map_err(|e| e.context("preparing the tables"))?;
    copy_rows(&path, &schema.tables, &mut sink).await?;
    let finish = schema
        .others
        .iter()
        .filter(|o| created.iter().any(|t| t.name == o.table))
        .map(|o| (o.sql.clone(), Vec::new()))
        .collect();
    sink.apply(finish).await.map_err(|e| e.context("creating indexes, views and triggers"))?;

    let tables = schema.tables.clone();
    let restored = db
        .reading(move |conn| {
            let tables = tables.clone();
            Box::pin(async move { summarize_db(conn, &tables).await })
        })
        .await?;
    compare(&expected, &restored, "the restored tables")?;
    tracing::info!(tables = expected.tables.len(), rows = expected.rows, "backup restored");
    Ok(BackupSummary { size, verified: true, ..expected })
}

fn open_backup(path: &Path) -> Result<SqliteFile, Error> {
    let mut file = SqliteFile::open_read_only(path).map_err(file_error("opening the backup"))?;
    let check = file.query("PRAGMA quick_check").map_err(file_error("checking the backup"))?;
    if check != vec![vec![Value::Text("ok".into())]] {
        return Err(Error::invalid("the backup file is damaged (SQLite's quick_check failed)"));
    }
    Ok(file)
}

/// An application table of a backup.
#[derive(Debug, Clone)]
struct TableDef {
    name: String,
    sql: String,
    columns: Vec<String>,
}

/// An index, view or trigger of a backup, and the table it belongs to.
#[derive(Debug, Clone)]
struct Other {
    table: String,
    sql: String,
}

#[derive(Debug)]
struct Schema {
    tables: Vec<TableDef>,
    others: Vec<Other>,
}

fn read_schema(file: &mut SqliteFile) -> Result<Schema, Error> {
    let err = file_error("reading the backup's schema");
    let rows = file
        .query("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid")
        .map_err(&err)?;
    let (mut tables, mut others) = (Vec::new(), Vec::new());
    for row in rows {
        let text = |i: usize| row.get(i).and_then(Value::as_str).unwrap_or_default().to_owned();
        let (kind, name, table, sql) = (text(0), text(1), text(2), text(3));
        if !application_table(&table) {
            continue;
        }
        if kind == "table" {
            let info = file.query(&format!("PRAGMA table_info({})", ident(&name))).map_err(&err)?;
            let columns: Vec<String> =
                info.iter().map(|c| c.get(1).and_then(Value::as_str).unwrap_or_default().to_owned()).collect();
            if columns.len() > MAX_PARAMS {
                return Err(Error::invalid(format!(
                    "table {name} has {} columns; dqlite binds at most {MAX_PARAMS} values per statement",
                    columns.len()
                )));
            }
            tables.push(TableDef { name, sql, columns });
        } else {
            others.push(Other { table, sql });
        }
    }
    Ok(Schema { tables, others })
}

fn application_table(name: &str) -> bool {
    !CORE_TABLES.contains(&name) && !name.starts_with("sqlite_")
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Restores the file into a scratch node of its own and compares the result with `expected`.
async fn verify_file(state: &State, path: &Path, expected: BackupSummary) -> Result<BackupSummary, Error> {
    let scratch = Scratch::new(state, "scratch-node")?;
    let address = format!("@microcluster-scratch-{}-{}", std::process::id(), dqlite::generate_id("scratch"));
    let mut node = {
        let (address, dir) = (address.clone(), scratch.0.clone());
        blocking(move || {
            let mut node = dqlite::Node::builder(dqlite::BOOTSTRAP_ID, address, dir)
                .network_latency(Duration::from_millis(10))
                .build()
                .map_err(|e| Error::internal(format!("creating a scratch node: {e}")))?;
            node.start().map_err(|e| Error::internal(format!("starting a scratch node: {e}")))?;
            Ok(node)
        })
        .await?
    };
    let result = async {
        let schema = blocking({
            let path = path.to_owned();
            move || read_schema(&mut SqliteFile::open_read_only(&path).map_err(file_error("reading the backup"))?)
        })
        .await?;
        let client = dqlite::Client::new([address.clone()]);
        let mut db = client.database(DB_NAME);
        let mut sink = Sink::Scratch(&mut db);
        sink.apply(schema.tables.iter().map(|t| (t.sql.clone(), Vec::new())).collect()).await?;
        copy_rows(path, &schema.tables, &mut sink).await?;
        sink.apply(schema.others.iter().map(|o| (o.sql.clone(), Vec::new())).collect()).await?;
        let mut restored = summarize_db(&mut db, &schema.tables).await.map_err(Error::from)?;
        // The scratch node has no schemas table; the versions were checked on the file.
        restored.schema_internal = expected.schema_internal;
        restored.schema_external = expected.schema_external;
        compare(&expected, &restored, "the tables restored into a scratch node")?;
        Ok::<(), Error>(())
    }
    .await;
    let _ = tokio::task::spawn_blocking(move || node.stop()).await;
    drop(scratch);
    result.map_err(|e| if e.kind() == ErrorKind::Internal { e.context("verifying the backup") } else { e })?;
    Ok(BackupSummary { verified: true, ..expected })
}

#[cfg(test)]
pub(super) mod tests {
    use super::summary::summary_query;
    use super::*;

    /// A table `t` with `columns` columns `c0`, `c1`, ... (for the submodules' tests too).
    pub(in crate::server::domain::backup) fn table(columns: usize) -> TableDef {
        TableDef { name: "t".into(), sql: String::new(), columns: (0..columns).map(|i| format!("c{i}")).collect() }
    }

    #[test]
    fn core_tables_are_never_restored() {
        for name in ["schemas", "core_cluster_members", "core_token_records", "core_monitors", "sqlite_sequence"] {
            assert!(!application_table(name), "{name}");
        }
        assert!(application_table("extended_table"));
        assert_eq!(summary_query(&table(2)), "SELECT +\"c0\", +\"c1\" FROM \"t\" ORDER BY 1, 2");
    }
}
