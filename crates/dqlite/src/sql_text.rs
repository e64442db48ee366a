//! SQL text handling that libdqlite 1.11 makes safety-critical: a statement that writes but is
//! sent down the QUERY path is not replicated and later crashes the node, so before a statement
//! is sent as a query it must be proven read-only, and multi-statement text must be split
//! exactly where SQLite would split it. A small SQLite-aware tokenizer (strings, blobs, quoted
//! identifiers, comments, trigger bodies) backs [`split_statements`] and [`classify`], and the
//! classification is deliberately conservative: whatever is not provably read-only is a write.

/// What kind of statement this is, judged by its leading keyword(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// Provably read-only: safe to send down dqlite's QUERY path.
    Read,
    /// May write (or could not be proven read-only): must go down the EXEC path.
    Write,
    /// BEGIN, COMMIT, END, ROLLBACK, SAVEPOINT or RELEASE.
    Transaction,
    /// Nothing but whitespace and comments.
    Empty,
}

/// Splits SQL text into statements the way SQLite would, including `CREATE TRIGGER` bodies whose
/// inner semicolons do not end the statement. Each statement is a slice of `sql` without its
/// terminating `;`, trimmed of surrounding whitespace; statements holding nothing but
/// whitespace and comments are dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut has_content = false;
    let mut head = Head::Start;
    for tok in Lexer::new(sql) {
        if tok.kind == Kind::Punct(b';') && !matches!(head, Head::Body(_)) {
            push_statement(sql, start, tok.start, has_content, &mut out);
            (start, has_content, head) = (tok.end, false, Head::Start);
            continue;
        }
        has_content = true;
        head = head.advance(word(sql, &tok));
    }
    push_statement(sql, start, sql.len(), has_content, &mut out);
    out
}

/// True only when `stmt` (one statement, as returned by [`split_statements`]) is provably
/// read-only, i.e. `classify(stmt) == StatementKind::Read`.
pub fn is_read_only(stmt: &str) -> bool {
    classify(stmt) == StatementKind::Read
}

/// Classifies one statement by its leading keyword(s), conservatively.
///
/// `EXPLAIN ...` is read-only (it never executes). `SELECT`, `VALUES` and `WITH` are read-only
/// unless a write-capable keyword (`INSERT`, `DELETE`, `RETURNING`, `PRAGMA`, ...) appears
/// anywhere as a bare word not followed by `(` (a function call such as `replace(...)`). A
/// column that is literally named like such a keyword and left unquoted therefore makes the
/// statement a write; quote it (`"replace"`) to have it read. `PRAGMA name` is read-only except
/// for pragmas that change the database file (`optimize`, `incremental_vacuum`,
/// `wal_checkpoint`); `PRAGMA name(arg)` only for a fixed list of introspection pragmas; any
/// other form is a write. Text holding more than one statement is a write.
pub fn classify(stmt: &str) -> StatementKind {
    let toks: Vec<Token> = Lexer::new(stmt).collect();
    classify_tokens(stmt, &toks)
}

fn classify_tokens(stmt: &str, toks: &[Token]) -> StatementKind {
    let is_semi = |t: &Token| t.kind == Kind::Punct(b';');
    let first = toks.iter().position(|t| !is_semi(t)).unwrap_or(toks.len());
    let last = toks.iter().rposition(|t| !is_semi(t)).map_or(first, |i| i + 1);
    let toks = toks.get(first..last).unwrap_or_default();
    let Some(head) = toks.first() else {
        return StatementKind::Empty;
    };
    // A second statement could write whatever the first one is, so do not judge by the first.
    // dqlite sends SQL as a NUL-terminated string: after a NUL the server sees other text.
    if toks.iter().any(is_semi) || stmt.contains('\0') {
        return StatementKind::Write;
    }
    let Some(head) = word(stmt, head) else {
        return StatementKind::Write;
    };
    if is_any(head, &["EXPLAIN"]) {
        StatementKind::Read
    } else if is_any(head, &["SELECT", "VALUES", "WITH"]) {
        if has_write_keyword(stmt, toks) { StatementKind::Write } else { StatementKind::Read }
    } else if is_any(head, &["PRAGMA"]) {
        classify_pragma(stmt, toks.get(1..).unwrap_or_default())
    } else if is_any(head, &["BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"]) {
        StatementKind::Transaction
    } else {
        StatementKind::Write
    }
}

