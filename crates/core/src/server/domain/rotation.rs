//! Replacing certificates while the cluster runs: the cluster certificate, members' own and
//! extension servers' dedicated ones, new or supplied by the operator.
//!
//! The leader coordinates (a member asked passes the request on), in three steps, each on every
//! member it can reach:
//! 1. **prepare**: each keeps the next pairs beside the current ones and accepts the next
//!    cluster certificate besides the current one; the coordinator then records every member's
//!    next certificate next to its current one (database row and every trust store), so that
//!    either is trusted. Nothing presents anything new yet.
//! 2. **switch**: each makes its next pairs current and presents them from its next handshake
//!    on (listeners, the dqlite tunnel and its clients); connections already open finish with
//!    what they were made with.
//! 3. **finish**: the old certificates are dropped everywhere: a member's old certificate is
//!    refused and the old cluster certificate no longer accepted.
//!
//! A member that could not take part (down, cut off) keeps what it had. One whose own
//! certificate was to be replaced is left out of that; once the others no longer accept the
//! old cluster certificate it can reach none of them, and it catches up by itself
//! ([`catch_up`]): it asks a member for the cluster's certificates, and accepts the new
//! cluster certificate only if the one it knows vouched for it (each replacement is signed by
//! the key it replaces: [`crate::tls::Endorsement`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::{
    CertificatesCurrent, CertificatesPrepare, CertificatesPrepared, CertificatesRotate, CertificatesRotated,
    ClusterMemberLocal, KeyPair, NextCluster,
};
use crate::cert_check::{self, Purpose, Supplied};
use crate::certs;
use crate::client::Client;
use crate::server::db::members;
use crate::server::error::{Error, ErrorKind, OperationError};
use crate::server::state::State;
use crate::server::state::runtime::Runtime;
use crate::server::stop::ShutdownSignal;
use crate::tls::{self, Identity};

/// How long a member may take to answer one step.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a rotation was refused before anything changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RotateRefused {
    #[error("no member is called {0:?}")]
    NoSuchMember(String),
    #[error("no extension server called {0:?} has a dedicated certificate (those that do: {1})")]
    NoSuchServer(String, String),
    #[error("a supplied pair must replace `cluster` or a member's certificate, not {0:?}")]
    NotReplaceable(String),
    #[error("the supplied pair for {what} cannot be used: {problem}")]
    BadPair { what: String, problem: String },
    #[error("the CA cannot be used: {0}")]
    BadCa(String),
    #[error(
        "the certificates of {0} are not issued by that CA: give each one a certificate it issued first \
         (`microctl cluster certificates set NAME --cert FILE --key FILE`), then require the CA"
    )]
    NotIssuedByCa(String),
    #[error(
        "this cluster requires members' certificates issued by its CA (cluster.ca): {0:?} cannot be given a \
         new certificate made here; supply one with `microctl cluster certificates set {0} --cert FILE --key FILE`"
    )]
    NeedsCa(String),
}

impl OperationError for RotateRefused {
    fn kind(&self) -> ErrorKind {
        match self {
            RotateRefused::NoSuchMember(_) | RotateRefused::NoSuchServer(..) => ErrorKind::NotFound,
            _ => ErrorKind::Invalid,
        }
    }
}

/// What a rotation replaces, decided before anything changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Plan {
    /// The cluster certificate: `Some(None)` a new one made here, `Some(Some(pair))` the
    /// supplied one.
    pub(crate) cluster: Option<Option<KeyPair>>,
    /// Members whose own certificate is replaced, each with the supplied pair if any.
    pub(crate) members: BTreeMap<String, Option<KeyPair>>,
    /// Extension servers whose dedicated certificate every member replaces.
    pub(crate) servers: Vec<String>,
}

