//! Rendering lists for people (ASCII tables exactly like microcluster's example CLI, or compact
//! ones without borders) and for programs (JSON, YAML, CSV).
//!
//! A [`Listing`] carries each view separately because they differ on purpose: the table shows
//! short, human columns (e.g. a truncated fingerprint), JSON is the API's own objects, and
//! YAML/CSV are flat records with every field at full length.

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table};
use serde_json::Value;

/// How to print a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// An ASCII table.
    Table,
    /// A JSON array of the API's objects.
    Json,
    /// A YAML list of flat records.
    Yaml,
    /// Comma-separated values with a header line.
    Csv,
    /// The table without borders or separators (like LXD's `compact`): a header row, then one
    /// row per item, each column left-aligned and two spaces from the next.
    Compact,
}

/// comfy-table's 19 border characters, in its preset order: left/right borders `|`, top/bottom
/// borders `-`, header rule `+-+` with `|` between columns, spaces (meaning "none") for the rules
/// between body rows, and `+` for every other intersection and corner. No built-in preset has
/// a `-` header rule without body rules (`ASCII_FULL_CONDENSED` uses `=`).
const ASCII_PRESET: &str = "||--+-++|    ++++++";

/// A list in every output format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Listing {
    /// Table column titles.
    pub(crate) header: Vec<String>,
    /// Table cells, one row per item.
    pub(crate) cells: Vec<Vec<String>>,
    /// YAML keys and CSV column names.
    pub(crate) keys: Vec<&'static str>,
    /// YAML/CSV records, one value per key.
    pub(crate) records: Vec<Vec<Value>>,
    /// The JSON document.
    pub(crate) json: Value,
}

impl Listing {
    /// The listing as text, ending in a newline.
    pub(crate) fn render(&self, format: Format) -> String {
        match format {
            Format::Table => table(&self.header, &self.cells),
            Format::Json => format!("{:#}\n", self.json),
            Format::Yaml => yaml(&self.keys, &self.records),
            Format::Csv => csv(&self.keys, &self.records),
            Format::Compact => compact(&self.header, &self.cells),
        }
    }
}

/// An ASCII table, ending in a newline: header centred, body left-aligned, never wrapped.
///
/// comfy-table's own centring puts the odd space on the left, while the tutorial's tables (Go's
/// tablewriter) put it on the right (`|   key    |`), so headers are padded by hand and
/// rendered left-aligned.
pub(crate) fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let width = |i: usize, title: &str| {
        rows.iter().filter_map(|r| r.get(i)).map(|s| display_width(s)).chain([display_width(title)]).max().unwrap_or(0)
    };
    let centred = header.iter().enumerate().map(|(i, title)| {
        let extra = width(i, title) - display_width(title);
        let left = extra / 2;
        Cell::new(format!("{}{title}{}", " ".repeat(left), " ".repeat(extra - left))).set_alignment(CellAlignment::Left)
    });
    let mut table = Table::new();
    table.load_preset(ASCII_PRESET).set_content_arrangement(ContentArrangement::Disabled).force_no_tty();
    table.set_header(centred);
    for row in rows {
        table.add_row(row.iter().map(Cell::new));
    }
    format!("{table}\n")
}

/// A table without borders, rules or column separators, ending in a newline: the header row,
/// then one row per item, every column left-aligned and padded to its widest cell, two spaces
/// between columns and no trailing spaces. LXD's `compact` (Go's tablewriter with borders,
/// header line and separators off) also has no borders; it centres the titles and indents every
/// line, which only costs a `column`/`awk` reader.
pub(crate) fn compact(header: &[String], rows: &[Vec<String>]) -> String {
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .force_no_tty();
    table.set_header(header.iter().map(|title| Cell::new(title).set_alignment(CellAlignment::Left)));
    for row in rows {
        table.add_row(row.iter().map(Cell::new));
    }
    let last = header.len().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i < last { COMPACT_GAP } else { 0 }));
    }
    format!("{}\n", table.trim_fmt())
}

