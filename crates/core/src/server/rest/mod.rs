//! The REST layer: endpoints with per-action access flags, requests as handlers see them,
//! responses in the JSON envelope, and the one place where errors become HTTP statuses.

pub(crate) mod endpoints;
pub(crate) mod front;
mod limits;
mod repoll;
mod router;
mod serve;
pub(crate) mod servers;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderValue;
use hyper::header::USER_AGENT;
use hyper::{HeaderMap, Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use limits::{ConnectionLimits, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT};
pub(crate) use limits::{Limits, open_file_limit};
pub(crate) use router::Routes;
pub(crate) use serve::Listener;

use crate::client::NOTIFICATION_USER_AGENT;
pub use crate::client::Upgraded;
use crate::server::error::{Error, ErrorKind};
use crate::server::state::State;

/// Largest request body accepted.
pub const MAX_REQUEST_BODY: usize = 8 * 1024 * 1024;

/// An error answered to a client: an HTTP status and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Refused before any handler ran, and why: answered with
    /// [`paths::NOT_RUN_HEADER`](crate::api::paths::NOT_RUN_HEADER).
    not_run: Option<&'static str>,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), not_run: None }
    }

    /// Marks a refusal given before any handler ran, so a member that forwarded the request
    /// knows it is safe to send again; `why` is one of the header's values.
    pub(crate) fn not_run(mut self, why: &'static str) -> ApiError {
        self.not_run = Some(why);
        self
    }

    /// 400: the request is malformed or invalid.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 403: the caller is not trusted.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    /// 404: no such thing.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// 503: not possible right now (not ready, not initialised, no leader, shutting down).
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500: something failed on our side.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Why the request was refused before any handler ran, if it was.
    pub(crate) fn not_run_because(&self) -> Option<&'static str> {
        self.not_run
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl std::fmt::Display) -> ApiError {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

/// The one place where a failure of the layers below becomes an HTTP status.
impl From<Error> for ApiError {
    fn from(err: Error) -> ApiError {
        let status = match err.kind() {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Peer(status) => StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        };
        ApiError::new(status, err.message())
    }
}

/// A database error answered directly by a handler.
impl From<dqlite::Error> for ApiError {
    fn from(err: dqlite::Error) -> ApiError {
        Error::from(err).into()
    }
}

/// How a request reached us, and so how far it is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Over the control socket (guarded by file permissions).
    Unix,
    /// Over TLS with the certificate of this trusted member.
    Member(String),
    /// Over TLS with this monitoring credential (`microctl monitoring add`): it may call the
    /// actions that allow untrusted callers and those [`Action::readable_by_monitors`].
    Monitor(String),
    /// Over TLS with an unknown certificate (fingerprint), or none.
    Untrusted(Option<String>),
}

/// A request as a handler sees it.
pub struct Request {
    /// HTTP method.
    pub method: Method,
    /// Path without the query.
    pub path: String,
    /// Headers.
    pub headers: HeaderMap,
    /// The body (at most [`MAX_REQUEST_BODY`] bytes, or the action's [`Action::max_body`]).
    pub body: Bytes,
    /// Who sent it.
    pub trust: Trust,
    params: Vec<(String, String)>,
    query: Vec<(String, String)>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A path parameter (`{name}` in the endpoint's path).
    pub fn param(&self, name: &str) -> Result<&str, ApiError> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| ApiError::internal(format!("endpoint has no path parameter {name:?}")))
    }

    /// A query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A boolean query flag (`?force=1`, `?force=true`).
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.query(name), Some("1" | "true" | "yes"))
    }

    /// The body as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Err(ApiError::bad_request("the request body is empty; JSON was expected"));
        }
        serde_json::from_slice(&self.body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
    }

    /// Whether a member forwarded this request as a notification (not to be fanned out again).
    pub fn is_notification(&self) -> bool {
        self.headers.get(USER_AGENT).is_some_and(|ua| ua == NOTIFICATION_USER_AGENT)
    }

    /// Whether the caller is trusted (control socket or a trusted member).
    pub fn is_trusted(&self) -> bool {
        matches!(self.trust, Trust::Unix | Trust::Member(_))
    }

    /// The connection of a request that asks to switch protocols (`Connection: Upgrade`), once:
    /// usable after the handler answered [`Response::upgrade`].
    pub fn take_upgrade(&mut self) -> Option<Upgrade> {
        self.upgrade.take().map(Upgrade)
    }
}