/// True when `stmt` is one statement that starts with `INSERT`, `REPLACE`, `UPDATE` or `DELETE`
/// (not `WITH … INSERT`) and holds no `RETURNING`: a statement whose effect SQLite's `changes()`
/// and `last_insert_rowid()` describe right after it runs.
pub fn is_plain_dml(stmt: &str) -> bool {
    split_statements(stmt).len() == 1 && {
        let toks: Vec<Token> = Lexer::new(stmt).collect();
        plain_dml_tokens(stmt, &toks)
    }
}

/// [`is_plain_dml`] of one statement's tokens.
fn plain_dml_tokens(stmt: &str, toks: &[Token]) -> bool {
    if returning_tokens(stmt, toks) {
        return false;
    }
    let head = toks.iter().find(|t| t.kind != Kind::Punct(b';'));
    head.and_then(|t| word(stmt, t)).is_some_and(|w| is_any(w, &["INSERT", "REPLACE", "UPDATE", "DELETE"]))
}

/// True when `stmt` (one statement) is an `INSERT`, `REPLACE`, `UPDATE` or `DELETE`, also
/// behind a `WITH` clause: a statement whose row count SQLite's `changes()` reports. Any other
/// statement (DDL, transaction control, a read) leaves `changes()` at the count of the last
/// such statement on the connection, which says nothing about it.
pub fn counts_changes(stmt: &str) -> bool {
    let toks: Vec<Token> = Lexer::new(stmt).collect();
    counts_changes_tokens(stmt, &toks)
}

fn counts_changes_tokens(stmt: &str, toks: &[Token]) -> bool {
    let toks: Vec<&Token> = toks.iter().filter(|t| t.kind != Kind::Punct(b';')).collect();
    let Some(head) = toks.first().and_then(|t| word(stmt, t)) else {
        return false;
    };
    let dml = ["INSERT", "REPLACE", "UPDATE", "DELETE"];
    if is_any(head, &dml) {
        return true;
    }
    is_any(head, &["WITH"])
        && toks.iter().enumerate().any(|(i, tok)| {
            let is_call = toks.get(i + 1).is_some_and(|next| next.kind == Kind::Punct(b'('));
            !is_call && word(stmt, tok).is_some_and(|w| is_any(w, &dml))
        })
}

/// True when the `RETURNING` keyword appears in `sql` (outside strings, comments and quoted
/// identifiers, and not as a function name). libdqlite 1.11 cannot run such a write on any path:
/// through EXEC it stops at the first returned row, commits locally without replicating, and
/// the node aborts at its next write.
pub fn has_returning(sql: &str) -> bool {
    let toks: Vec<Token> = Lexer::new(sql).collect();
    returning_tokens(sql, &toks)
}

fn returning_tokens(sql: &str, toks: &[Token]) -> bool {
    toks.iter().enumerate().any(|(i, tok)| {
        let is_call = toks.get(i + 1).is_some_and(|next| next.kind == Kind::Punct(b'('));
        !is_call && word(sql, tok).is_some_and(|w| is_any(w, &["RETURNING"]))
    })
}

/// One statement of SQL text, split and judged once: what every step between a request and
/// the node needs to know of it, so that none of them reads the text again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    text: String,
    kind: StatementKind,
    counts_changes: bool,
    plain_dml: bool,
}

impl Statement {
    /// The statement, without its terminating `;` and surrounding whitespace.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// What kind it is ([`classify`]).
    pub fn kind(&self) -> StatementKind {
        self.kind
    }

    /// Whether SQLite's `changes()` reports on it ([`counts_changes`]).
    pub fn counts_changes(&self) -> bool {
        self.counts_changes
    }

    /// Whether it is a plain INSERT, REPLACE, UPDATE or DELETE without RETURNING
    /// ([`is_plain_dml`]).
    pub fn is_plain_dml(&self) -> bool {
        self.plain_dml
    }

