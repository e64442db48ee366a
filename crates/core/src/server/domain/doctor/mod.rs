//! `microctl doctor`: the dqlite leader compares the three descriptions of the membership
//! (dqlite's configuration, `core_cluster_members`, every member's trust store) and repairs
//! the drift it can prove; everything else is reported as a PROBLEM with the command to run.
//! It also reads every member's clock: one off the others' (their median) by more than
//! [`SKEW_BOUND`] is a PROBLEM naming the member and the fix (its host's time
//! synchronisation), which nothing here can repair.
//!
//! [`gather`] reads the configuration and the rows on the leader and asks every other member
//! for its trust store and its time at once, with a short deadline: a member that does not
//! answer is reported, never guessed at. [`plan`](mod@plan) is pure: each check yields results, some carrying a
//! repair. [`apply`] runs the repairs when asked, the database first, then dqlite, then the
//! trust stores. The rules: dqlite is the truth for roles and for who takes part in the
//! database; the table is the truth for who is a member, with which address and certificate;
//! nothing is done that could cost the quorum, and the leader never removes itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use dqlite::{NodeInfo, Role};
use hyper::StatusCode;

use crate::api::{ClusterMemberLocal, DoctorCheck, DoctorReport, doctor_status, role};
use crate::client::ClientError;
use crate::server::db::members;
use crate::server::domain::certificates;
use crate::server::domain::membership::{recorded_role, retry_config_change, role_name, stalled};
use crate::server::error::Error;
use crate::server::state::State;
use crate::server::state::clock::{self, Offset, SKEW_BOUND, Sample};
use crate::server::state::runtime::Runtime;
use crate::tls;
use crate::truststore::Members;

/// How long the leader waits for each member's trust store.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one trust store repair on another member.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(10);

/// The checks' names, as `microctl doctor` prints them.
mod check {
    /// Every row has a dqlite node at its address.
    pub(super) const ROW_NODE: &str = "row-has-node";
    /// Every dqlite node has a row.
    pub(super) const NODE_ROW: &str = "node-has-row";
    /// The row's role is dqlite's.
    pub(super) const ROLE: &str = "role";
    /// A member trusts exactly the rows, with their addresses and certificates.
    pub(super) const TRUST: &str = "trust-store";
    /// The same for the leader.
    pub(super) const LEADER_TRUST: &str = "leader-trust-store";
    /// Node ids and addresses are unique.
    pub(super) const UNIQUE: &str = "unique";
    /// The member's clock is within the bound of the cluster's time.
    pub(super) const CLOCK: &str = "clock";
    /// The member can write its raft log (disk not full, not read-only, not failing).
    pub(super) const RAFT_LOG: &str = "raft-log";
}

/// A row of `core_cluster_members`, as the checks need it.
#[derive(Debug, Clone)]
struct Row {
    member: ClusterMemberLocal,
    /// Of the row's certificate (empty if it cannot be read).
    fingerprint: String,
    role: String,
    /// For a PENDING row: how long since its join last made progress (`None`: cannot tell).
    quiet_for: Option<Duration>,
}

/// One trust store entry.
#[derive(Debug, Clone)]
struct Trusted {
    name: String,
    address: String,
    fingerprint: String,
}

/// What a member answered when asked for its trust store.
#[derive(Debug, Clone)]
enum Answer {
    Trusts(Vec<Trusted>),
    /// No connection, or no answer in time.
    Unreachable(String),
    /// It refused the leader's certificate.
    Refused(String),
    /// Any other failure.
    Failed(String),
}

/// Everything the checks look at.
#[derive(Debug, Clone)]
struct View {
    leader: String,
    leader_address: String,
    nodes: Vec<NodeInfo>,
    rows: Vec<Row>,
    leader_trust: Vec<Trusted>,
    /// Every other member's answer, by name.
    answers: BTreeMap<String, Answer>,
    /// How long a join may go without progress before it counts as failed (the bound the
    /// heartbeat's rollback uses, [`stalled::stall_bound`]).
    bound: Duration,
    /// Every member's clock offset from the cluster's time, of those that told their time
    /// (`None`: too few did to tell whose clock is off).
    clocks: Option<BTreeMap<String, Offset>>,
    /// Whether each member that answered can write its raft log (`Some`: why it cannot).
    raft_logs: BTreeMap<String, Option<String>>,
}

