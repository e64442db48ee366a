//! What one client may hold of a member: connections per listener, with a bounded share for
//! clients not (yet) known to be members; how long a connection may take for its TLS handshake,
//! its request heads and its pauses between requests; and how accept errors are waited out.
//!
//! Every connection holds a descriptor, and a member that runs out of them can no longer
//! accept its peers' heartbeats and tunnels, open its database files or answer its operator
//! (measured before these limits: ~1000 idle TCP connections to one member at systemd's default
//! of 1024 files made it unreachable and filled its log with thousands of `EMFILE` lines).
//!
//! A fresh TCP connection cannot be told from a member's until its TLS handshake is over, so
//! every connection starts in the listener's *strangers'* share (a quarter of its cap). When
//! that share is full, an older one is closed to make room (see [`Rank`] for which): a
//! member's new connection sends its TLS hello at once (the accept loop peeks for it then) and
//! needs only its handshake's few milliseconds to move into the *members'* share, so idle
//! strangers do not keep it out. Connections whose certificate is not in the trust store stay
//! strangers. The members' share (and the control socket, where every client passed the
//! socket's permissions) closes an idle connection to make room, and refuses the new one only
//! when all are in the middle of a request.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::api::Envelope;
use crate::server::metrics::{self, Metrics};

/// Longest a client may take, from connecting, for its TLS handshake and the head of its first
/// request; and for any later head, from its first byte. Go's `http.Server` has no default
/// (microcluster sets `ReadHeaderTimeout`); nginx allows 60 s, many Go and Rust services 5-30 s.
/// A member or `microctl` sends a head in one write right after connecting, so 10 s is
/// generous.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a kept-alive connection may wait for its next request (nginx: 75 s). It must stay
/// well above how long the members' own pools keep a connection idle (20 s), so that a member
/// never sends a forwarded write on a connection this side is closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Most connections one TCP listener holds by default, if the open-file limit allows.
const MAX_TCP: usize = 8192;
/// Most connections the control socket holds by default, if the open-file limit allows.
const MAX_UNIX: usize = 1024;
/// The fewest connections a listener is given, however low the open-file limit.
const MIN_TCP: usize = 32;
/// See [`MIN_TCP`].
const MIN_UNIX: usize = 16;

/// How often, at most, a listener logs connections it had to close, or failed accepts.
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Bounds on the connections a member's listeners hold ([`crate::DaemonArgs::connections`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// See [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// Most connections one TCP listener (the member's address, an application's listener)
    /// holds; a quarter of them at most for clients that are not trusted members. `None`: a
    /// share of the process's open-file limit, at most 8192. Either way never more than that
    /// share allows.
    pub max_connections: Option<usize>,
    /// At shutdown (or when a listener moves), how long requests under way get to finish
    /// before their connections are closed; new requests are refused meanwhile. Zero closes
    /// them at once. See [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
}

/// One second: a write under way is committed or refused in well under that, and a shutdown
/// is not held up by a client that keeps a connection busy.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

impl ConnectionLimits {
    /// The limits for a process allowed `open_files` descriptors.
    pub(crate) fn resolve(&self, open_files: u64) -> Limits {
        // Kept for what is not a served connection: the node's raft segments and database
        // files, its tunnels to the other members, outgoing requests, the log.
        let reserve = (open_files / 4).clamp(256, 4096);
        let budget = usize::try_from(open_files.saturating_sub(reserve)).unwrap_or(usize::MAX);
        let mut tcp = (budget / 8 * 3).clamp(MIN_TCP, MAX_TCP);
        if let Some(max) = self.max_connections {
            tcp = tcp.min(max.max(MIN_TCP));
        }
        Limits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            drain_timeout: self.drain_timeout,
            tcp,
            strangers: (tcp / 4).max(8),
            unix: (budget / 8).clamp(MIN_UNIX, MAX_UNIX),
            open_files,
        }
    }
}

/// [`ConnectionLimits`] made numbers for this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    /// Connections per TCP listener.
    pub(crate) tcp: usize,
    /// Of which strangers: handshakes in progress, untrusted or no certificates, plain HTTP.
    pub(crate) strangers: usize,
    /// Connections on the control socket.
    pub(crate) unix: usize,
    /// The open-file limit they were derived from.
    pub(crate) open_files: u64,
}

