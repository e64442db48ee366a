//! Serving HTTP/1.1 (with upgrades) on the control socket and on TLS listeners, and the
//! dispatch every request goes through: route, trust, shutdown and init checks, forwarding to
//! `?target=`, then the handler.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::limits::{AcceptErrors, BodyTimeout, Closed, GapLimited, Gate, Heard, Permit, RequestGuard, Share, Wire};
use super::repoll::Repoll;
use super::router::{Match, parse_query};
use super::{ApiError, HandlerResult, Limits, Request, Response, ResponseKind, Routes, Trust};
use crate::api::Envelope;
use crate::server::state::State;
use crate::server::stop::ShutdownSignal;

/// Every response body: a whole one, or chunks streamed from a channel.
type Body = BoxBody<Bytes, Infallible>;

/// A body fed chunk by chunk through a channel; it ends when the sender is dropped.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|bytes| Ok(hyper::body::Frame::data(bytes))))
    }
}

/// A response body that holds its request's [`RequestGuard`] until hyper is done with it, so
/// the connection counts as busy while a response streams out.
struct Guarded {
    body: Body,
    _request: RequestGuard,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// How a connection reached us.
#[derive(Debug, Clone)]
pub(crate) enum Peer {
    Unix,
    /// TLS, with the fingerprint of the client certificate if one was presented.
    Tls(Option<String>),
}

/// A running listener; stopping it closes its connections too.
#[derive(Debug)]
pub(crate) struct Listener {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Serves `routes` on a unix socket at `path` (mode 0660, optionally owned by `gid`).
    pub(crate) fn unix(
        path: &Path,
        gid: Option<u32>,
        state: State,
        routes: Arc<Routes>,
        limits: Limits,
    ) -> std::io::Result<Listener> {
        use std::os::unix::fs::PermissionsExt;
        // We hold the state directory lock, so a socket file left here is stale.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(path, None, Some(gid))?;
        }
        let (stop, signal) = ShutdownSignal::new();
        let task =
            tokio::spawn(accept_unix(listener, Gate::unix(limits, state.metrics().clone()), state, routes, signal));
        Ok(Listener { stop, task })
    }

    /// Serves `routes` over TLS on an already bound TCP listener.
    pub(crate) fn tls(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        state: State,
        routes: Arc<Routes>,
        limits: Limits,
    ) -> Listener {
        let (stop, signal) = ShutdownSignal::new();
        let (acceptor, gate) = (tokio_rustls::TlsAcceptor::from(tls), Gate::tls(limits, state.metrics().clone()));
        let task = tokio::spawn(accept_tls(listener, acceptor, gate, state, routes, signal));
        Listener { stop, task }
    }

    /// Serves `routes` over plain HTTP on an already bound TCP listener (every caller untrusted).
    pub(crate) fn plain(listener: TcpListener, state: State, routes: Arc<Routes>, limits: Limits) -> Listener {
        let (stop, signal) = ShutdownSignal::new();
        let task =
            tokio::spawn(accept_plain(listener, Gate::plain(limits, state.metrics().clone()), state, routes, signal));
        Listener { stop, task }
    }

    /// Stops accepting, closes open connections, and waits for the accept loop to end.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Waits out a failed accept (or the stop signal); `false` if the listener is to stop.
async fn pause_after(
    err: &std::io::Error,
    errors: &mut AcceptErrors,
    gate: &Gate,
    signal: &mut ShutdownSignal,
) -> bool {
    let pause = errors.failed(err, &gate.metrics);
    tokio::select! {
        () = tokio::time::sleep(pause) => true,
        () = signal.fired() => false,
    }
}

async fn accept_unix(
    listener: UnixListener,
    gate: Arc<Gate>,
    state: State,
    routes: Arc<Routes>,
    mut signal: ShutdownSignal,
) {
    let mut errors = AcceptErrors::new("the control socket");
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    if !pause_after(&err, &mut errors, &gate, &mut signal).await {
                        return;
                    }
                    continue;
                }
            },
            () = signal.fired() => return,
        };
        errors.succeeded();
        // Full of busy requests: closed at once (dropped), so the client learns it now.
        if let Ok(permit) = gate.admit(Share::Members) {
            tokio::spawn(serve_connection(stream, Peer::Unix, state.clone(), routes.clone(), signal.clone(), permit));
        }
        gate.pace().await;
    }
}