/// Spaces between two columns of a compact table.
const COMPACT_GAP: u16 = 2;

/// Width of the widest line of a cell (comfy-table splits cells on newlines).
fn display_width(s: &str) -> usize {
    s.lines().map(|l| l.chars().count()).max().unwrap_or(0)
}

/// A YAML list of flat records, ending in a newline. Strings are JSON-quoted and lists are JSON
/// flow sequences: both are valid YAML, and quoting every string keeps values such as `no`,
/// `1.0` or `null` from being read back as something else.
pub(crate) fn yaml(keys: &[&str], records: &[Vec<Value>]) -> String {
    if records.is_empty() {
        return "[]\n".to_owned();
    }
    let mut out = String::new();
    for record in records {
        for (i, (key, value)) in keys.iter().zip(record).enumerate() {
            out.push_str(if i == 0 { "- " } else { "  " });
            out.push_str(key);
            out.push_str(": ");
            out.push_str(&value.to_string());
            out.push('\n');
        }
    }
    out
}

/// CSV (RFC 4180 quoting) with a header line; lists become space-separated words.
pub(crate) fn csv(keys: &[&str], records: &[Vec<Value>]) -> String {
    let header = csv_header(keys);
    std::iter::once(header).chain(records.iter().map(|r| csv_line(r))).collect()
}

/// A CSV header line (with its newline).
pub(crate) fn csv_header(keys: &[&str]) -> String {
    keys.iter().map(|k| csv_field(k)).collect::<Vec<_>>().join(",") + "\n"
}

/// One CSV record (with its newline).
pub(crate) fn csv_line(record: &[Value]) -> String {
    record.iter().map(|v| csv_field(&csv_text(v))).collect::<Vec<_>>().join(",") + "\n"
}

