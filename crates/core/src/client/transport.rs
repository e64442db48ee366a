//! One HTTP/1.1 exchange over a fresh unix or TLS connection.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

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
    let name = target.to_string();
    let Open { response, driver: _driver } = open(target, method, path, body, options).await?;
    let (parts, body) = response.into_parts();
    let bytes = Limited::new(body, options.limit)
        .collect()
        .await
        .map_err(|e| ClientError::Decode { target: name.clone(), reason: format!("reading the body: {e}") })?
        .to_bytes();
    Ok((parts.status, parts.headers, bytes))
}

/// A response whose body is still to be read; the connection lives as long as this does.
pub(super) struct Open {
    pub(super) response: hyper::Response<hyper::body::Incoming>,
    pub(super) driver: Driver,
}

/// The task driving a client connection, stopped when dropped.
pub(super) struct Driver(tokio::task::JoinHandle<()>);

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
    let name = target.to_string();
    let connect_err = |source| ClientError::Connect { target: name.clone(), source };
    match target {
        Target::Unix(path_buf) => {
            let stream = UnixStream::connect(path_buf).await.map_err(connect_err)?;
            exchange(stream, "localhost", method, path, body, options, &name).await
        }
        Target::Https { address, tls } => {
            let connecting = async {
                let tcp = TcpStream::connect(address.as_str()).await.map_err(connect_err)?;
                tcp.set_nodelay(true).map_err(connect_err)?;
                let connector = tokio_rustls::TlsConnector::from(tls.clone());
                connector
                    .connect(crate::tls::server_name(address), tcp)
                    .await
                    .map_err(|source| ClientError::Tls { target: name.clone(), source })
            };
            let stream = match options.connect_timeout {
                None => connecting.await?,
                Some(limit) => tokio::time::timeout(limit, connecting).await.map_err(|_| {
                    let reason = format!("no connection within {} ms", limit.as_millis());
                    connect_err(std::io::Error::new(std::io::ErrorKind::TimedOut, reason))
                })??,
            };
            exchange(stream, address, method, path, body, options, &name).await
        }
    }
}

async fn exchange<S>(
    stream: S,
    host: &str,
    method: Method,
    path: &str,
    body: Option<Bytes>,
    options: Options,
    name: &str,
) -> Result<Open, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http_err = |source| ClientError::Http { target: name.to_owned(), source };
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http_err)?;
    let driver = tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "client connection closed");
        }
    });
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
        .header(USER_AGENT, if options.notification { NOTIFICATION_USER_AGENT } else { "microcluster" });
    if body.is_some() {
        request = request.header(CONTENT_TYPE, options.content_type);
    }
    let request = request
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| ClientError::Decode { target: name.to_owned(), reason: format!("building the request: {e}") })?;
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(err) => {
            driver.abort();
            return Err(http_err(err));
        }
    };
    Ok(Open { response, driver: Driver(driver) })
}
