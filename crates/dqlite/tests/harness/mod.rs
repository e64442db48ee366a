//! Test harness: real libdqlite nodes in this process, on abstract unix sockets (no ports to
//! collide on), joined into clusters through the real ADD/ASSIGN requests.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dqlite::{BOOTSTRAP_ID, Client, ClientConfig, DefaultDialer, Node, Role};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Raft latency for tests: heartbeat 30 ms, election timeout 300 ms.
pub const LATENCY: Duration = Duration::from_millis(20);

/// A unique abstract socket address.
pub fn address(tag: &str) -> String {
    format!("@dqlite-test-{}-{tag}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A running node and its data directory.
pub struct TestNode {
    pub node: Node,
    pub dir: tempfile::TempDir,
}

impl TestNode {
    pub fn start(id: u64, address: &str) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let node = start_in(id, address, dir.path());
        TestNode { node, dir }
    }

    pub fn address(&self) -> &str {
        self.node.address()
    }

    pub fn id(&self) -> u64 {
        self.node.id()
    }
}

/// Starts a node whose raft traffic reaches peers' abstract sockets.
pub fn start_in(id: u64, address: &str, dir: &std::path::Path) -> Node {
    let mut node = Node::builder(id, address, dir)
        .network_latency(LATENCY)
        .connect_func(|addr| dqlite::connect_blocking(addr, Duration::from_secs(1)))
        .build()
        .unwrap();
    node.start().unwrap();
    node
}

/// Creates table `big` with 3000 rows `(i, pad)`, `pad` 40 characters: a result that takes
/// many ROWS messages.
pub async fn three_thousand_rows(db: &mut dqlite::Database) {
    db.exec("CREATE TABLE big (i INTEGER, pad TEXT)", &[]).await.unwrap();
    db.exec(
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000) \
         INSERT INTO big SELECT i, printf('%040d', i) FROM c",
        &[],
    )
    .await
    .unwrap();
}

/// A client with short timeouts suited to tests.
pub fn client(servers: Vec<String>) -> Client {
    let config = ClientConfig { leader_timeout: Duration::from_secs(20), ..ClientConfig::default() };
    Client::with_dialer(servers, DefaultDialer, config)
}

/// Several nodes, the first bootstrapped, the others added and assigned `roles`.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub client: Client,
}

impl TestCluster {
    /// One bootstrapped voter plus one node per entry of `roles`.
    pub async fn start(tag: &str, roles: &[Role]) -> TestCluster {
        let first = TestNode::start(BOOTSTRAP_ID, &address(tag));
        let client = client(vec![first.address().to_owned()]);
        let mut cluster = TestCluster { nodes: vec![first], client };
        for role in roles {
            cluster.join(tag, *role).await;
        }
        cluster
    }

    /// Starts a new node and brings it into the configuration with `role`.
    pub async fn join(&mut self, tag: &str, role: Role) -> usize {
        let address = address(tag);
        let node = TestNode::start(dqlite::generate_id(&address), &address);
        self.client.add(node.id(), node.address()).await.unwrap();
        if role != Role::Spare {
            self.client.assign(node.id(), role).await.unwrap();
        }
        self.nodes.push(node);
        self.client.set_servers(self.addresses());
        self.nodes.len() - 1
    }

    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address().to_owned()).collect()
    }

    pub fn index_of(&self, address: &str) -> usize {
        self.nodes.iter().position(|n| n.address() == address).unwrap()
    }
}

/// Polls `check` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