/// The process's soft limit on open files (`/proc/self/limits`; the daemon raised it to the
/// hard limit at start, if it could). 1024, systemd's and most shells' default, if unknown.
pub(crate) fn open_file_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            match line.split_whitespace().nth(3)? {
                "unlimited" => Some(u64::MAX),
                soft => soft.parse().ok(),
            }
        })
        .unwrap_or(1024)
}

/// Why a listener closed a connection before its client did (the `reason` label of
/// `microcluster_http_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// Its share was full: it was the oldest (idle) one, and made room for a newer one.
    Evicted,
    /// Its share was full and every connection in it was in the middle of a request.
    Refused,
    /// No TLS handshake within the header timeout.
    Handshake,
    /// No complete request head within the header timeout.
    Header,
    /// Kept alive without a new request for the idle timeout.
    Idle,
}

impl Closed {
    pub(crate) const fn label(self) -> &'static str {
        match self {
            Closed::Evicted => metrics::CLOSED_EVICTED,
            Closed::Refused => metrics::CLOSED_REFUSED,
            Closed::Handshake => metrics::CLOSED_HANDSHAKE,
            Closed::Header => metrics::CLOSED_HEADER,
            Closed::Idle => metrics::CLOSED_IDLE,
        }
    }
}

/// `head_since` when no request head has started.
const NO_HEAD: u64 = u64::MAX;

/// Added to `busy` for good when a connection is upgraded.
const UPGRADED: u32 = 1 << 16;

