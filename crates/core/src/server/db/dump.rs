//! An SQL text dump of the database (like sqlite3's `.dump` and `.schema`).

use dqlite::{Database, Value};

/// Quotes a value as an SQL literal.
pub(crate) fn literal(value: &Value) -> String {
    match value {
        Value::Integer(v) | Value::UnixTime(v) => v.to_string(),
        Value::Float(v) if v.is_finite() => format!("{v:?}"),
        Value::Float(v) => if *v > 0.0 {
            "1e999"
        } else if *v < 0.0 {
            "-1e999"
        } else {
            "NULL"
        }
        .to_owned(),
        Value::Text(s) | Value::Iso8601(s) => format!("'{}'", s.replace('\'', "''")),
        Value::Blob(b) => format!("X'{}'", crate::tls::hex(b)),
        Value::Null => "NULL".to_owned(),
        Value::Boolean(b) => i64::from(*b).to_string(),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The schema (and, unless `schema_only`, every row) as SQL statements in one transaction.
pub(crate) async fn dump(db: &mut Database, schema_only: bool, limits: dqlite::Limits) -> dqlite::Result<String> {
    let mut out = String::from("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n");
    let objects = db
        .query(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' \
             ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, rowid",
            &[],
        )
        .await?;
    let mut tables = Vec::new();
    for row in &objects.rows {
        let kind = row.get(0).and_then(Value::as_str).unwrap_or_default();
        let name = row.get(1).and_then(Value::as_str).unwrap_or_default();
        let sql = row.get(2).and_then(Value::as_str).unwrap_or_default();
        out.push_str(sql);
        out.push_str(";\n");
        if kind == "table" {
            tables.push(name.to_owned());
            if !schema_only {
                let rows = db.query_limited(&format!("SELECT * FROM {}", quote_ident(name)), &[], limits).await?;
                for r in &rows.rows {
                    let values: Vec<String> = r.values().iter().map(literal).collect();
                    out.push_str(&format!("INSERT INTO {} VALUES({});\n", quote_ident(name), values.join(",")));
                }
            }
        }
    }
    if !schema_only {
        let has_sequence = db
            .query("SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'", &[])
            .await?
            .rows
            .first()
            .and_then(|r| r.get(0).and_then(Value::as_i64))
            .unwrap_or(0)
            > 0;
        if has_sequence {
            out.push_str("DELETE FROM sqlite_sequence;\n");
            let seq = db.query("SELECT name, seq FROM sqlite_sequence", &[]).await?;
            for r in &seq.rows {
                let values: Vec<String> = r.values().iter().map(literal).collect();
                out.push_str(&format!("INSERT INTO sqlite_sequence VALUES({});\n", values.join(",")));
            }
        }
    }
    out.push_str("COMMIT;\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_valid_sql() {
        assert_eq!(literal(&Value::Text("it's".into())), "'it''s'");
        assert_eq!(literal(&Value::Blob(vec![0xab, 1])), "X'ab01'");
        assert_eq!(literal(&Value::Null), "NULL");
        assert_eq!(literal(&Value::Float(1.5)), "1.5");
        assert_eq!(literal(&Value::Integer(-3)), "-3");
    }
}