/// Whose trust store a repair changes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Store {
    Leader,
    Member { address: String },
}

/// A change that brings one view back in line with the one that is the truth for it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Repair {
    /// Copy dqlite's role into the row (if the row still holds `from`).
    SetRole { name: String, from: String, to: String },
    /// Delete the row of a failed join (if it is still PENDING).
    DeleteRow { name: String },
    /// Remove an orphan node from dqlite's configuration.
    RemoveNode { id: u64 },
    /// Remove the spare node a failed join added (if its row could be deleted).
    RemoveJoinNode { name: String, id: u64 },
    /// Add or replace a trust store entry.
    Trust { store: Store, member: ClusterMemberLocal },
    /// Remove a trust store entry.
    Distrust { store: Store, name: String },
}

impl Repair {
    /// What it does (`done`: what it did).
    fn action(&self, done: bool) -> String {
        let (to_do, did) = match self {
            Repair::SetRole { to, .. } => (format!("set its role in the database to {to}"), String::new()),
            Repair::DeleteRow { .. } => ("delete its row".into(), "deleted its row".into()),
            Repair::RemoveNode { id } => (
                format!("remove node {id} from the dqlite configuration"),
                format!("removed node {id} from the dqlite configuration"),
            ),
            Repair::RemoveJoinNode { id, .. } => (
                format!("remove its node {id} from the dqlite configuration"),
                format!("removed its node {id} from the dqlite configuration"),
            ),
            Repair::Trust { member, .. } => (
                format!("trust {} at {}", member.name, member.address),
                format!("now trusts {} at {}", member.name, member.address),
            ),
            Repair::Distrust { name, .. } => (format!("stop trusting {name}"), format!("no longer trusts {name}")),
        };
        if done && !did.is_empty() { did } else { to_do }
    }

