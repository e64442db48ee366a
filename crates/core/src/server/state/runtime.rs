//! What exists while a member is initialised: its HTTPS listener, its dqlite node (on a private
//! abstract socket, reached through the tunnel) and its database client. Started at init and at
//! every start of an initialised member, stopped at shutdown and reset.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::server::db::Db;
use crate::server::metrics::Metrics;
use crate::server::state::State;
use crate::server::state::http::{Http, Serving};
use crate::server::state::tunnel;
use crate::server::stop::ShutdownSignal;
use crate::state_dir::StateDirError;
use crate::tls::{self, Identity};

/// Starting the runtime failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("this member's {0} certificate cannot be read (a lock was poisoned)")]
    MissingIdentity(&'static str),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Files(#[from] StateDirError),
    #[error(transparent)]
    Node(#[from] dqlite::NodeError),
}

/// Log entries between two snapshots (libdqlite: 1024).
const SNAPSHOT_THRESHOLD: u32 = 512;
/// Log entries kept after a snapshot (libdqlite: 8192; libdqlite wants at least the threshold).
const SNAPSHOT_TRAILING: u32 = 512;
/// WAL frames at which a node that does not lead checkpoints (libdqlite 1.11: 1000). A follower
/// rebuilds its WAL index from the whole WAL after every entry it applies, and acknowledges the
/// next entry only after that: with 1000, ~1.2 ms per replicated commit under load, with 200
/// ~0.3 ms.
const CHECKPOINT_THRESHOLD: u32 = 200;
/// WAL frames at which the leader checkpoints while writes stream in: libdqlite's own. The
/// leader's WAL index stays valid, so a longer WAL costs it nothing, while each of its
/// checkpoints appends an entry for older nodes that the next write waits for behind a barrier
/// (~12 ms under 16 writers). Between streams the leader checkpoints at
/// [`CHECKPOINT_THRESHOLD`] like the others: every heartbeat round is a write, and an idle
/// leader kept up to 1000 frames (~4 MiB) where its followers keep 200.
const LEADER_CHECKPOINT_THRESHOLD: u32 = 1000;
/// How long after the last stream of writes (see [`crate::server::db::bursts`]) the leader
/// goes back to checkpointing at [`CHECKPOINT_THRESHOLD`].
const STREAM_QUIET: Duration = Duration::from_secs(5);

/// Size of raft's log segments (libraft: 8 MiB). Each segment that fills up stalls every node
/// for an RCU grace period (~40 ms here) as libraft closes its AIO context, and all nodes roll at
/// the same entry: under 16 writers (~45 KiB an entry) that was a cluster-wide stall every
/// ~0.6 s, a 16-writer p99 of 40 ms instead of 11. Costs 96 MiB of preallocated disk (the open
/// segment and two prepared ones) instead of 24.
pub(crate) const RAFT_SEGMENT_SIZE: usize = 32 * 1024 * 1024;

/// Raft's heartbeat interval in network latencies (libdqlite ties it to 1.5; the election
/// timeout is 15).
const HEARTBEAT_PER_LATENCY: u32 = 3;

/// A running member.
pub(crate) struct Runtime {
    pub(crate) address: String,
    pub(crate) node_id: u64,
    /// The certificates this member presents, and the cluster certificates it accepts, as
    /// they are now (a rotation replaces them while everything runs).
    pub(crate) certs: Certs,
    /// Client TLS to peers: our server certificate, their cluster certificate pinned (both
    /// followed from [`Runtime::certs`] at each handshake).
    pub(crate) peer_tls: Arc<rustls::ClientConfig>,
    /// Kept-alive connections to the other members, for every request this member sends them
    /// but its tunnels: forwarded writes, heartbeats, fan-outs. A fresh connection each time
    /// would cost a TLS handshake at both ends, and a fan-out to every member per join is
    /// O(members²) handshakes when many join at once.
    pub(crate) peer_pool: Arc<crate::client::Pool>,
    pub(crate) db: Db,
    /// The node's abstract socket.
    pub(crate) bind_name: String,
    node: Mutex<Option<dqlite::Node>>,
    /// The member's API on its address.
    listener: tokio::sync::Mutex<Option<Box<dyn Serving>>>,
    /// What serves it, and the application's own listeners (stopped with the runtime).
    pub(crate) http: Arc<dyn Http>,
    stop_tx: watch::Sender<bool>,
    pub(crate) stop: ShutdownSignal,
    /// Whether the node can write its raft log (see [`crate::server::state::disk`]).
    pub(crate) disk: Arc<crate::server::state::disk::Watched>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// When a leader's heartbeat last arrived (or the runtime started).
    heard: Mutex<std::time::Instant>,
    /// Whether the watch for missed certificate rotations runs (it starts once per runtime).
    pub(crate) catch_up_started: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("address", &self.address)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// The certificates a running member uses, replaceable while it runs.
#[derive(Debug, Clone)]
pub(crate) struct Certs {
    /// The cluster certificate its listeners present.
    pub(crate) cluster: Arc<tls::LiveIdentity>,
    /// Its own certificate, presented to other members.
    pub(crate) server: Arc<tls::LiveIdentity>,
    /// What it connects to other members with: the cluster certificates it accepts.
    pub(crate) peer: tls::LiveClient,
}

/// What a runtime starts with, read from the daemon once ([`RuntimeConfig::read`]), so that
/// starting it depends on nothing else.
pub(crate) struct RuntimeConfig {
    pub(crate) node_id: u64,
    pub(crate) address: String,
    pub(crate) database_dir: std::path::PathBuf,
    pub(crate) cluster_identity: Identity,
    pub(crate) server_identity: Identity,
    pub(crate) failure_domain: u64,
    pub(crate) network_latency: Duration,
    /// The trusted members' addresses, where the database client looks for the leader.
    pub(crate) servers: Vec<String>,
    /// The raft configuration to force before the node starts (quorum recovery).
    pub(crate) recovery: Option<Vec<dqlite::NodeInfo>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) http: Arc<dyn Http>,
}

impl RuntimeConfig {
    /// This member's configuration for a runtime of node `node_id`.
    pub(crate) fn read(
        state: &State,
        node_id: u64,
        recovery: Option<Vec<dqlite::NodeInfo>>,
    ) -> Result<RuntimeConfig, StartError> {
        let dir = state.dir();
        let cluster_identity = match dir.cluster_identity()? {
            Some(identity) => identity,
            None => {
                let problem = format!("is missing, and so is {}", dir.key_path("cluster").display());
                let fix = dir.pair_fix("cluster", &state.name());
                return Err(StateDirError::damaged(dir.cert_path("cluster"), problem, fix).into());
            }
        };
        Ok(RuntimeConfig {
            node_id,
            address: state.address(),
            database_dir: dir.database_dir(),
            cluster_identity,
            server_identity: state
                .server_identity()
                .read()
                .map(|i| i.clone())
                .map_err(|_| StartError::MissingIdentity("server"))?,
            failure_domain: state.config().read().map(|c| c.failure_domain).unwrap_or_default(),
            network_latency: state.settings().network_latency,
            servers: state.trust().snapshot().addresses(),
            recovery,
            metrics: state.metrics().clone(),
            http: state.http().clone(),
        })
    }
}

impl Runtime {
    /// The fingerprint of the cluster certificate this member presents.
    pub(crate) fn cluster_fingerprint(&self) -> String {
        self.certs.cluster.fingerprint()
    }

    /// The cluster certificate and key this member presents.
    pub(crate) fn cluster_identity(&self) -> Identity {
        self.certs.cluster.identity()
    }

    /// Binds the member address, starts the dqlite node and the HTTPS listener (`serve`: the
    /// member's API on the bound address, with this TLS configuration). With a recovery
    /// configuration, the node's raft configuration is forced to it first.
    pub(crate) async fn start(
        config: RuntimeConfig,
        serve: impl FnOnce(TcpListener, Arc<rustls::ServerConfig>) -> Box<dyn Serving>,
    ) -> Result<Arc<Runtime>, StartError> {
        let RuntimeConfig {
            node_id,
            address,
            database_dir,
            cluster_identity,
            server_identity,
            failure_domain,
            network_latency,
            servers,
            recovery,
            metrics,
            http,
        } = config;
        let cluster = tls::LiveIdentity::new(&cluster_identity)?;
        let server = tls::LiveIdentity::new(&server_identity)?;
        let peer = tls::live_client_config(Some(server.clone()), tls::Pins::new(vec![cluster.fingerprint()]))?;
        let peer_tls = peer.config.clone();
        let server_tls = tls::live_server_config(cluster.clone())?;

        let tcp = TcpListener::bind(&address)
            .await
            .map_err(|source| StartError::Listen { address: address.clone(), source })?;
        let (stop_tx, stop) = ShutdownSignal::new();
        let nonce = random_bytes::<6>().map_err(|source| StartError::Listen { address: address.clone(), source })?;
        let bind_name = format!("@microcluster-{}-{}", std::process::id(), crate::tls::hex(&nonce));

        let builder = dqlite::Node::builder(node_id, address.clone(), database_dir)
            .failure_domain(failure_domain)
            .bind_address(bind_name.clone())
            .network_latency(network_latency)
            // Raft's heartbeat at 3× the latency instead of libdqlite's 1.5×, the election
            // timeout staying 15×: half the idle heartbeats and ticks (most of an idle
            // cluster's CPU, each heartbeat crossing the tunnel on both ends), five per
            // shortest election timeout, and failures detected as fast.
            .heartbeat_interval(network_latency * HEARTBEAT_PER_LATENCY)
            // libraft keeps the entries since the last snapshot plus `trailing` in memory, each
            // with the pages it wrote, and a write batch of 16 writers is ~80 KiB: after 60 000
            // such writes a member held ~300 MiB with 1024 + 2048, ~120 MiB with 512 + 512
            // (libdqlite's 1024 + 8192 would allow ~700 MiB). A follower further behind than
            // that catches up from a snapshot.
            .snapshot_params(SNAPSHOT_THRESHOLD, SNAPSHOT_TRAILING)
            .checkpoint_threshold(CHECKPOINT_THRESHOLD)
            .raft_segment_size(RAFT_SEGMENT_SIZE)
            .connect_func(tunnel::connect_func(
                tokio::runtime::Handle::current(),
                peer_tls.clone(),
                stop.clone(),
                metrics.clone(),
            ));
        let node = tokio::task::spawn_blocking(move || -> Result<dqlite::Node, dqlite::NodeError> {
            if !dqlite::pin_allocator_thresholds() {
                tracing::warn!("glibc refused fixed malloc thresholds: memory freed after snapshots may stay resident");
            }
            let mut node = builder.build()?;
            if let Some(configuration) = recovery {
                node.recover(&configuration)?;
            }
            node.start()?;
            Ok(node)
        })
        .await
        .map_err(|e| StartError::Listen { address: address.clone(), source: std::io::Error::other(e.to_string()) })??;
        tracing::info!(library = %dqlite::library(), tuning = tuning(&node), "dqlite node started");

        let client_config = dqlite::ClientConfig {
            dial_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            // A member cut off from the majority must refuse soon rather than hang its caller.
            leader_timeout: Duration::from_secs(5),
            // Elections take a few hundred milliseconds: look again soon.
            backoff_max: Duration::from_millis(200),
            ..dqlite::ClientConfig::default()
        };
        let client = dqlite::Client::with_dialer(
            servers,
            tunnel::dialer(address.clone(), bind_name.clone(), peer_tls.clone(), metrics.clone()),
            client_config,
        );
        let listener = serve(tcp, server_tls);
        // raft's election timeout is 15 latencies, randomised up to twice that.
        let db = Db::new(client, address.clone(), network_latency * 30, metrics);
        Ok(Arc::new(Runtime {
            address,
            node_id,
            certs: Certs { cluster, server, peer },
            peer_tls,
            peer_pool: Arc::default(),
            db,
            bind_name,
            node: Mutex::new(Some(node)),
            listener: tokio::sync::Mutex::new(Some(listener)),
            http,
            stop_tx,
            stop,
            disk: Arc::default(),
            tasks: Mutex::new(Vec::new()),
            heard: Mutex::new(std::time::Instant::now()),
            catch_up_started: false.into(),
        }))
    }

    /// A task that keeps the node's checkpoint threshold fitting its role, as this member's
    /// leader watcher sees it (within a second of a change), and its writes:
    /// [`LEADER_CHECKPOINT_THRESHOLD`] while it leads and writes stream in (from the second
    /// batch of a stream until [`STREAM_QUIET`] after its last), [`CHECKPOINT_THRESHOLD`]
    /// otherwise.
    pub(crate) fn checkpoints_follow_role(self: &Arc<Self>) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut leader = self.db.leader_changes();
        let bursts = self.db.bursts();
        let runtime = Arc::downgrade(self);
        async move {
            loop {
                let Some(runtime) = runtime.upgrade() else { return };
                let leads = leader.borrow_and_update().as_deref() == Some(runtime.address.as_str());
                // How long the stream of writes may still count as going on.
                let streaming = bursts.since_stream().and_then(|since| STREAM_QUIET.checked_sub(since));
                let frames =
                    if leads && streaming.is_some() { LEADER_CHECKPOINT_THRESHOLD } else { CHECKPOINT_THRESHOLD };
                if let Ok(node) = runtime.node.lock()
                    && let Some(node) = node.as_ref()
                {
                    node.set_checkpoint_threshold(frames);
                }
                drop(runtime);
                tokio::select! {
                    changed = leader.changed() => if changed.is_err() { return },
                    () = bursts.stream_started(), if leads && streaming.is_none() => {}
                    () = tokio::time::sleep(streaming.unwrap_or_default()), if leads && streaming.is_some() => {}
                }
            }
        }
    }

    /// The node's checkpoint threshold, if libdqlite's layout is known.
    pub(crate) fn checkpoint_threshold(&self) -> Option<u32> {
        self.node.lock().ok()?.as_ref()?.checkpoint_threshold()
    }

    /// Keeps a background task that ends with the runtime.
    pub(crate) fn adopt(&self, task: JoinHandle<()>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(task);
        }
    }

    /// Notes that a leader's heartbeat arrived.
    pub(crate) fn hear_from_leader(&self) {
        if let Ok(mut heard) = self.heard.lock() {
            *heard = std::time::Instant::now();
        }
    }

    /// How long since a leader's heartbeat arrived (or the runtime started).
    pub(crate) fn heard_from_leader(&self) -> Duration {
        self.heard.lock().map(|h| h.elapsed()).unwrap_or_default()
    }

    /// Points the database client at the current members.
    pub(crate) fn set_servers(&self, servers: Vec<String>) {
        self.db.client().set_servers(servers);
    }

    /// Stops background tasks, the listener and the node. Idempotent.
    pub(crate) async fn stop(&self) {
        let _ = self.stop_tx.send(true);
        let tasks: Vec<_> = self.tasks.lock().map(|mut t| t.drain(..).collect()).unwrap_or_default();
        for task in tasks {
            task.abort();
        }
        self.http.stop_servers().await;
        if let Some(listener) = self.listener.lock().await.take() {
            listener.stop().await;
        }
        let node = self.node.lock().ok().and_then(|mut n| n.take());
        if let Some(node) = node {
            let _ = tokio::task::spawn_blocking(move || drop(node)).await;
        }
    }
}

/// Random bytes from the system's secure generator.
pub(crate) fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use ring::rand::SecureRandom;
    let mut out = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| std::io::Error::other("the system random number generator failed"))?;
    Ok(out)
}

/// What the node was tuned with, for the startup line: 1.11's private settings where they took
/// (see `dqlite::Library`), otherwise the public API's alone.
fn tuning(node: &dqlite::Node) -> String {
    let snapshots = format!("snapshots every {SNAPSHOT_THRESHOLD} entries, {SNAPSHOT_TRAILING} kept");
    match (node.checkpoint_threshold(), node.heartbeat_interval()) {
        (Some(frames), Some(heartbeat)) => format!(
            "public API ({snapshots}) and 1.11's private settings (WAL checkpointed at {frames} frames, raft heartbeat {heartbeat:?}, {} MiB raft segments)",
            RAFT_SEGMENT_SIZE >> 20
        ),
        _ if dqlite::library().takes_private_tuning() => {
            format!("public API only ({snapshots}): 1.11's private settings did not take (see the warning above)")
        }
        _ => format!("public API only ({snapshots}); 1.11's private settings do not apply to this library"),
    }
}