    /// Whether it holds a block comment, which, left open, would swallow text appended to it.
    pub fn has_block_comment(&self) -> bool {
        self.text.contains("/*")
    }
}

/// Splits SQL text into statements ([`split_statements`]) and judges each once: one pass over
/// the text, and one over each statement's tokens.
pub fn parse(sql: &str) -> Vec<Statement> {
    split_statements(sql)
        .into_iter()
        .map(|text| {
            let toks: Vec<Token> = Lexer::new(text).collect();
            Statement {
                kind: classify_tokens(text, &toks),
                counts_changes: counts_changes_tokens(text, &toks),
                plain_dml: plain_dml_tokens(text, &toks),
                text: text.to_owned(),
            }
        })
        .collect()
}

/// Keywords that can only appear in a SELECT/VALUES/WITH statement if it (or a CTE) may write.
#[rustfmt::skip]
const WRITE_KEYWORDS: &[&str] = &[
    "INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER", "ATTACH", "DETACH",
    "VACUUM", "REINDEX", "ANALYZE", "PRAGMA", "RETURNING", "BEGIN", "COMMIT", "ROLLBACK",
    "SAVEPOINT", "RELEASE",
];

/// Pragmas that only report, whatever their argument.
#[rustfmt::skip]
const READ_ONLY_PRAGMA_CALLS: &[&str] = &[
    "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo",
    "foreign_key_list", "foreign_key_check", "integrity_check", "quick_check", "function_list",
    "module_list", "pragma_list", "collation_list", "database_list", "compile_options",
];

/// Pragmas that change the database file even without an argument (ANALYZE, vacuum, checkpoint).
const WRITING_BARE_PRAGMAS: &[&str] = &["optimize", "incremental_vacuum", "wal_checkpoint"];

fn has_write_keyword(src: &str, toks: &[Token]) -> bool {
    toks.iter().enumerate().any(|(i, tok)| {
        let is_call = toks.get(i + 1).is_some_and(|next| next.kind == Kind::Punct(b'('));
        !is_call && word(src, tok).is_some_and(|w| is_any(w, WRITE_KEYWORDS))
    })
}

fn classify_pragma(src: &str, rest: &[Token]) -> StatementKind {
    let is_word = |t: &Token| t.kind == Kind::Word;
    let (name, args) = match rest {
        [schema, dot, name, args @ ..]
            if matches!(schema.kind, Kind::Word | Kind::Quoted) && dot.kind == Kind::Punct(b'.') && is_word(name) =>
        {
            (name, args)
        }
        [name, args @ ..] if is_word(name) => (name, args),
        _ => return StatementKind::Write,
    };
    let Some(name) = word(src, name) else {
        return StatementKind::Write;
    };
    let read = match args {
        [] => !is_any(name, WRITING_BARE_PRAGMAS),
        [open, .., close] => {
            open.kind == Kind::Punct(b'(') && close.kind == Kind::Punct(b')') && is_any(name, READ_ONLY_PRAGMA_CALLS)
        }
        _ => false,
    };
    if read { StatementKind::Read } else { StatementKind::Write }
}

fn push_statement<'a>(sql: &'a str, start: usize, end: usize, content: bool, out: &mut Vec<&'a str>) {
    if let Some(text) = sql.get(start..end).filter(|_| content) {
        out.push(text.trim_matches(|c: char| c.is_ascii() && is_space(c as u8)));
    }
}

fn is_any(word: &[u8], keywords: &[&str]) -> bool {
    keywords.iter().any(|k| word.eq_ignore_ascii_case(k.as_bytes()))
}

/// The bytes of `tok` if it is a bare word (the only kind of token that can be a keyword).
fn word<'a>(src: &'a str, tok: &Token) -> Option<&'a [u8]> {
    (tok.kind == Kind::Word).then(|| src.as_bytes().get(tok.start..tok.end)).flatten()
}

/// Where a statement stands with respect to `CREATE [TEMP|TEMPORARY] TRIGGER ... BEGIN ... END`,
/// the only construct in which a `;` does not end the statement.
#[derive(Debug, Clone, Copy)]
enum Head {
    Start,
    Explain,
    Create,
    CreateTemp,
    TriggerHeader,
    /// Inside the trigger body: 1 plus the number of open CASE expressions.
    Body(usize),
    Plain,
}