/// A connection that switches to another protocol once the `101` answer is out.
#[derive(Debug)]
pub struct Upgrade(hyper::upgrade::OnUpgrade);

impl Upgrade {
    /// Waits until the answer is out and returns the connection as a byte stream.
    pub async fn connection(self) -> Result<Upgraded, ApiError> {
        self.0
            .await
            .map(Upgraded::new)
            .map_err(|e| ApiError::bad_request(format!("the connection could not switch protocols: {e}")))
    }
}

/// A handler's answer: the JSON envelope ([`Response::sync`], [`Response::empty`]), a body of
/// its own ([`Response::raw`], [`Response::file`]), a body streamed as it is produced
/// ([`Response::stream`], [`Response::channel`]), or a switch to another protocol
/// ([`Response::upgrade`], with [`Request::take_upgrade`]); with a success status and headers of
/// the handler's choosing.
///
/// ```
/// use microcluster::server::rest::{HandlerResult, Request, Response};
/// use microcluster::State;
///
/// // Server-sent events: one line per change, for as long as the client listens.
/// async fn watch(_state: State, _req: Request) -> HandlerResult {
///     let (response, events) = Response::channel("text/event-stream", 16);
///     tokio::spawn(async move {
///         for n in 0..3 {
///             if events.send(format!("data: change {n}\n\n").into()).await.is_err() {
///                 return; // the client went away
///             }
///         }
///     });
///     Ok(response.with_header("cache-control", "no-store")?)
/// }
///
/// // A created resource: 201 with a location.
/// async fn create(_state: State, _req: Request) -> HandlerResult {
///     Ok(Response::sync("created")?.with_status(201)?.with_header("location", "/1.0/things/a")?)
/// }
/// # let _ = (watch, create);
/// ```
#[derive(Debug)]
pub struct Response {
    pub(crate) inner: ResponseKind,
    /// The success status, when not the kind's own.
    pub(crate) status: Option<StatusCode>,
    pub(crate) headers: HeaderMap,
}

#[derive(Debug)]
pub(crate) enum ResponseKind {
    /// `200` with the JSON envelope around a result, already encoded (straight from the
    /// handler's value, without a `serde_json::Value` tree in between).
    Sync(Bytes),
    /// An answer from another member, passed through unchanged.
    Forwarded { status: StatusCode, body: Bytes },
    /// `101 Switching Protocols` to this protocol.
    Upgrade(HeaderValue),
    /// `200` with a body streamed chunk by chunk (it ends when the sender is dropped).
    Stream { content_type: HeaderValue, chunks: tokio::sync::mpsc::Receiver<Bytes> },
    /// `200` with a body that is not the JSON envelope (e.g. Prometheus text).
    Raw { content_type: HeaderValue, body: Bytes },
}

