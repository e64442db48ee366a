//! Rendering lists for people (ASCII tables like microcluster's) and for programs (JSON, YAML,
//! CSV). Every list is a header plus rows of strings.

use comfy_table::{Cell, CellAlignment, ContentArrangement, Table};

/// How to print a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// An ASCII table.
    Table,
    /// A JSON array.
    Json,
    /// A YAML list.
    Yaml,
    /// Comma-separated values with a header line.
    Csv,
}

/// `+---+` borders, a rule under the header only, no colours, never wrapped.
const ASCII_PRESET: &str = "||--+-++|    ++++++";

/// An ASCII table: header centred (odd space on the right, as Go's tablewriter does), cells
/// left-aligned.
pub(crate) fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .filter_map(|r| r.get(i))
            .chain(std::iter::once(&header[i]))
            .map(|s| s.chars().count())
            .max()
            .unwrap_or(0)
    };
    let centred = header.iter().enumerate().map(|(i, h)| {
        let extra = width(i) - h.chars().count();
        let left = extra / 2;
        Cell::new(format!("{}{h}{}", " ".repeat(left), " ".repeat(extra - left))).set_alignment(CellAlignment::Left)
    });
    let mut table = Table::new();
    table.load_preset(ASCII_PRESET).set_content_arrangement(ContentArrangement::Disabled).force_no_tty();
    table.set_header(centred);
    for row in rows {
        table.add_row(row.iter().map(Cell::new));
    }
    format!("{table}\n")
}

fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// A YAML list of flat records (strings quoted JSON-style, which is valid YAML).
pub(crate) fn yaml(header: &[String], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "[]\n".to_owned();
    }
    let mut out = String::new();
    for row in rows {
        for (i, (key, value)) in header.iter().zip(row).enumerate() {
            out.push_str(if i == 0 { "- " } else { "  " });
            out.push_str(&format!("{}: {}\n", key.to_lowercase().replace(' ', "_"), json_string(value)));
        }
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

/// CSV with a header line.
pub(crate) fn csv(header: &[String], rows: &[Vec<String>]) -> String {
    std::iter::once(header)
        .chain(rows.iter().map(Vec::as_slice))
        .map(|row| row.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(",") + "\n")
        .collect()
}

/// Renders `rows` for humans or, for JSON, returns `json` as given.
pub(crate) fn render(
    format: Format,
    header: &[&str],
    rows: &[Vec<String>],
    json: impl FnOnce() -> serde_json::Value,
) -> String {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    match format {
        Format::Table => table(&header, rows),
        Format::Json => format!("{:#}\n", json()),
        Format::Yaml => yaml(&header, rows),
        Format::Csv => csv(&header, rows),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn tables_look_like_the_tutorials() {
        let rows: Vec<Vec<String>> =
            ["sqlite_sequence", "schemas", "core_cluster_members"].iter().map(|r| s(&[r])).collect();
        assert_eq!(
            table(&s(&["name"]), &rows),
            "+----------------------+\n\
             |         name         |\n\
             +----------------------+\n\
             | sqlite_sequence      |\n\
             | schemas              |\n\
             | core_cluster_members |\n\
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
    }

    #[test]
    fn yaml_and_csv_escape() {
        let header = s(&["NAME", "EXPIRES AT"]);
        let rows = vec![s(&["a\"b", "x,y\nz"])];
        assert_eq!(yaml(&header, &rows), "- name: \"a\\\"b\"\n  expires_at: \"x,y\\nz\"\n");
        assert_eq!(yaml(&header, &[]), "[]\n");
        assert_eq!(csv(&header, &rows), "NAME,EXPIRES AT\n\"a\"\"b\",\"x,y\nz\"\n");
    }
}
