//! One HTTP/1.1 exchange over a fresh unix or TLS connection.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use tokio::net::{TcpStream, UnixStream};

use super::pool::Pool;
use super::{ClientError, NOTIFICATION_USER_AGENT, Target};

/// What to send besides method, path and body.
#[derive(Debug, Clone, Copy)]
pub(super) struct Options {
    pub(super) notification: bool,
    pub(super) content_type: &'static str,
    /// Largest response body accepted.
    pub(super) limit: usize,
    /// Deadline for the TCP connection and TLS handshake alone (a `Connect` error after it:
    /// nothing was sent).
    pub(super) connect_timeout: Option<std::time::Duration>,
}

/// A response: status, headers and the whole body.
pub(super) type Answer = (StatusCode, HeaderMap, Bytes);

pub(super) async fn send(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    options: Options,
) -> Result<Answer, ClientError> {
    let Open { response, driver: _driver } = open(target, method, path, body, options).await?;
    read_body(response, options.limit, &target.to_string()).await
}

/// A response whose body is still to be read; the connection lives as long as this does.
pub(super) struct Open {
    pub(super) response: hyper::Response<hyper::body::Incoming>,
    pub(super) driver: Driver,
}

/// The task driving a client connection, stopped when dropped.
pub(crate) struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends a request and returns once the response's head arrived.
pub(super) async fn open(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    options: Options,
) -> Result<Open, ClientError> {
    open_with(target, method, path, body, options, None).await
}

/// [`open`], asking to switch to `protocol` (`Connection: Upgrade`) when one is given.
pub(super) async fn open_with(
    target: &Target,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    options: Options,
    upgrade: Option<&str>,
) -> Result<Open, ClientError> {
    let name = target.to_string();
    let connect_err = |source| ClientError::Connect { target: name.clone(), source };
    let exchange = Exchange { method, path, body, options, name: &name, upgrade };
    match target {
        Target::Unix(path_buf) => {
            let stream = UnixStream::connect(path_buf).await.map_err(connect_err)?;
            exchange.run(stream, "localhost").await
        }
        Target::Https { address, tls } => {
            let stream = connect_tls(address, tls, options, &name).await?;
            exchange.run(stream, address).await
        }
    }
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// A TCP connection with TLS on it, within `options.connect_timeout` if there is one.
async fn connect_tls(
    address: &str,
    tls: &Arc<rustls::ClientConfig>,
    options: Options,
    name: &str,
) -> Result<TlsStream, ClientError> {
    let connect_err = |source| ClientError::Connect { target: name.to_owned(), source };
    let connecting = async {
        let tcp = TcpStream::connect(address).await.map_err(connect_err)?;
        tcp.set_nodelay(true).map_err(connect_err)?;
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        connector
            .connect(crate::tls::server_name(address), tcp)
            .await
            .map_err(|source| ClientError::Tls { target: name.to_owned(), source })
    };
    match options.connect_timeout {
        None => connecting.await,
        Some(limit) => tokio::time::timeout(limit, connecting).await.unwrap_or_else(|_| {
            let reason = format!("no connection within {} ms", limit.as_millis());
            Err(connect_err(std::io::Error::new(std::io::ErrorKind::TimedOut, reason)))
        }),
    }
}

/// The HTTP/1.1 handshake on `stream`, and the task that drives the connection.
async fn handshake<S>(stream: S, name: &str) -> Result<(SendRequest<Full<Bytes>>, Driver), ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ClientError::Http { target: name.to_owned(), source })?;
    let driver = tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!(error = %err, "client connection closed");
        }
    });
    Ok((sender, Driver(driver)))
}

/// The request, with the headers every request carries.
fn request(
    host: &str,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    options: Options,
    name: &str,
) -> Result<Request<Full<Bytes>>, ClientError> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .header(USER_AGENT, if options.notification { NOTIFICATION_USER_AGENT } else { "microcluster" });
    if body.is_some() {
        request = request.header(CONTENT_TYPE, options.content_type);
    }
    request
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| ClientError::Decode { target: name.to_owned(), reason: format!("building the request: {e}") })
}

/// Reads a whole response body of at most `limit` bytes.
async fn read_body(
    response: hyper::Response<hyper::body::Incoming>,
    limit: usize,
    name: &str,
) -> Result<Answer, ClientError> {
    let (parts, body) = response.into_parts();
    let bytes = Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| ClientError::Decode { target: name.to_owned(), reason: format!("reading the body: {e}") })?
        .to_bytes();
    Ok((parts.status, parts.headers, bytes))
}

/// Sends a request over a kept-alive connection to `address` from `pool`, or a new one that is
/// kept for the next request. A pooled connection that turns out closed before the request was
/// written is dropped and the request goes on the next one (it was not sent).
pub(super) async fn send_pooled(
    pool: &Pool,
    address: &str,
    tls: &Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    options: Options,
) -> Result<Answer, ClientError> {
    let name = address.to_owned();
    let http_err = |source| ClientError::Http { target: name.clone(), source };
    let mut unsent = request(address, method, path, body, options, &name)?;
    while let Some((mut sender, driver, generation)) = pool.take(address) {
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(unsent).await {
            Ok(response) => {
                let answer = read_body(response, options.limit, &name).await?;
                pool.put(address, sender, driver, generation);
                return Ok(answer);
            }
            Err(mut err) => match err.take_message() {
                Some(request) => unsent = request,
                None => return Err(http_err(err.into_error())),
            },
        }
    }
    let generation = pool.generation();
    let stream = connect_tls(address, tls, options, &name).await?;
    let (mut sender, driver) = handshake(stream, &name).await?;
    let response = sender.send_request(unsent).await.map_err(http_err)?;
    let answer = read_body(response, options.limit, &name).await?;
    pool.put(address, sender, driver, generation);
    Ok(answer)
}

/// One request on a fresh connection.
struct Exchange<'a> {
    method: Method,
    path: &'a str,
    body: Option<Bytes>,
    options: Options,
    name: &'a str,
    /// The protocol to switch to, if any.
    upgrade: Option<&'a str>,
}

impl Exchange<'_> {
    async fn run<S>(self, stream: S, host: &str) -> Result<Open, ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let name = self.name;
        let (mut sender, driver) = handshake(stream, name).await?;
        let mut request = request(host, self.method, self.path, self.body, self.options, name)?;
        if let Some(protocol) = self.upgrade {
            let protocol = hyper::header::HeaderValue::from_str(protocol).map_err(|e| ClientError::Decode {
                target: name.to_owned(),
                reason: format!("invalid protocol name {protocol:?}: {e}"),
            })?;
            request.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("Upgrade"));
            request.headers_mut().insert(hyper::header::UPGRADE, protocol);
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| ClientError::Http { target: name.to_owned(), source })?;
        Ok(Open { response, driver })
    }
}
