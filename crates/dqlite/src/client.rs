//! A client of a dqlite cluster: it knows a list of node addresses, finds the current leader
//! among them, and runs cluster administration requests there.
//!
//! Leader discovery asks every known node in parallel (the last known leader first), accepts a
//! node only when it names itself as leader, follows a named leader outside the list once, and
//! retries with bounded exponential backoff until a deadline.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::connection::Connection;
use crate::database::Database;
use crate::dialer::{DefaultDialer, Dialer};
use crate::error::{Error, Result};
use crate::proto::{File, NodeInfo, Role};

/// How long the last known leader is asked alone before every other node is asked too.
const HINT_HEAD_START: Duration = Duration::from_millis(50);
/// How long a round of the leader search waits for answers.
const ROUND_WAIT: Duration = Duration::from_millis(250);
/// Most nodes a round of the leader search asks at once. In a cluster of hundreds, asking every
/// node dials hundreds of connections per round (through TLS, for microcluster); the leader is
/// a voter, and callers list the likeliest nodes first, so a window of them is asked each round,
/// the next window the next round.
const MAX_PROBES: usize = 16;

/// Timeouts and backoff of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Deadline to dial a node and hear its answer to LEADER.
    pub dial_timeout: Duration,
    /// Deadline for each request/response exchange.
    pub request_timeout: Duration,
    /// How long to keep looking for a leader (and retrying "not leader") before giving up.
    pub leader_timeout: Duration,
    /// First pause between discovery rounds; doubles each round.
    pub backoff_base: Duration,
    /// Longest pause between discovery rounds.
    pub backoff_max: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            leader_timeout: Duration::from_secs(15),
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
        }
    }
}

impl ClientConfig {
    /// The pause after discovery round `round` (1-based).
    pub(crate) fn backoff(&self, round: u32) -> Duration {
        Backoff::nth(self.backoff_base, self.backoff_max, round)
    }
}

/// A handle on a cluster; cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    dialer: Arc<dyn Dialer>,
    servers: RwLock<Vec<String>>,
    last_leader: Mutex<Option<String>>,
    config: ClientConfig,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("servers", &self.servers())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

enum Probe {
    Leader(Connection),
    Elsewhere(String),
    Unknown,
}

impl Client {
    /// A client for the nodes at `servers`, dialled with [`DefaultDialer`].
    pub fn new(servers: impl IntoIterator<Item = impl Into<String>>) -> Client {
        Client::with_dialer(servers, DefaultDialer, ClientConfig::default())
    }