impl Head {
    fn advance(self, word: Option<&[u8]>) -> Head {
        let is = |k: &[&str]| word.is_some_and(|w| is_any(w, k));
        match self {
            // SQLite's parser also takes `EXPLAIN CREATE TRIGGER ...` with its whole body.
            Head::Start | Head::Explain if is(&["CREATE"]) => Head::Create,
            Head::Start if is(&["EXPLAIN"]) => Head::Explain,
            Head::Explain if is(&["QUERY", "PLAN"]) => Head::Explain,
            Head::Create if is(&["TEMP", "TEMPORARY"]) => Head::CreateTemp,
            Head::Create | Head::CreateTemp if is(&["TRIGGER"]) => Head::TriggerHeader,
            Head::TriggerHeader if is(&["BEGIN"]) => Head::Body(1),
            Head::TriggerHeader => Head::TriggerHeader,
            Head::Body(depth) if is(&["CASE"]) => Head::Body(depth.saturating_add(1)),
            Head::Body(depth) if is(&["END"]) && depth <= 1 => Head::Plain,
            Head::Body(depth) if is(&["END"]) => Head::Body(depth - 1),
            Head::Body(depth) => Head::Body(depth),
            _ => Head::Plain,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A bare word: a keyword or an unquoted identifier.
    Word,
    /// A quoted identifier, which is never a keyword.
    Quoted,
    /// A string, blob, number or parameter.
    Literal,
    /// Any other single byte (operators, parentheses, `;`).
    Punct(u8),
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// Yields the significant tokens of SQL text, skipping whitespace and comments. Works on bytes:
/// every byte of a multi-byte character is >= 0x80 and counts as an identifier byte, as in
/// SQLite, so token boundaries always fall on character boundaries.
#[derive(Debug)]
struct Lexer<'a> {
    bytes: &'a [u8],
    pos: usize,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t'..=b'\r')
}

fn is_id_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_id_char(b: u8) -> bool {
    is_id_start(b) || b.is_ascii_digit() || b == b'$'
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Lexer { bytes: src.as_bytes(), pos: 0 }
    }

    fn at(&self, i: usize) -> u8 {
        self.bytes.get(i).copied().unwrap_or(0)
    }

    /// Index just past the first `needle` at or after `from`, or the end of input.
    fn past(&self, from: usize, needle: &[u8]) -> usize {
        let rest = self.bytes.get(from..).unwrap_or_default();
        rest.windows(needle.len()).position(|w| w == needle).map_or(self.bytes.len(), |i| from + i + needle.len())
    }

    fn scan_while(&self, mut i: usize, f: impl Fn(u8) -> bool) -> usize {
        while i < self.bytes.len() && f(self.at(i)) {
            i += 1;
        }
        i
    }

    /// End of a named parameter, including the Tcl-style `$a::b` and `$a(any;thing)` forms that
    /// SQLite accepts, so that a `;` inside them is not mistaken for a statement end.
    fn variable(&self, mut i: usize) -> usize {
        let mut named = false;
        loop {
            match (self.at(i), self.at(i + 1)) {
                (c, _) if is_id_char(c) => (i, named) = (i + 1, true),
                (b':', b':') => i += 2,
                (b'(', _) if named => {
                    let end = self.scan_while(i + 1, |c| c != b')' && !is_space(c));
                    return if self.at(end) == b')' { end + 1 } else { end };
                }
                _ => return i,
            }
        }
    }

    /// End of a quoted run opened at `open` and closed by `q`, where a doubled `q` is an escape.
    fn quoted(&self, open: usize, q: u8) -> usize {
        let mut i = open + 1;
        loop {
            i = self.past(i, &[q]);
            if i >= self.bytes.len() || self.at(i) != q {
                return i;
            }
            i += 1;
        }
    }
}

impl Iterator for Lexer<'_> {
    type Item = Token;