/// What a listener knows of one connection: whether a request is in service, since when its
/// current head or idle period runs, and whether it was told to close.
#[derive(Debug)]
pub(crate) struct Conn {
    opened: Instant,
    /// Requests in service (hyper serves one at a time), plus [`UPGRADED`] once upgraded.
    busy: AtomicU32,
    /// Milliseconds after `opened` that the head being read started, or [`NO_HEAD`]. A new
    /// connection's first head counts from the connection's start.
    head_since: AtomicU64,
    /// Milliseconds after `opened` that the last request ended.
    idle_since: AtomicU64,
    /// Whether the client ever sent a byte (a TLS client sends its hello at once).
    heard: AtomicBool,
    /// Whether its TLS handshake is over (from the start without TLS).
    established: AtomicBool,
    evicted: Notify,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            opened: Instant::now(),
            busy: AtomicU32::new(0),
            head_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            heard: AtomicBool::new(false),
            established: AtomicBool::new(false),
            evicted: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(NO_HEAD - 1)
    }

    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    /// The client sent something (see [`Heard`]).
    pub(crate) fn heard(&self) {
        if !self.heard.load(Ordering::Relaxed) {
            self.heard.store(true, Ordering::Relaxed);
        }
    }

    /// Bytes came in: the start of a head if no request is in service or being read.
    fn bytes_arrived(&self) {
        self.heard();
        if self.busy.load(Ordering::Relaxed) == 0 && self.head_since.load(Ordering::Relaxed) == NO_HEAD {
            let now = self.now_ms();
            let _ = self.head_since.compare_exchange(NO_HEAD, now, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// A request's head is complete and its service starts; it ends when the guard (moved
    /// into the response body) is dropped.
    pub(crate) fn request(self: &Arc<Self>) -> RequestGuard {
        self.busy.fetch_add(1, Ordering::AcqRel);
        RequestGuard(self.clone())
    }

    /// Resolves when the listener closes it to make room.
    pub(crate) async fn evicted(&self) {
        self.evicted.notified().await;
    }

    /// When the connection must be closed unless something happens first, and why; `None`
    /// while a request is in service.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Closed)> {
        if !self.is_idle() {
            return None;
        }
        let head = self.head_since.load(Ordering::Acquire);
        if head != NO_HEAD {
            return Some((self.opened + Duration::from_millis(head) + limits.header_timeout, Closed::Header));
        }
        let idle = self.idle_since.load(Ordering::Acquire);
        Some((self.opened + Duration::from_millis(idle) + limits.idle_timeout, Closed::Idle))
    }

    /// Resolves when the connection has outstayed the header or idle timeout, or was evicted.
    pub(crate) async fn watchdog(&self, limits: &Limits) -> Closed {
        loop {
            // While a request is in service, look again after an idle timeout (handlers bound
            // their own time; the wake-up is all this costs).
            let wake = self.deadline(limits).map_or_else(|| Instant::now() + limits.idle_timeout, |(at, _)| at);
            tokio::select! {
                () = self.evicted() => return Closed::Evicted,
                () = tokio::time::sleep_until(wake) => {}
            }
            if let Some((at, reason)) = self.deadline(limits)
                && at <= Instant::now()
            {
                return reason;
            }
        }
    }
}

/// A request in service (see [`Conn::request`]).
#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<Conn>);

impl RequestGuard {
    /// The connection becomes a tunnel and is never idle again (the listener cannot close
    /// what it no longer serves).
    pub(crate) fn upgraded(&self) {
        self.0.busy.fetch_add(UPGRADED, Ordering::AcqRel);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.idle_since.store(conn.now_ms(), Ordering::Release);
        conn.head_since.store(NO_HEAD, Ordering::Release);
        conn.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Which share of a listener a connection counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Share {
    /// Not known to be a member: TLS handshakes, untrusted certificates, plain HTTP.
    Strangers,
    /// Trusted members, and control-socket clients.
    Members,
}

/// Which connections a full share closes first, each kind oldest first. A member's new
/// connection sends its TLS hello at once, is done with its handshake in milliseconds and then
/// leaves the share: strangers that finished their handshake and wait for nothing go first,
/// then connections that never sent a byte, then handshakes under way. A member's hello is
/// usually in the kernel when its connection is accepted, and the accept loop peeks for it
/// when the share is full (`serve::spoke_already`); otherwise it counts as silent until its
/// task reads it, as the newest. So strangers that handshake and wait never push a member
/// out, bare TCP connections hardly ever, and handshakes under way only if more arrive than
/// the share holds within one handshake's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// Idle before or between requests, its TLS handshake (if any) done.
    Waiting,
    /// Idle, and never sent a byte (or none was read yet).
    Silent,
    /// Idle in the middle of its TLS handshake.
    Handshaking,
    /// In a request (strangers only).
    Busy,
}

impl Conn {
    /// Its rank as a candidate to close; `None` if it cannot be closed to make room.
    fn rank(&self, evict_busy: bool) -> Option<Rank> {
        let busy = self.busy.load(Ordering::Acquire);
        if busy >= UPGRADED {
            // A tunnel is served by its own task: closing it is not the listener's to do.
            None
        } else if busy > 0 {
            evict_busy.then_some(Rank::Busy)
        } else if !self.heard.load(Ordering::Relaxed) {
            Some(Rank::Silent)
        } else if self.established.load(Ordering::Relaxed) {
            Some(Rank::Waiting)
        } else {
            Some(Rank::Handshaking)
        }
    }

    /// Its TLS handshake is over.
    pub(crate) fn established(&self) {
        self.established.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Pool {
    max: usize,
    /// By age (ids only grow), so the first idle one is the oldest idle one.
    conns: BTreeMap<u64, Arc<Conn>>,
    /// Whether a full pool with no idle connection closes the oldest one anyway: for
    /// strangers, so that they can never keep a member's handshake out.
    evict_busy: bool,
}

impl Pool {
    fn new(max: usize, evict_busy: bool) -> Pool {
        Pool { max, conns: BTreeMap::new(), evict_busy }
    }

    /// Room for one more: `Ok(Some(conn))` after taking out a connection to close.
    fn make_room(&mut self) -> Result<Option<Arc<Conn>>, ()> {
        if self.conns.len() < self.max {
            return Ok(None);
        }
        // The oldest of the first rank there is (ids grow: the first seen of a rank is the
        // oldest).
        let mut victim: Option<(Rank, u64)> = None;
        for (id, conn) in &self.conns {
            let Some(rank) = conn.rank(self.evict_busy) else { continue };
            if victim.is_none_or(|(best, _)| rank < best) {
                victim = Some((rank, *id));
                if rank == Rank::Waiting {
                    break;
                }
            }
        }
        match victim {
            Some((_, id)) => Ok(self.conns.remove(&id)),
            None => Err(()),
        }
    }
}

#[derive(Debug)]
struct Pools {
    next_id: u64,
    strangers: Pool,
    members: Pool,
    /// Connections closed to make room, or refused, since the last log line.
    unlogged: u64,
    logged: Option<Instant>,
}

impl Pools {
    fn pool(&mut self, share: Share) -> &mut Pool {
        match share {
            Share::Strangers => &mut self.strangers,
            Share::Members => &mut self.members,
        }
    }
}

/// One listener's connections and their limits.
#[derive(Debug)]
pub(crate) struct Gate {
    /// The listener, for logs: "HTTPS", "HTTP" or "the control socket".
    what: &'static str,
    /// Whether its connections start with a TLS handshake.
    tls: bool,
    /// Set when a share was full at the last admission (see [`Gate::pace`]).
    pressed: AtomicBool,
    pub(crate) limits: Limits,
    pools: Mutex<Pools>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Why a connection was not admitted.
#[derive(Debug)]
pub(crate) struct Full;

impl Gate {
    /// A TLS listener: strangers first, members once their certificate is trusted.
    pub(crate) fn tls(limits: Limits, metrics: Arc<Metrics>) -> Arc<Gate> {
        let members = limits.tcp - limits.strangers;
        Gate::new("HTTPS", true, limits, Pool::new(limits.strangers, true), Pool::new(members, false), metrics)
    }

    /// A plain HTTP listener: everyone is a stranger.
    pub(crate) fn plain(limits: Limits, metrics: Arc<Metrics>) -> Arc<Gate> {
        Gate::new("HTTP", false, limits, Pool::new(limits.tcp, true), Pool::new(0, false), metrics)
    }

    /// The control socket: everyone passed the socket's permissions.
    pub(crate) fn unix(limits: Limits, metrics: Arc<Metrics>) -> Arc<Gate> {
        Gate::new("the control socket", false, limits, Pool::new(0, true), Pool::new(limits.unix, false), metrics)
    }

    fn new(
        what: &'static str,
        tls: bool,
        limits: Limits,
        strangers: Pool,
        members: Pool,
        metrics: Arc<Metrics>,
    ) -> Arc<Gate> {
        let pools = Pools { next_id: 0, strangers, members, unlogged: 0, logged: None };
        Arc::new(Gate { what, tls, pressed: AtomicBool::new(false), limits, pools: Mutex::new(pools), metrics })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pools> {
        self.pools.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes in a just-accepted connection, closing an older one if its share is full.
    pub(crate) fn admit(self: &Arc<Self>, share: Share) -> Result<Permit, Full> {
        let conn = Arc::new(Conn::new());
        if !self.tls {
            conn.established();
        }
        let mut pools = self.lock();
        let id = pools.next_id;
        pools.next_id += 1;
        self.make_room(&mut pools, share)?;
        pools.pool(share).conns.insert(id, conn.clone());
        Ok(Permit { gate: self.clone(), conn, id })
    }

    /// Lets the connections already taken in run before the next accept, if a share was full.
    /// A flood's accepts would otherwise come in a burst, each closing the oldest of its kind,
    /// before the tasks of the connections accepted just before had read a byte: a member's
    /// TLS hello or `microctl`'s request, which are what keep their connections from counting
    /// as silent ones.
    pub(crate) async fn pace(&self) {
        if self.pressed.swap(false, Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
    }

    /// Whether a share is full (a new connection will close an older one).
    pub(crate) fn is_full(&self, share: Share) -> bool {
        let mut pools = self.lock();
        let pool = pools.pool(share);
        pool.conns.len() >= pool.max
    }

    /// Moves a connection whose client turned out to be a trusted member into the members'
    /// share; `Err` if it is full of busy members (the connection is then to be closed).
    pub(crate) fn promote(&self, permit: &Permit) -> Result<(), Full> {
        let mut pools = self.lock();
        if pools.strangers.conns.remove(&permit.id).is_none() {
            // Evicted while its handshake finished: it is closing.
            return Err(Full);
        }
        self.make_room(&mut pools, Share::Members)?;
        pools.members.conns.insert(permit.id, permit.conn.clone());
        Ok(())
    }

    fn make_room(&self, pools: &mut Pools, share: Share) -> Result<(), Full> {
        let pool = pools.pool(share);
        let max = pool.max;
        let outcome = pool.make_room();
        let closed = match &outcome {
            Ok(None) => return Ok(()),
            Ok(Some(victim)) => {
                victim.evicted.notify_one();
                Closed::Evicted
            }
            Err(()) => Closed::Refused,
        };
        self.metrics.connection_closed(closed.label());
        self.pressed.store(true, Ordering::Relaxed);
        pools.unlogged += 1;
        let now = Instant::now();
        if pools.logged.is_none_or(|at| now.duration_since(at) >= LOG_PERIOD) {
            let which = match share {
                Share::Strangers => "connections from clients that are not trusted members",
                Share::Members => "connections",
            };
            tracing::warn!(
                listener = self.what,
                closed = pools.unlogged,
                limit = max,
                "{} holds its most {which} ({max}): closing the oldest idle ones (or refusing new ones \
                 while all are busy); {} so far since the last report",
                self.what,
                pools.unlogged,
            );
            pools.logged = Some(now);
            pools.unlogged = 0;
        }
        outcome.map(drop).map_err(|()| Full)
    }
}

/// A connection's place in its listener, given back when dropped (after an upgrade, with the
/// upgraded stream: it holds the descriptor until then).
#[derive(Debug)]
pub(crate) struct Permit {
    gate: Arc<Gate>,
    conn: Arc<Conn>,
    id: u64,
}

impl Permit {
    pub(crate) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }

    pub(crate) fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut pools = self.gate.lock();
        if pools.strangers.conns.remove(&self.id).is_none() {
            pools.members.conns.remove(&self.id);
        }
    }
}

/// A served connection's stream: notes when request bytes arrive (for the header timeout),
/// holds the connection's place in its listener, and answers requests hyper's parser refuses
/// with the JSON envelope.
///
/// hyper answers such a request itself (400, 414 or 431, empty, `connection: close`) and has
/// no hook to change that answer. Its answer is the only one it writes while no request is in
/// service that has no `content-type` and is exactly a head with `content-length: 0` (every
/// answer of ours has a content type). Such a write is swallowed and the envelope with the
/// same status goes out instead; hyper then flushes (which sends it) and closes.
#[derive(Debug)]
pub(crate) struct Wire<S> {
    io: S,
    permit: Permit,
    /// The envelope answer taking the place of hyper's, and how much of it was written.
    answer: Option<(Bytes, usize)>,
}

impl<S> Wire<S> {
    pub(crate) fn new(io: S, permit: Permit) -> Wire<S> {
        Wire { io, permit, answer: None }
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    /// Writes what is left of a replacement answer.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.answer {
            let rest = bytes.get(*written..).unwrap_or_default();
            if rest.is_empty() {
                self.answer = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes over `head` if it is hyper's own answer to a request it could not parse.
    fn replaces(&mut self, head: &[u8], cx: &mut Context<'_>) -> bool {
        if !self.permit.conn.is_idle() {
            return false;
        }
        let Some(status) = parser_answer(head) else { return false };
        self.permit.gate.metrics.request(
            metrics::UNMATCHED,
            &hyper::Method::from_bytes(b"UNPARSED").unwrap_or_default(),
            status,
            Duration::ZERO,
        );
        self.answer = Some((envelope_answer(status), 0));
        // Whatever this first attempt does, flushing finishes it (and reports its errors).
        let _ = self.poll_answer(cx);
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Wire<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.permit.conn.bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Wire<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        if this.replaces(buf, cx) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        let mut slices = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (slices.next(), slices.next())
            && this.replaces(only, cx)
        {
            return Poll::Ready(Ok(only.len()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The status of hyper's automatic answer to an unparsable request, if `bytes` is one: a
/// bare head, 400/414/431, `content-length: 0`, no content type.
fn parser_answer(bytes: &[u8]) -> Option<StatusCode> {
    let rest = bytes.strip_prefix(b"HTTP/1.1 ")?;
    let status = StatusCode::from_bytes(rest.get(..3)?).ok()?;
    if !matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::URI_TOO_LONG | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    ) {
        return None;
    }
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != bytes.len() {
        return None;
    }
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    let mut lines = head.split("\r\n").skip(1);
    let empty = lines.clone().any(|l| l.replace(' ', "") == "content-length:0");
    let typed = lines.any(|l| l.starts_with("content-type:"));
    (empty && !typed).then_some(status)
}

/// The envelope answer to an unparsable request with this status, closing the connection.
fn envelope_answer(status: StatusCode) -> Bytes {
    let message = match status {
        StatusCode::URI_TOO_LONG => "request target too long: at most 65534 bytes",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request head too large: too many or too long header fields",
        _ => {
            "malformed HTTP request: invalid method, request target, HTTP version (1.0 or 1.1 are served) \
             or header field"
        }
    };
    let body = serde_json::to_vec(&Envelope::error(status.as_u16(), message)).unwrap_or_default();
    let mut answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer.into()
}

/// Failed accepts of one listener: waits that grow while they keep failing (5 ms doubling to
/// 1 s, like Go's `http.Server`), and a log line at most every [`LOG_PERIOD`] that counts them.
/// Out of descriptors, `accept` fails at once for as long as a connection waits in the
/// backlog: retrying at once spins a core and logs a line each time.
#[derive(Debug)]
pub(crate) struct AcceptErrors {
    what: &'static str,
    backoff: dqlite::Backoff,
    unlogged: u64,
    logged: Option<Instant>,
}

impl AcceptErrors {
    pub(crate) fn new(what: &'static str) -> AcceptErrors {
        AcceptErrors {
            what,
            backoff: dqlite::Backoff::new(Duration::from_millis(5), Duration::from_secs(1)),
            unlogged: 0,
            logged: None,
        }
    }

    /// An accept succeeded: the next failure waits from the start again.
    pub(crate) fn succeeded(&mut self) {
        self.backoff.reset();
    }

    /// An accept failed: how long to wait before the next one (zero for a connection that
    /// its client gave up before it was accepted).
    pub(crate) fn failed(&mut self, err: &io::Error, metrics: &Metrics) -> Duration {
        if matches!(err.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
            return Duration::ZERO;
        }
        metrics.accept_errors.inc();
        let delay = self.backoff.next_pause();
        self.unlogged += 1;
        let now = Instant::now();
        if self.logged.is_none_or(|at| now.duration_since(at) >= LOG_PERIOD) {
            tracing::warn!(
                listener = self.what,
                error = %err,
                failures = self.unlogged,
                "accepting connections on {} fails ({} times since the last report); retrying in up to 1 s",
                self.what,
                self.unlogged,
            );
            self.logged = Some(now);
            self.unlogged = 0;
        }
        delay
    }
}

/// A TLS connection's TCP stream, below TLS: notes that the client sent something, so that
/// a handshake under way is told from a connection that never said a word.
#[derive(Debug)]
pub(crate) struct Heard<S> {
    io: S,
    conn: Arc<Conn>,
}

impl<S> Heard<S> {
    pub(crate) fn new(io: S, conn: Arc<Conn>) -> Heard<S> {
        Heard { io, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Heard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.heard();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Heard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request body that fails when the client pauses longer than `gap` between two parts, so a
/// client that declared a body and sends it a byte a minute does not hold its request forever.
/// Most bodies arrive with their head: the timer starts only once the client keeps us waiting.
#[derive(Debug)]
pub(crate) struct GapLimited<B> {
    inner: B,
    gap: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> GapLimited<B> {
    pub(crate) fn new(inner: B, gap: Duration) -> GapLimited<B> {
        GapLimited { inner, gap, timer: None }
    }
}

/// A client paused too long in the middle of its request body.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no part of the request body for {0:?}")]
pub(crate) struct BodyTimeout(pub(crate) Duration);

impl<B> hyper::body::Body for GapLimited<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let gap = this.gap;
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(Box::new(BodyTimeout(gap)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn limits(open_files: u64) -> Limits {
        ConnectionLimits::default().resolve(open_files)
    }

    #[test]
    fn caps_follow_the_open_file_limit_and_stay_within_it() {
        let at_1024 = limits(1024);
        assert_eq!((at_1024.tcp, at_1024.strangers, at_1024.unix), (288, 72, 96));
        let at_65536 = limits(65536);
        assert_eq!((at_65536.tcp, at_65536.strangers, at_65536.unix), (8192, 2048, 1024));
        for open_files in [64, 256, 512, 1024, 4096, 20_000, 65_536, 1 << 20, u64::MAX] {
            let l = limits(open_files);
            assert!(l.strangers < l.tcp && l.strangers >= 8, "{open_files}: {l:?}");
            if open_files >= 1024 {
                // The core listener, one application listener and the socket fit beside the
                // reserve.
                assert!((2 * l.tcp + l.unix) as u64 + 256 <= open_files, "{open_files}: {l:?}");
            }
        }
        let lowered = ConnectionLimits { max_connections: Some(100), ..ConnectionLimits::default() }.resolve(65536);
        assert_eq!((lowered.tcp, lowered.strangers), (100, 25));
        // A configured cap never goes past what the descriptors allow.
        let raised = ConnectionLimits { max_connections: Some(100_000), ..ConnectionLimits::default() }.resolve(1024);
        assert_eq!(raised.tcp, 288);
    }

    #[test]
    fn the_open_file_limit_is_read() {
        let limit = open_file_limit();
        assert!(limit >= 64, "{limit}");
    }

    fn small(strangers: usize, tcp: usize) -> Limits {
        Limits { strangers, tcp, unix: 3, ..limits(1024) }
    }

    fn evicted(conn: &Conn) -> bool {
        let waiting = conn.evicted.notified();
        tokio::pin!(waiting);
        // A stored notification completes the future at its first poll.
        let waker = std::task::Waker::noop();
        waiting.as_mut().poll(&mut Context::from_waker(waker)).is_ready()
    }

    #[tokio::test]
    async fn full_strangers_close_their_oldest_so_a_member_gets_in() {
        let gate = Gate::tls(small(3, 6), Arc::default());
        let strangers: Vec<_> = (0..3).map(|_| gate.admit(Share::Strangers).unwrap()).collect();
        // The oldest one is in a request: idle ones go first.
        let _busy = strangers[0].conn().request();
        let member = gate.admit(Share::Strangers).unwrap();
        assert!(!evicted(strangers[0].conn()) && evicted(strangers[1].conn()) && !evicted(strangers[2].conn()));
        gate.promote(&member).unwrap();
        // With every stranger busy, the oldest goes anyway.
        let _busy2 = strangers[2].conn().request();
        let another = gate.admit(Share::Strangers).unwrap();
        let _busy3 = another.conn().request();
        let _late = gate.admit(Share::Strangers).unwrap();
        assert!(evicted(strangers[0].conn()));
        assert_eq!(gate.metrics.connections_closed.with(&["evicted"]).get(), 2);
    }

    #[tokio::test]
    async fn waiting_strangers_go_first_then_silent_ones_then_handshakes() {
        let gate = Gate::tls(small(3, 6), Arc::default());
        let member = gate.admit(Share::Strangers).unwrap();
        member.conn().heard();
        let (silent, waiting) = (gate.admit(Share::Strangers).unwrap(), gate.admit(Share::Strangers).unwrap());
        waiting.conn().heard();
        waiting.conn().established();
        // The member is the oldest, in its handshake: the stranger waiting after its handshake
        // goes first, then the one that said nothing.
        let new = gate.admit(Share::Strangers).unwrap();
        assert!(evicted(waiting.conn()) && !evicted(member.conn()) && !evicted(silent.conn()));
        new.conn().heard();
        let newer = gate.admit(Share::Strangers).unwrap();
        assert!(evicted(silent.conn()) && !evicted(member.conn()) && !evicted(new.conn()));
        // Only handshakes under way left: the oldest goes.
        newer.conn().heard();
        let _last = gate.admit(Share::Strangers).unwrap();
        assert!(evicted(member.conn()) && !evicted(new.conn()));
    }

    #[tokio::test]
    async fn a_full_members_share_closes_idle_ones_and_refuses_when_all_are_busy() {
        let gate = Gate::unix(small(3, 6), Arc::default());
        let a = gate.admit(Share::Members).unwrap();
        let b = gate.admit(Share::Members).unwrap();
        let c = gate.admit(Share::Members).unwrap();
        let (_ga, _gc) = (a.conn().request(), c.conn().request());
        let d = gate.admit(Share::Members).unwrap();
        assert!(evicted(b.conn()) && !evicted(a.conn()));
        drop(b);
        let _gd = d.conn().request();
        assert!(gate.admit(Share::Members).is_err());
        assert_eq!(gate.metrics.connections_closed.with(&["refused"]).get(), 1);
        // A tunnel is never chosen, even among strangers.
        let gate = Gate::plain(small(1, 1), Arc::default());
        let tunnel = gate.admit(Share::Strangers).unwrap();
        let guard = tunnel.conn().request();
        guard.upgraded();
        drop(guard);
        assert!(gate.admit(Share::Strangers).is_err());
        // Dropped permits give their place back.
        drop(tunnel);
        assert!(gate.admit(Share::Strangers).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_applies_the_header_then_the_idle_timeout() {
        let limits =
            Limits { header_timeout: Duration::from_secs(10), idle_timeout: Duration::from_secs(60), ..limits(1024) };
        let gate = Gate::unix(limits, Arc::default());
        let permit = gate.admit(Share::Members).unwrap();
        let conn = permit.conn().clone();
        // A new connection has the header timeout for its first head, bytes or not.
        tokio::time::advance(Duration::from_secs(5)).await;
        conn.bytes_arrived();
        let started = Instant::now();
        assert_eq!(conn.watchdog(&limits).await, Closed::Header);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // After a request: the idle timeout, then the header timeout from the next head's
        // first byte.
        drop(conn.request());
        let started = Instant::now();
        let watchdog = conn.watchdog(&limits);
        tokio::pin!(watchdog);
        assert!(tokio::time::timeout(Duration::from_secs(59), &mut watchdog).await.is_err());
        conn.bytes_arrived();
        assert_eq!(watchdog.await, Closed::Header);
        assert_eq!(started.elapsed(), Duration::from_secs(69));
        // A request in service is never cut, however long it takes.
        let guard = conn.request();
        assert!(tokio::time::timeout(Duration::from_secs(600), conn.watchdog(&limits)).await.is_err());
        drop(guard);
        assert_eq!(conn.watchdog(&limits).await, Closed::Idle);
        // Eviction wakes it at once.
        let other = gate.admit(Share::Members).unwrap();
        other.conn().evicted.notify_one();
        assert_eq!(other.conn().watchdog(&limits).await, Closed::Evicted);
    }

    #[test]
    fn accept_failures_back_off_and_log_once_per_period() {
        let metrics = Metrics::default();
        let mut errors = AcceptErrors::new("HTTPS");
        let emfile = io::Error::from_raw_os_error(24);
        let delays: Vec<_> = (0..10).map(|_| errors.failed(&emfile, &metrics).as_millis()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // Logged once; the rest are counted for the next line.
        assert_eq!(errors.unlogged, 9);
        assert_eq!(metrics.accept_errors.get(), 10);
        errors.succeeded();
        assert_eq!(errors.failed(&emfile, &metrics), Duration::from_millis(5));
        let aborted = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(errors.failed(&aborted, &metrics), Duration::ZERO);
    }

    #[test]
    fn hypers_own_answers_are_recognised_and_ours_are_not() {
        let date = "date: Sun, 06 Dec 2026 22:00:00 GMT";
        for (status, reason) in [(400, "Bad Request"), (414, "URI Too Long"), (431, "Request Header Fields Too Large")]
        {
            let answer =
                format!("HTTP/1.1 {status} {reason}\r\nconnection: close\r\ncontent-length: 0\r\n{date}\r\n\r\n");
            assert_eq!(parser_answer(answer.as_bytes()).map(|s| s.as_u16()), Some(status), "{answer}");
        }
        for ours in [
            // Our own errors have a content type and a body.
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n{date}\r\n\r\n{{}}"
            ),
            format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n{date}\r\n\r\n"
            ),
            format!("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n{date}\r\n\r\n"),
            format!("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n{date}\r\n\r\n"),
            // Only part of a head.
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n".to_owned(),
            "0\r\n\r\n".to_owned(),
        ] {
            assert_eq!(parser_answer(ours.as_bytes()), None, "{ours}");
        }
        let answer = envelope_answer(StatusCode::URI_TOO_LONG);
        let text = String::from_utf8(answer.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n") && head.contains("connection: close"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(envelope["error_code"], 414);
    }

    /// Serves one connection with hyper over an in-memory pipe and returns what it answered to
    /// `request`.
    async fn exchange(request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(1 << 20);
        let gate = Gate::unix(limits(1024), Arc::default());
        let permit = gate.admit(Share::Members).unwrap();
        let conn = permit.conn().clone();
        let service = hyper::service::service_fn(move |_req| {
            let guard = conn.request();
            async move {
                let response = hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(Bytes::from_static(b"{}")))
                    .unwrap();
                drop(guard);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let wire = Wire::new(server, permit);
        tokio::spawn(
            hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(wire), service),
        );
        let (mut read, mut write) = tokio::io::split(client);
        write.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn unparsable_requests_get_the_envelope_from_real_hyper() {
        let fine = exchange(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(fine.starts_with("HTTP/1.1 200 OK\r\n") && fine.ends_with("{}"), "{fine}");
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
        for (request, status) in [
            (b"G\x01T / HTTP/1.1\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/2.0\r\n\r\n".to_vec(), 400),
            (long.into_bytes(), 414),
        ] {
            let answer = exchange(&request).await;
            assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{answer:.200}");
            let body = answer.split_once("\r\n\r\n").unwrap().1;
            let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!((envelope["type"].as_str(), envelope["error_code"].as_u64()), (Some("error"), Some(status)));
        }
    }
}