    /// A client that reaches nodes through `dialer`.
    pub fn with_dialer(
        servers: impl IntoIterator<Item = impl Into<String>>,
        dialer: impl Dialer,
        config: ClientConfig,
    ) -> Client {
        Client {
            inner: Arc::new(Inner {
                dialer: Arc::new(dialer),
                servers: RwLock::new(servers.into_iter().map(Into::into).collect()),
                last_leader: Mutex::new(None),
                config,
            }),
        }
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The addresses the client knows.
    pub fn servers(&self) -> Vec<String> {
        self.inner.servers.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Replaces the known addresses (e.g. after a membership change).
    pub fn set_servers(&self, servers: impl IntoIterator<Item = impl Into<String>>) {
        if let Ok(mut guard) = self.inner.servers.write() {
            *guard = servers.into_iter().map(Into::into).collect();
        }
    }

    /// The leader address found last, if any.
    pub fn last_leader(&self) -> Option<String> {
        self.inner.last_leader.lock().ok().and_then(|g| g.clone())
    }

    /// A leader learnt elsewhere (a heartbeat, an admission): the next leader search asks it
    /// first, alone for a moment, as it does the last leader it found.
    pub fn suggest_leader(&self, address: &str) {
        self.remember_leader(Some(address.to_owned()));
    }

    fn remember_leader(&self, address: Option<String>) {
        if let Ok(mut guard) = self.inner.last_leader.lock() {
            *guard = address;
        }
    }

    /// Dials one node and performs the handshake.
    pub async fn connect(&self, address: &str) -> Result<Connection> {
        connect(&*self.inner.dialer, address, &self.inner.config).await
    }

    /// Opens a connection to the current leader, waiting for one to be elected up to
    /// [`ClientConfig::leader_timeout`].
    ///
    /// The last known leader is asked first and, unless it answers as leader within 50 ms,
    /// the known addresses as well, all at once (at most 16 a round: the first 16 in the list's
    /// order, the next 16 the next round); the first node that names itself wins, and leaders
    /// named by others outside those asked are asked too. A round waits at most 250 ms for
    /// answers: a node that froze or was cut off accepts
    /// connections and never answers, so its probe goes on (until the dial timeout) while
    /// later rounds ask the others again, instead of holding every round for a dial timeout.
    pub async fn connect_leader(&self) -> Result<Connection> {
        self.connect_leader_hinted(None).await
    }

    /// [`Client::connect_leader`], ending each pause between rounds as soon as `hint` names a
    /// leader, which is then asked first: whoever watches the cluster (a task asking the local
    /// node who leads) usually learns of a new leader long before the next round would start.
    pub(crate) async fn connect_leader_hinted(
        &self,
        mut hint: Option<&mut watch::Receiver<Option<String>>>,
    ) -> Result<Connection> {
        if let Some(hint) = hint.as_mut() {
            // Only a change from now on says anything new.
            hint.borrow_and_update();
        }
        let config = &self.inner.config;
        let deadline = Instant::now() + config.leader_timeout;
        let mut search = Search { client: self, probes: JoinSet::new(), pending: Vec::new(), named: Vec::new() };
        let mut failures = Vec::new();
        let mut round = 0;
        loop {
            round += 1;
            failures.clear();
            if let Some(hint) = self.last_leader() {
                search.spawn(&hint);
                if let Some(conn) = search.wait(HINT_HEAD_START, true, &mut failures).await {
                    return Ok(conn);
                }
            }
            let servers = self.servers();
            let asked = window(&servers, round as usize);
            for address in &asked {
                search.spawn(address);
            }
            if let Some(conn) = search.wait(ROUND_WAIT, true, &mut failures).await {
                return Ok(conn);
            }
            let named: Vec<String> = std::mem::take(&mut search.named);
            let outside: Vec<&String> = named.iter().filter(|l| !asked.contains(l)).collect();
            if !outside.is_empty() {
                outside.iter().for_each(|leader| search.spawn(leader));
                if let Some(conn) = search.wait(ROUND_WAIT, true, &mut failures).await {
                    return Ok(conn);
                }
            }
            self.remember_leader(None);
            let now = Instant::now();
            if now >= deadline {
                failures.extend(search.pending.iter().map(|a| format!("{a}: no answer yet")));
                return Err(Error::NoLeader {
                    attempts: round,
                    servers: servers.join(", "),
                    last_error: if failures.is_empty() { "no servers known".into() } else { failures.join("; ") },
                });
            }
            // A probe still under way may find the leader during the pause.
            let pause = search.wait(config.backoff(round).min(deadline - now), false, &mut failures);
            let named = async {
                match hint.as_mut() {
                    Some(hint) => loop {
                        if hint.changed().await.is_err() {
                            return std::future::pending().await;
                        }
                        if let Some(leader) = hint.borrow_and_update().clone() {
                            return leader;
                        }
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                found = pause => if let Some(conn) = found {
                    return Ok(conn);
                },
                leader = named => self.remember_leader(Some(leader)),
            }
        }
    }

    /// Information about the current leader.
    pub async fn leader(&self) -> Result<NodeInfo> {
        let mut conn = self.connect_leader().await?;
        let address = conn.address().to_owned();
        conn.leader().await?.ok_or(Error::NoLeader {
            attempts: 1,
            servers: address,
            last_error: "leader stepped down".into(),
        })
    }

    /// A handle on database `name`, connected to the leader lazily and reconnected as needed.
    pub fn database(&self, name: impl Into<String>) -> Database {
        Database::new(self.clone(), name.into())
    }

    /// The raft configuration as the leader sees it.
    pub async fn cluster(&self) -> Result<Vec<NodeInfo>> {
        self.on_leader(|mut c| async move { c.cluster().await }).await
    }

    /// Adds a node as a spare.
    pub async fn add(&self, id: u64, address: &str) -> Result<()> {
        let address = address.to_owned();
        self.on_leader(move |mut c| {
            let address = address.clone();
            async move { c.add(id, &address).await }
        })
        .await
    }

    /// Changes a node's role.
    pub async fn assign(&self, id: u64, role: Role) -> Result<()> {
        self.on_leader(move |mut c| async move { c.assign(id, role).await }).await
    }

    /// Removes a node from the configuration.
    pub async fn remove(&self, id: u64) -> Result<()> {
        self.on_leader(move |mut c| async move { c.remove(id).await }).await
    }

    /// Transfers leadership to voter `id` (0: raft picks one).
    pub async fn transfer(&self, id: u64) -> Result<()> {
        self.on_leader(move |mut c| async move { c.transfer(id).await }).await
    }

    /// The failure domain and weight of the node at `address`.
    pub async fn describe(&self, address: &str) -> Result<(u64, u64)> {
        self.connect(address).await?.describe().await
    }

    /// Sets the weight of the node at `address`.
    pub async fn weight(&self, address: &str, weight: u64) -> Result<()> {
        self.connect(address).await?.weight(weight).await
    }

    /// The database files as the node at `address` holds them.
    pub async fn dump(&self, address: &str, name: &str) -> Result<Vec<File>> {
        self.connect(address).await?.dump(name).await
    }

    /// Runs a request on the leader, retrying on a fresh leader while the answer is "not
    /// leader" (which means the request had no effect).
    async fn on_leader<T, F, Fut>(&self, request: F) -> Result<T>
    where
        F: Fn(Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.inner.config.leader_timeout;
        let mut round = 0;
        loop {
            round += 1;
            let conn = self.connect_leader().await?;
            match request(conn).await {
                Err(err) if err.is_not_leader() && Instant::now() < deadline => {
                    self.remember_leader(None);
                    tokio::time::sleep(self.inner.config.backoff(round)).await;
                }
                other => return other,
            }
        }
    }

    pub(crate) fn forget_leader(&self) {
        self.remember_leader(None);
    }
}

/// One leader search: the probes under way (carried from round to round), and the leaders
/// other nodes named.
/// The addresses a leader search asks in round `round` (from 1): all when there are at most
/// [`MAX_PROBES`], else a window of that many, the first at the list's head, each next one
/// where the last ended (wrapping), so that every node is asked in turn.
fn window(servers: &[String], round: usize) -> Vec<&String> {
    if servers.len() <= MAX_PROBES {
        return servers.iter().collect();
    }
    let start = round.saturating_sub(1).wrapping_mul(MAX_PROBES) % servers.len();
    servers.iter().cycle().skip(start).take(MAX_PROBES).collect()
}

struct Search<'c> {
    client: &'c Client,
    probes: JoinSet<(String, Result<Probe>)>,
    /// Addresses with a probe under way.
    pending: Vec<String>,
    named: Vec<String>,
}

impl Search<'_> {
    /// Probes `address`, unless a probe of it is still under way.
    fn spawn(&mut self, address: &str) {
        if self.pending.iter().any(|a| a == address) {
            return;
        }
        self.pending.push(address.to_owned());
        let dialer = self.client.inner.dialer.clone();
        let config = self.client.inner.config.clone();
        let address = address.to_owned();
        self.probes.spawn(async move {
            let result = probe(&*dialer, &address, &config).await;
            (address, result)
        });
    }

    /// Collects answers for up to `limit` (less if every probe answered and `until_done`);
    /// returns the leader's connection as soon as a node names itself.
    async fn wait(&mut self, limit: Duration, until_done: bool, failures: &mut Vec<String>) -> Option<Connection> {
        let timer = tokio::time::sleep(limit);
        tokio::pin!(timer);
        loop {
            if self.probes.is_empty() && until_done {
                return None;
            }
            let joined = tokio::select! {
                joined = self.probes.join_next(), if !self.probes.is_empty() => joined,
                () = &mut timer => return None,
            };
            let Some(Ok((address, result))) = joined else { continue };
            self.pending.retain(|a| *a != address);
            match result {
                Ok(Probe::Leader(conn)) => {
                    self.client.remember_leader(Some(address));
                    return Some(conn);
                }
                Ok(Probe::Elsewhere(leader)) => self.named.push(leader),
                Ok(Probe::Unknown) => failures.push(format!("{address}: knows no leader")),
                Err(err) => failures.push(format!("{address}: {err}")),
            }
        }
    }
}

async fn connect(dialer: &dyn Dialer, address: &str, config: &ClientConfig) -> Result<Connection> {
    let stream = tokio::time::timeout(config.dial_timeout, dialer.dial(address))
        .await
        .map_err(|_| Error::Timeout { op: "dialing", address: address.to_owned(), after: config.dial_timeout })?
        .map_err(|source| Error::Io { op: "dialing", address: address.to_owned(), source })?;
    let mut conn = Connection::handshake(stream, address).await?;
    conn.set_timeout(config.request_timeout);
    Ok(conn)
}

/// Dials `address` and asks it for the leader. Only a node that names itself is the leader:
/// the address comparison is exact, so every node must be known by one canonical string.
async fn probe(dialer: &dyn Dialer, address: &str, config: &ClientConfig) -> Result<Probe> {
    let mut conn = connect(dialer, address, config).await?;
    conn.set_timeout(config.dial_timeout);
    let leader = conn.leader().await?;
    conn.set_timeout(config.request_timeout);
    Ok(match leader {
        Some(info) if info.address == address => Probe::Leader(conn),
        Some(info) => Probe::Elsewhere(info.address),
        None => Probe::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_search_asks_sixteen_nodes_a_round_in_turn() {
        let servers: Vec<String> = (0..40).map(|i| format!("n{i}")).collect();
        let names = |round| window(&servers, round).into_iter().cloned().collect::<Vec<_>>();
        assert_eq!(names(1), servers[..16]);
        assert_eq!(names(2), servers[16..32]);
        // The third wraps: the last 8, then the first 8.
        assert_eq!(names(3), [&servers[32..], &servers[..8]].concat());
        assert_eq!(window(&servers[..16], 7).len(), 16);
        assert_eq!(window(&servers[..3], 1), servers[..3].iter().collect::<Vec<_>>());
        assert!(window(&[], 1).is_empty());
        assert_eq!(window(&servers, usize::MAX).len(), 16);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let config = ClientConfig::default();
        assert_eq!(config.backoff(1), Duration::from_millis(20));
        assert_eq!(config.backoff(2), Duration::from_millis(40));
        assert_eq!(config.backoff(5), Duration::from_millis(320));
        assert_eq!(config.backoff(7), Duration::from_secs(1));
        assert_eq!(config.backoff(u32::MAX), Duration::from_secs(1));
    }
}
