//! microcluster: highly available clustered services on dqlite.
//!
//! A member runs a daemon ([`App::start`]) with a unix control socket and, once initialised,
//! one mutual-TLS HTTPS address that serves the REST API and tunnels dqlite's traffic. Members
//! join with one-time tokens, share a replicated SQL database, and run the application's
//! endpoints ([`Server`]), schema updates ([`SchemaUpdate`]) and lifecycle hooks ([`Hooks`]).
//!
//! Without the default `server` feature only the client side is built ([`client`], [`api`],
//! [`tls`]), so command-line tools do not link libdqlite.
//!
//! # An application
//!
//! ```no_run
//! use microcluster::server::rest::{Action, Endpoint, HandlerResult, Request, Resources, Response};
//! use microcluster::{App, Args, DaemonArgs, SchemaUpdate, Server, State};
//!
//! /// `GET /1.0/count` on every member's address: rows in the replicated table.
//! async fn count(state: State, _req: Request) -> HandlerResult {
//!     let rows = state.query("SELECT count(*) FROM notes", &[]).await?;
//!     Response::sync(rows.rows[0].get(0).and_then(|v| v.as_i64()))
//! }
//!
//! # async fn run() -> Result<(), microcluster::AppError> {
//! let app = App::new(Args { state_dir: "/var/lib/notes".into() });
//! app.start(DaemonArgs {
//!     version: "1.0".into(),
//!     api_extensions: vec!["notes_count".into()],
//!     extensions_schema: vec![SchemaUpdate::sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")],
//!     servers: vec![Server::core(
//!         "notes",
//!         vec![Resources::new("1.0", vec![Endpoint::new("count").get(Action::new(count))])],
//!     )],
//!     ..DaemonArgs::default()
//! })
//! .await // runs until SIGTERM, SIGINT or `microctl shutdown`
//! # }
//! ```
//!
//! Then, from another process (or `microctl`): [`App::new_cluster`] on the first member,
//! [`App::new_join_token`] there and [`App::join_cluster`] on each new one.
//!
//! # Other crates' types in this API
//!
//! A few types of other crates appear in the public API on purpose, where wrapping them would
//! only hide what users already know, and their major versions are part of this crate's:
//!
//! - **rustls 0.23**: [`client::Client::https`] takes an `Arc<rustls::ClientConfig>`, and
//!   [`tls`] builds rustls configurations (pinning verifiers, live certificates), so an
//!   application can use them with its own connections too.
//! - **hyper 1**: [`client::Method`] and [`client::StatusCode`] are hyper's (`http`'s) types,
//!   re-exported so that callers need no `hyper` dependency of their own.
//! - **dqlite** (this workspace's crate): [`State::query`], [`State::exec`] and
//!   [`State::transaction`] take and return `dqlite::Value`, `QueryResult` and `Transaction`.
//! - **tokio 1** is the runtime every future here runs on; **tracing 0.1** is how the crate
//!   logs (the application chooses the subscriber).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod cert_check;
#[cfg(feature = "server")]
pub mod certs;
pub mod client;
mod der;
pub mod raftlog;
pub mod recovery_planning;
pub mod report;
#[cfg(feature = "server")]
pub mod server;
mod state_dir;
pub mod tls;
mod truststore;
pub mod validate;

#[cfg(feature = "server")]
pub use server::{
    App, AppError, Args, Cluster, ConnectionLimits, DaemonArgs, DbStatus, Error, ErrorKind, HookError, HookFuture,
    Hooks, INTERNAL_EXTENSIONS, InitConfig, NoHooks, SchemaUpdate, Server, State,
};
pub use state_dir::StateDirError;

/// The README's example, compiled by `cargo test --doc` so that it does not drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
