//! Copying a backup's rows into a database: a reader thread streams the file, rows are packed
//! into multi-row INSERTs within dqlite's parameter limit, about 1 MiB per transaction.

use std::path::Path;

use dqlite::{Database, Value};
use tokio::sync::mpsc;

use super::{MAX_PARAMS, TableDef, file_error, ident};
use crate::server::error::Error;
use dqlite::file::SqliteFile;

/// Rows of one transaction while restoring, and their approximate bytes.
pub(super) const CHUNK_ROWS: usize = 2000;
const CHUNK_BYTES: usize = 1024 * 1024;

/// Where restored rows go: this cluster's write queue, or a scratch node's database.
pub(super) enum Sink<'a> {
    Cluster(&'a crate::server::db::Db),
    Scratch(&'a mut Database),
}

impl Sink<'_> {
    /// Runs `statements` in one transaction.
    pub(super) async fn apply(&mut self, statements: Vec<(String, Vec<Value>)>) -> Result<(), Error> {
        if statements.is_empty() {
            return Ok(());
        }
        let result = match self {
            Sink::Cluster(db) => db.transaction(run_statements(statements)).await,
            Sink::Scratch(db) => db.transaction(run_statements(statements)).await,
        };
        result.map_err(Error::from)
    }
}

/// A transaction's body that runs `statements` in order.
pub(super) fn run_statements(
    statements: Vec<(String, Vec<Value>)>,
) -> impl for<'t, 'd> FnOnce(&'t mut dqlite::Transaction<'d>) -> dqlite::TxFuture<'t, ()> + Send + 'static {
    move |tx| {
        Box::pin(async move {
            for (sql, params) in &statements {
                tx.exec(sql, params).await?;
            }
            Ok(())
        })
    }
}

/// Copies every row of `tables` from the file at `path` into `sink`, a chunk per transaction;
/// a reader thread streams the file, so memory holds a couple of chunks at most.
pub(super) async fn copy_rows(path: &Path, tables: &[TableDef], sink: &mut Sink<'_>) -> Result<(), Error> {
    let (tx, mut rx) = mpsc::channel::<Vec<(String, Vec<Value>)>>(2);
    let reader = {
        let (path, tables) = (path.to_owned(), tables.to_vec());
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            let mut file = SqliteFile::open_read_only(&path).map_err(file_error("reading the backup"))?;
            for table in &tables {
                let mut chunk = Chunk::new(table);
                let columns: Vec<String> = table.columns.iter().map(|c| ident(c)).collect();
                let sql = format!("SELECT {} FROM {}", columns.join(", "), ident(&table.name));
                file.for_each_row(&sql, |row| {
                    if let Some(full) = chunk.push(row) {
                        // The receiver only goes away when the restore failed; stop reading then.
                        tx.blocking_send(full).map_err(|_| Error::internal("restore abandoned"))?;
                    }
                    Ok::<(), Error>(())
                })?;
                let rest = chunk.finish();
                if !rest.is_empty() {
                    tx.blocking_send(rest).map_err(|_| Error::internal("restore abandoned"))?;
                }
            }
            Ok(())
        })
    };
    let mut result = Ok(());
    while let Some(statements) = rx.recv().await {
        if let Err(err) = sink.apply(statements).await {
            result = Err(err.context("copying rows"));
            break;
        }
    }
    drop(rx);
    let read = reader.await.map_err(|e| Error::internal(format!("backup reader failed: {e}")))?;
    result.and(read)
}

/// Rows of one table gathered into multi-row INSERTs, up to one transaction's worth.
pub(super) struct Chunk {
    insert: String,
    per_statement: usize,
    columns: usize,
    statements: Vec<(String, Vec<Value>)>,
    pending: Vec<Value>,
    rows: usize,
    bytes: usize,
}

impl Chunk {
    pub(super) fn new(table: &TableDef) -> Chunk {
        let columns = table.columns.len().max(1);
        let names: Vec<String> = table.columns.iter().map(|c| ident(c)).collect();
        Chunk {
            insert: format!("INSERT INTO {} ({}) VALUES ", ident(&table.name), names.join(", ")),
            per_statement: (MAX_PARAMS / columns).clamp(1, 100),
            columns,
            statements: Vec::new(),
            pending: Vec::new(),
            rows: 0,
            bytes: 0,
        }
    }

    /// Adds a row; returns a full chunk when one is ready.
    pub(super) fn push(&mut self, row: Vec<Value>) -> Option<Vec<(String, Vec<Value>)>> {
        self.bytes += row.iter().map(value_bytes).sum::<usize>();
        self.pending.extend(row);
        self.rows += 1;
        if self.pending.len() >= self.per_statement * self.columns {
            self.flush_statement();
        }
        (self.rows >= CHUNK_ROWS || self.bytes >= CHUNK_BYTES).then(|| self.finish())
    }

    fn flush_statement(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let rows = self.pending.len() / self.columns;
        let tuple = format!("({})", vec!["?"; self.columns].join(", "));
        let sql = format!("{}{}", self.insert, vec![tuple; rows].join(", "));
        self.statements.push((sql, std::mem::take(&mut self.pending)));
    }

    /// Everything gathered so far.
    pub(super) fn finish(&mut self) -> Vec<(String, Vec<Value>)> {
        self.flush_statement();
        self.rows = 0;
        self.bytes = 0;
        std::mem::take(&mut self.statements)
    }
}

pub(super) fn value_bytes(value: &Value) -> usize {
    match value {
        Value::Text(s) | Value::Iso8601(s) => s.len() + 8,
        Value::Blob(b) => b.len() + 8,
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::table;
    use super::*;

    #[test]
    fn chunks_pack_rows_into_statements_within_the_parameter_limit() {
        let mut chunk = Chunk::new(&table(3));
        assert_eq!(chunk.per_statement, 85);
        let mut full = Vec::new();
        for i in 0..CHUNK_ROWS + 10 {
            if let Some(c) = chunk.push(vec![Value::Integer(i as i64), Value::Null, Value::Text("x".into())]) {
                full.push(c);
            }
        }
        let rest = chunk.finish();
        assert_eq!(full.len(), 1);
        let params: usize = full[0].iter().map(|(_, p)| p.len()).sum();
        assert_eq!(params, CHUNK_ROWS * 3);
        assert!(full[0].iter().all(|(_, p)| p.len() <= MAX_PARAMS));
        assert_eq!(rest.iter().map(|(_, p)| p.len()).sum::<usize>(), 30);
        let (sql, _) = &rest[0];
        assert_eq!(sql.matches('(').count(), 1 + 10, "{sql}");
        assert!(sql.starts_with("INSERT INTO \"t\" (\"c0\", \"c1\", \"c2\") VALUES (?, ?, ?), "), "{sql}");
    }

    #[test]
    fn wide_tables_get_one_row_per_statement() {
        let mut chunk = Chunk::new(&table(200));
        assert_eq!(chunk.per_statement, 1);
        assert!(chunk.push(vec![Value::Null; 200]).is_none());
        assert_eq!(chunk.finish().len(), 1);
    }
}
