//! dqlite for Rust: run a dqlite node inside your process and talk to a dqlite cluster over its
//! wire protocol, asynchronously (tokio), over any byte stream.
//!
//! Targets libdqlite 1.11 (Debian bookworm's `libdqlite-dev`) and 1.18 (trixie's; see
//! [`Library`]), and guards against 1.11's hazards: a write sent down the query path would
//! not be replicated (so queries are checked to be read-only; `RETURNING` breaks 1.18 as
//! well), HEARTBEAT requests are never answered (so none can be sent), bindings persist
//! between executions of a prepared statement (so every parameter is always sent), and an
//! INTERRUPT is only read after all rows were streamed (so it drains them).
//!
//! - [`Node`]: a node embedded in this process (`Node::builder(id, address, dir)`).
//! - [`Client`]: finds the leader among known addresses; runs ADD/ASSIGN/REMOVE/TRANSFER.
//! - [`Database`]: statements, queries and transactions on the leader, across leader changes.
//! - [`LeaderQuorum`]: confirms with a majority of the voters who leads, so reads are never stale.
//! - [`Connection`]: one raw connection to one node, one method per protocol request.
//! - [`proto`]: the wire format itself, without I/O.
//! - [`sql_text`]: statement splitting and read-only classification.
//! - [`file`](mod@file): a DUMP as one ordinary SQLite file (backups), and reading such files.

#![warn(missing_docs)]

mod backoff;
mod client;
mod connection;
mod database;
mod dialer;
mod error;
mod ffi;
pub mod file;
mod id;
mod library;
mod node;
pub mod proto;
mod quorum;
mod rows;
pub mod sql_text;

pub use backoff::Backoff;
pub use client::{Client, ClientConfig};
pub use connection::{BoxStream, Connection, DEFAULT_MAX_MESSAGE, DEFAULT_TIMEOUT, ExecResult, Statement, Stream};
pub use database::{Database, Outcome, Transaction, TxFuture};
pub use dialer::{DefaultDialer, DialFuture, Dialer, connect_abstract, connect_blocking};
pub use error::{
    Error, RAFT_NOTLEADER, Result, SQLITE_BUSY, SQLITE_CONSTRAINT, SQLITE_INTERRUPT, SQLITE_IOERR_LEADERSHIP_LOST,
    SQLITE_IOERR_NOT_LEADER,
};
pub use id::{BOOTSTRAP_ID, generate_id};
pub use library::{Library, library};
pub use node::{
    Node, NodeBuilder, NodeError, pin_allocator_thresholds, release_free_memory, set_statement_timeout,
    validate_bind_address,
};
pub use proto::{File, NodeInfo, Role, Value};
pub use quorum::LeaderQuorum;
pub use rows::{Limits, QueryResult, Row, Rows};

/// The README's example and the crate's guide (`docs/dqlite.md`), compiled by `cargo test --doc`
/// so that neither drifts from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
#[doc = include_str!("../../../docs/dqlite.md")]
pub struct GuideDoctests;
