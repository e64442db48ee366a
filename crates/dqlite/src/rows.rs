//! Query results: a streaming [`Rows`] cursor over a connection, single [`Row`]s with access by
//! index or column name, and a fully collected [`QueryResult`].

use std::collections::VecDeque;
use std::sync::Arc;

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::proto::{RowsBatch, RowsEnd, Value};

/// One row of a result, sharing its column names with the other rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

impl Row {
    /// Column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Values in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// Takes the values out.
    pub fn into_values(self) -> Vec<Value> {
        self.values
    }

    /// The value at `index`.
    pub fn get(&self, index: usize) -> Option<&Value> {
        self.values.get(index)
    }

    /// The value of the first column named `name` (exact match, then ASCII case-insensitive,
    /// as SQLite compares identifiers).
    pub fn get_by_name(&self, name: &str) -> Option<&Value> {
        let index = self
            .columns
            .iter()
            .position(|c| c == name)
            .or_else(|| self.columns.iter().position(|c| c.eq_ignore_ascii_case(name)))?;
        self.values.get(index)
    }
}

/// How much a collected query result may hold; past either bound the query is stopped and
/// the call fails ([`Error::TooManyRows`], [`Error::ResultTooLarge`]), so a careless query
/// cannot exhaust the caller's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most rows.
    pub rows: usize,
    /// Most bytes of values (text and blob lengths, 8 per other value).
    pub bytes: usize,
}

impl Limits {
    /// No bounds.
    pub const NONE: Limits = Limits { rows: usize::MAX, bytes: usize::MAX };

    /// At most `rows` rows, any size.
    pub const fn rows(rows: usize) -> Limits {
        Limits { rows, bytes: usize::MAX }
    }
}

impl From<usize> for Limits {
    fn from(rows: usize) -> Limits {
        Limits::rows(rows)
    }
}

/// The memory a value's payload takes, for [`Limits::bytes`].
fn value_size(value: &Value) -> usize {
    match value {
        Value::Text(s) | Value::Iso8601(s) => s.len().max(8),
        Value::Blob(b) => b.len().max(8),
        _ => 8,
    }
}

/// All rows of a query, collected.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows in order.
    pub rows: Vec<Row>,
}

/// A query's rows as they stream in, batch by batch.
///
/// Dropping it before the end is allowed: the connection drains what is left before its next
/// request. Call [`Rows::interrupt`] to tell the server to stop instead.
#[derive(Debug)]
pub struct Rows<'c> {
    conn: &'c mut Connection,
    columns: Arc<[String]>,
    pending: VecDeque<Vec<Value>>,
    done: bool,
}

impl<'c> Rows<'c> {
    pub(crate) fn new(conn: &'c mut Connection, first: RowsBatch) -> Rows<'c> {
        Rows { done: first.end == RowsEnd::Done, conn, columns: first.columns.into(), pending: first.rows.into() }
    }

    /// Column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The next row, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Row>> {
        loop {
            if let Some(values) = self.pending.pop_front() {
                return Ok(Some(Row { columns: self.columns.clone(), values }));
            }
            if self.done {
                return Ok(None);
            }
            match self.conn.next_batch().await {
                Ok(Some(batch)) => {
                    self.done = batch.end == RowsEnd::Done;
                    self.pending = batch.rows.into();
                }
                Ok(None) => self.done = true,
                Err(err) => {
                    self.done = true;
                    return Err(err);
                }
            }
        }
    }

    /// Stops the query. libdqlite 1.11 only reads the INTERRUPT after it streamed every batch,
    /// so this still waits for (and discards) the rest of the rows, then leaves the connection
    /// ready for the next request.
    pub async fn interrupt(mut self) -> Result<()> {
        self.pending.clear();
        if self.done {
            return Ok(());
        }
        self.done = true;
        self.conn.interrupt().await
    }

    /// Reads every remaining row.
    pub async fn collect(self) -> Result<QueryResult> {
        self.collect_limited(Limits::NONE).await
    }

    /// Reads every remaining row, failing (after stopping the query) once more than
    /// `limits` allow arrived.
    pub async fn collect_limited(mut self, limits: impl Into<Limits>) -> Result<QueryResult> {
        let limits = limits.into();
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = self.next().await? {
            bytes = bytes.saturating_add(row.values.iter().map(value_size).sum());
            let error = if rows.len() == limits.rows {
                Some(Error::TooManyRows { limit: limits.rows })
            } else if bytes > limits.bytes {
                Some(Error::ResultTooLarge { limit: limits.bytes })
            } else {
                None
            };
            if let Some(error) = error {
                self.interrupt().await?;
                return Err(error);
            }
            rows.push(row);
        }
        Ok(QueryResult { columns: self.columns.to_vec(), rows })
    }
}