    fn next(&mut self) -> Option<Token> {
        loop {
            let i = self.scan_while(self.pos, is_space);
            self.pos = i;
            match (self.at(i), self.at(i + 1)) {
                (b'-', b'-') => self.pos = self.past(i, b"\n"),
                (b'/', b'*') => self.pos = self.past(i + 2, b"*/"),
                _ => break,
            }
        }
        let start = self.pos;
        if start >= self.bytes.len() {
            return None;
        }
        let (kind, end) = match (self.at(start), self.at(start + 1)) {
            (b'\'', _) => (Kind::Literal, self.quoted(start, b'\'')),
            (b'x' | b'X', b'\'') => (Kind::Literal, self.quoted(start + 1, b'\'')),
            (q @ (b'"' | b'`'), _) => (Kind::Quoted, self.quoted(start, q)),
            (b'[', _) => (Kind::Quoted, self.past(start, b"]")),
            (b, _) if is_id_start(b) => (Kind::Word, self.scan_while(start + 1, is_id_char)),
            // SQLite rejects identifier bytes glued to a number, so swallowing them is harmless.
            (b, n) if b.is_ascii_digit() || (b == b'.' && n.is_ascii_digit()) => {
                let end = self.scan_while(start + 1, |c| is_id_char(c) || c == b'.');
                (Kind::Literal, end)
            }
            (b'?', _) => (Kind::Literal, self.scan_while(start + 1, is_id_char)),
            (b':' | b'@' | b'$' | b'#', _) => (Kind::Literal, self.variable(start + 1)),
            (b, _) => (Kind::Punct(b), start + 1),
        };
        self.pos = end.max(start + 1);
        Some(Token { kind, start, end: self.pos })
    }
}

#[cfg(test)]
mod tests {
    use super::StatementKind::{Empty, Read, Transaction, Write};
    use super::*;

    #[test]
    fn parse_judges_each_statement_as_the_separate_functions_do() {
        let texts = [
            "SELECT 1",
            "INSERT INTO t VALUES (1); UPDATE t SET x = 2 -- why;\nDELETE FROM t",
            "  ; ; -- nothing\n",
            "WITH c AS (SELECT 1) INSERT INTO t SELECT * FROM c",
            "INSERT INTO t VALUES (1) RETURNING id; SELECT replace('a', 'b', 'c')",
            "BEGIN; INSERT INTO t VALUES ('a;b'); COMMIT",
            "CREATE TRIGGER g AFTER INSERT ON t BEGIN UPDATE u SET n = n + 1; END; PRAGMA table_info(t)",
            "INSERT INTO t VALUES (1) /* open",
            "PRAGMA wal_checkpoint; EXPLAIN DELETE FROM t; VALUES (1)",
        ];
        for text in texts {
            let parsed = parse(text);
            let separate = split_statements(text);
            assert_eq!(parsed.len(), separate.len(), "{text}");
            for (statement, alone) in parsed.iter().zip(separate) {
                assert_eq!(statement.text(), alone, "{text}");
                assert_eq!(statement.kind(), classify(alone), "{alone}");
                assert_eq!(statement.counts_changes(), counts_changes(alone), "{alone}");
                assert_eq!(statement.is_plain_dml(), is_plain_dml(alone), "{alone}");
                assert_eq!(statement.has_block_comment(), alone.contains("/*"), "{alone}");
            }
        }
        let kinds: Vec<_> =
            parse("BEGIN; INSERT INTO t VALUES (1); SELECT 1; COMMIT").iter().map(Statement::kind).collect();
        assert_eq!(kinds, [Transaction, Write, Read, Transaction]);
    }

    #[test]
    fn only_inserts_updates_and_deletes_count_changes() {
        for yes in [
            "INSERT INTO t VALUES (1)",
            "replace into t values (1);",
            "UPDATE t SET a = 1",
            "/* c */ DELETE FROM t",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
        ] {
            assert!(counts_changes(yes), "{yes}");
        }
        for no in [
            "CREATE TABLE t (a)",
            "DROP TABLE t",
            "BEGIN",
            "COMMIT",
            "SELECT replace(a, 'x', 'y') FROM t",
            "WITH x AS (SELECT 1) SELECT replace('a', 'b', 'c') FROM x",
            "PRAGMA user_version = 3",
            "",
        ] {
            assert!(!counts_changes(no), "{no}");
        }
    }

