//! A typed client for the REST API, over the unix control socket or mutual-TLS HTTPS.
//!
//! One method per endpoint, so callers (microctl, the daemon talking to its peers, applications)
//! never build JSON by hand. Each request uses a fresh HTTP/1.1 connection with a deadline.

mod pool;
mod transport;
mod upgraded;

/// Percent-encodes a path segment (kept here for callers of earlier versions).
pub use crate::api::paths::encode_segment;
pub use pool::Pool;
pub use upgraded::Upgraded;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
pub use hyper::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    self, BackupSummary, CertificatesCurrent, CertificatesPrepare, CertificatesPrepared, CertificatesRotate,
    CertificatesRotated, ClusterMember, ClusterMemberLocal, Control, DoctorReport, Envelope, HeartbeatRequest,
    HeartbeatResponse, JoinRequest, JoinResponse, KeyPair, RecoveryPlan, RecoveryStatus, ResponseType, RoleRequest,
    ServerAddress, ServerStatus, SqlBatch, SqlDump, SqlQuery, TokenRecord, TokenRequest, TransferLeaderRequest, paths,
};
use std::collections::BTreeMap;

/// Default deadline for one request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body accepted.
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Largest backup file (the daemon sends the whole database in one answer).
pub const MAX_BACKUP: usize = 256 * 1024 * 1024;
/// Marks a request as forwarded by a member, so the receiver does not fan it out again.
pub const NOTIFICATION_USER_AGENT: &str = "lxd-cluster-notifier";
/// The target of the debug event each request logs once answered (method, path, status, time):
/// a CLI's `--verbose` shows these alone.
pub const REQUEST_LOG_TARGET: &str = "microcluster::client::request";

/// A request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot reach {target}: {source}")]
    Connect {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed (e.g. the server is not the expected cluster).
    #[error("TLS handshake with {target} failed: {source}")]
    Tls {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP request to {target} failed: {source}")]
    Http {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("{target} did not answer within {after:?}")]
    Timeout {
        /// Where.
        target: String,
        /// The deadline.
        after: Duration,
    },
    /// The server answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// The server's message.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected response from {target}: {reason}")]
    Decode {
        /// Where.
        target: String,
        /// What was wrong.
        reason: String,
    },
}

impl ClientError {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The server could not be reached at all (as opposed to answering with an error).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Timeout { .. } | ClientError::Tls { .. })
    }
}

/// Where requests go.
#[derive(Clone)]
pub(crate) enum Target {
    Unix(PathBuf),
    Https { address: String, tls: Arc<rustls::ClientConfig> },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "{}", path.display()),
            Target::Https { address, .. } => write!(f, "https://{address}"),
        }
    }
}

