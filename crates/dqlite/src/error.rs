//! The crate's error type, with the classification a caller needs to decide what to do next:
//! retry elsewhere (not leader), retry later (busy), or treat a write as possibly applied.

use std::io;
use std::time::Duration;

use crate::node::NodeError;
use crate::proto::ProtocolError;

/// SQLite's BUSY primary code ("database is locked").
pub const SQLITE_BUSY: u64 = 5;
/// SQLite's "interrupted" code (a statement stopped at its time limit).
pub const SQLITE_INTERRUPT: u64 = 9;
/// SQLite's CONSTRAINT primary code (UNIQUE, NOT NULL, CHECK, FOREIGN KEY, ...).
pub const SQLITE_CONSTRAINT: u64 = 19;
/// dqlite's "not leader" (SQLITE_IOERR | 40 << 8): the request was refused before running.
pub const SQLITE_IOERR_NOT_LEADER: u64 = 10250;
/// dqlite's "leadership lost" (SQLITE_IOERR | 41 << 8): the outcome of a write is unknown.
pub const SQLITE_IOERR_LEADERSHIP_LOST: u64 = 10506;
/// raft's RAFT_NOTLEADER, which libdqlite 1.11 passes on as the FAILURE code when `raft_apply`
/// or `raft_barrier` refuses a write during a leadership transfer (after discarding the
/// statement's frames: nothing was applied). Its message is SQLite's text for the step that had
/// succeeded, "no more rows available"; SQLite's own code 7 (NOMEM) says "out of memory".
pub const RAFT_NOTLEADER: u64 = 7;
/// SQLite's NOTFOUND code, which libdqlite also sends as "no database opened".
const SQLITE_NOTFOUND: u64 = 12;
/// What libdqlite answers on a connection whose database it closed when its node lost
/// leadership (it checks leadership first, so the node leads again by then).
const NO_DATABASE_OPENED: &str = "no database opened";

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Anything that can go wrong talking to dqlite or running a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a FAILURE.
    #[error("dqlite error {code}: {message}")]
    Server {
        /// SQLite extended error code, or a dqlite/raft code.
        code: u64,
        /// Message from the server.
        message: String,
    },
    /// Reading from or writing to the connection failed; the connection is closed.
    #[error("{op} {address}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Peer address.
        address: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The peer sent bytes that are not a valid message; the connection is closed.
    #[error("malformed message from {address}: {source}")]
    Protocol {
        /// Peer address.
        address: String,
        /// What was wrong.
        #[source]
        source: ProtocolError,
    },
    /// A request could not be encoded (bad text, too many parameters); nothing was sent.
    #[error("cannot encode request: {0}")]
    Encode(#[source] ProtocolError),
    /// The peer answered with a message type that does not fit the request.
    #[error("unexpected {got} response to {request} from {address}")]
    UnexpectedResponse {
        /// Request name.
        request: &'static str,
        /// Response name.
        got: &'static str,
        /// Peer address.
        address: String,
    },
    /// The peer took too long; the connection is closed.
    #[error("{op} {address} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// Peer address.
        address: String,
        /// The deadline.
        after: Duration,
    },
    /// An earlier request on this connection was interrupted mid-way, so its framing is lost.
    #[error("connection to {address} is closed after an interrupted or failed exchange; reconnect")]
    Broken {
        /// Peer address.
        address: String,
    },
    /// A request was abandoned because the cluster elected another leader while it waited on
    /// this one (see [`crate::Database::follow_leader`]); the connection is closed. A write may
    /// or may not have been applied.
    #[error("gave up on {address}: the cluster now follows {leader}")]
    LeaderMoved {
        /// The node the request was sent to.
        address: String,
        /// The new leader.
        leader: String,
    },
    /// No node in the list knows a leader (no quorum, or all unreachable).
    #[error("no dqlite leader found{}: {last_error}", searched(*.attempts, .servers))]
    NoLeader {
        /// Rounds tried.
        attempts: u32,
        /// Addresses tried.
        servers: String,
        /// What the last round saw.
        last_error: String,
    },
    /// A statement that may write was sent down the query path, which libdqlite 1.11 does not
    /// replicate (and which crashes the node on its next write). Use `exec` instead.
    #[error("refusing to run a statement that may write as a query (use exec): {sql}")]
    NotReadOnly {
        /// The statement (shortened).
        sql: String,
    },
    /// `RETURNING` cannot run on libdqlite: 1.11 commits the write locally without replicating
    /// it, 1.18 refuses it, and on both the node aborts at its next write
    /// (`tests/cluster.rs::returning_sent_past_the_guard_brings_the_node_down_on_every_library`).
    /// Nothing was sent.
    #[error(
        "RETURNING is not supported by dqlite (1.11 would not replicate the write, 1.18 refuses it, and both then abort the node); run the write, then SELECT what you need: {sql}"
    )]
    Returning {
        /// The statement (shortened).
        sql: String,
    },
    /// PREPARE and QUERY_SQL silently drop every statement after the first.
    #[error("{op} takes exactly one statement, got {count}: {sql}")]
    MultipleStatements {
        /// The operation.
        op: &'static str,
        /// Statements found.
        count: usize,
        /// The SQL (shortened).
        sql: String,
    },
    /// The SQL text holds no statement.
    #[error("empty statement")]
    EmptyStatement,
    /// A prepared statement was run with the wrong number of parameters (bindings from an
    /// earlier run would otherwise silently stay in place).
    #[error("statement takes {expected} parameters, {given} given")]
    ParamCount {
        /// Parameters the statement takes.
        expected: u64,
        /// Parameters given.
        given: usize,
    },
    /// libdqlite 1.11 rejects UNIXTIME parameters.
    #[error("parameter {index} is a UNIXTIME, which dqlite 1.11 cannot bind; pass an integer")]
    UnsupportedParam {
        /// Zero-based parameter index.
        index: usize,
    },
    /// The connection has no open database (call `open` first).
    #[error("no database is open on this connection")]
    NoDatabase,
    /// A statement handle from another connection (or already finalized).
    #[error("statement {id} does not belong to this connection")]
    ForeignStatement {
        /// Statement id.
        id: u32,
    },
    /// A query returned more rows than the caller allowed.
    #[error("query returned more than {limit} rows")]
    TooManyRows {
        /// The limit.
        limit: usize,
    },
    /// A query's values took more bytes than the caller allowed.
    #[error("query result is larger than {limit} bytes")]
    ResultTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A node operation failed.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// A copy for every waiter of a shared request (`io::Error` is not `Clone`: the copy keeps its
