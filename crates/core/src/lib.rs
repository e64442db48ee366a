//! microcluster: highly available clustered services on dqlite.
//!
//! A member runs a daemon ([`App::run`]) with a unix control socket and, once initialised, one
//! mutual-TLS HTTPS address that serves the REST API and tunnels dqlite's traffic. Members join
//! with one-time tokens, share a replicated SQL database, and run the application's endpoints,
//! schema updates and lifecycle hooks.
//!
//! Without the default `server` feature only the client side is built ([`client`], [`api`],
//! [`tls`]), so command-line tools do not link libdqlite.
#![forbid(unsafe_code)]

pub mod api;
#[cfg(feature = "server")]
pub mod certs;
pub mod client;
#[cfg(feature = "server")]
pub mod server;
pub mod tls;
pub mod validate;

#[cfg(feature = "server")]
pub use server::{
    App, AppError, Args, DaemonArgs, DbStatus, HookError, HookFuture, Hooks, InitConfig, NoHooks, SchemaUpdate, Server,
    State,
};