/// Decides what `request` replaces, given the members' names, the servers with a dedicated
/// certificate and whether the cluster requires a CA. Nothing named means everything (but the
/// members' certificates when a CA is required: those must be supplied).
pub(crate) fn plan(
    request: &CertificatesRotate,
    members: &[String],
    dedicated: &[String],
    requires_ca: bool,
) -> Result<Plan, RotateRefused> {
    let everything = !request.cluster
        && request.members.is_empty()
        && request.servers.is_empty()
        && request.supplied.is_empty()
        && request.ca.is_none();
    let mut plan = Plan::default();
    if everything || request.cluster || request.supplied.contains_key("cluster") {
        plan.cluster = Some(request.supplied.get("cluster").cloned());
    }
    // With a CA, a member's certificate cannot be made here: everything is then the rest.
    let named: BTreeSet<&String> = if everything && requires_ca {
        BTreeSet::new()
    } else if everything {
        members.iter().collect()
    } else {
        request.members.iter().chain(request.supplied.keys().filter(|k| *k != "cluster")).collect()
    };
    for name in named {
        if !members.contains(name) {
            return Err(if request.supplied.contains_key(name) && !request.members.contains(name) {
                RotateRefused::NotReplaceable(name.clone())
            } else {
                RotateRefused::NoSuchMember(name.clone())
            });
        }
        let supplied = request.supplied.get(name).cloned();
        if supplied.is_none() && requires_ca {
            return Err(RotateRefused::NeedsCa(name.clone()));
        }
        plan.members.insert(name.clone(), supplied);
    }
    plan.servers = if everything { dedicated.to_vec() } else { request.servers.clone() };
    if let Some(unknown) = plan.servers.iter().find(|s| !dedicated.contains(s)) {
        let known = if dedicated.is_empty() { "none".to_owned() } else { dedicated.join(", ") };
        return Err(RotateRefused::NoSuchServer(unknown.clone(), known));
    }
    Ok(plan)
}

