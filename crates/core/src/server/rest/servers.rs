//! The application's servers: endpoint sets served on the member's core HTTPS address (and,
//! optionally, the control socket), or on listeners of their own whose addresses live in
//! `daemon.toml` and can be changed while the daemon runs (`PUT /core/1.0/daemon/servers`).

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::server::error::Error;
use crate::server::rest::{Limits, Listener, Resources, Routes};
use crate::server::state::State;
use crate::state_dir::{StateDirError, read_optional, write_atomic};
use crate::tls::{self, Identity};
use crate::{certs, validate};

/// A set of endpoints and where they are served.
///
/// ```
/// use microcluster::Server;
/// use microcluster::server::rest::{Action, Endpoint, HandlerResult, Request, Resources, Response};
/// # async fn status(_: microcluster::State, _: Request) -> HandlerResult { Ok(Response::empty()) }
/// let api = vec![Resources::new("1.0", vec![Endpoint::new("status").get(Action::new(status))])];
/// // On the member's own address (mutual TLS) and the control socket:
/// let internal = Server::core("myapp", api.clone()).serve_unix();
/// // On a port of its own, movable at run time with `PUT /core/1.0/daemon/servers`:
/// let public = Server::listener("public", api).default_address("127.0.0.1:8443").dedicated_certificate();
/// assert_eq!(public.name(), "public");
/// # let _ = internal;
/// ```
#[derive(Debug, Clone)]
pub struct Server {
    pub(crate) name: String,
    pub(crate) resources: Vec<Resources>,
    pub(crate) core_api: bool,
    pub(crate) serve_unix: bool,
    pub(crate) default_address: Option<String>,
    pub(crate) dedicated_certificate: bool,
    pub(crate) plain_http: bool,
    pub(crate) pre_init: bool,
}

impl Server {
    /// Endpoints served on the member's own HTTPS address, next to the core API.
    pub fn core(name: impl Into<String>, resources: Vec<Resources>) -> Server {
        Server {
            name: name.into(),
            resources,
            core_api: true,
            serve_unix: false,
            default_address: None,
            dedicated_certificate: false,
            plain_http: false,
            pre_init: false,
        }
    }

    /// Endpoints served on a listener of their own (HTTPS with the cluster certificate unless
    /// configured otherwise). Its address comes from `daemon.toml` (`[servers.NAME] address`),
    /// else [`Server::default_address`]; without either it does not listen.
    pub fn listener(name: impl Into<String>, resources: Vec<Resources>) -> Server {
        Server { core_api: false, ..Server::core(name, resources) }
    }

    /// Also serves a core server's endpoints on the control socket.
    pub fn serve_unix(mut self) -> Server {
        self.serve_unix = true;
        self
    }

    /// The listener's address when `daemon.toml` does not say otherwise.
    pub fn default_address(mut self, address: impl Into<String>) -> Server {
        self.default_address = Some(address.into());
        self
    }

    /// Presents a certificate of its own (`certificates/NAME.crt`, made on first use) instead
    /// of the cluster certificate.
    pub fn dedicated_certificate(mut self) -> Server {
        self.dedicated_certificate = true;
        self
    }

    /// Serves plain HTTP (no TLS): every caller is untrusted, so endpoints must allow untrusted
    /// callers. For public-facing APIs behind a proxy or on loopback.
    pub fn plain_http(mut self) -> Server {
        self.plain_http = true;
        self
    }

