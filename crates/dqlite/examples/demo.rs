//! A three-node dqlite cluster inside one process, driven through the wire-protocol client:
//! bootstrap, join, replicate, lose the leader, keep writing. `cargo run -p dqlite --example demo`.

use std::time::{Duration, Instant};

use dqlite::{BOOTSTRAP_ID, Client, Node, Role};

fn start(id: u64, address: &str, dir: &std::path::Path) -> Result<Node, dqlite::NodeError> {
    let mut node = Node::builder(id, address, dir)
        .network_latency(Duration::from_millis(20))
        .connect_func(|peer| dqlite::connect_blocking(peer, Duration::from_secs(1)))
        .build()?;
    node.start()?;
    Ok(node)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("dqlite-demo-{}", std::process::id()));
    let addresses: Vec<String> = (1..=3).map(|i| format!("@dqlite-demo-{}-{i}", std::process::id())).collect();

    let started = Instant::now();
    let mut nodes = vec![start(BOOTSTRAP_ID, &addresses[0], &dir.join("1"))?];
    let client = Client::new(addresses.clone());
    for (i, address) in addresses.iter().enumerate().skip(1) {
        let node = start(dqlite::generate_id(address), address, &dir.join((i + 1).to_string()))?;
        client.add(node.id(), address).await?;
        client.assign(node.id(), Role::Voter).await?;
        nodes.push(node);
    }
    println!("3 voters formed in {:?}", started.elapsed());
    for node in client.cluster().await? {
        println!("  {:>20}  {:<28} {}", node.id, node.address, node.role.map_or("?", Role::as_str));
    }

    let mut db = client.database("demo");
    db.exec("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)", &[]).await?;
    let t = Instant::now();
    for i in 0..100 {
        db.exec("INSERT OR REPLACE INTO kv VALUES (?, ?)", &[format!("key{i}").into(), "value".into()]).await?;
    }
    println!("100 replicated writes in {:?}", t.elapsed());

    let leader = client.leader().await?;
    println!("stopping the leader {}", leader.address);
    let index = addresses.iter().position(|a| *a == leader.address).ok_or("leader not in list")?;
    let dead = nodes.remove(index);
    let t = Instant::now();
    tokio::task::spawn_blocking(move || drop(dead)).await?;
    db.exec("INSERT INTO kv VALUES ('after', 'failover')", &[]).await?;
    println!(
        "first write after losing the leader took {:?}; new leader {}",
        t.elapsed(),
        client.leader().await?.address
    );
    let rows = db.query("SELECT count(*) FROM kv", &[]).await?;
    println!("rows: {}", rows.rows[0].values()[0]);

    tokio::task::spawn_blocking(move || drop(nodes)).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