/// Replaces the certificates `request` names (see the module's documentation). Run on the
/// leader, holding `State::lock_trust` (one rotation at a time, and no heartbeat round between
/// its steps).
pub(crate) async fn rotate(state: &State, request: CertificatesRotate) -> Result<CertificatesRotated, Error> {
    let started = Instant::now();
    let runtime = state.online_runtime()?;
    let trusted = state.members();
    let names: Vec<String> = trusted.iter().map(|m| m.name.clone()).collect();
    let mut request = request;
    // microcluster's way: the CA comes with the cluster's pair.
    if let Some(pair) = request.supplied.get_mut("cluster")
        && !pair.ca.is_empty()
    {
        request.ca = Some(std::mem::take(&mut pair.ca));
    }
    let previous_ca = state.trust().snapshot().ca().unwrap_or_default().to_owned();
    let ca = match &request.ca {
        Some(ca) => (!ca.is_empty()).then(|| ca.clone()),
        None => (!previous_ca.is_empty()).then(|| previous_ca.clone()),
    };
    let plan = plan(&request, &names, &state.http().dedicated_servers(), ca.is_some())?;
    check_supplied(&plan, ca.as_deref())?;
    if let Some(ca) = request.ca.as_deref().filter(|ca| !ca.is_empty()) {
        issued_by(ca, &trusted, &plan)?;
    }

    let next_cluster = match &plan.cluster {
        None => None,
        Some(supplied) => {
            let pair = match supplied {
                Some(pair) => pair.clone(),
                None => {
                    // The same names as the one it replaces (clients may check one).
                    let mut names = cert_check::dns_names(&runtime.cluster_identity().cert_pem);
                    if names.is_empty() {
                        names.push(state.name());
                    }
                    let fresh = certs::generate(&names[0], &names[1..]).map_err(Error::wrap)?;
                    KeyPair { cert: fresh.cert_pem, key: fresh.key_pem, ca: String::new() }
                }
            };
            let endorsement = tls::endorse(&runtime.cluster_identity(), &pair.cert).map_err(Error::wrap)?;
            Some(NextCluster { pair, endorsement })
        }
    };
    let mut rotated = CertificatesRotated::default();

    // 1. Prepare: every member keeps its next pairs and accepts the next cluster certificate.
    let requests: BTreeMap<String, CertificatesPrepare> = trusted
        .iter()
        .map(|m| {
            let request = CertificatesPrepare {
                cluster: next_cluster.clone(),
                server: plan.members.contains_key(&m.name),
                server_pair: plan.members.get(&m.name).cloned().flatten(),
                servers: plan.servers.clone(),
                ca: request.ca.clone(),
            };
            (m.name.clone(), request)
        })
        .collect();
    let prepared = on_every_member(state, &runtime, &trusted, |state, runtime, client, name| {
        let request = requests.get(&name).cloned().unwrap_or_default();
        async move {
            match client {
                None => prepare(&state, &runtime, request),
                Some(client) => client.prepare_certificates(&request).await.map_err(Error::wrap),
            }
        }
    })
    .await;
    let mut taking_part = BTreeSet::new();
    let mut next_certs: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (member, outcome) in prepared {
        match outcome {
            Ok(answer) => {
                taking_part.insert(member.name.clone());
                if let Some(next) = answer.server {
                    // What it presents now, not its row: a rotation cut short may have left two.
                    let current = if answer.current.is_empty() { member.certificate.clone() } else { answer.current };
                    next_certs.insert(member.name.clone(), (current, next));
                }
                for (server, fingerprint) in answer.servers {
                    rotated.servers.insert(format!("{}/{server}", member.name), fingerprint);
                }
            }
            Err(err) => {
                tracing::warn!(member = member.name, error = %err, "certificate rotation: a member cannot prepare");
                rotated.skipped.insert(member.name.clone(), format!("prepare: {err}"));
            }
        }
    }

    // A CA changes with every member or not at all: one that missed it would go on judging
    // certificates by the old rule, and a heartbeat does not carry it.
    if request.ca.is_some() && !rotated.skipped.is_empty() {
        let undo = CertificatesPrepare { ca: Some(previous_ca), ..CertificatesPrepare::default() };
        let _ = on_every_member(state, &runtime, &trusted, |state, runtime, client, name| {
            let (undo, part) = (undo.clone(), taking_part.contains(&name));
            async move {
                match (part, client) {
                    (false, _) => Ok(CertificatesPrepared::default()),
                    (true, None) => prepare(&state, &runtime, undo),
                    (true, Some(client)) => client.prepare_certificates(&undo).await.map_err(Error::wrap),
                }
            }
        })
        .await;
        finish_everywhere(state, &runtime, &trusted, &taking_part).await;
        let missing: Vec<String> = rotated.skipped.iter().map(|(name, why)| format!("{name} ({why})")).collect();
        return Err(Error::unavailable(format!(
            "the CA is changed only with every member, and {} could not take part: nothing was changed",
            missing.join(", ")
        )));
    }

    // Every member taking part must trust each next certificate before anyone presents it.
    let both: Vec<ClusterMemberLocal> = trusted
        .iter()
        .filter_map(|m| {
            let (old, next) = next_certs.get(&m.name)?;
            Some(ClusterMemberLocal { certificate: format!("{}\n{}", old.trim_end(), next.trim_end()), ..m.clone() })
        })
        .collect();
    if let Err(err) = record_and_trust(state, &runtime, &trusted, &taking_part, &both).await {
        tracing::warn!(error = %err, "certificate rotation: abandoned before any switch");
        let old: Vec<ClusterMemberLocal> =
            trusted.iter().filter(|m| next_certs.contains_key(&m.name)).cloned().collect();
        let _ = record_and_trust(state, &runtime, &trusted, &taking_part, &old).await;
        finish_everywhere(state, &runtime, &trusted, &taking_part).await;
        return Err(err.context(
            "rotating certificates: the next certificates could not be trusted everywhere, so \
                                nothing was switched; run it again",
        ));
    }

    // 2. Switch.
    let switched = on_every_member(state, &runtime, &trusted, |state, runtime, client, name| {
        let part = taking_part.contains(&name);
        async move {
            if !part {
                return Err(Error::unavailable("not taking part"));
            }
            match client {
                None => switch(&state, &runtime).await,
                Some(client) => client.switch_certificates().await.map_err(Error::wrap),
            }
        }
    })
    .await;
    let mut now_presenting = BTreeSet::new();
    for (member, outcome) in switched {
        match outcome {
            Ok(()) => {
                now_presenting.insert(member.name.clone());
            }
            Err(err) if taking_part.contains(&member.name) => {
                tracing::warn!(member = member.name, error = %err, "certificate rotation: a member cannot switch");
                rotated.skipped.insert(member.name.clone(), format!("switch: {err}"));
            }
            Err(_) => {}
        }
    }

    // 3. Finish: each member is known by the certificate it now presents, and only that one.
    let finals: Vec<ClusterMemberLocal> = trusted
        .iter()
        .filter_map(|m| {
            let (old, next) = next_certs.get(&m.name)?;
            let certificate = if now_presenting.contains(&m.name) { next.clone() } else { old.clone() };
            Some(ClusterMemberLocal { certificate, ..m.clone() })
        })
        .collect();
    if let Err(err) = record_and_trust(state, &runtime, &trusted, &now_presenting, &finals).await {
        // Those that did not hear it get the final entries from the next heartbeats.
        tracing::warn!(error = %err, "certificate rotation: the final certificates are not recorded everywhere yet");
    }
    finish_everywhere(state, &runtime, &trusted, &taking_part).await;

    for member in &finals {
        if now_presenting.contains(&member.name) {
            rotated.members.insert(member.name.clone(), tls::fingerprint_pem(&member.certificate).unwrap_or_default());
        }
    }
    if next_cluster.is_some() {
        rotated.cluster = Some(runtime.cluster_fingerprint());
    }
    rotated.servers.retain(|key, _| key.split('/').next().is_some_and(|m| now_presenting.contains(m)));
    // A supplied pair is what was asked for: one that was not installed is a failure (a new
    // one made for a member that was away is made again later with `rotate --member`).
    let not_installed: Vec<String> = plan
        .members
        .iter()
        .filter(|(name, pair)| pair.is_some() && !now_presenting.contains(*name))
        .map(|(name, _)| format!("{name} ({})", rotated.skipped.get(name).map_or("did not switch", String::as_str)))
        .collect();
    if !not_installed.is_empty() {
        return Err(Error::unavailable(format!(
            "the supplied certificate was not installed on {}: nothing was replaced there; run it again once the \
             member can be reached",
            not_installed.join(", ")
        )));
    }
    if let Some(ca) = &request.ca {
        rotated.ca = Some(!ca.is_empty());
    }
    rotated.duration_ms = started.elapsed().as_millis() as u64;
    tracing::info!(
        target: "audit",
        cluster = rotated.cluster.as_deref().unwrap_or("unchanged"),
        members = ?rotated.members.keys().collect::<Vec<_>>(),
        servers = ?rotated.servers.keys().collect::<Vec<_>>(),
        skipped = ?rotated.skipped,
        "replaced certificates"
    );
    Ok(rotated)
}

