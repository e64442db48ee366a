//! The seam between the runtime and the HTTP layer above it. A running member serves its API
//! on its address and the application's servers on theirs; the runtime decides when (it
//! starts them with the node and stops them with it), the HTTP layer decides what and how
//! (`rest::Front` implements [`Http`]; the life cycle installs it in the daemon).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::server::error::Error;
use crate::server::state::State;
use crate::tls::Identity;

/// A future the seam hands across.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the HTTP layer serves while the member is initialised.
pub(crate) trait Http: Send + Sync {
    /// Serves the member's API (the core's endpoints and the application's core servers) on
    /// its address, with mutual TLS.
    fn serve_member(&self, state: &State, tcp: TcpListener, tls: Arc<rustls::ServerConfig>) -> Box<dyn Serving>;

    /// Starts, moves and stops the application's own listeners until they match
    /// [`Http::wanted_servers`]; a listener that cannot start is reported and left off.
    fn apply_servers<'a>(&'a self, state: &'a State, cluster: &'a Identity) -> BoxFuture<'a, Result<(), Error>>;

    /// Stops the application's own listeners.
    fn stop_servers(&self) -> BoxFuture<'_, ()>;

    /// Serves what the application wants served while the member is not initialised: its
    /// own listeners marked pre-init (with the member's own certificate) and, on the pre-init
    /// address, the core API with the core servers marked pre-init. What cannot listen is
    /// reported and left off.
    fn serve_before_init<'a>(&'a self, state: &'a State) -> BoxFuture<'a, ()>;

    /// Stops the pre-init address's listener (init is about to serve the member's address,
    /// which may be the same).
    fn stop_before_init(&self) -> BoxFuture<'_, ()>;

    /// The application's servers that present a certificate of their own.
    fn dedicated_servers(&self) -> Vec<String>;

    /// Where each of the application's own listeners should be, by name, from `daemon.toml`
    /// and the defaults (empty: not listening).
    fn wanted_servers(&self, state: &State) -> BTreeMap<String, String>;
}

/// Something being served, until it is stopped.
pub(crate) trait Serving: Send + Sync {
    /// Stops accepting, closes open connections, and waits until they are gone.
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()>;
}
