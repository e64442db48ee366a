//! The daemon half of the library (cargo feature `server`): the member's REST API, its dqlite
//! node and database, membership, heartbeats and hooks.

mod app;
mod backup;
pub(crate) mod clock;
pub(crate) mod db;
mod disk;
mod doctor;
mod endpoints;
pub mod error;
pub(crate) mod heartbeat;
mod hooks;
pub(crate) mod membership;
pub(crate) mod memory;
pub(crate) mod metrics;
mod recovery;
pub mod rest;
pub(crate) mod roles;
mod runtime;
mod servers;
mod startup;
mod state;
pub(crate) mod tunnel;

// Kept at the crate root (the offline recovery in the client half reads them too); reachable
// here under their old paths.
pub(crate) use crate::{state_dir, truststore};

pub use app::{App, AppError, Args, DaemonArgs};
pub use error::{Error, Kind};
pub use db::DbStatus;
pub use db::schema::SchemaUpdate;
pub use hooks::{HookError, HookFuture, Hooks, InitConfig, NoHooks};
pub use rest::ConnectionLimits;
pub use servers::Server;
pub use state::State;
pub use state_dir::StateDirError;