/// Refuses a supplied pair that would fail later (`cert_check`: key type, the key is the
/// certificate's, validity, usage, a member's name, and the CA if one is required).
fn check_supplied(plan: &Plan, ca: Option<&str>) -> Result<(), RotateRefused> {
    let check = |what: &str, purpose: Purpose<'_>, pair: &KeyPair, ca: Option<&str>| {
        cert_check::check_pair(
            purpose,
            Supplied { path: "the certificate", pem: &pair.cert },
            Supplied { path: "the key", pem: &pair.key },
            ca.map(|pem| Supplied { path: "the CA", pem }),
            std::time::SystemTime::now(),
        )
        .map(drop)
        .map_err(|e| RotateRefused::BadPair { what: what.to_owned(), problem: e.to_string() })
    };
    if let Some(Some(pair)) = &plan.cluster {
        check("the cluster", Purpose::Cluster, pair, None)?;
    }
    for (name, pair) in &plan.members {
        if let Some(pair) = pair {
            check(name, Purpose::Member(name), pair, ca)?;
        }
    }
    Ok(())
}

/// Refuses a CA that has not issued every member's certificate as it will be after the
/// rotation (a member it did not issue would be refused by all the others).
fn issued_by(ca: &str, trusted: &[ClusterMemberLocal], plan: &Plan) -> Result<(), RotateRefused> {
    let now = std::time::SystemTime::now();
    cert_check::check_ca(Supplied { path: "the CA", pem: ca }, now).map_err(|e| RotateRefused::BadCa(e.to_string()))?;
    let not_issued: Vec<&str> = trusted
        .iter()
        .filter(|m| {
            let certificate = match plan.members.get(&m.name) {
                Some(Some(pair)) => pair.cert.as_str(),
                _ => m.certificate.as_str(),
            };
            !cert_check::chains_to(certificate, ca, Purpose::Member(&m.name), now)
        })
        .map(|m| m.name.as_str())
        .collect();
    if not_issued.is_empty() { Ok(()) } else { Err(RotateRefused::NotIssuedByCa(not_issued.join(", "))) }
}

