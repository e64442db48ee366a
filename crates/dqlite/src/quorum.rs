//! Reads that cannot be stale: before a read, a majority of the voters must name the node that
//! will answer it as their leader, in answers they sent after the read was asked for.
//!
//! A leader that froze, or was cut off, still believes it leads when it comes back, and
//! libdqlite answers a query from any node that believes it leads: without this check, a read
//! sent to such a node misses what the new leader committed meanwhile.
//!
//! Why it is enough. Let W be a write acknowledged before the read was asked for (at instant
//! `s`), committed in term T_W: a majority M_W of the voters stored it, each having heard from
//! W's leader, so from then on each of them names as leader (libdqlite's LEADER answer,
//! `raft_leader`) only nodes that led in a term ≥ T_W: the name changes only on an append from
//! a leader of the voter's current term, which never decreases. A majority that names L after
//! `s` shares a voter with M_W, so L led in some term ≥ T_W before the read is sent, and a
//! node's term never decreases either. If L still passes libdqlite's leader check when the
//! read reaches it, it leads in a term ≥ T_W, so its log holds W (Raft's leader completeness),
//! and libdqlite applies the whole log before a query (its read barrier). Majorities are
//! counted over the voters of the last configuration read from the leader (refreshed every
//! [`CONFIG_TTL`]): the argument assumes configurations change one voter at a time, as Raft's
//! single-server changes do.
//!
//! Confirmations are shared: one round of LEADER requests serves every read that was asked
//! for before the round started, so concurrent reads add no round trips of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::backoff::Backoff;
use crate::client::Client;
use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::proto::Role;

/// How long the voters read from the leader's configuration are trusted.
const CONFIG_TTL: Duration = Duration::from_secs(1);

/// The longest one round waits for a majority (a round that cannot get one fails sooner).
const ROUND_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest one voter is waited for, connection included (a frozen voter never answers).
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Confirms who leads, for reads that must see every write acknowledged before they were
/// asked for. Cheap to clone; needs a tokio runtime (it runs a task while any clone lives).
#[derive(Debug, Clone)]
pub struct LeaderQuorum {
    requests: mpsc::UnboundedSender<oneshot::Sender<Result<String>>>,
    rounds: Arc<Counters>,
}

/// Rounds run, and rounds that found no majority.
#[derive(Debug, Default)]
struct Counters {
    rounds: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl LeaderQuorum {
    /// Starts confirming leaders among the nodes `client` knows.
    pub fn new(client: Client) -> LeaderQuorum {
        let (requests, queue) = mpsc::unbounded_channel();
        let rounds = Arc::new(Counters::default());
        let voters =
            Voters { client, conns: Arc::new(Mutex::new(HashMap::new())), awaited: Arc::default(), config: None };
        tokio::spawn(confirm_rounds(voters, queue, rounds.clone()));
        LeaderQuorum { requests, rounds }
    }

    /// The address of the node that a majority of the voters named as leader, in answers sent
    /// after this call began; retried until `deadline` while no majority agrees (an election).
    pub async fn confirm(&self, deadline: Instant) -> Result<String> {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        loop {
            let (reply, answer) = oneshot::channel();
            if self.requests.send(reply).is_err() {
                return Err(stopped());
            }
            match answer.await.unwrap_or_else(|_| Err(stopped())) {
                Ok(leader) => return Ok(leader),
                Err(_) if Instant::now() + backoff.peek() < deadline => backoff.wait().await,
                Err(err) => return Err(err),
            }
        }
    }

    /// Rounds of LEADER requests run so far, and how many of them found no majority.
    pub fn rounds(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.rounds.rounds.load(Relaxed), self.rounds.failed.load(Relaxed))
    }
}

fn stopped() -> Error {
    Error::NoLeader { attempts: 0, servers: String::new(), last_error: "the leader confirmation stopped".into() }
}