/// A client of one daemon.
///
/// ```no_run
/// # async fn demo() -> Result<(), microcluster::client::ClientError> {
/// use microcluster::client::Client;
///
/// let local = Client::unix("/var/lib/microd/control.socket");
/// for member in local.cluster_members().await? {
///     println!("{} {} {}", member.local.name, member.role, member.status);
/// }
/// let token = local.add_token("node4", Some(std::time::Duration::from_secs(3600))).await?;
/// # let _ = token;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    target: Target,
    timeout: Duration,
    connect_timeout: Option<Duration>,
    pool: Option<Arc<Pool>>,
    notification: bool,
    /// The member that should answer (`?target=NAME`), when not the one this client reaches.
    member: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("target", &self.target.to_string()).finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the daemon listening on the unix socket at `path`.
    pub fn unix(path: impl Into<PathBuf>) -> Client {
        Client {
            target: Target::Unix(path.into()),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: None,
            pool: None,
            notification: false,
            member: None,
        }
    }

    /// A client of the member at `address` (`ip:port`) over HTTPS with `tls` (see
    /// [`crate::tls::client_config`]).
    pub fn https(address: impl Into<String>, tls: Arc<rustls::ClientConfig>) -> Client {
        Client {
            target: Target::Https { address: address.into(), tls },
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: None,
            pool: None,
            notification: false,
            member: None,
        }
    }

    /// Has member `name` answer every request (`?target=NAME`): the member this client
    /// reaches forwards it there, for endpoints that allow it (`Action::proxy_target`).
    pub fn use_target(mut self, name: &str) -> Client {
        self.member = Some(name.to_owned());
        self
    }

    /// `path` with the `?target=` of [`Client::use_target`], if any.
    fn targeted<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        match &self.member {
            None => std::borrow::Cow::Borrowed(path),
            Some(name) => {
                let separator = if path.contains('?') { '&' } else { '?' };
                std::borrow::Cow::Owned(format!("{path}{separator}target={}", encode_segment(name)))
            }
        }
    }

    /// Sets the per-request deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    /// Gives up on connecting (TCP and TLS) after `timeout`, with a [`ClientError::Connect`]:
    /// a caller that has somewhere else to go learns early that nothing was sent.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Client {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Sends requests over kept-alive connections from `pool` (HTTPS only), for a client
    /// that talks to the same member often.
    pub fn with_pool(mut self, pool: Arc<Pool>) -> Client {
        self.pool = Some(pool);
        self
    }

    /// What to send besides method, path and body.
    fn options(&self, notification: bool, content_type: &'static str, limit: usize) -> transport::Options {
        transport::Options { notification, content_type, limit, connect_timeout: self.connect_timeout }
    }

    /// Marks requests as notifications from a member, which receivers do not fan out again.
    pub fn as_notification(mut self) -> Client {
        self.notification = true;
        self
    }

    /// The address of an HTTPS client, or the socket path.
    pub fn target(&self) -> String {
        self.target.to_string()
    }

    /// Sends a request and returns the envelope's metadata decoded as `T`.
    pub async fn query<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, ClientError> {
        let body = match body {
            Some(b) => {
                Some(Bytes::from(serde_json::to_vec(b).map_err(|e| self.decode(format!("encoding the request: {e}")))?))
            }
            None => None,
        };
        let (status, bytes) = self.raw(method, path, body).await?;
        self.metadata(status, &bytes)
    }

    /// The metadata of a response in the envelope, or its error.
    fn metadata<T: DeserializeOwned>(&self, status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
        let envelope: Envelope<serde_json::Value> = serde_json::from_slice(bytes)
            .map_err(|e| self.decode(format!("HTTP {status} with a body that is not an API response ({e})")))?;
        if envelope.kind == ResponseType::Error || !status.is_success() {
            let status = StatusCode::from_u16(envelope.error_code).ok().filter(|s| !s.is_success()).unwrap_or(status);
            return Err(ClientError::Api { status, message: envelope.error });
        }
        serde_json::from_value(envelope.metadata).map_err(|e| self.decode(format!("unexpected metadata: {e}")))
    }

    /// Sends a request; returns the status and the raw body.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let options = self.options(self.notification, "application/json", MAX_RESPONSE);
        let (status, _, body) = self.send(method, path, body, options).await?;
        Ok((status, body))
    }

    /// [`Client::raw`], with the answer's headers (for a member forwarding a request).
    #[cfg(feature = "server")]
    pub(crate) async fn raw_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes), ClientError> {
        let options = self.options(self.notification, "application/json", MAX_RESPONSE);
        self.send(method, path, body, options).await
    }

    /// Sends a request and returns once the answer's head arrived, its body to be read piece
    /// by piece as the member sends it ([`Streamed::chunk`]): for an endpoint that streams (a
    /// watch, server-sent events) or serves a large file. An error status is read whole and
    /// returned as the error. The client's deadline applies to the head and to each wait for
    /// more of the body, not to the whole body.
    ///
    /// ```no_run
    /// use microcluster::client::{Client, Method};
    ///
    /// # async fn watch() -> Result<(), microcluster::client::ClientError> {
    /// let client = Client::unix("/var/lib/notesd/control.socket");
    /// let mut events = client.open(Method::GET, "/1.0/watch", None).await?;
    /// while let Some(chunk) = events.chunk().await? {
    ///     print!("{}", String::from_utf8_lossy(&chunk));
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Streamed, ClientError> {
        let path = &*self.targeted(path);
        let options = self.options(self.notification, "application/json", MAX_RESPONSE);
        let open = tokio::time::timeout(self.timeout, transport::open(&self.target, method, path, body, options))
            .await
            .map_err(|_| ClientError::Timeout { target: self.target(), after: self.timeout })??;
        let transport::Open { response, driver } = open;
        let (parts, body) = response.into_parts();
        if !parts.status.is_success() {
            let bytes = http_body_util::Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| self.decode(format!("reading the body: {e}")))?
                .to_bytes();
            return Err(self.metadata::<serde_json::Value>(parts.status, &bytes).err().unwrap_or(ClientError::Api {
                status: parts.status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            }));
        }
        Ok(Streamed {
            status: parts.status,
            headers: parts.headers,
            body,
            timeout: self.timeout,
            target: self.target(),
            _driver: driver,
        })
    }

    /// Asks the member to switch the connection to `protocol` at `path` (the handler answers
    /// `101 Switching Protocols`), and returns the connection as a byte stream.
    pub async fn upgrade(&self, path: &str, protocol: &str) -> Result<Upgraded, ClientError> {
        let path = &*self.targeted(path);
        let options = self.options(self.notification, "application/json", MAX_RESPONSE);
        let open = transport::open_with(&self.target, Method::GET, path, None, options, Some(protocol));
        let open = tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| ClientError::Timeout { target: self.target(), after: self.timeout })??;
        let transport::Open { response, driver } = open;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let bytes = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| self.decode(format!("reading the body: {e}")))?
                .to_bytes();
            return Err(self
                .metadata::<serde_json::Value>(status, &bytes)
                .err()
                .unwrap_or_else(|| self.decode(format!("HTTP {status} instead of switching to {protocol:?}"))));
        }
        let upgraded = tokio::time::timeout(self.timeout, hyper::upgrade::on(response))
            .await
            .map_err(|_| ClientError::Timeout { target: self.target(), after: self.timeout })?
            .map_err(|source| ClientError::Http { target: self.target(), source })?;
        drop(driver);
        Ok(Upgraded::new(upgraded))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        options: transport::Options,
    ) -> Result<transport::Answer, ClientError> {
        let path = &*self.targeted(path);
        let started = std::time::Instant::now();
        let logged = method.clone();
        let exchange = async {
            match (&self.target, &self.pool) {
                (Target::Https { address, tls }, Some(pool)) => {
                    transport::send_pooled(pool, address, tls, method, path, body, options).await
                }
                _ => transport::send(&self.target, method, path, body, options).await,
            }
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout { target: self.target(), after: self.timeout }),
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok((status, _, body)) => tracing::debug!(
                target: REQUEST_LOG_TARGET,
                "{logged} {path} on {}: {status}, {} bytes in {ms:.1} ms",
                self.target,
                body.len()
            ),
            Err(err) => {
                tracing::debug!(target: REQUEST_LOG_TARGET, "{logged} {path} on {}: {err} after {ms:.1} ms", self.target)
            }
        }
        result
    }

    /// `GET /core/1.0/database/backup[?verify=1]`: a consistent copy of the database as an
    /// SQLite file, and what it holds.
    pub async fn backup(&self, verify: bool) -> Result<(BackupSummary, Bytes), ClientError> {
        let path = format!("{}{}", paths::DATABASE_BACKUP, if verify { "?verify=1" } else { "" });
        let options = self.options(false, "application/json", MAX_BACKUP);
        let (status, headers, body) = self.send(Method::GET, &path, None, options).await?;
        if !status.is_success() {
            return Err(self
                .metadata::<serde_json::Value>(status, &body)
                .err()
                .unwrap_or_else(|| self.decode(format!("HTTP {status} without an error message"))));
        }
        let summary = headers
            .get(paths::BACKUP_SUMMARY_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| serde_json::from_str(v).ok())
            .ok_or_else(|| self.decode("a backup without its summary header".into()))?;
        Ok((summary, body))
    }

    /// `POST /core/1.0/database/restore[?replace=1]`: restores a backup file into the cluster.
    pub async fn restore(&self, file: Bytes, replace: bool) -> Result<BackupSummary, ClientError> {
        let path = format!("{}{}", paths::DATABASE_RESTORE, if replace { "?replace=1" } else { "" });
        self.upload(&path, file).await
    }

    /// `POST /core/1.0/database/verify`: proves a backup file restores (into a scratch node).
    pub async fn verify_backup(&self, file: Bytes) -> Result<BackupSummary, ClientError> {
        self.upload(paths::DATABASE_VERIFY, file).await
    }

    async fn upload<T: DeserializeOwned>(&self, path: &str, file: Bytes) -> Result<T, ClientError> {
        let options = self.options(false, "application/vnd.sqlite3", MAX_RESPONSE);
        let (status, _, body) = self.send(Method::POST, path, Some(file), options).await?;
        self.metadata(status, &body)
    }

    fn decode(&self, reason: String) -> ClientError {
        ClientError::Decode { target: self.target(), reason }
    }

    async fn empty(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<(), ClientError> {
        self.query::<serde_json::Value>(method, path, body).await.map(drop)
    }

    /// `GET /core/1.0`.
    pub async fn status(&self) -> Result<ServerStatus, ClientError> {
        self.query(Method::GET, paths::STATUS, None::<&()>).await
    }

    /// `GET /core/1.0/ready`, with what may still be wrong with a member that is ready.
    pub async fn readiness(&self) -> Result<api::Readiness, ClientError> {
        // A member older than this field answers with no metadata: nothing to report.
        let value: serde_json::Value = self.query(Method::GET, paths::READY, None::<&()>).await?;
        Ok(serde_json::from_value(value).unwrap_or_default())
    }

    /// `GET /core/1.0/ready`: succeeds once the daemon is ready.
    pub async fn ready(&self) -> Result<(), ClientError> {
        self.empty(Method::GET, paths::READY, None::<&()>).await
    }

    /// `POST /core/control`: bootstrap or join.
    pub async fn control(&self, control: &Control) -> Result<(), ClientError> {
        self.empty(Method::POST, paths::CONTROL, Some(control)).await
    }

    /// `POST /core/control/shutdown`.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.empty(Method::POST, paths::SHUTDOWN, None::<&()>).await
    }

    /// `POST /core/control/tokens`: a join token for member `name` (`None`: never expires).
    pub async fn add_token(&self, name: &str, expire_after: Option<Duration>) -> Result<String, ClientError> {
        let expire_after = expire_after.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let request = TokenRequest { name: name.to_owned(), expire_after };
        self.query(Method::POST, paths::CONTROL_TOKENS, Some(&request)).await
    }

    /// `GET /core/control/tokens`.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, ClientError> {
        self.query(Method::GET, paths::CONTROL_TOKENS, None::<&()>).await
    }

    /// `POST /core/control/monitors`: issues a monitoring credential (a client certificate and
    /// its key, which only this answer carries) that may read the members' metrics and status.
    pub async fn add_monitor(&self, name: &str) -> Result<api::MonitorCredential, ClientError> {
        self.query(Method::POST, paths::CONTROL_MONITORS, Some(&api::MonitorRequest { name: name.to_owned() })).await
    }

    /// `GET /core/control/monitors`.
    pub async fn monitors(&self) -> Result<Vec<api::MonitorRecord>, ClientError> {
        self.query(Method::GET, paths::CONTROL_MONITORS, None::<&()>).await
    }

    /// `DELETE /core/control/monitors/{name}`: the credential is refused from then on.
    pub async fn revoke_monitor(&self, name: &str) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &paths::fill(paths::CONTROL_MONITOR, &[name]), None::<&()>).await
    }

    /// `POST /core/internal/monitors`: tells a member that the credentials changed.
    pub async fn refresh_monitors(&self) -> Result<(), ClientError> {
        self.empty(Method::POST, paths::INTERNAL_MONITORS, None::<&()>).await
    }

    /// `DELETE /core/1.0/tokens/{name}`.
    pub async fn revoke_token(&self, name: &str) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &paths::fill(paths::TOKEN, &[name]), None::<&()>).await
    }

    /// `GET /core/1.0/cluster`.
    pub async fn cluster_members(&self) -> Result<Vec<ClusterMember>, ClientError> {
        self.query(Method::GET, paths::CLUSTER, None::<&()>).await
    }

    /// `DELETE /core/1.0/cluster/{name}[?force=1]`.
    pub async fn remove_member(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let mut path = paths::fill(paths::CLUSTER_MEMBER, &[name]);
        if force {
            path.push_str("?force=1");
        }
        self.empty(Method::DELETE, &path, None::<&()>).await
    }

    /// `PUT /core/1.0/cluster/{name}/address`: moves member `name` to `address` while the rest of
    /// the cluster keeps its quorum. Send it to that member's control socket.
    pub async fn set_member_address(&self, name: &str, address: &str) -> Result<(), ClientError> {
        let path = paths::fill(paths::CLUSTER_MEMBER_ADDRESS, &[name]);
        self.empty(Method::PUT, &path, Some(&api::SetAddressRequest { address: address.to_owned() })).await
    }

    /// `PUT /core/internal/cluster/{name}/address`: the leader's side of a member's move.
    pub async fn move_member(&self, name: &str, request: &api::MoveMemberRequest) -> Result<(), ClientError> {
        let path = paths::fill(paths::INTERNAL_MEMBER_ADDRESS, &[name]);
        self.empty(Method::PUT, &path, Some(request)).await
    }

    /// `POST /core/internal/sql`.
    pub async fn sql(&self, query: &str) -> Result<SqlBatch, ClientError> {
        self.query(Method::POST, paths::INTERNAL_SQL, Some(&SqlQuery::new(query))).await
    }

    /// `POST /core/internal/sql` with reads of the given consistency.
    pub async fn sql_with(&self, query: &str, consistency: api::ReadConsistency) -> Result<SqlBatch, ClientError> {
        let request = SqlQuery { query: query.to_owned(), consistency: Some(consistency) };
        self.query(Method::POST, paths::INTERNAL_SQL, Some(&request)).await
    }

    /// `POST /core/internal/sql?stream=1`: the rows of one read-only statement arrive as the
    /// daemon reads them, so neither side holds the whole result. `on_event` gets the column
    /// names, then each row; returning `false` stops reading. Any other text gets its results
    /// whole ([`SqlStreamed::Batch`]). The client's deadline applies to each wait for more
    /// data, not to the whole result.
    pub async fn sql_stream(
        &self,
        query: &str,
        on_event: impl FnMut(SqlStreamEvent) -> bool,
    ) -> Result<SqlStreamed, ClientError> {
        self.sql_stream_with(SqlQuery::new(query), on_event).await
    }

    /// [`Client::sql_stream`] for a request with its own read consistency.
    pub async fn sql_stream_with(
        &self,
        request: SqlQuery,
        mut on_event: impl FnMut(SqlStreamEvent) -> bool,
    ) -> Result<SqlStreamed, ClientError> {
        let body = serde_json::to_vec(&request).map_err(|e| self.decode(format!("encoding the request: {e}")))?;
        let options = self.options(false, "application/json", MAX_RESPONSE);
        let path = format!("{}?stream=1", paths::INTERNAL_SQL);
        let open = tokio::time::timeout(
            self.timeout,
            transport::open(&self.target, Method::POST, &path, Some(body.into()), options),
        )
        .await
        .map_err(|_| ClientError::Timeout { target: self.target(), after: self.timeout })??;
        let transport::Open { response, driver: _driver } = open;
        let (parts, mut body) = response.into_parts();
        let streamed = parts.headers.get(hyper::header::CONTENT_TYPE).is_some_and(|t| t == "application/x-ndjson");
        if !streamed {
            // An error, or a batch that is not one read: the ordinary answer.
            let bytes = http_body_util::Limited::new(body, MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| self.decode(format!("reading the body: {e}")))?
                .to_bytes();
            return self.metadata(parts.status, &bytes).map(SqlStreamed::Batch);
        }
        let mut lines = LineBuffer::default();
        let mut rows = 0u64;
        loop {
            let frame = tokio::time::timeout(self.timeout, body.frame())
                .await
                .map_err(|_| ClientError::Timeout { target: self.target(), after: self.timeout })?;
            let data = match frame {
                None => return Err(self.decode(format!("the result stream broke off after {rows} rows"))),
                Some(Err(err)) => {
                    return Err(self.decode(format!("the result stream broke off after {rows} rows: {err}")));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            };
            lines.push(&data).map_err(|reason| self.decode(reason))?;
            while let Some(line) = lines.next_line() {
                let value: serde_json::Value = serde_json::from_slice(&line)
                    .map_err(|e| self.decode(format!("a streamed line is not JSON ({e})")))?;
                let event = match value {
                    serde_json::Value::Array(values) => {
                        rows += 1;
                        SqlStreamEvent::Row(values)
                    }
                    serde_json::Value::Object(mut object) => {
                        if let Some(columns) = object.remove("columns") {
                            let columns = serde_json::from_value(columns)
                                .map_err(|e| self.decode(format!("streamed column names: {e}")))?;
                            SqlStreamEvent::Columns(columns)
                        } else if let Some(error) = object.remove("error") {
                            let message = error.as_str().unwrap_or_default().to_owned();
                            return Err(ClientError::Api { status: StatusCode::INTERNAL_SERVER_ERROR, message });
                        } else if object.contains_key("rows") {
                            return Ok(SqlStreamed::Rows(rows));
                        } else {
                            return Err(self.decode("an unknown line in the result stream".into()));
                        }
                    }
                    _ => return Err(self.decode("an unknown line in the result stream".into())),
                };
                if !on_event(event) {
                    return Ok(SqlStreamed::Rows(rows));
                }
            }
        }
    }

    /// `GET /core/internal/sql[?schema=1]`: an SQL dump of the database (or its schema).
    pub async fn sql_dump(&self, schema_only: bool) -> Result<String, ClientError> {
        let path =
            if schema_only { format!("{}?schema=1", paths::INTERNAL_SQL) } else { paths::INTERNAL_SQL.to_owned() };
        Ok(self.query::<SqlDump>(Method::GET, &path, None::<&()>).await?.text)
    }

    /// `POST /core/internal/cluster`: ask to join with a token's secret.
    pub async fn join(&self, request: &JoinRequest) -> Result<JoinResponse, ClientError> {
        self.query(Method::POST, paths::INTERNAL_CLUSTER, Some(request)).await
    }

    /// `PUT /core/internal/cluster/{name}`: tell a removed member to reset itself.
    pub async fn reset_member(&self, name: &str, force: bool) -> Result<(), ClientError> {
        let mut path = paths::fill(paths::INTERNAL_CLUSTER_MEMBER, &[name]);
        if force {
            path.push_str("?force=1");
        }
        self.empty(Method::PUT, &path, None::<&()>).await
    }

    /// `POST /core/internal/truststore`: trust a member.
    pub async fn add_trust(&self, member: &ClusterMemberLocal) -> Result<(), ClientError> {
        self.empty(Method::POST, paths::INTERNAL_TRUSTSTORE, Some(member)).await
    }

    /// `POST /core/1.0/cluster/certificates`: replace certificates across the cluster.
    pub async fn rotate_certificates(&self, request: &CertificatesRotate) -> Result<CertificatesRotated, ClientError> {
        self.query(Method::POST, paths::CLUSTER_CERTIFICATES, Some(request)).await
    }

    /// `PUT /core/1.0/cluster/certificates/{name}`: install a supplied pair as the cluster's
    /// certificate (`cluster`) or a member's own (its name).
    pub async fn set_certificate(&self, name: &str, pair: &KeyPair) -> Result<CertificatesRotated, ClientError> {
        self.query(Method::PUT, &paths::fill(paths::CLUSTER_CERTIFICATE, &[name]), Some(pair)).await
    }

    /// `POST /core/internal/certificates`: a rotation's first step on a member.
    pub async fn prepare_certificates(
        &self,
        request: &CertificatesPrepare,
    ) -> Result<CertificatesPrepared, ClientError> {
        self.query(Method::POST, paths::INTERNAL_CERTIFICATES, Some(request)).await
    }

    /// `POST /core/internal/certificates/switch`: a rotation's switch on a member.
    pub async fn switch_certificates(&self) -> Result<(), ClientError> {
        self.empty(Method::POST, paths::INTERNAL_CERTIFICATES_SWITCH, None::<&()>).await
    }

    /// `POST /core/internal/certificates/finish`: a rotation's end on a member.
    pub async fn finish_certificates(&self) -> Result<(), ClientError> {
        self.empty(Method::POST, paths::INTERNAL_CERTIFICATES_FINISH, None::<&()>).await
    }

    /// `GET /core/internal/certificates`: the cluster's certificates, to catch up with.
    pub async fn current_certificates(&self) -> Result<CertificatesCurrent, ClientError> {
        self.query(Method::GET, paths::INTERNAL_CERTIFICATES, None::<&()>).await
    }

    /// `DELETE /core/internal/truststore/{name}`: stop trusting a member.
    pub async fn remove_trust(&self, name: &str) -> Result<(), ClientError> {
        self.empty(Method::DELETE, &paths::fill(paths::INTERNAL_TRUST, &[name]), None::<&()>).await
    }

    /// `GET /core/internal/truststore`: the members this member trusts (itself included).
    pub async fn truststore(&self) -> Result<Vec<ClusterMemberLocal>, ClientError> {
        self.query(Method::GET, paths::INTERNAL_TRUSTSTORE, None::<&()>).await
    }

    /// `POST /core/1.0/doctor[?repair=0]`: compare dqlite's configuration, the member table and
    /// every trust store on the leader, repairing provable drift unless `repair` is false.
    pub async fn doctor(&self, repair: bool) -> Result<DoctorReport, ClientError> {
        let path = if repair { paths::DOCTOR.to_owned() } else { format!("{}?repair=0", paths::DOCTOR) };
        self.query(Method::POST, &path, None::<&()>).await
    }

    /// `GET /core/1.0/daemon/servers`: this member's additional listeners.
    pub async fn servers(&self) -> Result<BTreeMap<String, ServerAddress>, ClientError> {
        self.query(Method::GET, paths::DAEMON_SERVERS, None::<&()>).await
    }

    /// `PUT /core/1.0/daemon/servers`: moves (or stops, with an empty address) this member's
    /// additional listeners at once.
    pub async fn set_servers(&self, servers: &BTreeMap<String, ServerAddress>) -> Result<(), ClientError> {
        self.empty(Method::PUT, paths::DAEMON_SERVERS, Some(servers)).await
    }

    /// `POST /core/internal/heartbeat`: a leader's heartbeat.
    pub async fn heartbeat(&self, request: &HeartbeatRequest) -> Result<HeartbeatResponse, ClientError> {
        self.query(Method::POST, paths::INTERNAL_HEARTBEAT, Some(request)).await
    }

    /// `POST /core/1.0/cluster/leader`: hand leadership to member `name` (empty: any voter);
    /// returns the new leader's name.
    pub async fn transfer_leader(&self, name: &str) -> Result<String, ClientError> {
        let request = TransferLeaderRequest { name: name.to_owned() };
        self.query(Method::POST, paths::LEADER, Some(&request)).await
    }

    /// `GET /core/1.0/metrics`: this member's metrics, as Prometheus text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let (status, body) = self.raw(Method::GET, paths::METRICS, None).await?;
        if !status.is_success() {
            let message = match serde_json::from_slice::<Envelope<serde_json::Value>>(&body) {
                Ok(envelope) => envelope.error,
                Err(_) => String::from_utf8_lossy(&body).into_owned(),
            };
            return Err(ClientError::Api { status, message });
        }
        String::from_utf8(body.to_vec()).map_err(|e| self.decode(format!("metrics that are not UTF-8: {e}")))
    }

    /// `POST /core/internal/cluster/{name}/role`: asks the leader for the role the cluster needs
    /// (`voter`, `stand-by` or `spare`) for member `name`'s node `id`, and to give it.
    pub async fn take_role(&self, name: &str, id: u64) -> Result<String, ClientError> {
        let path = paths::fill(paths::INTERNAL_MEMBER_ROLE, &[name]);
        self.query(Method::POST, &path, Some(&RoleRequest { id })).await
    }

    /// `GET /core/internal/recovery`: a member's raft log position and leader, for recovery.
    pub async fn recovery_status(&self) -> Result<RecoveryStatus, ClientError> {
        self.query(Method::GET, paths::INTERNAL_RECOVERY, None::<&()>).await
    }

    /// `POST /core/internal/recovery`: hand a survivor the recovery plan to apply.
    pub async fn send_recovery(&self, plan: &RecoveryPlan) -> Result<(), ClientError> {
        self.empty(Method::POST, paths::INTERNAL_RECOVERY, Some(plan)).await
    }

    /// `POST /core/internal/hooks/{hook}`: run a hook on this member.
    pub async fn run_hook(&self, hook: &str, body: &(impl Serialize + ?Sized)) -> Result<(), ClientError> {
        self.empty(Method::POST, &paths::fill(paths::INTERNAL_HOOK, &[hook]), Some(body)).await
    }

    /// `POST /core/internal/hooks/{hook}/members`: runs a remotely callable hook on this
    /// member and on every other member but the caller. `500` names the members whose hook
    /// failed; members that could not run it are left out, as [`Client::run_hook`]'s callers do.
    pub async fn run_hook_on_members(&self, hook: &str, body: &(impl Serialize + ?Sized)) -> Result<(), ClientError> {
        self.empty(Method::POST, &paths::fill(paths::INTERNAL_HOOK_MEMBERS, &[hook]), Some(body)).await
    }
}