fn csv_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(csv_text).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn tables_match_the_tutorial() {
        let names = ["sqlite_sequence", "schemas", "core_cluster_members", "core_token_records"]
            .into_iter()
            .chain(["extended_table", "some_other_table"])
            .map(|r| s(&[r]))
            .collect::<Vec<_>>();
        assert_eq!(
            table(&s(&["name"]), &names),
            "+----------------------+\n\
             |         name         |\n\
             +----------------------+\n\
             | sqlite_sequence      |\n\
             | schemas              |\n\
             | core_cluster_members |\n\
             | core_token_records   |\n\
             | extended_table       |\n\
             | some_other_table     |\n\
             +----------------------+\n"
        );
        assert_eq!(
            table(&s(&["id", "key", "value"]), &[s(&["1", "some_key", "some_value"])]),
            "+----+----------+------------+\n\
             | id |   key    |   value    |\n\
             +----+----------+------------+\n\
             | 1  | some_key | some_value |\n\
             +----+----------+------------+\n"
        );
        assert_eq!(
            table(
                &s(&["name", "address", "heartbeat"]),
                &[
                    s(&["mc1", "127.0.0.1:9001", "2025-03-20T17:52:03.101704405Z"]),
                    s(&["mc2", "127.0.0.1:9002", "2025-03-20T17:52:03.125658611Z"]),
                ]
            ),
            "+------+----------------+--------------------------------+\n\
             | name |    address     |           heartbeat            |\n\
             +------+----------------+--------------------------------+\n\
             | mc1  | 127.0.0.1:9001 | 2025-03-20T17:52:03.101704405Z |\n\
             | mc2  | 127.0.0.1:9002 | 2025-03-20T17:52:03.125658611Z |\n\
             +------+----------------+--------------------------------+\n"
        );
    }

    #[test]
    fn tables_without_rows_or_with_wide_headers() {
        assert_eq!(
            table(&s(&["NAME", "TOKEN"]), &[]),
            "+------+-------+\n| NAME | TOKEN |\n+------+-------+\n+------+-------+\n"
        );
        assert_eq!(
            table(&s(&["count(*)"]), &[s(&["3"])]),
            "+----------+\n| count(*) |\n+----------+\n| 3        |\n+----------+\n"
        );
    }

    #[test]
    fn compact_tables_have_no_borders_and_no_trailing_spaces() {
        assert_eq!(
            compact(
                &s(&["NAME", "ADDRESS", "ROLE"]),
                &[s(&["mc1", "127.0.0.1:9001", "voter"]), s(&["mc22", "10.0.0.2:9002", "stand-by"])]
            ),
            "NAME  ADDRESS         ROLE\n\
             mc1   127.0.0.1:9001  voter\n\
             mc22  10.0.0.2:9002   stand-by\n"
        );
        // No rows: the header alone.
        assert_eq!(compact(&s(&["NAME", "TOKEN"]), &[]), "NAME  TOKEN\n");
        // An empty cell keeps the columns aligned; an empty last cell leaves no trailing spaces.
        assert_eq!(
            compact(&s(&["NAME", "ADDRESS", "N"]), &[s(&["off", "", "1"]), s(&["a", "b", ""])]),
            "NAME  ADDRESS  N\noff            1\na     b\n"
        );
        // A cell of several lines continues under its column.
        assert_eq!(compact(&s(&["id", "body"]), &[s(&["1", "one;\ntwo"])]), "id  body\n1   one;\n    two\n");
        // A header wider than its cells sets the width; one column has no gap at all.
        assert_eq!(compact(&s(&["count(*)"]), &[s(&["3"])]), "count(*)\n3\n");
    }

    #[test]
    fn every_format_renders_a_listing() {
        let listing = Listing {
            header: s(&["NAME", "ADDRESS"]),
            cells: vec![s(&["mc1", "127.0.0.1:9001"])],
            keys: vec!["name", "address"],
            records: vec![vec![json!("mc1"), json!("127.0.0.1:9001")]],
            json: json!([{"name": "mc1", "address": "127.0.0.1:9001"}]),
        };
        assert_eq!(listing.render(Format::Compact), "NAME  ADDRESS\nmc1   127.0.0.1:9001\n");
        assert!(listing.render(Format::Table).starts_with("+------+----------------+\n"));
        assert_eq!(listing.render(Format::Csv), "name,address\nmc1,127.0.0.1:9001\n");
        assert_eq!(listing.render(Format::Yaml), "- name: \"mc1\"\n  address: \"127.0.0.1:9001\"\n");
    }

    #[test]
    fn yaml_quotes_strings_and_keeps_numbers() {
        let keys = ["name", "version", "extensions"];
        let records = vec![vec![json!("a\"b\nc"), json!(2), json!(["x", "y"])], vec![json!("no"), json!(0), json!([])]];
        assert_eq!(
            yaml(&keys, &records),
            "- name: \"a\\\"b\\nc\"\n  version: 2\n  extensions: [\"x\",\"y\"]\n\
             - name: \"no\"\n  version: 0\n  extensions: []\n"
        );
        assert_eq!(yaml(&keys, &[]), "[]\n");
    }

    #[test]
    fn csv_quotes_only_when_needed() {
        let keys = ["name", "expires_at", "extensions"];
        let records = vec![
            vec![json!("a\"b"), json!("x,y\nz"), json!(["e1", "e2"])],
            vec![json!("plain"), json!("cr\r"), Value::Null],
        ];
        assert_eq!(csv(&keys, &records), "name,expires_at,extensions\n\"a\"\"b\",\"x,y\nz\",e1 e2\nplain,\"cr\r\",\n");
        assert_eq!(csv(&keys, &[]), "name,expires_at,extensions\n");
    }

    #[test]
    fn json_is_pretty() {
        let listing = Listing {
            header: s(&["NAME"]),
            cells: vec![],
            keys: vec!["name"],
            records: vec![],
            json: json!([{"name": "a"}]),
        };
        assert_eq!(listing.render(Format::Json), "[\n  {\n    \"name\": \"a\"\n  }\n]\n");
    }
}