/// Serves confirmation requests in rounds: every request received before a round starts gets
/// that round's outcome, so the answers it carries were all sent after the request.
async fn confirm_rounds(
    mut voters: Voters,
    mut queue: mpsc::UnboundedReceiver<oneshot::Sender<Result<String>>>,
    counters: Arc<Counters>,
) {
    let mut waiting = Vec::new();
    loop {
        if waiting.is_empty() {
            match queue.recv().await {
                Some(reply) => waiting.push(reply),
                None => return,
            }
        }
        while let Ok(reply) = queue.try_recv() {
            waiting.push(reply);
        }
        waiting.retain(|reply: &oneshot::Sender<_>| !reply.is_closed());
        if waiting.is_empty() {
            continue;
        }
        counters.rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = voters.round().await;
        if outcome.is_err() {
            counters.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        for reply in waiting.drain(..) {
            let _ = reply.send(outcome.clone());
        }
    }
}

/// The voters, and a connection to each kept between rounds.
struct Voters {
    client: Client,
    conns: Arc<Mutex<HashMap<String, Connection>>>,
    /// Voters whose answer to an earlier round is still awaited (a frozen or cut-off node):
    /// not asked again until it comes, so a stream of reads does not open a connection to such
    /// a node per round.
    awaited: Arc<Mutex<std::collections::HashSet<String>>>,
    /// The voters' addresses as the leader's configuration listed them, and when.
    config: Option<(Instant, Vec<String>)>,
}

impl Voters {
    async fn voters(&mut self) -> Result<Vec<String>> {
        match &self.config {
            Some((read, voters)) if read.elapsed() < CONFIG_TTL => Ok(voters.clone()),
            _ => {
                let nodes = self.client.cluster().await?;
                let voters: Vec<String> =
                    nodes.into_iter().filter(|n| n.role == Some(Role::Voter)).map(|n| n.address).collect();
                self.config = Some((Instant::now(), voters.clone()));
                Ok(voters)
            }
        }
    }

    /// Asks every voter who leads; the leader once a majority named the same node.
    async fn round(&mut self) -> Result<String> {
        let voters = self.voters().await?;
        let majority = voters.len() / 2 + 1;
        // Each ask runs on its own, and ends even after the round did: its connection goes
        // back for the next round, and a voter is not asked twice at once. An answer counts
        // only for the round that sent the request (it was sent after the round began).
        let (answers, mut asks) = mpsc::unbounded_channel();
        let mut asked = 0;
        for address in &voters {
            let newly = self.awaited.lock().is_ok_and(|mut a| a.insert(address.clone()));
            if !newly {
                continue;
            }
            asked += 1;
            let (client, conns, awaited) = (self.client.clone(), self.conns.clone(), self.awaited.clone());
            let (answers, address) = (answers.clone(), address.clone());
            tokio::spawn(async move {
                let cached = conns.lock().ok().and_then(|mut c| c.remove(&address));
                let answer = match tokio::time::timeout(ASK_TIMEOUT, ask(&client, cached, &address)).await {
                    Ok(Ok((leader, conn))) => {
                        if let Ok(mut c) = conns.lock() {
                            c.insert(address.clone(), conn);
                        }
                        Ok(leader)
                    }
                    Ok(Err(err)) => Err(err),
                    Err(_) => {
                        Err(Error::Timeout { op: "asking who leads", address: address.clone(), after: ASK_TIMEOUT })
                    }
                };
                if let Ok(mut a) = awaited.lock() {
                    a.remove(&address);
                }
                let _ = answers.send((address, answer));
            });
        }
        drop(answers);
        let mut named: HashMap<String, usize> = HashMap::new();
        let mut answered = 0;
        let mut failures = Vec::new();
        let timer = tokio::time::sleep(ROUND_TIMEOUT);
        tokio::pin!(timer);
        loop {
            let received = tokio::select! {
                received = asks.recv() => received,
                () = &mut timer => break,
            };
            let Some((address, answer)) = received else { break };
            answered += 1;
            match answer {
                Ok(Some(leader)) => {
                    if !voters.contains(&leader) {
                        // A leader the cached configuration does not list as a voter: read
                        // the configuration again next round.
                        self.config = None;
                    }
                    let count = named.entry(leader.clone()).or_default();
                    *count += 1;
                    if *count >= majority {
                        return Ok(leader);
                    }
                }
                Ok(None) => failures.push(format!("{address}: knows no leader")),
                Err(err) => failures.push(format!("{address}: {err}")),
            }
            // Whatever the rest say, no node can reach a majority any more.
            let best = named.values().copied().max().unwrap_or(0);
            if best + (asked - answered) < majority {
                break;
            }
        }
        // A configuration that changed may be why no majority agreed.
        self.config = None;
        Err(Error::NoLeader {
            attempts: 1,
            servers: voters.join(", "),
            last_error: format!(
                "no majority of the {} voters named the same leader ({})",
                voters.len(),
                if failures.is_empty() { "no answer in time".to_owned() } else { failures.join("; ") }
            ),
        })
    }
}

/// Asks one voter who leads, on its kept connection or a new one.
async fn ask(client: &Client, cached: Option<Connection>, address: &str) -> Result<(Option<String>, Connection)> {
    let mut conn = match cached {
        Some(conn) if conn.is_usable() => conn,
        _ => client.connect(address).await?,
    };
    if conn.peer_closed() {
        conn = client.connect(address).await?;
    }
    let leader = conn.leader().await?;
    Ok((leader.map(|l| l.address).filter(|a| !a.is_empty()), conn))
}