    #[test]
    fn plain_dml_is_one_insert_update_or_delete() {
        for yes in ["INSERT INTO t VALUES (1)", "replace into t values (1)", "UPDATE t SET a = 1 -- x", "DELETE FROM t"]
        {
            assert!(is_plain_dml(yes), "{yes}");
        }
        for no in [
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "INSERT INTO t VALUES (1); DELETE FROM t",
            "INSERT INTO t VALUES (1) RETURNING a",
            "CREATE TABLE t (a)",
            "SELECT 1",
            "",
        ] {
            assert!(!is_plain_dml(no), "{no}");
        }
    }

    #[test]
    fn split_cases() {
        let trigger = "CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT CASE WHEN 1 THEN 2 END; \
                       INSERT INTO t VALUES(';'); END";
        let nested = "create temp trigger t before delete on x when (case 1 when 1 then 1 end) \
                      begin update y set a = case when 1 then case 2 when 2 then 3 end end; end";
        let explained = "EXPLAIN CREATE TEMPORARY TRIGGER t BEGIN DELETE FROM a; END";
        let cases: &[(&str, &[&str])] = &[
            ("SELECT 'a;b'; SELECT 'c'';'", &["SELECT 'a;b'", "SELECT 'c'';'"]),
            ("SELECT 1 -- x;y\n; /* c;d */ SELECT 2;", &["SELECT 1 -- x;y", "/* c;d */ SELECT 2"]),
            ("SELECT \"a;\"\"b\"; SELECT `c;``d`", &["SELECT \"a;\"\"b\"", "SELECT `c;``d`"]),
            ("SELECT [e;f]; SELECT x';'", &["SELECT [e;f]", "SELECT x';'"]),
            ("SELECT $a(b;c), :d::e;", &["SELECT $a(b;c), :d::e"]),
            (&format!("{trigger}; SELECT 1"), &[trigger, "SELECT 1"]),
            (&format!("{nested};select 2;"), &[nested, "select 2"]),
            (&format!("{explained};X"), &[explained, "X"]),
            // A table called "trigger" is not a trigger: its semicolon ends the statement.
            ("CREATE TABLE \"trigger\"(begin); X", &["CREATE TABLE \"trigger\"(begin)", "X"]),
            ("SELECT 1;\n SELECT 2  ", &["SELECT 1", "SELECT 2"]),
            (";;;", &[]),
            ("  ; -- only\n ; /* c */ ;", &[]),
            ("SELECT 'oops; DROP", &["SELECT 'oops; DROP"]),
            ("SELECT 1 /* ; x", &["SELECT 1 /* ; x"]),
            ("SELECT \"a;", &["SELECT \"a;"]),
            ("SELECT [a;", &["SELECT [a;"]),
        ];
        for &(sql, want) in cases {
            assert_eq!(split_statements(sql), want, "{sql:?}");
        }
    }

    #[test]
    fn classify_reads() {
        for sql in [
            "SELECT 1",
            "/* x */ -- y\n SELECT 1",
            "select * from t",
            "SELECT replace('a','b','c')",
            "SELECT replace /* c */ ('a','b','c')",
            "SELECT 'insert'",
            "SELECT \"delete\" FROM t",
            "SELECT [update], `drop` FROM t",
            "SELECT :insert, @delete, $update",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "WITH RECURSIVE c(n) AS (VALUES(1) UNION ALL SELECT n+1 FROM c) SELECT n FROM c",
            "VALUES (1),(2)",
            "SELECT CASE WHEN a THEN b END FROM t;",
            "EXPLAIN INSERT INTO t VALUES(1)",
            "EXPLAIN QUERY PLAN DELETE FROM t",
            "PRAGMA user_version",
            "PRAGMA main.journal_mode",
            "PRAGMA \"main\".user_version",
            "PRAGMA table_info(t)",
            "pragma Main.TABLE_INFO('t')",
            "PRAGMA integrity_check(10)",
        ] {
            assert_eq!(classify(sql), Read, "{sql}");
            assert!(is_read_only(sql), "{sql}");
        }
    }

