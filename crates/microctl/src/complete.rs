//! Whether the shell has read a whole SQL statement yet: SQLite's `sqlite3_complete()` rules,
//! restated in Rust because the `dqlite` crate's tokenizer comes with libdqlite, which microctl
//! never links.
//!
//! Text is complete when it ends with `;` outside strings, quoted identifiers and comments; a
//! `CREATE [TEMP] TRIGGER` only after `; END ;`, since its body holds semicolons of its own. The
//! state machine is SQLite's own (`complete.c`), so the shell cuts where the daemon's splitter
//! (the same rules) would.

/// What the text read so far holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Completeness {
    /// Nothing but whitespace and finished comments.
    Blank,
    /// A statement that goes on: no final `;`, or inside a string, comment or trigger body.
    Incomplete,
    /// Every statement ends with its `;`.
    Complete,
}

/// SQLite's token classes for completeness.
#[derive(Debug, Clone, Copy)]
enum Token {
    Semi,
    Space,
    Other,
    Explain,
    Create,
    Temp,
    Trigger,
    End,
}

/// States of `sqlite3_complete()`, in its order: 0 nothing yet, 1 after `;`, 2 in a statement,
/// 3 after a leading EXPLAIN, 4 after a leading CREATE, 5 in a trigger, 6 after `;` in a
/// trigger, 7 after `; END` in a trigger.
const TRANSITIONS: [[u8; 8]; 8] = [
    // Semi Space Other Explain Create Temp Trigger End
    [1, 0, 2, 3, 4, 2, 2, 2],
    [1, 1, 2, 3, 4, 2, 2, 2],
    [1, 2, 2, 2, 2, 2, 2, 2],
    [1, 3, 3, 2, 4, 2, 2, 2],
    [1, 4, 2, 2, 2, 4, 5, 2],
    [6, 5, 5, 5, 5, 5, 5, 5],
    [6, 6, 5, 5, 5, 5, 5, 7],
    [1, 7, 5, 5, 5, 5, 5, 5],
];

/// Classifies `sql` (the lines read so far, newlines included).
pub(crate) fn check(sql: &str) -> Completeness {
    let bytes = sql.as_bytes();
    let mut state = 0u8;
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        let token = match c {
            b';' => {
                i += 1;
                Token::Semi
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                i += 1;
                Token::Space
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => match find(bytes, i + 2, b"*/") {
                Some(end) => {
                    i = end + 2;
                    Token::Space
                }
                None => return Completeness::Incomplete,
            },
            b'-' if bytes.get(i + 1) == Some(&b'-') => match find(bytes, i + 2, b"\n") {
                Some(end) => {
                    i = end + 1;
                    Token::Space
                }
                // A comment running to the end changes nothing before it.
                None => break,
            },
            b'\'' | b'"' | b'`' | b'[' => {
                let close = if c == b'[' { b']' } else { c };
                // A doubled quote inside a string is two strings back to back: same token class.
                match find(bytes, i + 1, &[close]) {
                    Some(end) => {
                        i = end + 1;
                        Token::Other
                    }
                    None => return Completeness::Incomplete,
                }
            }
            c if is_word_byte(c) => {
                let start = i;
                while bytes.get(i).copied().is_some_and(is_word_byte) {
                    i += 1;
                }
                keyword(&bytes[start..i])
            }
            _ => {
                i += 1;
                Token::Other
            }
        };
        state = TRANSITIONS[usize::from(state)][token as usize];
    }
    match state {
        0 => Completeness::Blank,
        1 => Completeness::Complete,
        _ => Completeness::Incomplete,
    }
}

/// Identifier characters as SQLite's tokenizer sees them (every byte of a multi-byte UTF-8
/// character counts).
fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

fn keyword(word: &[u8]) -> Token {
    let is = |k: &str| word.eq_ignore_ascii_case(k.as_bytes());
    if is("explain") {
        Token::Explain
    } else if is("create") {
        Token::Create
    } else if is("temp") || is("temporary") {
        Token::Temp
    } else if is("trigger") {
        Token::Trigger
    } else if is("end") {
        Token::End
    } else {
        Token::Other
    }
}

/// Index of the first `needle` at or after `from`.
fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Completeness::{Blank, Complete, Incomplete};

    #[test]
    fn statements_end_with_a_semicolon() {
        for (sql, want) in [
            ("", Blank),
            ("  \n\t", Blank),
            ("-- a comment\n", Blank),
            ("/* a\ncomment */\n", Blank),
            ("SELECT 1", Incomplete),
            ("SELECT 1;", Complete),
            ("SELECT 1;\n", Complete),
            ("SELECT\n1\n;\n", Complete),
            ("SELECT 1; SELECT 2", Incomplete),
            ("SELECT 1; SELECT 2;", Complete),
            ("SELECT 1; -- done\n", Complete),
            ("SELECT 1; -- done", Complete),
            ("SELECT 1 -- not done;\n", Incomplete),
            ("SELECT 1; /* more */", Complete),
            (";", Complete),
        ] {
            assert_eq!(check(sql), want, "{sql:?}");
        }
    }

    #[test]
    fn semicolons_in_strings_identifiers_and_comments_do_not_count() {
        for (sql, want) in [
            ("SELECT ';", Incomplete),
            ("SELECT ';';", Complete),
            ("SELECT 'it''s;';", Complete),
            ("SELECT 'it''s;", Incomplete),
            ("SELECT \"a;b\" FROM t;", Complete),
            ("SELECT \"a;b FROM t;", Incomplete),
            ("SELECT [a;b] FROM t;", Complete),
            ("SELECT [a;b FROM t;", Incomplete),
            ("SELECT `a;b` FROM t;", Complete),
            ("SELECT `a;b FROM t;", Incomplete),
            ("SELECT 1 /* ; */", Incomplete),
            ("SELECT 1 /* ;", Incomplete),
            ("SELECT 1; /* unfinished", Incomplete),
            ("SELECT x'00;';", Complete),
            ("SELECT 'é;';", Complete),
        ] {
            assert_eq!(check(sql), want, "{sql:?}");
        }
    }

    #[test]
    fn trigger_bodies_end_with_end() {
        let body = "CREATE TRIGGER t AFTER INSERT ON x BEGIN INSERT INTO y VALUES (1);";
        assert_eq!(check(body), Incomplete);
        assert_eq!(check(&format!("{body}\nEND")), Incomplete);
        assert_eq!(check(&format!("{body}\nEND;")), Complete);
        assert_eq!(check(&format!("{body} END; SELECT 1;")), Complete);
        // CASE ... END inside the body is not the trigger's END.
        assert_eq!(
            check("create temp trigger t before delete on x begin select case 1 when 1 then 2 end;"),
            Incomplete
        );
        assert_eq!(check("CREATE TEMPORARY TRIGGER t BEGIN DELETE FROM a; END;"), Complete);
        assert_eq!(check("EXPLAIN CREATE TRIGGER t BEGIN DELETE FROM a;"), Incomplete);
        // Words that merely contain the keywords, and CREATE of other things.
        assert_eq!(check("CREATE TABLE triggers (endx);"), Complete);
        assert_eq!(check("SELECT trigger FROM create_end;"), Complete);
    }
}