async fn accept_plain(
    listener: TcpListener,
    gate: Arc<Gate>,
    state: State,
    routes: Arc<Routes>,
    mut signal: ShutdownSignal,
) {
    let mut errors = AcceptErrors::new("an HTTP listener");
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(err) => {
                    if !pause_after(&err, &mut errors, &gate, &mut signal).await {
                        return;
                    }
                    continue;
                }
            },
            () = signal.fired() => return,
        };
        errors.succeeded();
        if let Ok(permit) = gate.admit(Share::Strangers) {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve_connection(tcp, Peer::Tls(None), state.clone(), routes.clone(), signal.clone(), permit));
        }
        gate.pace().await;
    }
}

async fn accept_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    gate: Arc<Gate>,
    state: State,
    routes: Arc<Routes>,
    mut signal: ShutdownSignal,
) {
    let mut errors = AcceptErrors::new("an HTTPS listener");
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    if !pause_after(&err, &mut errors, &gate, &mut signal).await {
                        return;
                    }
                    continue;
                }
            },
            () = signal.fired() => return,
        };
        errors.succeeded();
        // When its arrival closes another stranger, whether this one sent its TLS hello
        // already decides whether it is next: a member's connection has, a flood's has not.
        // Its task may not run before the next arrivals; the kernel has the bytes now.
        let (tcp, spoke) = if gate.is_full(Share::Strangers) {
            match spoke_already(tcp) {
                Ok(peeked) => peeked,
                Err(_) => continue,
            }
        } else {
            (tcp, false)
        };
        // Everyone is a stranger until the handshake shows a trusted certificate.
        if let Ok(permit) = gate.admit(Share::Strangers) {
            if spoke {
                permit.conn().heard();
            }
            let _ = tcp.set_nodelay(true);
            let task = (acceptor.clone(), state.clone(), routes.clone(), signal.clone(), gate.clone());
            tokio::spawn(handshake(tcp, remote, permit, task));
        }
        gate.pace().await;
    }
}

/// Whether the client sent something already (its TLS hello), without reading it: the
/// stream leaves the reactor for a non-blocking `MSG_PEEK` (tokio only reads once the reactor
/// saw the socket readable, which a just-accepted socket never was) and comes back.
fn spoke_already(tcp: tokio::net::TcpStream) -> std::io::Result<(tokio::net::TcpStream, bool)> {
    let std = tcp.into_std()?;
    let spoke = matches!(std.peek(&mut [0u8; 1]), Ok(n) if n > 0);
    Ok((tokio::net::TcpStream::from_std(std)?, spoke))
}

/// What a TLS connection's task needs from its listener.
type TlsListener = (tokio_rustls::TlsAcceptor, State, Arc<Routes>, ShutdownSignal, Arc<Gate>);

/// Completes a TLS handshake within the header timeout, moves a trusted member's connection
/// into the members' share, and serves it.
async fn handshake(tcp: tokio::net::TcpStream, remote: std::net::SocketAddr, permit: Permit, listener: TlsListener) {
    let (acceptor, state, routes, signal, gate) = listener;
    let handshake = tokio::select! {
        result = acceptor.accept(Heard::new(tcp, permit.conn().clone())) => result,
        () = tokio::time::sleep(gate.limits.header_timeout) => {
            tracing::trace!(%remote, "TLS handshake timed out");
            gate.metrics.connection_closed(Closed::Handshake.label());
            return;
        }
        () = permit.conn().evicted() => return,
    };
    let stream = match handshake {
        Ok(stream) => {
            permit.conn().established();
            stream
        }
        Err(err) => {
            tracing::debug!(%remote, error = %err, "TLS handshake failed");
            return;
        }
    };
    let fingerprint =
        stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| crate::tls::fingerprint(c));
    let member = fingerprint.as_deref().is_some_and(|fp| state.trusted_member(fp).is_some());
    if member && gate.promote(&permit).is_err() {
        return;
    }
    serve_connection(stream, Peer::Tls(fingerprint), state, routes, signal, permit).await;
}

