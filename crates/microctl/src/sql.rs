//! `microctl sql`: run a query and print each statement's result, or a dump.

use std::io::Read;

use anyhow::Context;
use microcluster::client::Client;

use crate::format;

fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "NULL".to_owned(),
        other => other.to_string(),
    }
}

/// Runs `query` (`-`: from stdin; `.dump` / `.schema`: a dump) and returns what to print.
pub(crate) async fn run(client: &Client, query: &str) -> anyhow::Result<String> {
    let query = if query == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).context("reading the query from stdin")?;
        text
    } else {
        query.to_owned()
    };
    match query.trim() {
        ".dump" => return Ok(client.sql_dump(false).await?),
        ".schema" => return Ok(client.sql_dump(true).await?),
        _ => {}
    }
    let batch = client.sql(&query).await?;
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
            out.push_str(&format::table(&result.columns, &rows));
        } else {
            out.push_str(&format!("Rows affected: {}\n", result.rows_affected));
        }
    }
    Ok(out)
}