    /// Database changes first, then dqlite's, then the trust stores (which may depend on both).
    fn phase(&self) -> u8 {
        match self {
            Repair::SetRole { .. } | Repair::DeleteRow { .. } => 0,
            Repair::RemoveNode { .. } | Repair::RemoveJoinNode { .. } => 1,
            Repair::Trust { .. } | Repair::Distrust { .. } => 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Skipped,
    Problem,
    Repair(Repair),
}

/// One result of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Finding {
    check: &'static str,
    member: String,
    outcome: Outcome,
    detail: String,
}

fn finding(check: &'static str, member: &str, outcome: Outcome, detail: String) -> Finding {
    Finding { check, member: member.to_owned(), outcome, detail }
}

/// Runs every check on this member (which must be the dqlite leader) and, with `repair`, the
/// repairs that are provably safe.
pub(crate) async fn run(state: &State, repair: bool) -> Result<DoctorReport, Error> {
    let runtime = state.online_runtime()?;
    let view = gather(state, &runtime).await?;
    let mut checks = apply(state, &runtime, plan(&view), repair).await;
    let certificates: Vec<(String, String)> =
        view.rows.iter().map(|r| (r.member.name.clone(), r.member.certificate.clone())).collect();
    let cluster = state.cluster_cert().ok().map(|c| c.cert_pem);
    checks.extend(certificate_checks(&certificates, cluster.as_deref(), SystemTime::now()));
    let count = |status: &str| checks.iter().filter(|c| c.status == status).count() as u64;
    let (problems, repaired, skipped) =
        (count(doctor_status::PROBLEM), count(doctor_status::REPAIRED), count(doctor_status::SKIPPED));
    tracing::info!(problems, repaired, skipped, repair, "doctor: checked the membership");
    Ok(DoctorReport { leader: view.leader, repair, checks, problems, repaired, skipped })
}

/// How long each member's certificate (name, PEM) and the cluster's have left: OK, or a
/// PROBLEM from `certificates::WARN_DAYS` before the expiry (and once expired).
fn certificate_checks(members: &[(String, String)], cluster: Option<&str>, now: SystemTime) -> Vec<DoctorCheck> {
    let cluster = cluster.map(|pem| ("cluster".to_owned(), "the cluster certificate".to_owned(), pem));
    members
        .iter()
        .map(|(name, pem)| (name.clone(), format!("{name}'s certificate"), pem.as_str()))
        .chain(cluster)
        .map(|(member, what, pem)| {
            let (status, detail) = match tls::days_left_pem(pem, now) {
                Ok(days) => match certificates::warning(&what, days) {
                    None => (doctor_status::OK, format!("{what} expires in {days} days")),
                    Some(warning) => (doctor_status::PROBLEM, warning),
                },
                Err(err) => (doctor_status::PROBLEM, format!("cannot read when {what} expires: {err}")),
            };
            DoctorCheck { check: "certificate".into(), member, status: status.into(), detail }
        })
        .collect()
}

/// Reads the three views: dqlite's configuration and the rows here, and every other member's
/// trust store (asked at once, each within [`ASK_TIMEOUT`]).
async fn gather(state: &State, runtime: &Runtime) -> Result<View, Error> {
    let nodes = runtime.db.client().cluster().await?;
    let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await?;
    let snapshot = state.trust().snapshot();

    let others: Vec<&members::MemberRow> = rows.iter().filter(|r| r.address != runtime.address).collect();
    let mut asks = tokio::task::JoinSet::new();
    for row in &others {
        let client = state.member_client(&row.address)?.with_timeout(ASK_TIMEOUT);
        let name = row.name.clone();
        asks.spawn(async move {
            let time = async {
                let (sent, start) = (SystemTime::now(), Instant::now());
                let status = client.status().await.ok()?;
                let time = humantime::parse_rfc3339_weak(&status.time).ok()?;
                Some(Sample::measure(sent, start.elapsed(), time))
            };
            let raft_log = async { client.readiness().await.ok().map(|r| r.raft_log_problem) };
            let (trust, sample, raft_log) = tokio::join!(client.truststore(), time, raft_log);
            (name, trust, sample, raft_log)
        });
    }
    let mut answers = BTreeMap::new();
    let mut samples = BTreeMap::from([(state.name(), Sample::LEADER)]);
    let own_raft_log = runtime.disk.health().problem().map(str::to_owned);
    let mut raft_logs = BTreeMap::from([(state.name(), own_raft_log)]);
    while let Some(joined) = asks.join_next().await {
        if let Ok((name, result, sample, raft_log)) = joined {
            if let Some(raft_log) = raft_log {
                raft_logs.insert(name.clone(), raft_log);
            }
            if let Some(sample) = sample {
                samples.insert(name.clone(), sample);
            }
            answers.insert(name, answer(result));
        }
    }
    let clocks = clock::offsets(&samples, rows.len());
    for row in others {
        answers.entry(row.name.clone()).or_insert_with(|| Answer::Failed("the request was lost".into()));
    }

    let now = state.clock().now();
    let trust_dir = state.dir().truststore_dir();
    let rows = rows
        .into_iter()
        .map(|r| Row {
            fingerprint: tls::fingerprint_pem(&r.certificate).unwrap_or_default(),
            // Progress is stamped in the cluster's time, as the heartbeat stamps it.
            quiet_for: (r.role == role::PENDING)
                .then(|| stalled::quiet_for(&r.heartbeat, trusted_for(&r, &snapshot, &trust_dir), now))
                .flatten(),
            role: r.role,
            member: ClusterMemberLocal { name: r.name, address: r.address, certificate: r.certificate },
        })
        .collect();
    let leader_trust = snapshot
        .iter()
        .map(|e| Trusted {
            name: e.member.name.clone(),
            address: e.member.address.clone(),
            fingerprint: e.fingerprint.clone(),
        })
        .collect();
    let bound = stalled::stall_bound(state.settings().heartbeat);
    Ok(View {
        leader: state.name(),
        leader_address: runtime.address.clone(),
        nodes,
        rows,
        leader_trust,
        answers,
        bound,
        clocks,
        raft_logs,
    })
}

fn answer(result: Result<Vec<ClusterMemberLocal>, ClientError>) -> Answer {
    match result {
        Ok(entries) => Answer::Trusts(
            entries
                .into_iter()
                .map(|m| Trusted {
                    fingerprint: tls::fingerprint_pem(&m.certificate).unwrap_or_default(),
                    name: m.name,
                    address: m.address,
                })
                .collect(),
        ),
        Err(err @ (ClientError::Connect { .. } | ClientError::Timeout { .. })) => Answer::Unreachable(err.to_string()),
        Err(err) if err.status() == Some(StatusCode::FORBIDDEN) => Answer::Refused(err.to_string()),
        Err(err) => Answer::Failed(err.to_string()),
    }
}

/// How long ago this member wrote the trust entry of a row's member (by its own clock), if it
/// trusts it with the row's address and certificate.
fn trusted_for(row: &members::MemberRow, trusted: &Members, dir: &Path) -> Option<Duration> {
    trusted
        .by_name(&row.name)
        .filter(|e| e.member.address == row.address && e.member.certificate == row.certificate)
        .and_then(|_| std::fs::metadata(dir.join(format!("{}.toml", row.name))).ok())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok())
}

