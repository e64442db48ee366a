//! Summaries of a backup and of what was restored from it: rows per table and a SHA-256 over
//! every row in a fixed order, computed the same way from the file and from a database.

use dqlite::file::{FileError, SqliteFile};
use dqlite::{Database, Value};

use super::{TableDef, file_error, ident, read_schema};
use crate::api::{BackupSummary, TableRows};
use crate::server::db::schema::Versions;
use crate::server::error::Error;

/// Summarises rows table by table: counts and one running SHA-256.
pub(super) struct Summarizer {
    digest: ring::digest::Context,
    tables: Vec<TableRows>,
    rows: u64,
}

impl Summarizer {
    pub(super) fn new() -> Summarizer {
        Summarizer { digest: ring::digest::Context::new(&ring::digest::SHA256), tables: Vec::new(), rows: 0 }
    }

    pub(super) fn table(&mut self, table: &TableDef) {
        self.bytes(table.name.as_bytes());
        for column in &table.columns {
            self.bytes(column.as_bytes());
        }
        self.tables.push(TableRows { name: table.name.clone(), rows: 0 });
    }

    fn bytes(&mut self, data: &[u8]) {
        self.digest.update(&(data.len() as u64).to_be_bytes());
        self.digest.update(data);
    }

    /// One row; types are compared as SQLite stores them (dqlite's declared-type variants
    /// such as BOOLEAN or DATETIME are the same integers and texts).
    pub(super) fn row(&mut self, values: &[Value]) {
        for value in values {
            match value {
                Value::Null => self.digest.update(&[0]),
                Value::Integer(v) | Value::UnixTime(v) => {
                    self.digest.update(&[1]);
                    self.digest.update(&v.to_be_bytes());
                }
                Value::Boolean(b) => {
                    self.digest.update(&[1]);
                    self.digest.update(&i64::from(*b).to_be_bytes());
                }
                Value::Float(f) => {
                    self.digest.update(&[2]);
                    self.digest.update(&f.to_bits().to_be_bytes());
                }
                Value::Text(s) | Value::Iso8601(s) => {
                    self.digest.update(&[3]);
                    self.bytes(s.as_bytes());
                }
                Value::Blob(b) => {
                    self.digest.update(&[4]);
                    self.bytes(b);
                }
            }
        }
        self.rows += 1;
        if let Some(last) = self.tables.last_mut() {
            last.rows += 1;
        }
    }

    pub(super) fn finish(self, versions: Versions) -> BackupSummary {
        BackupSummary {
            tables: self.tables,
            rows: self.rows,
            checksum: crate::tls::hex(self.digest.finish().as_ref()),
            schema_internal: versions.internal,
            schema_external: versions.external,
            size: 0,
            verified: false,
        }
    }
}

/// The query that reads a table for its summary: values as stored (the unary `+` hides the
/// declared type, so dqlite sends SQLite's own types), in a fixed order.
pub(super) fn summary_query(table: &TableDef) -> String {
    let columns: Vec<String> = table.columns.iter().map(|c| format!("+{}", ident(c))).collect();
    let order: Vec<String> = (1..=table.columns.len()).map(|i| i.to_string()).collect();
    let order = if order.is_empty() { String::new() } else { format!(" ORDER BY {}", order.join(", ")) };
    format!("SELECT {} FROM {}{order}", columns.join(", "), ident(&table.name))
}

pub(super) fn summarize_file(file: &mut SqliteFile) -> Result<BackupSummary, Error> {
    let err = file_error("summarising the backup");
    let has_schemas =
        file.query("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schemas'").map_err(&err)?;
    if has_schemas != vec![vec![Value::Integer(1)]] {
        return Err(Error::invalid("not a microcluster backup: the file has no schemas table"));
    }
    let mut versions = Versions::default();
    for row in file.query("SELECT type, COALESCE(max(version), 0) FROM schemas GROUP BY type").map_err(&err)? {
        let version = row.get(1).and_then(Value::as_i64).unwrap_or(0).max(0) as u64;
        match row.first().and_then(Value::as_i64) {
            Some(0) => versions.internal = version,
            Some(1) => versions.external = version,
            _ => {}
        }
    }
    let schema = read_schema(file)?;
    let mut summary = Summarizer::new();
    for table in &schema.tables {
        summary.table(table);
        file.for_each_row(&summary_query(table), |row| {
            summary.row(&row);
            Ok::<(), FileError>(())
        })
        .map_err(&err)?;
    }
    Ok(summary.finish(versions))
}

pub(super) async fn summarize_db(db: &mut Database, tables: &[TableDef]) -> Result<BackupSummary, dqlite::Error> {
    let mut summary = Summarizer::new();
    for table in tables {
        summary.table(table);
        let mut rows = db.query_rows(&summary_query(table), &[]).await?;
        while let Some(row) = rows.next().await? {
            summary.row(row.values());
        }
    }
    let rows = db.query("SELECT type, COALESCE(max(version), 0) FROM schemas GROUP BY type", &[]).await;
    let mut versions = Versions::default();
    for row in rows.map(|r| r.rows).unwrap_or_default() {
        let version = row.get(1).and_then(Value::as_i64).unwrap_or(0).max(0) as u64;
        match row.get(0).and_then(Value::as_i64) {
            Some(0) => versions.internal = version,
            Some(1) => versions.external = version,
            _ => {}
        }
    }
    Ok(summary.finish(versions))
}

/// Fails unless `actual` holds the same rows as `expected`, naming the first difference.
pub(super) fn compare(expected: &BackupSummary, actual: &BackupSummary, what: &str) -> Result<(), Error> {
    for (want, got) in expected.tables.iter().zip(&actual.tables) {
        if want.rows != got.rows {
            return Err(Error::internal(format!(
                "{what} differ from the backup: table {} has {} rows, the backup {}",
                want.name, got.rows, want.rows
            )));
        }
    }
    if expected.checksum != actual.checksum || expected.tables.len() != actual.tables.len() {
        return Err(Error::internal(format!(
            "{what} differ from the backup: checksum {} instead of {}",
            actual.checksum, expected.checksum
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::table;
    use super::*;

    #[test]
    fn summaries_see_types_as_sqlite_stores_them() {
        let t = table(2);
        let digest = |rows: &[Vec<Value>]| {
            let mut s = Summarizer::new();
            s.table(&t);
            rows.iter().for_each(|r| s.row(r));
            s.finish(Versions::default())
        };
        let a = digest(&[vec![Value::Boolean(true), Value::Iso8601("2020".into())]]);
        let b = digest(&[vec![Value::Integer(1), Value::Text("2020".into())]]);
        assert_eq!(a.checksum, b.checksum);
        let c = digest(&[vec![Value::Integer(1), Value::Blob(b"2020".to_vec())]]);
        assert_ne!(a.checksum, c.checksum);
        // Where one value ends and the next starts is part of the digest.
        let d = digest(&[vec![Value::Text("ab".into()), Value::Text("c".into())]]);
        let e = digest(&[vec![Value::Text("a".into()), Value::Text("bc".into())]]);
        assert_ne!(d.checksum, e.checksum);
        assert_eq!((a.rows, a.tables[0].rows), (1, 1));
    }
}
