//! `microctl sql` without a query: an SQL shell in the manner of `sqlite3` and go-dqlite's
//! `dqlite` shell.
//!
//! On a terminal it edits lines with rustyline and keeps a history file; otherwise it reads
//! standard input line by line without prompts, so scripts can pipe commands into it. A
//! statement may span lines and runs once it ends with `;` ([`complete`]),
//! through the same request and printing as `microctl sql "..."`. A line starting with `.` is a
//! command (`.help`). A failure prints `Error: ...` and the shell goes on; when reading from a
//! pipe, the exit code then reports the first failure.

use std::io::{BufRead, IsTerminal, Read as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use microcluster::client::Client;
use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;

use crate::complete::{self, Completeness};
use crate::exit::{self, Code, Reported};
use crate::format::Format;
use crate::{emit, listings, sql};

/// The daemon accepts request bodies up to 8 MiB, so longer input can never run.
const MAX_INPUT: usize = 8 * 1024 * 1024;

const PROMPT: &str = "microctl> ";
const CONTINUATION: &str = "   ...> ";

const HELP: &str = "\
.cluster            the cluster's members
.dump               the whole database as SQL
.exit, .quit        leave the shell (or Ctrl-D)
.help               this text
.leader             the dqlite leader's name and address
.mode [FORMAT]      show or set the output format: table, compact, json, yaml or csv
.schema [TABLE]     the schema of the database, or of one table
.tables             the names of the tables
SQL statements end with ';' and may span lines; each line's complete statements run as one
request, like microctl sql \"...\". Ctrl-C discards an unfinished statement.
";

const TABLES: &str =
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name";

/// Runs the shell until `.quit` or the end of input.
pub(crate) async fn run(client: &Client, dir: &Path, format: Format) -> anyhow::Result<()> {
    let mut input = Input::open();
    let interactive = matches!(input, Input::Terminal { .. });
    if interactive {
        emit(&format!(
            "microctl SQL shell on the member at {}: end statements with ';', .help for commands.\n",
            dir.display()
        ))?;
    }
    let mut shell = Shell { client, dir, format, pending: String::new(), failure: None };
    loop {
        let line = match input.read(!shell.pending.is_empty()) {
            Ok(Line::Text(line)) => line,
            Ok(Line::Interrupted) => {
                shell.pending.clear();
                continue;
            }
            Ok(Line::End) => break,
            Err(err) => {
                input.close();
                return Err(err);
            }
        };
        let (flow, entry) = shell.line(&line).await;
        if let Some(entry) = entry {
            input.remember(&entry);
        }
        if flow == Flow::Quit {
            break;
        }
    }
    input.close();
    // Text left without its `;` at the end of a script still runs, as `microctl sql "..."` would.
    if complete::check(&shell.pending) != Completeness::Blank {
        let sql = std::mem::take(&mut shell.pending);
        shell.statements(&sql).await;
    }
    match shell.failure {
        Some(code) if !interactive => Err(Reported(code).into()),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

/// The shell's state between lines.
struct Shell<'a> {
    client: &'a Client,
    dir: &'a Path,
    format: Format,
    /// Lines of a statement without its final `;` yet.
    pending: String,
    /// The exit code of the first failure.
    failure: Option<Code>,
}

impl Shell<'_> {
    /// Handles one line; returns what to do next and the history entry it completed, if any.
    async fn line(&mut self, line: &str) -> (Flow, Option<String>) {
        if self.pending.is_empty() {
            let command = line.trim();
            if command.starts_with('.') {
                let flow = match self.command(command).await {
                    Ok(flow) => flow,
                    Err(err) => {
                        self.fail(&err);
                        Flow::Continue
                    }
                };
                return (flow, Some(command.to_owned()));
            }
        }
        if self.pending.len() + line.len() >= MAX_INPUT {
            self.pending.clear();
            self.fail(&anyhow::anyhow!("the statement is longer than the daemon accepts (8 MiB); it was discarded"));
            return (Flow::Continue, None);
        }
        self.pending.push_str(line);
        self.pending.push('\n');
        match complete::check(&self.pending) {
            Completeness::Blank => {
                self.pending.clear();
                (Flow::Continue, None)
            }
            Completeness::Incomplete => (Flow::Continue, None),
            Completeness::Complete => {
                let sql = std::mem::take(&mut self.pending);
                self.statements(&sql).await;
                (Flow::Continue, Some(sql.trim_end().to_owned()))
            }
        }
    }

    /// Runs statements as `microctl sql "..."` does, and prints their results.
    async fn statements(&mut self, sql: &str) {
        let result = match self.client.sql(sql).await {
            Ok(batch) => emit(&sql::render_as(&batch, self.format)),
            Err(err) => Err(err.into()),
        };
        if let Err(err) = result {
            self.fail(&err);
        }
    }

    /// A dot command.
    async fn command(&mut self, line: &str) -> anyhow::Result<Flow> {
        let (name, arg) = line.split_once(char::is_whitespace).map_or((line, ""), |(n, a)| (n, a.trim()));
        let no_arg = || if arg.is_empty() { Ok(()) } else { Err(anyhow::anyhow!("{name} takes no argument")) };
        match name {
            ".help" => emit(HELP)?,
            ".quit" | ".exit" => return Ok(Flow::Quit),
            ".cluster" => {
                no_arg()?;
                let members = self.client.cluster_members().await?;
                emit(&listings::members(&members).render(self.format))?;
            }
            ".leader" => {
                no_arg()?;
                let members = self.client.cluster_members().await?;
                let Some(leader) = members.iter().find(|m| m.leader) else {
                    bail!("no member leads the database right now (is a majority of voters online?)");
                };
                emit(&format!("{} {}\n", leader.local.name, leader.local.address))?;
            }
            ".tables" => {
                no_arg()?;
                let batch = self.client.sql(TABLES).await?;
                emit(&sql::render_as(&batch, self.format))?;
            }
            ".schema" if arg.is_empty() => emit(&sql::render_dump(self.client.sql_dump(true).await?))?,
            ".schema" => {
                let batch = self.client.sql(&schema_query(arg)).await?;
                let text: String = batch
                    .results
                    .iter()
                    .flat_map(|r| &r.rows)
                    .filter_map(|row| row.first()?.as_str().map(|sql| format!("{sql};\n")))
                    .collect();
                emit(&text)?;
            }
            ".dump" => {
                no_arg()?;
                emit(&sql::render_dump(self.client.sql_dump(false).await?))?;
            }
            ".mode" if arg.is_empty() => emit(&format!("{}\n", format_name(self.format)))?,
            ".mode" => {
                self.format = clap::ValueEnum::from_str(arg, true)
                    .map_err(|_| anyhow::anyhow!("unknown mode {arg:?}: use table, compact, json, yaml or csv"))?;
            }
            _ => bail!("unknown command {name:?}: .help lists the commands"),
        }
        Ok(Flow::Continue)
    }

    fn fail(&mut self, err: &anyhow::Error) {
        self.failure.get_or_insert(Code::of(err));
        if let Some(message) = exit::message(err, self.dir) {
            eprintln!("Error: {message}");
        }
    }
}

/// The statements that created `table` and its indexes and triggers; `table` may be quoted.
fn schema_query(table: &str) -> String {
    let unquoted = [('"', '"'), ('\'', '\''), ('`', '`'), ('[', ']')]
        .iter()
        .find_map(|&(open, close)| table.strip_prefix(open)?.strip_suffix(close))
        .unwrap_or(table);
    format!(
        "SELECT sql FROM sqlite_master WHERE tbl_name = '{}' AND sql IS NOT NULL ORDER BY type <> 'table', name",
        unquoted.replace('\'', "''")
    )
}

fn format_name(format: Format) -> String {
    clap::ValueEnum::to_possible_value(&format).map_or_else(String::new, |v| v.get_name().to_owned())
}

/// What one read produced.
enum Line {
    Text(String),
    /// Ctrl-C.
    Interrupted,
    /// Ctrl-D or the end of standard input.
    End,
}

/// Where lines come from.
enum Input {
    /// Line editing with a history file (`None`: not kept).
    Terminal {
        editor: Box<DefaultEditor>,
        history: Option<PathBuf>,
    },
    Piped(std::io::StdinLock<'static>),
}

impl Input {
    fn open() -> Input {
        if !std::io::stdin().is_terminal() {
            return Input::Piped(std::io::stdin().lock());
        }
        let mut editor = match DefaultEditor::new() {
            Ok(editor) => editor,
            Err(err) => {
                eprintln!("Warning: no line editing ({err}); reading plain lines");
                return Input::Piped(std::io::stdin().lock());
            }
        };
        let history = history_path(|var| std::env::var_os(var));
        if let Some(path) = &history {
            match editor.load_history(path) {
                Err(ReadlineError::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => eprintln!("Warning: cannot read the history file {}: {err}", path.display()),
                Ok(()) => {}
            }
        }
        Input::Terminal { editor: Box::new(editor), history }
    }

    fn read(&mut self, continuation: bool) -> anyhow::Result<Line> {
        match self {
            Input::Terminal { editor, .. } => match editor.readline(if continuation { CONTINUATION } else { PROMPT }) {
                Ok(line) => Ok(Line::Text(line)),
                Err(ReadlineError::Interrupted) => Ok(Line::Interrupted),
                Err(ReadlineError::Eof) => Ok(Line::End),
                Err(err) => Err(err).context("reading from the terminal"),
            },
            Input::Piped(stdin) => read_line(stdin),
        }
    }

    fn remember(&mut self, entry: &str) {
        if let Input::Terminal { editor, .. } = self {
            // Only fails for a history that is not kept in memory at all.
            let _ = editor.add_history_entry(entry);
        }
    }

    fn close(self) {
        let Input::Terminal { mut editor, history: Some(path) } = self else { return };
        let saved = match path.parent() {
            Some(parent) => std::fs::create_dir_all(parent).map_err(ReadlineError::Io),
            None => Ok(()),
        }
        .and_then(|()| editor.save_history(&path));
        if let Err(err) = saved {
            eprintln!("Warning: cannot write the history file {}: {err}", path.display());
        }
    }
}

/// One line of standard input, without its line ending.
fn read_line(reader: &mut impl BufRead) -> anyhow::Result<Line> {
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_INPUT).unwrap_or(u64::MAX);
    reader.by_ref().take(limit).read_until(b'\n', &mut bytes).context("reading standard input")?;
    if bytes.is_empty() {
        return Ok(Line::End);
    }
    if bytes.len() >= MAX_INPUT {
        bail!("standard input has a line longer than the daemon accepts (8 MiB)");
    }
    let mut line = String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("standard input is not UTF-8 text"))?;
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    Ok(Line::Text(line))
}

/// `$XDG_STATE_HOME/microctl/history`, else `~/.microctl_history`, else none (no `HOME`).
fn history_path(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    // The XDG specification says relative paths are to be ignored.
    let absolute = |name: &str| var(name).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(state) = absolute("XDG_STATE_HOME") {
        return Some(state.join("microctl").join("history"));
    }
    absolute("HOME").map(|home| home.join(".microctl_history"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_goes_to_xdg_state_then_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.into())
        };
        assert_eq!(
            history_path(env(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")])),
            Some(PathBuf::from("/s/microctl/history"))
        );
        assert_eq!(history_path(env(&[("HOME", "/h")])), Some(PathBuf::from("/h/.microctl_history")));
        assert_eq!(
            history_path(env(&[("XDG_STATE_HOME", "rel"), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.microctl_history"))
        );
        assert_eq!(history_path(env(&[("HOME", "")])), None);
        assert_eq!(history_path(env(&[])), None);
    }

    #[test]
    fn lines_lose_their_endings() {
        let mut input: &[u8] = b"SELECT 1;\r\n.tables\nlast";
        let mut lines = Vec::new();
        while let Line::Text(line) = read_line(&mut input).unwrap() {
            lines.push(line);
        }
        assert_eq!(lines, ["SELECT 1;", ".tables", "last"]);
        let mut bad: &[u8] = b"\xff\n";
        assert!(read_line(&mut bad).is_err());
    }

    #[test]
    fn schema_names_are_quoted() {
        assert_eq!(
            schema_query("it's"),
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'it''s' AND sql IS NOT NULL ORDER BY type <> 'table', name"
        );
        assert!(schema_query("\"my table\"").contains("tbl_name = 'my table'"));
        assert!(schema_query("[t]").contains("tbl_name = 't'"));
    }

    #[test]
    fn modes_have_their_names() {
        assert_eq!(format_name(Format::Csv), "csv");
        assert_eq!(format_name(Format::Table), "table");
        assert_eq!(format_name(Format::Compact), "compact");
        let mode: Format = clap::ValueEnum::from_str("compact", true).unwrap();
        assert_eq!(mode, Format::Compact);
    }
}
