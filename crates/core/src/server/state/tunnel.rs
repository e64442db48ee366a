//! dqlite over the member's HTTPS address, so a member needs one port.
//!
//! The node binds only an abstract unix socket. Outbound, raft's connect function and our
//! client's dialer open TLS to the peer, send `POST /core/internal/database` with
//! `Upgrade: dqlite`, and after `101 Switching Protocols` the TLS stream carries raw dqlite
//! bytes. libdqlite needs a plain fd for raft, so its connect function hands it one end of a
//! socketpair and a task pipes the other end to the TLS stream. Inbound, the endpoint in
//! `endpoints::database` answers 101 and pipes the upgraded stream to the node's socket.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_rustls::client::TlsStream;

use crate::api::{DQLITE_UPGRADE, paths};
use crate::server::metrics::{DIAL_CLIENT, DIAL_RAFT, Metrics};
use crate::server::stop::ShutdownSignal;

/// Deadline to reach a peer and complete the upgrade.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest response header block accepted from a peer.
const MAX_HEADER: usize = 8 * 1024;

fn other(message: String) -> io::Error {
    io::Error::other(message)
}

/// Opens a dqlite stream to the member at `address` through its HTTPS listener.
pub(crate) async fn dial(address: &str, tls: Arc<rustls::ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    tokio::time::timeout(DIAL_TIMEOUT, dial_inner(address, tls))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("dqlite tunnel to {address} timed out")))?
}

async fn dial_inner(address: &str, tls: Arc<rustls::ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let mut stream = tokio_rustls::TlsConnector::from(tls).connect(crate::tls::server_name(address), tcp).await?;
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {address}\r\nUpgrade: {DQLITE_UPGRADE}\r\nConnection: Upgrade\r\n\
         X-Dqlite-Version: 1\r\nContent-Length: 0\r\n\r\n",
        paths::INTERNAL_DATABASE
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    // Read exactly the header block: the peer sends nothing after 101 until we speak dqlite.
    let mut header = Vec::with_capacity(256);
    while !header.ends_with(b"\r\n\r\n") {
        if header.len() >= MAX_HEADER {
            return Err(other(format!("{address} sent an oversized HTTP header")));
        }
        let byte = stream.read_u8().await?;
        header.push(byte);
    }
    let text = String::from_utf8_lossy(&header);
    let status_line = text.lines().next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.1 101") {
        return Err(other(format!("{address} refused the dqlite tunnel: {status_line}")));
    }
    let upgraded = text.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case("upgrade") && v.trim() == DQLITE_UPGRADE)
    });
    if !upgraded {
        return Err(other(format!("{address} switched to another protocol than dqlite")));
    }
    Ok(stream)
}

/// The dialer our dqlite client uses: this member's own node directly over its abstract
/// socket, every other member through the tunnel.
pub(crate) fn dialer(
    own_address: String,
    bind_name: String,
    tls: Arc<rustls::ClientConfig>,
    metrics: Arc<Metrics>,
) -> impl dqlite::Dialer {
    move |address: &str| -> dqlite::DialFuture {
        let (address, own, bind, tls) = (address.to_owned(), own_address.clone(), bind_name.clone(), tls.clone());
        let metrics = metrics.clone();
        Box::pin(async move {
            if address == own {
                let stream = dqlite::connect_abstract(bind.trim_start_matches('@'))?;
                return Ok(Box::new(stream) as dqlite::BoxStream);
            }
            let stream = dial(&address, tls).await.inspect_err(|_| metrics.dial_failed(DIAL_CLIENT))?;
            Ok(Box::new(stream) as dqlite::BoxStream)
        })
    }
}

/// The connect function libdqlite calls (on one of its own threads) to reach a raft peer:
/// returns one end of a socketpair once the tunnel is up, and pipes the other end through it.
pub(crate) fn connect_func(
    runtime: Handle,
    tls: Arc<rustls::ClientConfig>,
    stop: ShutdownSignal,
    metrics: Arc<Metrics>,
) -> impl Fn(&str) -> io::Result<OwnedFd> + Send + Sync + 'static {
    move |address: &str| {
        let started = std::time::Instant::now();
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        theirs.set_nonblocking(true)?;
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let (peer, tls, mut stop) = (address.to_owned(), tls.clone(), stop.clone());
        runtime.spawn(async move {
            let address = peer;
            let mut tunnel = match dial(&address, tls).await {
                Ok(stream) => stream,
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            let mut local = match tokio::net::UnixStream::from_std(theirs) {
                Ok(local) => local,
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut local, &mut tunnel) => {}
                _ = stop.fired() => {}
            }
        });
        match ready_rx.recv_timeout(DIAL_TIMEOUT + Duration::from_secs(1)) {
            Ok(Ok(())) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                tracing::debug!(peer = address, "raft reached a peer in {ms:.1} ms");
                Ok(ours.into())
            }
            Ok(Err(err)) => {
                metrics.dial_failed(DIAL_RAFT);
                tracing::debug!(peer = address, error = %err, "raft could not reach a peer");
                Err(err)
            }
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "dqlite tunnel setup timed out")),
        }
    }
}

/// Pipes an accepted, upgraded peer stream to this member's node until either side closes.
pub(crate) async fn serve_inbound<S>(mut upgraded: S, bind_name: &str, mut stop: ShutdownSignal) -> io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut node = dqlite::connect_abstract(bind_name.trim_start_matches('@'))?;
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut upgraded, &mut node) => result.map(drop),
        _ = stop.fired() => Ok(()),
    }
}
