//! Connections that left HTTP: the byte stream both sides use after `101 Switching Protocols`.

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;

/// The byte stream of a connection that switched protocols (a client's
/// [`Client::upgrade`](super::Client::upgrade), a handler's `Upgrade::connection`).
#[derive(Debug)]
pub struct Upgraded(TokioIo<hyper::upgrade::Upgraded>);

impl Upgraded {
    pub(crate) fn new(io: hyper::upgrade::Upgraded) -> Upgraded {
        Upgraded(TokioIo::new(io))
    }
}

impl tokio::io::AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Upgraded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