/// A content type (or protocol name) as a header value; one that cannot be (a control
/// character) is sent as `application/octet-stream`, which is what the body then is to a client.
fn header_value(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// Size of the pieces a file is sent in.
const FILE_CHUNK: usize = 64 * 1024;

impl Response {
    fn of(inner: ResponseKind) -> Response {
        Response { inner, status: None, headers: HeaderMap::new() }
    }

    /// A result, serialised into the envelope's `metadata`.
    pub fn sync(value: impl Serialize) -> Result<Response, ApiError> {
        let body = serde_json::to_vec(&crate::api::Envelope::sync(value))
            .map_err(|e| ApiError::internal(format!("encoding the response: {e}")))?;
        Ok(Response::of(ResponseKind::Sync(body.into())))
    }

    /// An empty result (`metadata: {}`).
    pub fn empty() -> Response {
        let body = serde_json::to_vec(&crate::api::Envelope::sync(serde_json::Map::new())).unwrap_or_default();
        Response::of(ResponseKind::Sync(body.into()))
    }

    pub(crate) fn forwarded(status: StatusCode, body: Bytes) -> Response {
        Response::of(ResponseKind::Forwarded { status, body })
    }

    /// `101 Switching Protocols` to `protocol` (the request's `Upgrade` header names what the
    /// client asks for). The handler takes the connection with [`Request::take_upgrade`] before
    /// answering and uses it once the answer is out, on a task of its own:
    ///
    /// ```
    /// use microcluster::server::rest::{ApiError, HandlerResult, Request, Response};
    /// use microcluster::State;
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// // An echo over a raw byte stream (`Upgrade: echo`).
    /// async fn echo(_state: State, mut req: Request) -> HandlerResult {
    ///     let upgrade = req.take_upgrade().ok_or_else(|| ApiError::bad_request("cannot upgrade"))?;
    ///     tokio::spawn(async move {
    ///         let Ok(mut io) = upgrade.connection().await else { return };
    ///         let mut buf = [0u8; 1024];
    ///         while let Ok(n @ 1..) = io.read(&mut buf).await {
    ///             if io.write_all(&buf[..n]).await.is_err() {
    ///                 return;
    ///             }
    ///         }
    ///     });
    ///     Ok(Response::upgrade("echo"))
    /// }
    /// # let _ = echo;
    /// ```
    pub fn upgrade(protocol: &str) -> Response {
        Response::of(ResponseKind::Upgrade(header_value(protocol)))
    }

    /// `200` with `body` as it is, outside the envelope.
    pub fn raw(content_type: &str, body: impl Into<Bytes>) -> Response {
        Response::of(ResponseKind::Raw { content_type: header_value(content_type), body: body.into() })
    }

    /// `200` with a body the sender side of `chunks` streams; it ends when every sender is
    /// dropped. A client that goes away closes the receiver, so a send fails: stop then.
    pub fn stream(content_type: &str, chunks: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
        Response::of(ResponseKind::Stream { content_type: header_value(content_type), chunks })
    }

    /// [`Response::stream`] with a new channel holding up to `capacity` chunks not yet sent:
    /// the response, and the sender to write the body with.
    pub fn channel(content_type: &str, capacity: usize) -> (Response, tokio::sync::mpsc::Sender<Bytes>) {
        let (sender, receiver) = tokio::sync::mpsc::channel(capacity.max(1));
        (Response::stream(content_type, receiver), sender)
    }

    /// `200` with the file at `path` as the body, read and sent piece by piece (the file is
    /// never held whole in memory). A missing file is a 404, one that cannot be read a 500.
    pub async fn file(path: impl AsRef<std::path::Path>, content_type: &str) -> Result<Response, ApiError> {
        use tokio::io::AsyncReadExt;
        let path = path.as_ref().to_owned();
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::not_found(format!("{} does not exist", path.display())),
            _ => ApiError::internal(format!("opening {}: {e}", path.display())),
        })?;
        let (response, chunks) = Response::channel(content_type, 4);
        tokio::spawn(async move {
            loop {
                let mut buf = bytes::BytesMut::with_capacity(FILE_CHUNK);
                match file.read_buf(&mut buf).await {
                    Ok(0) => return,
                    Ok(_) => {
                        if chunks.send(buf.freeze()).await.is_err() {
                            return;
                        }
                    }
                    Err(err) => {
                        // The status is out already: the body ends short, which the client sees.
                        tracing::warn!(file = %path.display(), error = %err, "reading a file being sent");
                        return;
                    }
                }
            }
        });
        Ok(response)
    }

    /// The same answer with this success status (`200`-`299`, e.g. `201 Created` or `202
    /// Accepted`) instead of `200`; the envelope is unchanged. Other statuses are errors, which
    /// a handler returns as [`ApiError`]s.
    pub fn with_status(mut self, status: u16) -> Result<Response, ApiError> {
        match StatusCode::from_u16(status) {
            Ok(status) if status.is_success() => {
                self.status = Some(status);
                Ok(self)
            }
            _ => Err(ApiError::internal(format!("{status} is not a success status; return an ApiError instead"))),
        }
    }

    /// The same answer with this header added (one of the same name the framework sets, such
    /// as `content-type`, is replaced).
    pub fn with_header(mut self, name: &str, value: &str) -> Result<Response, ApiError> {
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ApiError::internal(format!("invalid response header name {name:?}: {e}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| ApiError::internal(format!("invalid value for response header {name}: {e}")))?;
        self.headers.append(name, value);
        Ok(self)
    }
}

/// What a handler returns.
pub type HandlerResult = Result<Response, ApiError>;

/// The future a handler returns.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;

type HandlerFn = dyn Fn(State, Request) -> HandlerFuture + Send + Sync;

/// One method of an endpoint: its handler and who may call it when.
///
/// ```
/// use microcluster::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response};
/// use microcluster::State;
///
/// async fn show(state: State, req: Request) -> HandlerResult {
///     let name = req.param("name")?;
///     let rows = state.query("SELECT value FROM settings WHERE name = ?", &[name.into()]).await?;
///     match rows.rows.first() {
///         Some(row) => Response::sync(row.get(0).map(|v| v.to_string())),
///         None => Err(ApiError::not_found(format!("no setting {name:?}"))),
///     }
/// }
///
/// // Readable by anyone who can reach the address, answered by the member `?target=` names.
/// let endpoint = Endpoint::new("settings/{name}").get(Action::new(show).allow_untrusted().proxy_target());
/// # let _ = endpoint;
/// ```
#[derive(Clone)]
pub struct Action {
    pub(crate) handler: Arc<HandlerFn>,
    pub(crate) allow_untrusted: bool,
    pub(crate) allowed_before_init: bool,
    pub(crate) allowed_during_shutdown: bool,
    pub(crate) allowed_during_upgrade: bool,
    pub(crate) proxy_target: bool,
    pub(crate) max_body: usize,
    pub(crate) access: Option<Arc<AccessFn>>,
    pub(crate) readable_by_monitors: bool,
}

type AccessFn = dyn Fn(&State, &Request) -> Result<(), ApiError> + Send + Sync;

impl std::fmt::Debug for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Action")
            .field("allow_untrusted", &self.allow_untrusted)
            .field("allowed_before_init", &self.allowed_before_init)
            .field("allowed_during_shutdown", &self.allowed_during_shutdown)
            .field("proxy_target", &self.proxy_target)
            .finish_non_exhaustive()
    }
}

