//! The one HTTP client every side is measured with: a keep-alive HTTP/1.1 connection over a
//! unix socket (our control socket) or TCP (dqlite-demo, etcd's gateway, the `kv` example).

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::Error;

/// Where a side's API listens.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    /// A unix socket (our control socket).
    Unix(PathBuf),
    /// `ip:port` over TCP.
    Tcp(String),
}

impl Endpoint {
    /// Opens a new keep-alive connection.
    pub(crate) async fn connect(&self) -> Result<Http, Error> {
        match self {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Http::handshake(stream, "localhost").await
            }
            Endpoint::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                Http::handshake(stream, address).await
            }
        }
    }
}

/// One request: method, path and body.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) method: &'static str,
    pub(crate) path: String,
    pub(crate) body: Bytes,
}

impl Req {
    pub(crate) fn new(method: &'static str, path: impl Into<String>, body: impl Into<Bytes>) -> Req {
        Req { method, path: path.into(), body: body.into() }
    }
}

/// A keep-alive HTTP/1.1 connection.
pub(crate) struct Http {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl Http {
    async fn handshake<S>(stream: S, host: &str) -> Result<Http, Error>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Http { sender, host: host.to_owned() })
    }

    /// Sends a request and reads the whole answer: status and body.
    pub(crate) async fn send(&mut self, req: &Req) -> Result<(u16, Bytes), Error> {
        let request = hyper::Request::builder()
            .method(req.method)
            .uri(req.path.as_str())
            .header("host", &self.host)
            .body(Full::new(req.body.clone()))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(request).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }
}