async fn serve_connection<S>(
    io: S,
    peer: Peer,
    state: State,
    routes: Arc<Routes>,
    mut signal: ShutdownSignal,
    permit: Permit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tracked, gate) = (permit.conn().clone(), permit.gate().clone());
    let gap = gate.limits.idle_timeout;
    // A permit once the connection's first request has started.
    let started = Arc::new(tokio::sync::Notify::new());
    let service = service_fn({
        let (started, tracked) = (started.clone(), tracked.clone());
        move |req| {
            started.notify_one();
            let request = tracked.request();
            let (state, routes, peer) = (state.clone(), routes.clone(), peer.clone());
            async move {
                let response = dispatch(state, &routes, peer, gap, req).await;
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    request.upgraded();
                }
                Ok::<_, Infallible>(response.map(|body| Guarded { body, _request: request }))
            }
        }
    });
    let io = TokioIo::new(Wire::new(io, permit));
    let mut conn = Repoll::new(http1::Builder::new().serve_connection(io, service).with_upgrades());
    let ended = |result: Result<(), hyper::Error>| {
        if let Err(err) = result {
            tracing::debug!(error = %err, "connection ended with an error");
        }
    };
    tokio::select! {
        result = &mut conn => ended(result),
        closed = tracked.watchdog(&gate.limits) => {
            // Dropping the connection closes it; an upgraded one has left hyper already.
            tracing::trace!(reason = closed.label(), "closing a connection");
            // An eviction was counted when it was decided.
            if closed != Closed::Evicted {
                gate.metrics.connection_closed(closed.label());
            }
        }
        () = signal.fired() => {
            // hyper closes a connection that has not started a request at once, although a
            // client that connected just before the stop has most likely sent one already:
            // it would get no answer at all. Give it a moment to be read (and answered 503).
            tokio::select! {
                result = &mut conn => return ended(result),
                _ = started.notified() => {}
                _ = tokio::time::sleep(FIRST_REQUEST_GRACE) => {}
            }
            conn.inner().graceful_shutdown();
            let _ = tokio::time::timeout(gate.limits.drain_timeout, conn).await;
        }
    }
}

/// How long a connection that has not started a request yet is read after the stop.
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(250);

