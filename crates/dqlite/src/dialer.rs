//! How a client reaches a node's address. The default understands TCP `host:port`, abstract
//! unix sockets `@name` and unix socket paths; a daemon plugs in its own (e.g. a TLS tunnel).

use std::future::Future;
use std::io;
use std::pin::Pin;

use tokio::net::{TcpStream, UnixStream};

use crate::connection::BoxStream;

/// The future a [`Dialer`] returns.
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send + 'static>>;

/// Opens a byte stream to a node's address.
pub trait Dialer: Send + Sync + 'static {
    /// Connects to `address`.
    fn dial(&self, address: &str) -> DialFuture;
}

impl<F> Dialer for F
where
    F: Fn(&str) -> DialFuture + Send + Sync + 'static,
{
    fn dial(&self, address: &str) -> DialFuture {
        self(address)
    }
}

/// Dials `@name` as an abstract unix socket, `/path` as a unix socket, anything else as TCP.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultDialer;

impl Dialer for DefaultDialer {
    fn dial(&self, address: &str) -> DialFuture {
        let address = address.to_owned();
        Box::pin(async move { dial_default(&address).await })
    }
}

async fn dial_default(address: &str) -> io::Result<BoxStream> {
    if let Some(name) = address.strip_prefix('@') {
        return Ok(Box::new(connect_abstract(name)?));
    }
    if address.starts_with('/') {
        return Ok(Box::new(UnixStream::connect(address).await?));
    }
    let stream = TcpStream::connect(address).await?;
    // Requests are small and strictly alternate with responses: Nagle would only add latency.
    stream.set_nodelay(true)?;
    Ok(Box::new(stream))
}

/// Connects to a Linux abstract unix socket (libdqlite's `@name` bind addresses).
pub fn connect_abstract(name: &str) -> io::Result<UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    // A local connect completes (or fails) at once, so the blocking call does not stall.
    let stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

/// Blocking connect for a node's [`crate::NodeBuilder::connect_func`]: reaches `@name`
/// abstract sockets (which libdqlite's own TCP-only dialer cannot) and IPv4/IPv6 `host:port`.
pub fn connect_blocking(address: &str, timeout: std::time::Duration) -> io::Result<std::os::fd::OwnedFd> {
    use std::net::ToSocketAddrs;
    if let Some(name) = address.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        return Ok(std::os::unix::net::UnixStream::connect_addr(&addr)?.into());
    }
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, format!("{address} resolves to nothing"));
    for addr in address.to_socket_addrs()? {
        match std::net::TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream.into());
            }
            Err(err) => last = err,
        }
    }
    Err(last)
}