mod plan;
use plan::plan;

/// Runs the repairs (with `repair`) and turns the findings into the report's results.
async fn apply(state: &State, runtime: &Runtime, findings: Vec<Finding>, repair: bool) -> Vec<DoctorCheck> {
    let mut results: Vec<Option<Result<(), String>>> = vec![None; findings.len()];
    if repair {
        let mut rows_kept: HashSet<&str> = HashSet::new();
        for phase in 0..3 {
            for (i, f) in findings.iter().enumerate() {
                let Outcome::Repair(r) = &f.outcome else { continue };
                if r.phase() != phase {
                    continue;
                }
                if let Repair::Distrust { name, .. } | Repair::RemoveJoinNode { name, .. } = r
                    && rows_kept.contains(name.as_str())
                {
                    results[i] = Some(Err(format!("not done: {name}'s row could not be deleted")));
                    continue;
                }
                let result = execute(state, runtime, r).await;
                match &result {
                    Ok(()) => {
                        tracing::info!(check = f.check, member = f.member, repair = r.action(true), "doctor: repaired")
                    }
                    Err(err) => {
                        tracing::warn!(check = f.check, member = f.member, error = err, "doctor: repair failed");
                        if let Repair::DeleteRow { name } = r {
                            rows_kept.insert(name);
                        }
                    }
                }
                results[i] = Some(result);
            }
        }
    }
    findings.into_iter().zip(results).map(|(f, result)| result_of(f, result)).collect()
}

fn result_of(f: Finding, result: Option<Result<(), String>>) -> DoctorCheck {
    let (status, detail) = match (&f.outcome, result) {
        (Outcome::Ok, _) => (doctor_status::OK, f.detail),
        (Outcome::Skipped, _) => (doctor_status::SKIPPED, f.detail),
        (Outcome::Problem, _) => (doctor_status::PROBLEM, f.detail),
        (Outcome::Repair(r), None) => (
            doctor_status::PROBLEM,
            format!("{} (repairable: without --check the doctor would {})", f.detail, r.action(false)),
        ),
        (Outcome::Repair(r), Some(Ok(()))) => {
            (doctor_status::REPAIRED, format!("{} (repaired: {})", f.detail, r.action(true)))
        }
        (Outcome::Repair(r), Some(Err(err))) => {
            (doctor_status::PROBLEM, format!("{} (could not {}: {err})", f.detail, r.action(false)))
        }
    };
    DoctorCheck { check: f.check.to_owned(), member: f.member, status: status.to_owned(), detail }
}

