//! What this member serves over HTTP while it is initialised: the member's API on its address
//! and the application's servers on theirs ([`Front`], the HTTP side of the runtime's seam
//! [`Http`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::TcpListener;

use super::servers::{self, Listeners, Server};
use super::{Limits, Listener, Routes};
use crate::server::error::Error;
use crate::server::state::State;
use crate::server::state::http::{BoxFuture, Http, Serving};
use crate::tls::Identity;

/// The member's routes, the connection limits every listener keeps, and the application's
/// servers with the listeners of those that have an address of their own.
pub(crate) struct Front {
    pub(crate) core_routes: Arc<Routes>,
    pub(crate) limits: Limits,
    pub(crate) servers: Vec<Server>,
    pub(crate) listeners: Listeners,
}

impl Http for Front {
    fn serve_member(&self, state: &State, tcp: TcpListener, tls: Arc<rustls::ServerConfig>) -> Box<dyn Serving> {
        Box::new(Listener::tls(tcp, tls, state.clone(), self.core_routes.clone(), self.limits))
    }

    fn apply_servers<'a>(&'a self, state: &'a State, cluster: &'a Identity) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(servers::apply(state, &self.servers, self.limits, &self.listeners, cluster))
    }

    fn stop_servers(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.listeners.stop())
    }

    fn wanted_servers(&self, state: &State) -> BTreeMap<String, String> {
        servers::wanted(state, &self.servers)
    }
}

impl Serving for Listener {
    fn stop(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(Listener::stop(*self))
    }
}