    #[test]
    fn classify_writes() {
        for sql in [
            "INSERT INTO t VALUES (1) RETURNING id",
            "DELETE FROM t RETURNING *",
            "UPDATE t SET a = 1",
            "REPLACE INTO t VALUES(1)",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "WITH x AS (SELECT 1) UPDATE t SET a = 1",
            "WITH x AS (SELECT 1) DELETE FROM t",
            "WITH x AS (SELECT 1) REPLACE INTO t SELECT * FROM x",
            "SELECT replace FROM t",
            "SELECT 1; DELETE FROM t",
            "EXPLAIN SELECT 1; DELETE FROM t",
            "PRAGMA user_version = 3",
            "PRAGMA journal_mode(WAL)",
            "PRAGMA optimize",
            "PRAGMA main.wal_checkpoint",
            "PRAGMA \"table_info\"(t)",
            "PRAGMA table_info(t) x",
            "PRAGMA",
            "SELECT 'a\0b'",
            "CREATE TABLE t (a)",
            "DROP TABLE t",
            "ALTER TABLE t ADD b",
            "ATTACH 'x' AS y",
            "DETACH y",
            "VACUUM",
            "REINDEX",
            "ANALYZE",
            "frobnicate",
            "(SELECT 1)",
            "'SELECT 1'",
            "\"SELECT\" 1",
            "@#!",
        ] {
            assert_eq!(classify(sql), Write, "{sql}");
            assert!(!is_read_only(sql), "{sql}");
        }
    }

    #[test]
    fn classify_transactions_and_empty() {
        let transactions = ["BEGIN", "begin immediate", "COMMIT", "END TRANSACTION", "ROLLBACK TO s"];
        for sql in transactions.into_iter().chain(["SAVEPOINT s", "RELEASE s;"]) {
            assert_eq!(classify(sql), Transaction, "{sql}");
        }
        for sql in ["", "  \n", "-- c", "/* c */ ;", ";;", "/* open"] {
            assert_eq!(classify(sql), Empty, "{sql:?}");
        }
    }

    fn check_no_panic(sql: &str) {
        let range = sql.as_bytes().as_ptr_range();
        for stmt in split_statements(sql) {
            let inner = stmt.as_bytes().as_ptr_range();
            assert!(range.start <= inner.start && inner.end <= range.end, "{sql:?}");
            assert!(sql.contains(stmt));
            assert_ne!(classify(stmt), Empty, "{stmt:?} from {sql:?}");
        }
        let _ = classify(sql);
    }

    #[test]
    fn never_panics_and_returns_substrings() {
        let tricky = [
            "CREATE TRIGGER t BEGIN SELECT CASE WHEN 1 THEN 2 END; INSERT INTO t VALUES(';'); END; SELECT 1",
            "SELECT 'a''b', x'0A', \"c\"\"d\", `e``f`, [g] -- h\n/* i */ ;é;ü SELECT ?1, :a, 1.5e3, .5",
            "PRAGMA main.table_info(\"t\"); WITH x AS (SELECT 1) SELECT * FROM x; EXPLAIN ⌘ /*",
        ];
        for sql in tricky {
            for (i, _) in sql.char_indices() {
                check_no_panic(&sql[..i]);
            }
            check_no_panic(sql);
        }
        let alphabet = b"';\"`[]-/*xX() \nSELECTENDcase?:$.0\xc3\xa9";
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..400 {
            let mut bytes = Vec::new();
            for _ in 0..64 {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let r = (seed >> 33) as usize;
                let pick = if r & 7 == 0 { (r >> 3) as u8 } else { alphabet[(r >> 3) % alphabet.len()] };
                bytes.push(pick);
            }
            check_no_panic(&String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn returning_is_found_only_as_a_keyword() {
        assert!(has_returning("INSERT INTO t VALUES (1) RETURNING id"));
        assert!(has_returning("delete from t returning *; select 1"));
        assert!(!has_returning("INSERT INTO t VALUES ('returning')"));
        assert!(!has_returning("SELECT \"returning\" FROM t -- returning"));
        assert!(!has_returning("SELECT returning(1)"));
    }
}