/// Runs `step` for every trusted member at once: here (`None`) for this member, through a
/// client otherwise; each member's outcome.
async fn on_every_member<T, F, Fut>(
    state: &State,
    runtime: &Arc<Runtime>,
    trusted: &[ClusterMemberLocal],
    step: F,
) -> Vec<(ClusterMemberLocal, Result<T, Error>)>
where
    T: Send + 'static,
    F: Fn(State, Arc<Runtime>, Option<Client>, String) -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>> + Send + 'static,
{
    let me = state.name();
    let mut set = tokio::task::JoinSet::new();
    for member in trusted {
        let client = (member.name != me).then(|| {
            Client::https(member.address.clone(), runtime.peer_tls.clone())
                .with_timeout(STEP_TIMEOUT)
                .with_connect_timeout(Duration::from_secs(2))
        });
        let fut = step(state.clone(), runtime.clone(), client, member.name.clone());
        let member = member.clone();
        set.spawn(async move {
            let outcome = tokio::time::timeout(STEP_TIMEOUT, fut)
                .await
                .unwrap_or_else(|_| Err(Error::unavailable("no answer in time")));
            (member, outcome)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(outcome) = joined {
            outcomes.push(outcome);
        }
    }
    outcomes.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    outcomes
}

/// Records `entries` (members with their certificates as they should be known) in the
/// database and in the trust store of every member in `on`; fails if any of them did not
/// take them.
async fn record_and_trust(
    state: &State,
    runtime: &Arc<Runtime>,
    trusted: &[ClusterMemberLocal],
    on: &BTreeSet<String>,
    entries: &[ClusterMemberLocal],
) -> Result<(), Error> {
    if entries.is_empty() {
        return Ok(());
    }
    let rows: Vec<(String, String)> = entries.iter().map(|m| (m.name.clone(), m.certificate.clone())).collect();
    runtime
        .db
        .transaction(move |tx| {
            Box::pin(async move {
                for (name, certificate) in &rows {
                    members::set_certificate(tx, name, certificate).await?;
                }
                Ok(())
            })
        })
        .await?;
    let entries = entries.to_vec();
    let outcomes = on_every_member(state, runtime, trusted, |state, _runtime, client, name| {
        let entries = entries.clone();
        let part = on.contains(&name);
        async move {
            if !part {
                return Ok(());
            }
            for entry in &entries {
                match &client {
                    None => {
                        state.trust().add(entry.clone()).map_err(Error::wrap)?;
                    }
                    Some(client) => client.clone().as_notification().add_trust(entry).await.map_err(Error::wrap)?,
                }
            }
            Ok(())
        }
    })
    .await;
    let failed: Vec<String> =
        outcomes.into_iter().filter_map(|(m, outcome)| outcome.err().map(|e| format!("{}: {e}", m.name))).collect();
    if failed.is_empty() { Ok(()) } else { Err(Error::unavailable(failed.join("; "))) }
}

/// Tells every member in `on` that the rotation is over (see [`finish`]).
async fn finish_everywhere(
    state: &State,
    runtime: &Arc<Runtime>,
    trusted: &[ClusterMemberLocal],
    on: &BTreeSet<String>,
) {
    let outcomes = on_every_member(state, runtime, trusted, |state, runtime, client, name| {
        let part = on.contains(&name);
        async move {
            match (part, client) {
                (false, _) => Ok(()),
                (true, None) => finish(&state, &runtime),
                (true, Some(client)) => client.finish_certificates().await.map_err(Error::wrap),
            }
        }
    })
    .await;
    for (member, outcome) in outcomes {
        if let Err(err) = outcome {
            tracing::warn!(member = member.name, error = %err, "certificate rotation: a member could not finish");
        }
    }
}

/// This member's first step: keeps the next pairs, accepts the next cluster certificate.
pub(crate) fn prepare(
    state: &State,
    runtime: &Runtime,
    request: CertificatesPrepare,
) -> Result<CertificatesPrepared, Error> {
    let dir = state.dir();
    let mut answer = CertificatesPrepared { current: runtime.certs.server.identity().cert_pem, ..Default::default() };
    if let Some(next) = &request.cluster {
        // Only the key this member knows may hand the cluster on.
        let current = runtime.cluster_identity();
        if !tls::verify_endorsement(&current.cert_pem, &next.endorsement)
            || next.endorsement.certificate.trim() != next.pair.cert.trim()
        {
            return Err(Error::forbidden(
                "the next cluster certificate is not endorsed by the current cluster key".to_owned(),
            ));
        }
        let identity = Identity { cert_pem: next.pair.cert.clone(), key_pem: next.pair.key.clone() };
        identity.check().map_err(|e| Error::invalid(format!("the next cluster certificate: {e}")))?;
        dir.set_next_identity("cluster", &identity).map_err(Error::wrap)?;
        let mut chain = dir.endorsements().map_err(Error::wrap)?;
        if !chain.contains(&next.endorsement) {
            chain.push(next.endorsement.clone());
            dir.set_endorsements(&chain).map_err(Error::wrap)?;
        }
        let mut pins = vec![current.fingerprint().map_err(Error::wrap)?];
        pins.push(identity.fingerprint().map_err(Error::wrap)?);
        runtime.certs.peer.pins.set(pins);
    }
    if request.server {
        let identity = match &request.server_pair {
            Some(pair) => Identity { cert_pem: pair.cert.clone(), key_pem: pair.key.clone() },
            None => certs::generate(&state.name(), &[]).map_err(Error::wrap)?,
        };
        identity.check().map_err(|e| Error::invalid(format!("the next member certificate: {e}")))?;
        dir.set_next_identity("server", &identity).map_err(Error::wrap)?;
        answer.server = Some(identity.cert_pem);
    }
    if let Some(ca) = &request.ca {
        dir.set_cluster_ca(ca).map_err(Error::wrap)?;
        state.trust().set_ca((!ca.is_empty()).then(|| ca.clone()));
        tracing::info!(target: "audit", required = !ca.is_empty(), "members' certificates must be issued by the cluster's CA");
    }
    let dedicated = state.http().dedicated_servers();
    for server in request.servers.iter().filter(|s| dedicated.contains(s)) {
        let identity = certs::generate(server, &[]).map_err(Error::wrap)?;
        crate::state_dir::create_dir(&dir.root().join("certificates"), 0o700).map_err(Error::wrap)?;
        dir.set_next_identity(&dedicated_pair(server), &identity).map_err(Error::wrap)?;
        answer.servers.insert(server.clone(), identity.fingerprint().map_err(Error::wrap)?);
    }
    Ok(answer)
}

/// Where the dedicated certificate of server `name` is kept, relative to the state directory.
fn dedicated_pair(name: &str) -> String {
    format!("certificates/{name}")
}

/// This member's switch: its next pairs become current, and are presented from the next
/// handshake on.
pub(crate) async fn switch(state: &State, runtime: &Runtime) -> Result<(), Error> {
    let dir = state.dir();
    if let Some(cluster) = dir.switch_identity("cluster").map_err(Error::wrap)? {
        runtime.certs.cluster.replace(&cluster).map_err(Error::wrap)?;
        tracing::info!(target: "audit", fingerprint = %runtime.cluster_fingerprint(), "presents a new cluster certificate");
    }
    if let Some(server) = dir.switch_identity("server").map_err(Error::wrap)? {
        runtime.certs.server.replace(&server).map_err(Error::wrap)?;
        if let Ok(mut current) = state.server_identity().write() {
            *current = server.clone();
        }
        tracing::info!(target: "audit", fingerprint = %runtime.certs.server.fingerprint(), "presents a new member certificate");
    }
    for server in state.http().dedicated_servers() {
        if dir.switch_identity(&dedicated_pair(&server)).map_err(Error::wrap)?.is_some() {
            tracing::info!(target: "audit", server, "a new dedicated certificate");
        }
    }
    // What was made with the old certificates is not reused: a resumed session or a kept
    // connection would go on proving the old one after it is dropped.
    runtime.certs.peer.sessions.forget();
    runtime.peer_pool.clear();
    state.http().apply_servers(state, &runtime.cluster_identity()).await
}

/// This member's end of a rotation (or of one abandoned): accept only the cluster
/// certificate it presents, and forget next pairs never switched to.
pub(crate) fn finish(state: &State, runtime: &Runtime) -> Result<(), Error> {
    runtime.certs.peer.pins.set(vec![runtime.cluster_fingerprint()]);
    // Again: a session a connection made with an old certificate handed over late.
    runtime.certs.peer.sessions.forget();
    let dir = state.dir();
    let mut pairs = vec!["cluster".to_owned(), "server".to_owned()];
    pairs.extend(state.http().dedicated_servers().iter().map(|s| dedicated_pair(s)));
    for pair in pairs {
        dir.remove_next_identity(&pair).map_err(Error::wrap)?;
    }
    Ok(())
}

/// What a member that missed a rotation is given (`GET /core/internal/certificates`).
pub(crate) fn current(state: &State, runtime: &Runtime) -> Result<CertificatesCurrent, Error> {
    let cluster = runtime.cluster_identity();
    Ok(CertificatesCurrent {
        cluster: KeyPair { cert: cluster.cert_pem, key: cluster.key_pem, ca: String::new() },
        endorsements: state.dir().endorsements().map_err(Error::wrap)?,
        members: state.members(),
        ca: state.trust().snapshot().ca().unwrap_or_default().to_owned(),
    })
}

/// How long without a heartbeat before a member looks whether it missed a rotation.
fn silence_before_catch_up(state: &State) -> Duration {
    (state.settings().heartbeat * 3).max(Duration::from_secs(5))
}

/// Catches up with rotations missed while this member was away: whenever it has heard no
/// heartbeat for a while, it asks the other members for the cluster's certificates.
pub(crate) async fn catch_up_when_cut_off(state: State, runtime: std::sync::Weak<Runtime>, mut stop: ShutdownSignal) {
    loop {
        let wait = silence_before_catch_up(&state);
        tokio::select! {
            _ = stop.fired() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(runtime) = runtime.upgrade() else { return };
        // The leader hears no heartbeats, and a member that hears them is not cut off.
        if runtime.heard_from_leader() < wait || runtime.db.leader().as_deref() == Some(runtime.address.as_str()) {
            continue;
        }
        match catch_up(&state, &runtime).await {
            Ok(true) => tracing::info!("caught up with a certificate rotation missed while away"),
            Ok(false) => {}
            Err(err) => tracing::debug!(error = %err, "looking for a missed certificate rotation"),
        }
    }
}

/// Asks the other members, one after the other, for the cluster's certificates, and takes
/// them if they differ from this member's and the cluster certificate is vouched for by the
/// one this member knows. Whether anything changed.
pub(crate) async fn catch_up(state: &State, runtime: &Runtime) -> Result<bool, Error> {
    let (config, presented) = tls::recording_client_config(runtime.certs.server.clone()).map_err(Error::wrap)?;
    let me = state.name();
    let mut last_error = Error::unavailable("no other member to ask");
    for member in state.members().into_iter().filter(|m| m.name != me) {
        let client = Client::https(member.address.clone(), config.clone())
            .with_timeout(STEP_TIMEOUT)
            .with_connect_timeout(Duration::from_secs(2));
        let current = match client.current_certificates().await {
            Ok(current) => current,
            Err(err) => {
                last_error = Error::wrap(err);
                continue;
            }
        };
        let Some(shown) = presented.fingerprint() else { continue };
        return adopt(state, runtime, &member.name, &shown, current);
    }
    Err(last_error)
}

/// Takes what member `from` answered, once judged: `shown` is the certificate it presented.
fn adopt(
    state: &State,
    runtime: &Runtime,
    from: &str,
    shown: &str,
    current: CertificatesCurrent,
) -> Result<bool, Error> {
    let claimed = tls::fingerprint_pem(&current.cluster.cert).map_err(Error::wrap)?;
    if !claimed.eq_ignore_ascii_case(shown) {
        return Err(Error::forbidden(format!(
            "{from} presented {shown} but named {claimed} as the cluster certificate"
        )));
    }
    let mine = runtime.cluster_identity();
    let mut changed = false;
    if !runtime.certs.peer.pins.contains(shown) {
        if !tls::follow_endorsements(&mine.cert_pem, &current.endorsements, shown) {
            return Err(Error::forbidden(format!(
                "{from} presents a cluster certificate ({shown}) that the one this member knows did not vouch for"
            )));
        }
        let identity = Identity { cert_pem: current.cluster.cert.clone(), key_pem: current.cluster.key.clone() };
        state.dir().set_cluster_identity(&identity).map_err(Error::wrap)?;
        state.dir().set_endorsements(&current.endorsements).map_err(Error::wrap)?;
        runtime.certs.cluster.replace(&identity).map_err(Error::wrap)?;
        runtime.certs.peer.pins.set(vec![claimed.clone()]);
        tracing::info!(target: "audit", fingerprint = claimed, from, "took the cluster certificate a rotation replaced");
        changed = true;
    }
    if state.trust().snapshot().ca().unwrap_or_default() != current.ca {
        state.dir().set_cluster_ca(&current.ca).map_err(Error::wrap)?;
        state.trust().set_ca((!current.ca.is_empty()).then(|| current.ca.clone()));
        changed = true;
    }
    let trusted = state.trust().snapshot();
    for member in current.members.iter().filter(|m| m.name != state.name()) {
        if trusted.by_name(&member.name).is_some_and(|e| e.member == *member) {
            continue;
        }
        state.trust().add(member.clone()).map_err(Error::wrap)?;
        changed = true;
    }
    if changed {
        runtime.certs.peer.sessions.forget();
        runtime.peer_pool.clear();
        runtime.set_servers(state.trust().snapshot().addresses());
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(tag: &str) -> KeyPair {
        KeyPair { cert: format!("cert {tag}"), key: format!("key {tag}"), ca: String::new() }
    }

    #[test]
    fn a_plan_replaces_what_is_named_or_everything() {
        let members: Vec<String> = ["m1", "m2", "m3"].map(String::from).to_vec();
        let dedicated = vec!["public".to_owned()];
        let request = |cluster: bool, named: &[&str], servers: &[&str], supplied: &[&str]| CertificatesRotate {
            cluster,
            members: named.iter().map(|s| s.to_string()).collect(),
            servers: servers.iter().map(|s| s.to_string()).collect(),
            supplied: supplied.iter().map(|s| (s.to_string(), pair(s))).collect(),
            ca: None,
        };
        let all = |supplied: Option<KeyPair>| -> BTreeMap<String, Option<KeyPair>> {
            members.iter().map(|m| (m.clone(), supplied.clone())).collect()
        };
        let one = |name: &str, supplied: Option<KeyPair>| BTreeMap::from([(name.to_owned(), supplied)]);
        type Case<'a> = (&'a str, CertificatesRotate, bool, Result<Plan, RotateRefused>);
        let cases: Vec<Case> = vec![
            (
                "nothing named: everything",
                request(false, &[], &[], &[]),
                false,
                Ok(Plan { cluster: Some(None), members: all(None), servers: dedicated.clone() }),
            ),
            (
                "the cluster's only",
                request(true, &[], &[], &[]),
                false,
                Ok(Plan { cluster: Some(None), ..Plan::default() }),
            ),
            (
                "one member",
                request(false, &["m2"], &[], &[]),
                false,
                Ok(Plan { members: one("m2", None), ..Plan::default() }),
            ),
            (
                "a server",
                request(false, &[], &["public"], &[]),
                false,
                Ok(Plan { servers: dedicated.clone(), ..Plan::default() }),
            ),
            (
                "a supplied cluster pair",
                request(false, &[], &[], &["cluster"]),
                false,
                Ok(Plan { cluster: Some(Some(pair("cluster"))), ..Plan::default() }),
            ),
            (
                "a supplied member pair",
                request(false, &[], &[], &["m3"]),
                false,
                Ok(Plan { members: one("m3", Some(pair("m3"))), ..Plan::default() }),
            ),
            (
                "an unknown member",
                request(false, &["m9"], &[], &[]),
                false,
                Err(RotateRefused::NoSuchMember("m9".into())),
            ),
            (
                "a pair for something that is neither",
                request(false, &[], &[], &["public"]),
                false,
                Err(RotateRefused::NotReplaceable("public".into())),
            ),
            (
                "an unknown server",
                request(false, &[], &["api"], &[]),
                false,
                Err(RotateRefused::NoSuchServer("api".into(), "public".into())),
            ),
            (
                "a CA: everything is the cluster's and the dedicated certificates",
                request(false, &[], &[], &[]),
                true,
                Ok(Plan { cluster: Some(None), servers: dedicated.clone(), ..Plan::default() }),
            ),
            (
                "a CA: a member cannot get a certificate made here",
                request(false, &["m2"], &[], &[]),
                true,
                Err(RotateRefused::NeedsCa("m2".into())),
            ),
            (
                "a CA: a supplied member pair is fine",
                request(false, &[], &[], &["m1"]),
                true,
                Ok(Plan { members: one("m1", Some(pair("m1"))), ..Plan::default() }),
            ),
            (
                "a CA: the cluster's alone is fine",
                request(true, &[], &[], &[]),
                true,
                Ok(Plan { cluster: Some(None), ..Plan::default() }),
            ),
        ];
        for (what, request, ca, expected) in cases {
            assert_eq!(plan(&request, &members, &dedicated, ca), expected, "{what}");
        }
    }
}
