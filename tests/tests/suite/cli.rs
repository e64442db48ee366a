//! microctl as operators and scripts use it: every list in every `--format` (`cluster list`
//! through another member or from local files is in `cli_cluster_list`), the stable exit codes
//! (0 success, 1 failed request, 2 usage, 3 unreachable, 4 timed out), shell completions and man
//! pages, and the SQL shell driven through standard input.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use microcluster_tests::{Cluster, CtlOutput, Member, binaries};
use serde_json::Value;

fn assert_code(out: &CtlOutput, code: i32) {
    assert_eq!(out.code, Some(code), "{out:?}");
}

/// Our YAML: a list of flat records, `- key: value` then `  key: value`, each value JSON.
fn yaml_records(text: &str) -> Vec<serde_json::Map<String, Value>> {
    if text == "[]\n" {
        return Vec::new();
    }
    let mut records: Vec<serde_json::Map<String, Value>> = Vec::new();
    for line in text.lines() {
        let (first, field) = match (line.strip_prefix("- "), line.strip_prefix("  ")) {
            (Some(field), _) => (true, field),
            (None, Some(field)) => (false, field),
            _ => panic!("not a YAML record line: {line:?} in\n{text}"),
        };
        let (key, value) = field.split_once(": ").unwrap_or_else(|| panic!("no `key: value` in {line:?}"));
        let value: Value = serde_json::from_str(value).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        if first {
            records.push(serde_json::Map::new());
        }
        records.last_mut().unwrap().insert(key.to_owned(), value);
    }
    records
}

/// CSV without quoted fields: the header's names, then the number of rows (each as wide as it).
fn csv_shape(text: &str) -> (Vec<String>, usize) {
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(str::to_owned).collect();
    let rows: Vec<&str> = lines.collect();
    for row in &rows {
        assert!(!row.contains('"'), "quoted field in {row:?}");
        assert_eq!(row.split(',').count(), header.len(), "{row:?} under {header:?}");
    }
    (header, rows.len())
}

#[test]
fn exit_codes_without_a_daemon() {
    let offline = Member::new("offline");

    // 3: no state directory, then a socket nobody listens on.
    let out = offline.ctl(&["cluster", "list"]);
    assert_code(&out, 3);
    assert!(out.stderr.starts_with("Error: cannot reach the daemon at ") && out.stderr.contains("does not exist"));
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    std::fs::create_dir_all(&offline.dir).unwrap();
    drop(std::os::unix::net::UnixListener::bind(offline.socket()).unwrap());
    let out = offline.ctl(&["tokens", "list", "-f", "json"]);
    assert_code(&out, 3);
    assert!(out.stderr.contains("refused"), "{out:?}");
    assert_code(&offline.ctl_stdin(&["sql"], "SELECT 1;\n"), 3);

    // 4: waitready gives up.
    let out = offline.ctl(&["waitready", "--timeout", "1"]);
    assert_code(&out, 4);
    assert!(out.stderr.contains("timed out after 1s"), "{out:?}");
    // A duration, like every other one here.
    let out = offline.ctl(&["waitready", "--timeout", "1500ms"]);
    assert_code(&out, 4);
    assert!(out.stderr.contains("timed out after 1s 500ms"), "{out:?}");
    assert_code(&offline.ctl(&["waitready", "--timeout", "soon"]), 2);

    // 2: clap's usage errors; 0: help, which documents the codes.
    assert_code(&offline.ctl(&["cluster", "frobnicate"]), 2);
    assert_code(&offline.ctl(&["cluster", "list", "--format", "xml"]), 2);
    assert_code(&offline.ctl(&[]), 2);
    let help = offline.ctl(&["--help"]);
    assert_code(&help, 0);
    assert!(help.stdout.contains("Exit codes:") && help.stdout.contains("4  timed out"), "{help:?}");
}

