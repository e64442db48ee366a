//! Many members on one machine (16 in the default run, 256 with `--only scale256`): one
//! bootstraps, the others join (one after the other, or all at once), until 3 voters, 3
//! stand-bys and the rest as spares are ONLINE; then `cluster list` is timed, the whole cluster
//! idles and its CPU time is measured.

use std::time::{Duration, Instant};

use microcluster::api::role;
use microcluster_tests::{Cluster, Member, wait_until};

use crate::Error;
use crate::procfs::{self, CpuMeter};
use crate::sides::{self, bench_args};

/// Members in the default run's cluster.
pub(crate) const MEMBERS: usize = 16;
/// Members with `--only scale256`.
pub(crate) const MANY: usize = 256;

/// One formed cluster's figures.
#[derive(Debug)]
pub(crate) struct Figures {
    /// Seconds from the bootstrap until every member is ONLINE in its role.
    pub(crate) formation: f64,
    /// Seconds `microctl cluster list` took on the bootstrapping member, once formed.
    pub(crate) list: f64,
    /// Length of a join token issued once formed, bytes.
    pub(crate) token: f64,
    /// Whole-cluster CPU while idle, % of one core.
    pub(crate) idle_cpu: f64,
    /// Median resident memory of a member, MiB.
    pub(crate) rss: f64,
}

/// Bootstraps member 0, issues every token, then runs all joins at once.
fn form_concurrently(cluster: &Cluster) -> Result<Duration, String> {
    let start = Instant::now();
    cluster.members[0].bootstrap();
    let tokens: Vec<String> =
        cluster.members[1..].iter().map(|m| cluster.members[0].ctl_ok(&["tokens", "add", &m.name])).collect();
    let failures: Vec<String> = std::thread::scope(|s| {
        let joins: Vec<_> = cluster.members[1..]
            .iter()
            .zip(&tokens)
            .map(|(m, token)| {
                s.spawn(move || (m.name.clone(), m.ctl(&["init", &m.name, &m.address, "--token", token.trim()])))
            })
            .collect();
        joins
            .into_iter()
            .filter_map(|j| j.join().ok())
            .filter(|(_, out)| !out.success)
            .map(|(name, out)| format!("{name}: {}", out.stderr.trim()))
            .collect()
    });
    if !failures.is_empty() {
        return Err(format!("concurrent joins failed: {}", failures.join("; ")));
    }
    // Each joiner picks its role from what it sees, so joins at once may overshoot; the
    // leader's heartbeat then corrects one role per round. Show where the joins left it.
    let members = cluster.members[0].members();
    let count = |r: &str| members.iter().filter(|m| m["role"] == r).count();
    eprintln!(
        "  joins answered after {:.1} s: {} voters, {} stand-bys, {} spares",
        start.elapsed().as_secs_f64(),
        count(role::VOTER),
        count(role::STAND_BY),
        count(role::SPARE)
    );
    let n = cluster.members.len();
    wait_until(&format!("{n} members ONLINE in their roles"), formation_limit(n), || {
        sides::formed(&cluster.members[0].members(), n, 3, 3).then_some(())
    });
    Ok(start.elapsed())
}

/// How long a formation of `n` members may take before the run gives up.
pub(crate) fn formation_limit(n: usize) -> Duration {
    Duration::from_secs(120.max(2 * n as u64))
}

/// Starts `members` members, forms the cluster, times `cluster list`, idles `settle`, then
/// measures `idle` seconds.
pub(crate) async fn run(
    members: usize,
    concurrent: bool,
    heartbeat: Option<&str>,
    settle: Duration,
    idle: Duration,
) -> Result<Figures, Error> {
    let args = match heartbeat {
        Some(h) => vec!["--heartbeat".to_owned(), h.to_owned()],
        None => bench_args(),
    };
    let (cluster, formation) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let cluster = Cluster::start_with(members, |m| m.args = args.clone());
        eprintln!("  {members} daemons started in {:.1} s", started.elapsed().as_secs_f64());
        let formation = if concurrent { form_concurrently(&cluster) } else { Ok(sides::form_sequentially(&cluster)) };
        (cluster, formation)
    })
    .await?;
    let formation = match formation {
        Ok(f) => f,
        Err(err) => {
            tokio::task::spawn_blocking(move || drop(cluster)).await?;
            return Err(err.into());
        }
    };
    eprintln!("  formed in {:.1} s", formation.as_secs_f64());
    let listed = Instant::now();
    let listing = cluster.members[0].ctl_ok(&["cluster", "list", "-f", "csv"]);
    let list = listed.elapsed().as_secs_f64();
    eprintln!("  cluster list: {} members in {list:.2} s", listing.lines().count().saturating_sub(1));
    let token = cluster.members[0].ctl_ok(&["tokens", "add", "one-more"]).trim().len() as f64;
    eprintln!("  a join token: {token} bytes");
    let pids: Vec<u32> = cluster.members.iter().filter_map(Member::pid).collect();
    tokio::time::sleep(settle).await;
    let meters: Vec<CpuMeter> = pids.iter().map(|p| CpuMeter::start(&[*p])).collect();
    tokio::time::sleep(idle).await;
    let mut each: Vec<f64> = meters.iter().map(CpuMeter::percent_of_core).collect();
    let idle_cpu = each.iter().sum();
    // The leader (member 1) against the rest: where the idle CPU goes.
    let first = each.first().copied().unwrap_or_default();
    eprintln!(
        "  idle CPU: {idle_cpu:.2} % of a core in all; member 1 {first:.2} %, median member {:.2} %",
        procfs::median(&mut each)
    );
    let mut rss: Vec<f64> = pids.iter().filter_map(|p| procfs::rss_mib(*p)).collect();
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(Figures { formation: formation.as_secs_f64(), list, token, idle_cpu, rss: procfs::median(&mut rss) })
}
