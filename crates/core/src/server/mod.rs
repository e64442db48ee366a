//! The daemon half of the library (cargo feature `server`): the member's REST API, its dqlite
//! node and database, membership, heartbeats and hooks.
//!
//! In layers, each importing only those under it (`ARCHITECTURE.md` draws them; the test
//! `server_layers_point_one_way` checks them):
//! - `lifecycle`: the application's [`App`]: start-up checks, start, resume, shutdown;
//! - `rest`: HTTP: the listeners, the router, the endpoints, and the one place where a
//!   failure becomes a status;
//! - `domain`: membership, heartbeats, roles, recovery, doctor, backup: no HTTP;
//! - `state`: [`State`], the handle on the daemon, and the runtime it holds while the
//!   member is initialised (its dqlite node, database client and tunnel);
//! - `db`: the database: the write queue, the schema, the core tables;
//! - leaves any layer may use: `error` (what the layers under HTTP fail with), `metrics`,
//!   `memory`, `stop`.

pub mod error;
pub(crate) mod memory;
pub(crate) mod metrics;
pub(crate) mod stop;

pub(crate) mod db;
pub(crate) mod domain;
pub(crate) mod lifecycle;
pub mod rest;
pub(crate) mod state;

pub use crate::state_dir::StateDirError;
pub use db::DbStatus;
pub use db::schema::SchemaUpdate;
pub use error::{Error, ErrorKind};
pub use lifecycle::app::{App, AppError, Args, DaemonArgs};
pub use rest::ConnectionLimits;
pub use rest::servers::Server;
pub use state::hooks::{HookError, HookFuture, Hooks, InitConfig, NoHooks};
pub use state::{Cluster, INTERNAL_EXTENSIONS, State};