impl Action {
    /// An action running `handler`; by default only trusted callers, only once the database
    /// is up, and not during shutdown.
    pub fn new<F, Fut>(handler: F) -> Action
    where
        F: Fn(State, Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Action {
            handler: Arc::new(move |state, req| Box::pin(handler(state, req))),
            allow_untrusted: false,
            allowed_before_init: false,
            allowed_during_shutdown: false,
            allowed_during_upgrade: false,
            proxy_target: false,
            max_body: MAX_REQUEST_BODY,
            access: None,
            readable_by_monitors: false,
        }
    }

    /// Lets monitoring credentials call it too (they read; give it only to actions that
    /// change nothing), besides trusted members and the control socket.
    pub fn readable_by_monitors(mut self) -> Action {
        self.readable_by_monitors = true;
        self
    }

    /// Decides who may call it, beyond the built-in rule (a trusted member or the control
    /// socket, unless [`Action::allow_untrusted`]): `check` sees the request (its [`Trust`],
    /// headers, query, body) before the handler and refuses with the error it returns (a
    /// `403` usually). It runs on the member that received the request, before `?target=`
    /// forwards it.
    ///
    /// ```
    /// use microcluster::server::rest::{Action, ApiError, Endpoint, HandlerResult, Request, Response, Trust};
    /// use microcluster::State;
    ///
    /// async fn reboot(_state: State, _req: Request) -> HandlerResult {
    ///     Ok(Response::empty())
    /// }
    ///
    /// // Only from the control socket (an operator on the machine), never from another member.
    /// fn operators_only(_state: &State, req: &Request) -> Result<(), ApiError> {
    ///     match req.trust {
    ///         Trust::Unix => Ok(()),
    ///         _ => Err(ApiError::forbidden("only an operator on this machine may do this")),
    ///     }
    /// }
    ///
    /// let endpoint = Endpoint::new("reboot").post(Action::new(reboot).access(operators_only));
    /// # let _ = endpoint;
    /// ```
    pub fn access<F>(mut self, check: F) -> Action
    where
        F: Fn(&State, &Request) -> Result<(), ApiError> + Send + Sync + 'static,
    {
        self.access = Some(Arc::new(check));
        self
    }

