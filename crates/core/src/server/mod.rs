//! The daemon half of the library (cargo feature `server`): the member's REST API, its dqlite
//! node and database, membership, heartbeats and hooks.

mod app;
mod backup;
pub(crate) mod db;
mod endpoints;
pub(crate) mod heartbeat;
mod hooks;
pub(crate) mod membership;
pub(crate) mod metrics;
pub mod rest;
pub(crate) mod roles;
mod runtime;
mod servers;
mod state;
pub(crate) mod state_dir;
pub(crate) mod truststore;
pub(crate) mod tunnel;

pub use app::{App, AppError, Args, DaemonArgs};
pub use db::DbStatus;
pub use db::schema::SchemaUpdate;
pub use hooks::{HookError, HookFuture, Hooks, InitConfig, NoHooks};
pub use servers::Server;
pub use state::State;
pub use state_dir::StateDirError;