/// kind and message).
impl Clone for Error {
    fn clone(&self) -> Error {
        match self {
            Error::Server { code, message } => Error::Server { code: *code, message: message.clone() },
            Error::Io { op, address, source } => Error::Io { op, address: address.clone(), source: copy_io(source) },
            Error::Protocol { address, source } => Error::Protocol { address: address.clone(), source: source.clone() },
            Error::Encode(e) => Error::Encode(e.clone()),
            Error::UnexpectedResponse { request, got, address } => {
                Error::UnexpectedResponse { request, got, address: address.clone() }
            }
            Error::Timeout { op, address, after } => Error::Timeout { op, address: address.clone(), after: *after },
            Error::Broken { address } => Error::Broken { address: address.clone() },
            Error::LeaderMoved { address, leader } => {
                Error::LeaderMoved { address: address.clone(), leader: leader.clone() }
            }
            Error::NoLeader { attempts, servers, last_error } => {
                Error::NoLeader { attempts: *attempts, servers: servers.clone(), last_error: last_error.clone() }
            }
            Error::NotReadOnly { sql } => Error::NotReadOnly { sql: sql.clone() },
            Error::Returning { sql } => Error::Returning { sql: sql.clone() },
            Error::MultipleStatements { op, count, sql } => {
                Error::MultipleStatements { op, count: *count, sql: sql.clone() }
            }
            Error::EmptyStatement => Error::EmptyStatement,
            Error::ParamCount { expected, given } => Error::ParamCount { expected: *expected, given: *given },
            Error::UnsupportedParam { index } => Error::UnsupportedParam { index: *index },
            Error::NoDatabase => Error::NoDatabase,
            Error::ForeignStatement { id } => Error::ForeignStatement { id: *id },
            Error::TooManyRows { limit } => Error::TooManyRows { limit: *limit },
            Error::ResultTooLarge { limit } => Error::ResultTooLarge { limit: *limit },
            Error::Node(e) => Error::Node(e.clone()),
        }
    }
}

pub(crate) fn copy_io(err: &io::Error) -> io::Error {
    io::Error::new(err.kind(), err.to_string())
}

impl Error {
    /// A FAILURE the server sent. RAFT_NOTLEADER comes with the text of the SQLite step before
    /// it ("no more rows available"), which would only puzzle whoever reads it: it is replaced.
    pub(crate) fn server(code: u64, message: String) -> Error {
        let message = if code == RAFT_NOTLEADER && message == "no more rows available" {
            "not leader: raft refused the write (leadership is being transferred)".to_owned()
        } else {
            message
        };
        Error::Server { code, message }
    }

    /// The FAILURE code, if the server sent one.
    pub fn code(&self) -> Option<u64> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The server is not the leader, or has not led without a break since this connection
    /// opened its database; the request had no effect. Retry on a new connection to the leader.
    ///
    /// The second case: libdqlite closes the database of every connection when its node loses
    /// leadership, and leaves the connections open. Should the node lead again, a request on
    /// one of them passes the leader check and is refused with "no database opened" (this
    /// crate never sends a request that needs a database before OPEN succeeded).
    pub fn is_not_leader(&self) -> bool {
        match self {
            Error::Server { code, .. } if *code == SQLITE_IOERR_NOT_LEADER => true,
            Error::Server { code, message } if *code == RAFT_NOTLEADER => !message.contains("out of memory"),
            Error::Server { code, message } => *code == SQLITE_NOTFOUND && message == NO_DATABASE_OPENED,
            _ => false,
        }
    }

