//! `microctl sql`: what the argument asks for, and how each statement's result is printed.
//!
//! Kept free of I/O with the daemon so the printing can be tested without one.

use std::io::Read;

use anyhow::{Context, bail};
use microcluster::api::SqlBatch;
use serde_json::Value;

use crate::format::{self, Format};

/// What `microctl sql QUERY` should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `.dump` (`schema_only: false`) or `.schema` (`true`).
    Dump {
        /// Only the schema, no rows.
        schema_only: bool,
    },
    /// One or more statements, separated by `;`.
    Statements(String),
}

/// Reads the query (`-`: standard input) and recognises the dot commands.
pub(crate) fn request(arg: &str) -> anyhow::Result<Request> {
    let text = if arg == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the query from standard input")?;
        text
    } else {
        arg.to_owned()
    };
    parse(text)
}

fn parse(text: String) -> anyhow::Result<Request> {
    Ok(match text.trim() {
        ".dump" => Request::Dump { schema_only: false },
        ".schema" => Request::Dump { schema_only: true },
        "" => bail!("the query is empty"),
        _ => Request::Statements(text),
    })
}

/// A batch's results in `format`: [`render`] for tables (with compact tables for `compact`); the
/// API's own object in JSON; a YAML
/// list of results; CSV with one table per result (NULL is an empty field) (a write's is `rows_affected`), separated by
/// blank lines.
pub(crate) fn render_as(batch: &SqlBatch, format: Format) -> String {
    match format {
        Format::Table => render(batch),
        Format::Compact => render_with(batch, format::compact),
        Format::Json => format!("{:#}\n", serde_json::json!(batch)),
        Format::Yaml => {
            let keys = ["type", "statement", "columns", "rows", "rows_affected"];
            let records: Vec<Vec<Value>> = batch
                .results
                .iter()
                .map(|r| {
                    vec![
                        r.kind.clone().into(),
                        r.statement.clone().into(),
                        r.columns.clone().into(),
                        r.rows.iter().map(|row| Value::Array(row.clone())).collect(),
                        r.rows_affected.into(),
                    ]
                })
                .collect();
            format::yaml(&keys, &records)
        }
        Format::Csv => {
            let tables: Vec<String> = batch
                .results
                .iter()
                .map(|r| {
                    if r.kind == "select" {
                        let columns: Vec<&str> = r.columns.iter().map(String::as_str).collect();
                        format::csv(&columns, &r.rows)
                    } else {
                        format::csv(&["rows_affected"], &[vec![r.rows_affected.into()]])
                    }
                })
                .collect();
            tables.join("\n")
        }
    }
}

/// Reads become tables, writes `Rows affected: N`; with several statements each result is
/// headed `=> Query i:` and separated by a blank line.
pub(crate) fn render(batch: &SqlBatch) -> String {
    render_with(batch, format::table)
}

/// [`render`] with another kind of table.
fn render_with(batch: &SqlBatch, table: fn(&[String], &[Vec<String>]) -> String) -> String {
    let many = batch.results.len() > 1;
    let mut out = String::new();
    for (i, result) in batch.results.iter().enumerate() {
        if many {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("=> Query {}:\n", i + 1));
        }
        if result.kind == "select" {
            let rows: Vec<Vec<String>> = result.rows.iter().map(|r| r.iter().map(cell).collect()).collect();
            out.push_str(&table(&result.columns, &rows));
        } else {
            out.push_str(&format!("Rows affected: {}\n", result.rows_affected));
        }
    }
    out
}

/// A dump as the daemon produced it, with a final newline so the shell prompt starts on its own
/// line.
pub(crate) fn render_dump(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

fn cell(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "NULL".to_owned(),
        other => other.to_string(),
    }
}