    /// Serves it before the member is initialised too: a listener of its own starts at daemon
    /// start (with the member's own certificate until the cluster's exists, then with the
    /// cluster's); a core server is served on [`DaemonArgs::pre_init_address`] until init,
    /// then on the member's address. Before init no member is trusted yet, so its actions
    /// must allow untrusted callers (and be allowed before init) to answer; a discovery
    /// service, for instance.
    ///
    /// ```
    /// use microcluster::server::rest::{Action, Endpoint, HandlerResult, Request, Resources, Response};
    /// use microcluster::{DaemonArgs, Server, State};
    ///
    /// // Tells a peer looking for members whether this one is part of a cluster yet.
    /// async fn hello(state: State, _req: Request) -> HandlerResult {
    ///     Response::sync(state.database_status() != microcluster::DbStatus::NotInitialized)
    /// }
    ///
    /// let hello = Endpoint::new("hello").get(Action::new(hello).allow_untrusted().allowed_before_init());
    /// let args = DaemonArgs {
    ///     servers: vec![Server::core("discovery", vec![Resources::new("1.0", vec![hello])]).pre_init()],
    ///     pre_init_address: Some("10.0.0.1:9000".into()),
    ///     ..DaemonArgs::default()
    /// };
    /// # let _ = args;
    /// ```
    ///
    /// [`DaemonArgs::pre_init_address`]: crate::DaemonArgs::pre_init_address
    pub fn pre_init(mut self) -> Server {
        self.pre_init = true;
        self
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Checks the application's servers before anything starts.
pub(crate) fn validate(servers: &[Server]) -> Result<(), String> {
    let mut names = std::collections::HashSet::new();
    for server in servers {
        let name = &server.name;
        validate::member_name(name).map_err(|_| format!("invalid server name {name:?}: use a host-name-like word"))?;
        if matches!(name.as_str(), "core" | "unix") || !names.insert(name.clone()) {
            return Err(format!("server name {name:?} is reserved or used twice"));
        }
        if server.resources.is_empty() || server.resources.iter().any(|r| r.endpoints.is_empty()) {
            return Err(format!("server {name:?} has no endpoints"));
        }
        if server.core_api {
            if server.default_address.is_some() || server.dedicated_certificate || server.plain_http {
                return Err(format!(
                    "core server {name:?} is served on the member's address: no address, certificate or plain HTTP"
                ));
            }
            if server.resources.iter().any(|r| r.prefix == "core" || r.prefix.starts_with("core/")) {
                return Err(format!("server {name:?} uses the /core prefix, which belongs to microcluster"));
            }
        } else {
            if server.serve_unix {
                return Err(format!(
                    "server {name:?} has a listener of its own; only core servers can also serve the socket"
                ));
            }
            if let Some(address) = &server.default_address {
                validate::member_address(address).map_err(|e| format!("server {name:?}: {e}"))?;
            }
        }
    }
    Ok(())
}

/// The listeners of servers that have their own, by name.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    running: tokio::sync::Mutex<BTreeMap<String, Running>>,
}

/// A listener of a server that has its own.
#[derive(Debug)]
struct Running {
    address: String,
    /// The certificate it presents (none: plain HTTP).
    presents: Option<Arc<tls::LiveIdentity>>,
    listener: Listener,
}

impl Listeners {
    /// Stops them all.
    pub(crate) async fn stop(&self) {
        let running = std::mem::take(&mut *self.running.lock().await);
        for (_, Running { listener, .. }) in running {
            listener.stop().await;
        }
    }
}

/// Where each listener server should be, from `daemon.toml` and the defaults.
pub(crate) fn wanted(state: &State, servers: &[Server]) -> BTreeMap<String, String> {
    let configured = state.config().read().map(|c| c.servers.clone()).unwrap_or_default();
    servers
        .iter()
        .filter(|s| !s.core_api)
        .map(|s| {
            let address = match configured.get(&s.name) {
                Some(c) => c.address.clone(),
                None => s.default_address.clone().unwrap_or_default(),
            };
            (s.name.clone(), address)
        })
        .collect()
}

/// Starts, moves and stops listeners until they match [`wanted`]. Listeners whose address did
/// not change keep running, and present a changed certificate from their next handshake on
/// (connections already open keep theirs); a listener that cannot bind is reported and left
/// off. `cluster` is the certificate they present unless they have their own (the member's
/// own before init).
pub(crate) async fn apply(
    state: &State,
    servers: &[Server],
    limits: Limits,
    listeners: &Listeners,
    cluster: &Identity,
) -> Result<(), Error> {
    let wanted = wanted(state, servers);
    let mut running = listeners.running.lock().await;
    let mut errors = Vec::new();
    for server in servers.iter().filter(|s| !s.core_api) {
        let address = wanted.get(&server.name).cloned().unwrap_or_default();
        if let Some(Running { address: current, presents, .. }) = running.get(&server.name)
            && *current == address
        {
            if let Some(live) = presents {
                match presented(state, server, cluster) {
                    Ok(identity) if identity.fingerprint().ok().as_deref() != Some(live.fingerprint().as_str()) => {
                        match live.replace(&identity) {
                            Ok(()) => tracing::info!(server = server.name, "listener presents a new certificate"),
                            Err(err) => errors.push(format!("{}: {err}", server.name)),
                        }
                    }
                    Ok(_) => {}
                    Err(err) => errors.push(format!("{}: {err}", server.name)),
                }
            }
            continue;
        }
        if let Some(Running { listener: old, .. }) = running.remove(&server.name) {
            old.stop().await;
            tracing::info!(server = server.name, "listener stopped");
        }
        if address.is_empty() {
            continue;
        }
        match start(state, server, limits, &address, cluster).await {
            Ok((listener, presents)) => {
                tracing::info!(server = server.name, address, "listener started");
                running.insert(server.name.clone(), Running { address, presents, listener });
            }
            Err(err) => errors.push(format!("{}: {err}", server.name)),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::conflict(format!("listeners could not start: {}", errors.join("; "))))
    }
}

async fn start(
    state: &State,
    server: &Server,
    limits: Limits,
    address: &str,
    cluster: &Identity,
) -> Result<(Listener, Option<Arc<tls::LiveIdentity>>), String> {
    if address == state.address() {
        return Err(format!("{address} is the member's own address"));
    }
    let tcp = TcpListener::bind(address).await.map_err(|e| format!("cannot listen on {address}: {e}"))?;
    let routes = Arc::new(Routes::new(&server.resources));
    if server.plain_http {
        return Ok((Listener::plain(tcp, state.clone(), routes, limits), None));
    }
    let identity = presented(state, server, cluster)?;
    let live = tls::LiveIdentity::new(&identity).map_err(|e| e.to_string())?;
    let config = tls::live_server_config(live.clone()).map_err(|e| e.to_string())?;
    Ok((Listener::tls(tcp, config, state.clone(), routes, limits), Some(live)))
}

/// What a TLS listener of `server` presents: its dedicated certificate, or `cluster` (the
/// member's own before init, the cluster's after).
fn presented(state: &State, server: &Server, cluster: &Identity) -> Result<Identity, String> {
    if server.dedicated_certificate {
        dedicated_identity(state, &server.name).map_err(|e| e.to_string())
    } else {
        Ok(cluster.clone())
    }
}

/// `certificates/NAME.crt` and `.key`, generated on first use.
fn dedicated_identity(state: &State, name: &str) -> Result<Identity, StateDirError> {
    let dir = state.dir().root().join("certificates");
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    if let (Some(cert_pem), Some(key_pem)) = (read_optional(&cert)?, read_optional(&key)?) {
        return Ok(Identity { cert_pem, key_pem });
    }
    crate::state_dir::create_dir(&dir, 0o700)?;
    let identity =
        certs::generate(name, &[]).map_err(|e| StateDirError::Invalid { path: cert.clone(), reason: e.to_string() })?;
    write_atomic(&key, identity.key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert, identity.cert_pem.as_bytes(), 0o644)?;
    Ok(identity)
}