/// `gap`: the longest pause allowed between two pieces of a request body.
async fn dispatch(
    state: State,
    routes: &Routes,
    peer: Peer,
    gap: Duration,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Body> {
    let (method, started) = (req.method().clone(), std::time::Instant::now());
    let path = req.uri().path().to_owned();
    let mut route = crate::server::metrics::UNMATCHED;
    let result = handle(state.clone(), routes, peer, gap, req, &mut route).await;
    if let Err(err) = &result {
        tracing::debug!(%method, %path, status = %err.status(), error = %err, "request failed");
    }
    let response = render(result);
    state.metrics().request(route, &method, response.status(), started.elapsed());
    response
}

/// Routes and runs a request; `route` is set to the endpoint's pattern once it matched.
async fn handle<'r>(
    state: State,
    routes: &'r Routes,
    peer: Peer,
    gap: Duration,
    req: hyper::Request<Incoming>,
    route: &mut &'r str,
) -> HandlerResult {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let (action, params) = match routes.find(&parts.method, &path) {
        Match::Found(action, params, pattern) => {
            *route = pattern;
            (action, params)
        }
        Match::MethodNotAllowed => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed on {path}", parts.method),
            ));
        }
        Match::NotFound => return Err(ApiError::not_found(format!("no such endpoint: {path}"))),
    };
    let peer_fingerprint = match (&peer, &parts.method) {
        (_, &hyper::Method::GET | &hyper::Method::HEAD) | (Peer::Unix, _) => None,
        (Peer::Tls(fp), _) => fp.clone(),
    };
    let trust = match peer {
        Peer::Unix => Trust::Unix,
        Peer::Tls(Some(fp)) => match state.trusted_member(&fp) {
            Some(name) => Trust::Member(name),
            None => match state.monitor(&fp) {
                Some(name) => Trust::Monitor(name),
                None => Trust::Untrusted(Some(fp)),
            },
        },
        Peer::Tls(None) => Trust::Untrusted(None),
    };
    // Held until the handler returns: a stopping daemon waits for it before handing over.
    let _running = if action.allowed_during_shutdown {
        None
    } else {
        let running = state.request_running();
        if state.is_shutting_down() {
            return Err(ApiError::unavailable("Daemon is shutting down").not_run(crate::api::paths::NOT_RUN_STOPPING));
        }
        Some(running)
    };
    let allowed = match &trust {
        Trust::Unix | Trust::Member(_) => true,
        Trust::Monitor(_) => action.allow_untrusted || action.readable_by_monitors,
        Trust::Untrusted(_) => action.allow_untrusted,
    };
    if !allowed {
        return Err(match trust {
            Trust::Monitor(name) => ApiError::forbidden(format!(
                "not authorized: {name:?} is a monitoring credential, which may read metrics and status only"
            )),
            _ => ApiError::forbidden("not authorized: this endpoint needs a trusted member certificate"),
        });
    }
    let upgrading = state.database_status() == crate::server::db::DbStatus::WaitingUpgrade;
    let allowed_now = action.allowed_before_init || (upgrading && action.allowed_during_upgrade);
    if !allowed_now {
        state.require_database().map_err(|err| ApiError::from(err).not_run(crate::api::paths::NOT_RUN_NOT_READY))?;
    }
    let limit = action.max_body;
    // Refused before a byte of it is read, however slowly it would come.
    let declared = hyper::body::Body::size_hint(&body).lower();
    if declared > u64::try_from(limit).unwrap_or(u64::MAX) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {declared} bytes: this endpoint accepts at most {limit}"),
        ));
    }
    let body = Limited::new(GapLimited::new(body, gap), limit).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {limit} bytes"))
        } else if let Some(timeout) = e.downcast_ref::<BodyTimeout>() {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, timeout.to_string())
        } else {
            ApiError::bad_request(format!("reading the request body: {e}"))
        }
    })?;
    let request = Request {
        method: parts.method.clone(),
        path,
        query: parse_query(parts.uri.query().unwrap_or("")),
        headers: std::mem::take(&mut parts.headers),
        body: body.to_bytes(),
        trust,
        params,
        upgrade: parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
    };
    if let Some(check) = &action.access {
        check(&state, &request)?;
    }
    if action.proxy_target
        && let Some(target) = request.query("target").map(str::to_owned)
        && target != state.name()
    {
        return forward(&state, &target, &parts.method, &parts.uri, request.body).await;
    }
    if matches!(parts.method, hyper::Method::GET | hyper::Method::HEAD) {
        return (action.handler)(state, request).await;
    }
    // Whatever a request that may change something changes is logged under its caller: the
    // audit lines of trust changes say who asked (`target: "audit"`).
    let span = tracing::info_span!("request", caller = %Caller(&request.trust, &peer_fingerprint));
    tracing::Instrument::instrument((action.handler)(state, request), span).await
}

/// Who sent a request, for the log: how it came, and the certificate it presented.
struct Caller<'a>(&'a Trust, &'a Option<String>);

impl std::fmt::Display for Caller<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.0, self.1) {
            (Trust::Unix, _) => f.write_str("the control socket"),
            (Trust::Member(name), Some(fp)) => write!(f, "member {name} (certificate {fp})"),
            (Trust::Monitor(name), Some(fp)) => write!(f, "monitoring credential {name} (certificate {fp})"),
            (Trust::Untrusted(Some(fp)), _) => write!(f, "an untrusted certificate {fp}"),
            (Trust::Member(name) | Trust::Monitor(name), None) => f.write_str(name),
            (Trust::Untrusted(None), _) => f.write_str("a client without a certificate"),
        }
    }
}