    /// Lets callers without a trusted certificate in (the handler must check them itself).
    pub fn allow_untrusted(mut self) -> Action {
        self.allow_untrusted = true;
        self
    }

    /// Serves it before the member is initialised (before the database exists).
    pub fn allowed_before_init(mut self) -> Action {
        self.allowed_before_init = true;
        self
    }

    /// Serves it while the daemon shuts down.
    pub fn allowed_during_shutdown(mut self) -> Action {
        self.allowed_during_shutdown = true;
        self
    }

    /// Serves it while this member waits for the others to upgrade (its database is up but its
    /// schema updates are not applied yet).
    pub fn allowed_during_upgrade(mut self) -> Action {
        self.allowed_during_upgrade = true;
        self
    }

    /// Accepts request bodies up to `bytes` (instead of [`MAX_REQUEST_BODY`]), e.g. for uploads.
    pub fn max_body(mut self, bytes: usize) -> Action {
        self.max_body = bytes;
        self
    }

    /// Forwards the request to the member named by `?target=NAME` when it is not this one.
    pub fn proxy_target(mut self) -> Action {
        self.proxy_target = true;
        self
    }
}

/// A path and what each method does there.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub(crate) path: String,
    pub(crate) aliases: Vec<String>,
    pub(crate) actions: Vec<(Method, Action)>,
}

impl Endpoint {
    /// An endpoint at `path` below its resources' prefix; `{name}` segments are parameters.
    pub fn new(path: impl Into<String>) -> Endpoint {
        Endpoint { path: path.into(), aliases: Vec::new(), actions: Vec::new() }
    }

    /// Serves the same actions at `path` too (below the same prefix; its parameters should be
    /// named as the endpoint's), e.g. the old name of a renamed endpoint.
    ///
    /// ```
    /// use microcluster::server::rest::{Action, Endpoint, HandlerResult, Request, Response};
    /// use microcluster::State;
    ///
    /// async fn show(_state: State, req: Request) -> HandlerResult {
    ///     Response::sync(req.param("name")?)
    /// }
    ///
    /// // `/1.0/instances/{name}`, still answered at its old path `/1.0/vms/{name}`.
    /// let endpoint = Endpoint::new("instances/{name}").alias("vms/{name}").get(Action::new(show));
    /// # let _ = endpoint;
    /// ```
    pub fn alias(mut self, path: impl Into<String>) -> Endpoint {
        self.aliases.push(path.into());
        self
    }

    /// Handles `method` with `action`.
    pub fn action(mut self, method: Method, action: Action) -> Endpoint {
        self.actions.retain(|(m, _)| *m != method);
        self.actions.push((method, action));
        self
    }

    /// Handles GET.
    pub fn get(self, action: Action) -> Endpoint {
        self.action(Method::GET, action)
    }

    /// Handles POST.
    pub fn post(self, action: Action) -> Endpoint {
        self.action(Method::POST, action)
    }

    /// Handles PUT.
    pub fn put(self, action: Action) -> Endpoint {
        self.action(Method::PUT, action)
    }

    /// Handles PATCH.
    pub fn patch(self, action: Action) -> Endpoint {
        self.action(Method::PATCH, action)
    }

    /// Handles DELETE.
    pub fn delete(self, action: Action) -> Endpoint {
        self.action(Method::DELETE, action)
    }
}

/// Endpoints under a common path prefix (e.g. `1.0` for `/1.0/...`).
#[derive(Debug, Clone)]
pub struct Resources {
    pub(crate) prefix: String,
    pub(crate) endpoints: Vec<Endpoint>,
}

impl Resources {
    /// Endpoints under `/prefix/`.
    pub fn new(prefix: impl Into<String>, endpoints: Vec<Endpoint>) -> Resources {
        Resources { prefix: prefix.into().trim_matches('/').to_owned(), endpoints }
    }
}