#[test]
fn completions_and_man_pages() {
    let offline = Member::new("offline");
    for shell in ["bash", "zsh", "fish"] {
        let out = offline.ctl(&["completion", shell]);
        assert_code(&out, 0);
        for word in ["waitready", "transfer-leader", "state-dir"] {
            assert!(out.stdout.contains(word), "the {shell} completion lacks {word}");
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("microctl.bash");
    std::fs::write(&script, offline.ctl(&["completion", "bash"]).stdout).unwrap();
    let check = std::process::Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(check.status.success(), "bash -n: {}", String::from_utf8_lossy(&check.stderr));

    let dir = tmp.path().join("share/man/man1");
    assert_code(&offline.ctl(&["manpages", dir.to_str().unwrap()]), 0);
    for page in ["microctl", "microctl-cluster-list", "microctl-tokens-add", "microctl-sql", "microctl-completion"] {
        let text = std::fs::read_to_string(dir.join(format!("{page}.1"))).unwrap();
        assert!(text.lines().any(|l| l.starts_with(&format!(".TH {page} 1"))), "{page}.1:\n{text}");
    }
    assert!(!dir.join("microctl-help.1").exists());
}

#[test]
fn lists_in_every_format_and_failed_requests() {
    let mut cluster = Cluster::start(1);
    let m1 = &mut cluster.members[0];
    // A daemon that answers but is not initialised refuses requests.
    assert_code(&m1.ctl(&["cluster", "list"]), 1);
    m1.bootstrap();
    m1.wait_ready(Duration::from_secs(30));
    m1.ctl_ok(&["tokens", "add", "m2"]);

    let lists: [(&[&str], &[&str]); 3] = [
        (&["cluster", "list"], &["name", "address", "role", "fingerprint", "status"]),
        (&["tokens", "list"], &["name", "token", "expires_at"]),
        (&["servers", "list"], &["name", "address"]),
    ];
    for (list, keys) in lists {
        let run = |format: &str| m1.ctl_ok(&[list, &["--format", format][..]].concat());
        let table = run("table");
        assert!(table.starts_with("+-") && table.contains(" NAME "), "{table}");
        let json: Value = serde_json::from_str(&run("json")).unwrap();
        let (header, rows) = csv_shape(&run("csv"));
        assert!(keys.iter().all(|k| header.contains(&(*k).to_owned())), "{list:?}: {header:?}");
        let yaml = yaml_records(&run("yaml"));
        assert_eq!(yaml.len(), rows, "{list:?}");
        // Compact: the table's header and rows without borders or rules.
        let compact = run("compact");
        assert!(compact.starts_with("NAME ") && compact.lines().count() == rows + 1, "{list:?}:\n{compact}");
        assert!(compact.lines().all(|l| !l.starts_with(['+', '|']) && !l.ends_with(['|', ' '])), "{compact}");
        assert!(yaml.iter().all(|r| keys.iter().all(|k| r.contains_key(*k))), "{list:?}: {yaml:?}");
        // JSON is the API's own objects: a list, except the servers' map of name to address.
        let names: Vec<&str> = match &json {
            Value::Array(items) => items.iter().map(|i| i["name"].as_str().unwrap()).collect(),
            Value::Object(map) => map.keys().map(String::as_str).collect(),
            other => panic!("{list:?}: {other}"),
        };
        let yaml_names: Vec<&str> = yaml.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, yaml_names, "{list:?}");
        assert!(!names.is_empty(), "{list:?}");
    }
    assert_eq!(yaml_records(&m1.ctl_ok(&["cluster", "list", "-f", "yaml"]))[0]["leader"], Value::Bool(true));

    // SQL results.
    let sql = "INSERT INTO extended_table (key, value) VALUES ('k1', 'v,1'); SELECT key, value FROM extended_table";
    let batch: Value = serde_json::from_str(&m1.ctl_ok(&["sql", "-f", "json", sql])).unwrap();
    assert_eq!(batch["Results"][0]["rows_affected"], 1, "{batch}");
    assert_eq!(batch["Results"][1]["rows"], serde_json::json!([["k1", "v,1"]]), "{batch}");
    let csv = m1.ctl_ok(&["sql", "-f", "csv", "SELECT key, value FROM extended_table"]);
    assert_eq!(csv, "key,value\nk1,\"v,1\"\n");
    let yaml = yaml_records(&m1.ctl_ok(&["sql", "--format", "yaml", "SELECT count(*) AS n FROM extended_table"]));
    assert_eq!(yaml[0]["rows"], serde_json::json!([[1]]), "{yaml:?}");

    // 1: the daemon refuses.
    let out = m1.ctl(&["sql", "SELECT * FROM no_such_table"]);
    assert_code(&out, 1);
    assert!(out.stderr.contains("no such table"), "{out:?}");
    assert_code(&m1.ctl(&["tokens", "revoke", "nobody"]), 1);

    // 4: a daemon that accepts connections but does not answer.
    m1.signal("STOP");
    let out = m1.ctl(&["waitready", "--timeout", "1"]);
    m1.signal("CONT");
    assert_code(&out, 4);
    assert!(out.stderr.contains("did not answer within"), "{out:?}");
}

#[test]
fn sql_shell_from_standard_input() {
    let cluster = Cluster::form(1);
    let m1 = cluster.member(0);
    let script = "\
.tables
CREATE TABLE notes (
  id INTEGER PRIMARY KEY,
  body TEXT -- a comment; not the end
);
INSERT INTO notes (body) VALUES ('one;
two');
SELECT * FROM no_such_table;
.nonsense
INSERT INTO notes (body) VALUES ('three');
SELECT id,
       body
  FROM notes ORDER BY id;
.schema notes
.leader
.cluster
.mode json
SELECT count(*) AS n FROM notes;
.mode csv
.dump
";
    let out = m1.ctl_stdin(&["sql"], script);
    // Two failures, both reported, neither stopping what follows; the exit code says so.
    assert_code(&out, 1);
    assert!(!out.stdout.contains("microctl>"), "prompts without a terminal: {}", out.stdout);
    let errors: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(errors.len(), 2, "{}", out.stderr);
    assert!(errors[0].starts_with("Error: ") && errors[0].contains("no such table"), "{errors:?}");
    assert!(errors[1].contains(".nonsense"), "{errors:?}");

    let stdout = &out.stdout;
    let at = |needle: &str| stdout.find(needle).unwrap_or_else(|| panic!("{needle:?} missing from:\n{stdout}"));
    // .tables before the CREATE: the application's tables, in a table.
    assert!(at("| extended_table ") < at("Rows affected: "), "{stdout}");
    // The multi-line INSERT kept its newline inside the string.
    assert!(stdout.contains("| 1  | one;  |\n|    | two   |\n"), "{stdout}");
    assert!(stdout.contains("| 2  | three"), "{stdout}");
    assert!(at("CREATE TABLE notes (") > at("| 2  | three"), ".schema notes:\n{stdout}");
    let leader = format!("\n{} {}\n", m1.name, m1.address);
    assert!(stdout.contains(&leader), ".leader:\n{stdout}");
    assert!(at("| ONLINE ") > at(&leader), ".cluster:\n{stdout}");
    assert!(stdout.contains("\"rows\": [\n        [\n          2\n"), ".mode json:\n{stdout}");
    // .dump, after the JSON result, has the rows (csv mode changes nothing there).
    assert!(at("INSERT INTO \"notes\" VALUES(2,'three');\nDELETE FROM sqlite_sequence;") > at("\"rows\""), "{stdout}");
    assert!(stdout.ends_with("COMMIT;\n"), ".dump:\n{stdout}");

    // A clean script exits 0; text without a final `;` still runs at the end; .quit stops reading.
    let out = m1.ctl_stdin(&["sql"], "SELECT 40 + 2 AS answer\n");
    assert_code(&out, 0);
    assert!(out.stdout.contains("| 42 "), "{out:?}");
    let out = m1.ctl_stdin(&["sql", "-f", "csv"], ".quit\nSELECT * FROM no_such_table;\n");
    assert_code(&out, 0);
    assert_eq!(out.stdout, "", "{out:?}");
    // `sql -` still reads standard input as one batch.
    let out = m1.ctl_stdin(&["sql", "-"], "SELECT 1 AS a;\nSELECT 2 AS b");
    assert_code(&out, 0);
    assert!(out.stdout.contains("=> Query 2:"), "{out:?}");
}

/// `-v` shows each request on standard error and `-d` the client's debug messages, nothing
/// without them; a backup's or a check's progress line is drawn on a terminal only (here
/// `script`'s pseudo-terminal), never into a pipe and never with `--format json`.
#[test]
fn verbose_debug_and_progress_on_a_terminal_only() {
    let cluster = Cluster::form(1);
    let m1 = cluster.member(0);
    let quiet = m1.ctl(&["cluster", "list"]);
    assert_code(&quiet, 0);
    assert_eq!(quiet.stderr, "", "{quiet:?}");
    let verbose = m1.ctl(&["-v", "cluster", "list"]);
    assert_code(&verbose, 0);
    let line = format!("GET /core/1.0/cluster on {}: 200 OK, ", m1.socket().display());
    assert!(verbose.stderr.starts_with(&line) && verbose.stderr.lines().count() == 1, "{verbose:?}");
    assert!(verbose.stdout.contains(" ONLINE "), "{verbose:?}");
    // Global, so it may follow the command too; -d names where each message comes from.
    let debug = m1.ctl(&["cluster", "list", "--debug"]);
    assert_code(&debug, 0);
    assert!(debug.stderr.contains("microcluster::client::request: GET /core/1.0/cluster on "), "{debug:?}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("b.db");
    let piped = m1.ctl(&["database", "backup", file.to_str().unwrap()]);
    assert_code(&piped, 0);
    assert!(piped.stdout.starts_with("backed up to ") && piped.stderr.is_empty(), "{piped:?}");
    // On a terminal: the line is drawn at once, then cleared before the summary.
    let on_terminal = |args: &str| {
        let command = format!("{} --state-dir {} {args}", binaries().microctl.display(), m1.dir.display());
        let out = std::process::Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("TERM", "xterm")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = on_terminal(&format!("database backup {}", file.display()));
    assert!(
        shown.starts_with("\r\x1b[2Ktaking a backup… 0.0 s") && shown.contains("\r\x1b[2Kbacked up to "),
        "{shown:?}"
    );
    let shown = on_terminal(&format!("database verify {}", file.display()));
    assert!(shown.contains(&format!("\x1b[2Kverifying {} (", file.display())), "{shown:?}");
    assert!(shown.contains(") by restoring it aside… ") && shown.contains(" restores: "), "{shown:?}");
    let json = on_terminal(&format!("database backup {} -f json", file.display()));
    assert!(json.trim_start().starts_with('{') && !json.contains("taking a backup"), "{json:?}");
}