    /// The statement ran past the statement time limit and was interrupted (see
    /// [`crate::set_statement_timeout`]); its changes were rolled back.
    pub fn is_interrupted(&self) -> bool {
        self.code().is_some_and(|c| c & 0xff == SQLITE_INTERRUPT)
    }

    /// Leadership was lost while the request ran: a write may or may not have been applied.
    pub fn is_leadership_lost(&self) -> bool {
        self.code() == Some(SQLITE_IOERR_LEADERSHIP_LOST)
    }

    /// "database is locked": another connection holds the write lock (neither 1.11 nor 1.18
    /// has a busy timeout).
    pub fn is_busy(&self) -> bool {
        self.code().is_some_and(|c| c & 0xff == SQLITE_BUSY)
    }

    /// A constraint of the schema refused the statement (any extended CONSTRAINT code): what
    /// the request asked conflicts with what the database holds.
    pub fn is_constraint(&self) -> bool {
        self.code().is_some_and(|c| c & 0xff == SQLITE_CONSTRAINT)
    }

    /// The leader went away under the request, which was not at fault: refused as not leader,
    /// leadership lost while it ran, or its connection lost. Whatever it was part of (an open
    /// transaction, a batch) is gone with it; a read can run again on the new leader, a write
    /// only if [`Error::is_ambiguous`] says nothing may have been applied.
    pub fn is_leader_gone(&self) -> bool {
        self.is_not_leader() || self.is_leadership_lost() || self.is_connection_lost()
    }

    /// The connection this came from can no longer be used.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::Protocol { .. }
                | Error::UnexpectedResponse { .. }
                | Error::Timeout { .. }
                | Error::Broken { .. }
                | Error::LeaderMoved { .. }
        )
    }

    /// The statement itself was at fault (SQL error, constraint, refused before sending), as
    /// opposed to the connection, the leader or the cluster.
    pub fn is_statement_error(&self) -> bool {
        match self {
            Error::Server { .. } => !self.is_not_leader() && !self.is_leadership_lost(),
            Error::Returning { .. }
            | Error::NotReadOnly { .. }
            | Error::MultipleStatements { .. }
            | Error::EmptyStatement
            | Error::ParamCount { .. }
            | Error::UnsupportedParam { .. }
            | Error::Encode(_)
            | Error::TooManyRows { .. }
            | Error::ResultTooLarge { .. } => true,
            _ => false,
        }
    }

    /// After this error the outcome of a write that was already sent is unknown: it may have
    /// been committed. Callers must not blindly retry non-idempotent writes.
    pub fn is_ambiguous(&self) -> bool {
        self.is_leadership_lost() || self.is_connection_lost()
    }
}

/// Shortens SQL for error messages.
pub(crate) fn excerpt(sql: &str) -> String {
    const MAX: usize = 120;
    let sql = sql.trim();
    match sql.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &sql[..i]),
        None => sql.to_owned(),
    }
}

/// How a leader search went, for [`Error::NoLeader`]'s message (no rounds: not searched).
fn searched(attempts: u32, servers: &str) -> String {
    if attempts == 0 { String::new() } else { format!(" after {attempts} rounds over [{servers}]") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_refusing_a_write_during_a_transfer_reads_as_not_leader() {
        let server = |code, message: &str| Error::Server { code, message: message.into() };
        let refused = Error::server(RAFT_NOTLEADER, "no more rows available".into());
        assert!(refused.is_not_leader() && !refused.is_statement_error() && !refused.is_ambiguous());
        assert!(refused.to_string().contains("leadership is being transferred"), "{refused}");
        assert!(!server(RAFT_NOTLEADER, "out of memory").is_not_leader(), "SQLite's own NOMEM");
        assert!(server(SQLITE_IOERR_NOT_LEADER, "not leader").is_not_leader());
    }

    #[test]
    fn each_error_is_classified_once() {
        let server = |code| Error::Server { code, message: String::new() };
        let broken = Error::Broken { address: "x".into() };
        // (error, constraint, leader gone, statement error)
        let cases = [
            (server(19), true, false, true),
            (server(2067), true, false, true), // SQLITE_CONSTRAINT_UNIQUE
            (server(1299), true, false, true), // SQLITE_CONSTRAINT_NOTNULL
            (server(1), false, false, true),
            (server(SQLITE_BUSY), false, false, true),
            (server(SQLITE_IOERR_NOT_LEADER), false, true, false),
            (server(SQLITE_IOERR_LEADERSHIP_LOST), false, true, false),
            (broken, false, true, false),
            (Error::EmptyStatement, false, false, true),
        ];
        for (err, constraint, gone, statement) in cases {
            assert_eq!(err.is_constraint(), constraint, "{err:?}");
            assert_eq!(err.is_leader_gone(), gone, "{err:?}");
            assert_eq!(err.is_statement_error(), statement, "{err:?}");
        }
    }
}