/// What a streamed query delivers, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlStreamEvent {
    /// The column names (first).
    Columns(Vec<String>),
    /// One row, values as in [`crate::api::SqlResult::rows`].
    Row(Vec<serde_json::Value>),
}

/// How [`Client::sql_stream`] was answered.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlStreamed {
    /// The rows streamed (this many); they went to the callback.
    Rows(u64),
    /// The text was not one read-only statement: its results, whole.
    Batch(SqlBatch),
}

/// The longest line of a streamed result (one row; dqlite's own messages are smaller).
const MAX_STREAM_LINE: usize = 256 * 1024 * 1024;

/// Splits streamed bytes into lines, holding at most one incomplete line.
#[derive(Debug, Default)]
struct LineBuffer {
    pending: Vec<u8>,
    start: usize,
}

impl LineBuffer {
    fn push(&mut self, data: &[u8]) -> Result<(), String> {
        if self.start > 0 {
            self.pending.drain(..self.start);
            self.start = 0;
        }
        if self.pending.len() + data.len() > MAX_STREAM_LINE && !data.contains(&b'\n') {
            return Err(format!("a streamed line is longer than {MAX_STREAM_LINE} bytes"));
        }
        self.pending.extend_from_slice(data);
        Ok(())
    }

    fn next_line(&mut self) -> Option<Vec<u8>> {
        let end = self.pending[self.start..].iter().position(|b| *b == b'\n')? + self.start;
        let line = self.pending[self.start..end].to_vec();
        self.start = end + 1;
        Some(line)
    }
}

/// HTTP methods, for [`Client::query`].
/// An answer whose body arrives piece by piece ([`Client::open`]); the connection lives as
/// long as this does.
pub struct Streamed {
    status: StatusCode,
    headers: hyper::HeaderMap,
    body: hyper::body::Incoming,
    timeout: Duration,
    target: String,
    _driver: transport::Driver,
}

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streamed").field("status", &self.status).field("target", &self.target).finish_non_exhaustive()
    }
}

impl Streamed {
    /// The answer's (success) status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The answer's headers.
    pub fn headers(&self) -> &hyper::HeaderMap {
        &self.headers
    }

    /// A header of the answer, if it has it and it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next piece of the body as the member sent it; `None` once the body ended.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            let frame = tokio::time::timeout(self.timeout, self.body.frame())
                .await
                .map_err(|_| ClientError::Timeout { target: self.target.clone(), after: self.timeout })?;
            match frame {
                None => return Ok(None),
                Some(Err(source)) => return Err(ClientError::Http { target: self.target.clone(), source }),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

pub use hyper::Method;

/// The API's role and status strings, re-exported for callers formatting output.
pub use api::{role, status};
