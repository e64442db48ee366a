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
    pub(crate) pre_init: Option<PreInit>,
}

/// The core API served before init on an address of its own.
pub(crate) struct PreInit {
    pub(crate) address: String,
    /// The core API's status endpoints and the core servers marked pre-init.
    pub(crate) routes: Arc<Routes>,
    pub(crate) running: tokio::sync::Mutex<Option<Listener>>,
}

impl Http for Front {
    fn serve_member(&self, state: &State, tcp: TcpListener, tls: Arc<rustls::ServerConfig>) -> Box<dyn Serving> {
        Box::new(Listener::tls(tcp, tls, state.clone(), self.core_routes.clone(), self.limits))
    }

    fn apply_servers<'a>(&'a self, state: &'a State, cluster: &'a Identity) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(servers::apply(state, &self.servers, self.limits, &self.listeners, cluster))
    }

    fn dedicated_servers(&self) -> Vec<String> {
        self.servers.iter().filter(|s| s.dedicated_certificate && !s.plain_http).map(|s| s.name.clone()).collect()
    }

    fn stop_servers(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.listeners.stop())
    }

    fn serve_before_init<'a>(&'a self, state: &'a State) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let own = state.server_cert();
            let early: Vec<Server> = self.servers.iter().filter(|s| s.pre_init && !s.core_api).cloned().collect();
            if let Err(err) = servers::apply(state, &early, self.limits, &self.listeners, &own).await {
                tracing::warn!(error = %err, "listeners served before init");
            }
            let Some(pre_init) = &self.pre_init else { return };
            let mut running = pre_init.running.lock().await;
            if running.is_some() {
                return;
            }
            let tls = match crate::tls::server_config(&own) {
                Ok(tls) => tls,
                Err(err) => return tracing::warn!(error = %err, "the pre-init address's certificate"),
            };
            match TcpListener::bind(&pre_init.address).await {
                Ok(tcp) => {
                    tracing::info!(address = pre_init.address, "serving the API before init");
                    *running = Some(Listener::tls(tcp, tls, state.clone(), pre_init.routes.clone(), self.limits));
                }
                Err(err) => tracing::warn!(address = pre_init.address, error = %err, "cannot listen before init"),
            }
        })
    }

    fn stop_before_init(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(pre_init) = &self.pre_init else { return };
            let listener = pre_init.running.lock().await.take();
            if let Some(listener) = listener {
                listener.stop().await;
            }
        })
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
