//! Kept-alive HTTPS connections to other members, for the requests a member sends them
//! (writes a follower passes to the leader, heartbeats, fan-outs): a fresh connection per
//! request would cost a TLS handshake each time.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;

use super::transport::Driver;

/// Idle connections kept per member: as many as requests that usually run at once.
const MAX_IDLE: usize = 32;

/// A connection idle for longer is closed rather than used: the longer it sat, the likelier
/// the other side is closing it just as a request goes out (and that request's fate would be
/// unknown). Above the default heartbeat (10 s), so that a leader's rounds reuse theirs, and
/// well under a member's idle timeout (60 s).
const MAX_IDLE_TIME: Duration = Duration::from_secs(20);

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    driver: Driver,
    since: Instant,
    generation: u64,
}

/// Idle connections by member address.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
    /// Bumped by [`Pool::clear`]: a connection made before is not kept when it comes back.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Pool").field("idle", &idle.values().map(Vec::len).sum::<usize>()).finish()
    }
}

impl Pool {
    /// The most recently used open connection to `address`, if any (stale ones are dropped).
    pub(super) fn take(&self, address: &str) -> Option<(SendRequest<Full<Bytes>>, Driver, u64)> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let conns = idle.get_mut(address)?;
        conns.retain(|c| c.since.elapsed() < MAX_IDLE_TIME && !c.sender.is_closed());
        let conn = conns.pop()?;
        Some((conn.sender, conn.driver, conn.generation))
    }

    /// What a connection made now belongs to (see [`Pool::clear`]).
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Closes every idle connection, and every busy one once its request is answered (after
    /// this member's certificate changed, they would go on proving the old one).
    pub fn clear(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        idle.clear();
    }

    /// Keeps a connection whose last response was read in full.
    pub(super) fn put(&self, address: &str, sender: SendRequest<Full<Bytes>>, driver: Driver, generation: u64) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if generation != self.generation() {
            return;
        }
        let conns = idle.entry(address.to_owned()).or_default();
        if conns.len() < MAX_IDLE {
            conns.push(Idle { sender, driver, since: Instant::now(), generation });
        }
    }
}