/// Runs `query` and prints CSV: the rows of one read-only statement as they stream in (so any
/// number of rows fits in a bounded amount of memory), anything else as [`render_as`] does.
pub(crate) async fn stream_csv(
    client: &microcluster::client::Client,
    query: &str,
    consistency: microcluster::api::ReadConsistency,
) -> anyhow::Result<()> {
    use microcluster::client::{SqlStreamEvent, SqlStreamed};
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut failed: Option<std::io::Error> = None;
    let outcome = client
        .clone()
        .sql_stream_with(
            microcluster::api::SqlQuery { query: query.to_owned(), consistency: Some(consistency) },
            |event| {
                let line = match event {
                    SqlStreamEvent::Columns(columns) => {
                        format::csv_header(&columns.iter().map(String::as_str).collect::<Vec<_>>())
                    }
                    SqlStreamEvent::Row(values) => format::csv_line(&values),
                };
                match out.write_all(line.as_bytes()) {
                    Ok(()) => true,
                    Err(err) => {
                        failed = Some(err);
                        false
                    }
                }
            },
        )
        .await?;
    if let SqlStreamed::Batch(batch) = outcome {
        out.write_all(render_as(&batch, Format::Csv).as_bytes()).ok();
    }
    let flushed = out.flush();
    match failed.map_or(flushed, Err) {
        // A reader that went away (`| head`) ends the output, not in error.
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err).context("writing to standard output"),
        _ => Ok(()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use microcluster::api::SqlResult;
    use serde_json::json;

    fn select(columns: &[&str], rows: Vec<Vec<Value>>) -> SqlResult {
        SqlResult {
            kind: "select".into(),
            statement: String::new(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows,
            rows_affected: 0,
        }
    }

    fn exec(n: u64) -> SqlResult {
        SqlResult { kind: "exec".into(), statement: String::new(), columns: vec![], rows: vec![], rows_affected: n }
    }

    #[test]
    fn one_statement_has_no_heading() {
        assert_eq!(render(&SqlBatch { results: vec![exec(1)] }), "Rows affected: 1\n");
        let batch = SqlBatch {
            results: vec![select(
                &["id", "key", "value"],
                vec![vec![json!(1), json!("some_key"), json!("some_value")]],
            )],
        };
        assert_eq!(
            render(&batch),
            "+----+----------+------------+\n\
             | id |   key    |   value    |\n\
             +----+----------+------------+\n\
             | 1  | some_key | some_value |\n\
             +----+----------+------------+\n"
        );
    }

    #[test]
    fn several_statements_are_numbered() {
        let batch = SqlBatch {
            results: vec![exec(2), select(&["a", "b", "c"], vec![vec![Value::Null, json!(1.5), json!(true)]])],
        };
        assert_eq!(
            render(&batch),
            "=> Query 1:\n\
             Rows affected: 2\n\
             \n\
             => Query 2:\n\
             +------+-----+------+\n\
             |  a   |  b  |  c   |\n\
             +------+-----+------+\n\
             | NULL | 1.5 | true |\n\
             +------+-----+------+\n"
        );
    }

    #[test]
    fn batches_in_every_format() {
        let batch = SqlBatch {
            results: vec![
                exec(2),
                select(&["a", "b"], vec![vec![Value::Null, json!("x,y")], vec![json!(1), json!(2.5)]]),
            ],
        };
        let parsed: SqlBatch = serde_json::from_str(&render_as(&batch, Format::Json)).unwrap();
        assert_eq!(parsed, batch);
        assert_eq!(render_as(&batch, Format::Csv), "rows_affected\n2\n\na,b\n,\"x,y\"\n1,2.5\n");
        assert_eq!(
            render_as(&batch, Format::Yaml),
            "- type: \"exec\"\n  statement: \"\"\n  columns: []\n  rows: []\n  rows_affected: 2\n\
             - type: \"select\"\n  statement: \"\"\n  columns: [\"a\",\"b\"]\n  rows: [[null,\"x,y\"],[1,2.5]]\n  \
             rows_affected: 0\n"
        );
        assert_eq!(render_as(&batch, Format::Table), render(&batch));
        assert_eq!(
            render_as(&batch, Format::Compact),
            "=> Query 1:\n\
             Rows affected: 2\n\
             \n\
             => Query 2:\n\
             a     b\n\
             NULL  x,y\n\
             1     2.5\n"
        );
    }

    #[test]
    fn dot_commands_and_empty_queries() {
        assert_eq!(parse(" .dump\n".into()).unwrap(), Request::Dump { schema_only: false });
        assert_eq!(parse(".schema".into()).unwrap(), Request::Dump { schema_only: true });
        assert_eq!(parse("SELECT 1".into()).unwrap(), Request::Statements("SELECT 1".into()));
        assert!(parse(" \n".into()).is_err());
        assert_eq!(render_dump("BEGIN;".into()), "BEGIN;\n");
        assert_eq!(render_dump(String::new()), "");
    }
}