async fn execute(state: &State, runtime: &Runtime, repair: &Repair) -> Result<(), String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    match repair {
        Repair::SetRole { name, from, to } => {
            let sql = "UPDATE core_cluster_members SET role = ? WHERE name = ? AND role = ?";
            let done = runtime.db.exec(sql, &[to.as_str().into(), name.as_str().into(), from.as_str().into()]).await;
            changed_one(done.map_err(|e| text(&e))?.rows_affected)
        }
        Repair::DeleteRow { name } => {
            let sql = "DELETE FROM core_cluster_members WHERE name = ? AND role = ?";
            let done = runtime.db.exec(sql, &[name.as_str().into(), role::PENDING.into()]).await;
            changed_one(done.map_err(|e| text(&e))?.rows_affected)
        }
        Repair::RemoveNode { id } | Repair::RemoveJoinNode { id, .. } => {
            let client = runtime.db.client().clone();
            let id = *id;
            retry_config_change("removing the orphan dqlite node", || client.remove(id)).await.map_err(|e| text(&e))
        }
        Repair::Trust { store: Store::Leader, member } => {
            state.trust().add(member.clone()).map_err(|e| text(&e))?;
            runtime.set_servers(state.trust().snapshot().addresses());
            Ok(())
        }
        Repair::Distrust { store: Store::Leader, name } => {
            if *name == state.name() {
                return Err("a member never stops trusting itself".into());
            }
            state.trust().remove(name).map_err(|e| text(&e))?;
            runtime.set_servers(state.trust().snapshot().addresses());
            Ok(())
        }
        // As notifications: the member changes its own store and passes nothing on.
        Repair::Trust { store: Store::Member { address }, member } => {
            let client = state.member_client(address).map_err(|e| text(&e))?;
            client.with_timeout(REPAIR_TIMEOUT).as_notification().add_trust(member).await.map_err(|e| text(&e))
        }
        Repair::Distrust { store: Store::Member { address }, name } => {
            let client = state.member_client(address).map_err(|e| text(&e))?;
            client.with_timeout(REPAIR_TIMEOUT).as_notification().remove_trust(name).await.map_err(|e| text(&e))
        }
    }
}

fn changed_one(rows: u64) -> Result<(), String> {
    match rows {
        0 => Err("the row changed meanwhile; run the doctor again".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_a_problem_from_thirty_days_before_they_expire() {
        let pem = crate::certs::generate("m1", &[]).expect("a certificate").cert_pem;
        let members = [("m1".to_owned(), pem.clone()), ("m2".to_owned(), "not a certificate".to_owned())];
        let seen = |now: SystemTime| -> Vec<(String, String, String)> {
            certificate_checks(&members, Some(&pem), now).into_iter().map(|c| (c.member, c.status, c.detail)).collect()
        };
        let now = SystemTime::now();
        let today = seen(now);
        assert_eq!(today.len(), 3);
        assert_eq!((today[0].0.as_str(), today[0].1.as_str()), ("m1", doctor_status::OK));
        assert!(today[0].2.starts_with("m1's certificate expires in 36"), "{today:?}");
        assert_eq!((today[1].0.as_str(), today[1].1.as_str()), ("m2", doctor_status::PROBLEM));
        assert!(today[1].2.starts_with("cannot read when m2's certificate expires"), "{today:?}");
        assert_eq!((today[2].0.as_str(), today[2].1.as_str()), ("cluster", doctor_status::OK));
        let near = seen(now + Duration::from_secs(3640 * 86_400));
        assert_eq!(near[0].1, doctor_status::PROBLEM);
        assert!(near[0].2.contains("expires in 9 days") || near[0].2.contains("expires in 10 days"), "{near:?}");
        assert!(near[2].2.starts_with("the cluster certificate expires in"), "{near:?}");
    }
}