/// Forwards a request to the member named `target` and passes its answer through.
async fn forward(
    state: &State,
    target: &str,
    method: &hyper::Method,
    uri: &hyper::Uri,
    body: Bytes,
) -> Result<Response, ApiError> {
    let member = state
        .members()
        .into_iter()
        .find(|m| m.name == target)
        .ok_or_else(|| ApiError::not_found(format!("no cluster member named {target:?}")))?;
    let client = state.member_client(&member.address)?;
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let body = (!body.is_empty()).then_some(body);
    let mut answer = match client.open(method.clone(), path, body).await {
        Ok(answer) => answer,
        Err(crate::client::ClientError::Api { status, message }) => return Err(ApiError::new(status, message)),
        Err(err) => return Err(ApiError::unavailable(format!("forwarding to {target}: {err}"))),
    };
    // Passed on as it comes (a file, a stream of events), with the target's status and headers.
    let content_type = answer.header("content-type").unwrap_or("application/json").to_owned();
    let (mut response, chunks) = Response::channel(&content_type, 8);
    for (name, value) in answer.headers() {
        if !matches!(name.as_str(), "content-type" | "content-length" | "transfer-encoding" | "connection") {
            response.headers.append(name.clone(), value.clone());
        }
    }
    if answer.status() != StatusCode::OK {
        response = response.with_status(answer.status().as_u16())?;
    }
    tokio::spawn(async move {
        while let Ok(Some(chunk)) = answer.chunk().await {
            if chunks.send(chunk).await.is_err() {
                return;
            }
        }
    });
    Ok(response)
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Full::new(body.into()).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    response
}

fn render(result: HandlerResult) -> hyper::Response<Body> {
    let Response { inner, status, headers } = match result {
        Ok(response) => response,
        Err(err) => {
            let body = serde_json::to_vec(&Envelope::error(err.status().as_u16(), err.message())).unwrap_or_default();
            let mut response = json_response(err.status(), body);
            if let Some(why) = err.not_run_because() {
                response.headers_mut().insert(
                    hyper::header::HeaderName::from_static(crate::api::paths::NOT_RUN_HEADER),
                    hyper::header::HeaderValue::from_static(why),
                );
            }
            return response;
        }
    };
    let mut response = match inner {
        ResponseKind::Sync(body) => json_response(StatusCode::OK, body),
        ResponseKind::Forwarded { status, body } => return json_response(status, body),
        ResponseKind::Raw { content_type, body } => {
            let mut response = hyper::Response::new(Full::new(body).boxed());
            response.headers_mut().insert(CONTENT_TYPE, content_type);
            response
        }
        ResponseKind::Stream { content_type, chunks } => {
            let mut response = hyper::Response::new(ChannelBody(chunks).boxed());
            response.headers_mut().insert(CONTENT_TYPE, content_type);
            response
        }
        ResponseKind::Upgrade(protocol) => {
            let mut response = hyper::Response::new(Full::new(Bytes::new()).boxed());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.headers_mut().insert(CONNECTION, hyper::header::HeaderValue::from_static("Upgrade"));
            response.headers_mut().insert(UPGRADE, protocol);
            response
        }
    };
    if let Some(status) = status.filter(|_| response.status() == StatusCode::OK) {
        *response.status_mut() = status;
    }
    let mut last = None;
    for (name, value) in headers {
        // `HeaderMap`'s iteration names a header once, before all its values.
        let name = match name {
            Some(name) => {
                response.headers_mut().remove(&name);
                last = Some(name.clone());
                name
            }
            None => match &last {
                Some(name) => name.clone(),
                None => continue,
            },
        };
        response.headers_mut().append(name, value);
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn a_peek_tells_a_client_that_spoke_from_a_silent_one_and_loses_nothing() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _silent = tokio::net::TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(!spoke_already(accepted).unwrap().1);
        let mut talker = tokio::net::TcpStream::connect(address).await.unwrap();
        talker.write_all(b"hello").await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        // Written before the accept returned, as a TLS hello usually is; wait for it anyway.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (mut accepted, spoke) = spoke_already(accepted).unwrap();
        assert!(spoke);
        let mut read = [0u8; 5];
        accepted.read_exact(&mut read).await.unwrap();
        assert_eq!(&read, b"hello");
    }
}
