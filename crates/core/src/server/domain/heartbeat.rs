//! The heartbeat. Every interval the dqlite leader sends each member the membership (as the
//! database records it) over mutual TLS; members sync their trust stores from it and answer with
//! what software they run, how they are placed and what their clocks say. The leader then works
//! out every member's clock offset from the cluster's time (see [`crate::server::state::clock`]; sent to them
//! with the next round), records who answered and the roles dqlite reports (replacing PENDING
//! once a joiner's node has a role), all stamped in the cluster's time, prunes expired tokens,
//! rolls back joins that stalled (`membership::stalled`), and makes at most one role change to
//! keep 3 voters and 3 stand-bys online.
//!
//! Heartbeats are only accepted from a trusted member that names itself as the sender;
//! microcluster accepts them from anyone, which lets any TLS client rewrite a trust store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use crate::api::{ClockOffset, ClusterMemberLocal, HeartbeatRequest, HeartbeatResponse, RoleStatus};
use crate::server::db::{DbStatus, members, monitors, tokens};
use crate::server::domain::membership::{recorded_role, stalled};
use crate::server::domain::roles::{self, Placement, Targets};
use crate::server::error::Error;
use crate::server::state::State;
use crate::server::state::clock::{self, Offset, Sample};
use crate::server::stop::ShutdownSignal;

/// Whom the role planner counts as online: the members that answered and the leader, less
/// those that cannot write their raft log, and less a joiner whose node is still a spare. A
/// join in progress takes its role itself (`take_role_on_leader`, under the role lock); a role
/// given to it here, should the joiner then stop for good, would leave its join with a role,
/// which is never rolled back (`membership::stalled`), instead of a stalled join that is.
fn role_candidates(
    answered: HashSet<String>,
    own_address: &str,
    cannot_log: &[String],
    rows: &[members::MemberRow],
    nodes: &[dqlite::NodeInfo],
) -> HashSet<String> {
    let joining_spare = |address: &String| {
        rows.iter().any(|r| r.address == *address && r.role == crate::api::role::PENDING)
            && nodes.iter().any(|n| n.address == *address && n.role.is_none_or(|r| r == dqlite::Role::Spare))
    };
    let mut online: HashSet<String> = answered.into_iter().filter(|a| !joining_spare(a)).collect();
    online.insert(own_address.to_owned());
    for address in cannot_log {
        online.remove(address);
    }
    online
}

/// Runs heartbeat rounds until `stop` fires.
pub(crate) async fn run(state: State, mut stop: ShutdownSignal) {
    let interval = state.settings().heartbeat;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.fired() => return,
        }
        // What a round changes (a stalled join rolled back) is logged as this member's doing.
        let span = tracing::info_span!("heartbeat", caller = "this member's heartbeat round");
        if let Err(err) = tracing::Instrument::instrument(round(&state), span).await {
            tracing::debug!(error = %err, "heartbeat round skipped");
        }
    }
}

/// How long the leader waits for each member's answer.
fn probe_timeout(interval: Duration) -> Duration {
    (interval / 2).clamp(Duration::from_millis(200), Duration::from_secs(2))
}

/// This member's answer to a heartbeat.
pub(crate) fn report(state: &State) -> HeartbeatResponse {
    let settings = state.settings();
    let (failure_domain, weight) = state.config().read().map(|c| (c.failure_domain, c.weight)).unwrap_or_default();
    HeartbeatResponse {
        name: state.name(),
        address: state.address(),
        version: settings.version.clone(),
        schema_internal_version: settings.internal_schema.len() as u64,
        schema_external_version: settings.external_schema.len() as u64,
        extensions: settings.api_extensions.clone(),
        status: state.database_status_text(),
        failure_domain,
        weight,
        raft_log_problem: state.runtime().ok().and_then(|r| r.disk.health().problem().map(str::to_owned)),
        time: clock::format(SystemTime::now()),
        trust_digest: None,
    }
}

/// This member's answer to a leader's heartbeat, once it synced its trust store from it.
pub(crate) fn answer(state: &State) -> HeartbeatResponse {
    let trusted = state.trust().snapshot();
    HeartbeatResponse { trust_digest: Some(members_digest(trusted.iter().map(|e| &e.member))), ..report(state) }
}

/// A digest of a set of members (name, address, certificate), whatever their order: the
/// leader's list and a member's trust store have the same digest when they hold the same
/// members. At 256 members the list is ~190 KB, sent to every member every round; with the
/// digests equal it is left out, and a round costs O(members) bytes instead of O(members²).
pub(crate) fn members_digest<'a>(members: impl Iterator<Item = &'a ClusterMemberLocal>) -> String {
    let mut sorted: Vec<&ClusterMemberLocal> = members.collect();
    sorted.sort_by(|a, b| (&a.name, &a.address, &a.certificate).cmp(&(&b.name, &b.address, &b.certificate)));
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for member in sorted {
        // Each field ends with a byte no name, address or PEM text holds.
        for field in [&member.name, &member.address, &member.certificate] {
            context.update(field.as_bytes());
            context.update(&[0]);
        }
    }
    crate::tls::hex(context.finish().as_ref())
}

/// Every member's clock offset as this member last learned it, while it is recent: a member
/// that has stopped hearing from a leader for a few rounds no longer knows.
pub(crate) fn clock_offsets(state: &State) -> BTreeMap<String, Offset> {
    state.clock().offsets(state.settings().heartbeat * 3 + Duration::from_secs(5))
}

/// Takes the offsets a leader's heartbeat carries.
pub(crate) fn learn_clocks(state: &State, clocks: &BTreeMap<String, ClockOffset>) {
    if !clocks.is_empty() {
        let offsets = clocks.iter().map(|(name, o)| (name.clone(), Offset::from(*o))).collect();
        state.clock().learn(&state.name(), offsets, false);
    }
}

/// How long a newly trusted member is kept although a heartbeat does not list it.
const TRUST_GRACE: Duration = Duration::from_secs(120);
/// How long a removed member is not re-added from a heartbeat's list: a round that read the
/// members before the removal may arrive after it (seen in the fault suite as a rejoin refused
/// with "a member named … already exists"). Its admission, when it rejoins, adds it at once.
const REMOVAL_GRACE: Duration = Duration::from_secs(30);
/// Most members a heartbeat round asks at once: as many as a fan-out. All at once starved
/// the raft threads (the leader's included) of hundreds of members on few cores long enough
/// for elections.
const ROUND_CONCURRENCY: usize = crate::server::domain::membership::FAN_OUT_CONCURRENCY;

/// Makes the trust store match `members` (never dropping this member itself, the `leader`
/// that sent the list, nor one trusted in the last [`TRUST_GRACE`]). An empty list is ignored:
/// a leader always knows at least itself.
///
/// The leader is kept even when its own row is missing from the list (drift that `doctor`
/// repairs): dropping it would make every member refuse its heartbeats, and the repair with
/// them.
pub(crate) fn sync_truststore(state: &State, leader: &str, members: &[ClusterMemberLocal]) {
    if members.is_empty() {
        return;
    }
    let store = state.trust();
    let current = store.snapshot();
    for member in members {
        let same = current.by_name(&member.name).is_some_and(|e| e.member == *member);
        if !same {
            match store.add_unless_removed(member.clone(), REMOVAL_GRACE) {
                Ok(Some(_)) => tracing::info!(member = member.name, "trust store: now trusting a member"),
                Ok(None) => tracing::debug!(member = member.name, "trust store: not re-adding a member just removed"),
                Err(err) => {
                    tracing::warn!(member = member.name, error = %err, "trust store: cannot add a member")
                }
            }
        }
    }
    let keep: HashSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
    let me = state.name();
    // A member admitted while this round was under way is missing from its list but already
    // trusted (the admission told everyone): dropping it would fail its join. Removals are
    // fanned out when they happen; this is only the safety net for one that was missed.
    let recent = |name: &str| store.age(name).is_some_and(|age| age < TRUST_GRACE);
    for entry in current.iter().filter(|e| {
        let name = e.member.name.as_str();
        !keep.contains(name) && name != me && name != leader && !recent(name)
    }) {
        match store.remove(&entry.member.name) {
            Ok(_) => tracing::info!(member = entry.member.name, "trust store: no longer trusting a removed member"),
            Err(err) => {
                tracing::warn!(member = entry.member.name, error = %err, "trust store: cannot remove a member")
            }
        }
    }
    if let Ok(runtime) = state.runtime() {
        runtime.set_servers(store.snapshot().addresses());
    }
}

/// One round, if this member is the leader.
pub(crate) async fn round(state: &State) -> Result<(), Error> {
    if state.database_status() != DbStatus::Online {
        return Ok(());
    }
    let runtime = state.runtime()?;
    let client = runtime.db.client().clone();
    if client.leader().await?.address != runtime.address {
        // What members answered an earlier leadership of this member may be stale by the next.
        state.trust_digests().clear();
        return Ok(());
    }
    // Counted as failed if any step below returns early.
    let timer = state.metrics().heartbeat_round();
    // From reading the members until every answer is in: a certificate rotation waits.
    let _trust = state.lock_trust().await;
    let nodes = client.cluster().await?;
    let rows = runtime.db.read(|tx| Box::pin(members::list(tx))).await?;
    // The leader's own set is read each round (under the same lock as every other reading of
    // it, so that a revocation read meanwhile is not overwritten by this older read); the
    // members compare theirs with it.
    let monitors = {
        let _serial = state.lock_monitors().await;
        match runtime.db.read(|tx| Box::pin(monitors::list(tx))).await {
            Ok(rows) => {
                state.set_monitors(rows.iter().map(|r| (r.fingerprint.clone(), r.name.clone())).collect());
                Some(rows.into_iter().map(|r| (r.name, r.fingerprint)).collect())
            }
            Err(err) => {
                tracing::debug!(error = %err, "reading the monitoring credentials");
                None
            }
        }
    };
    let clocks: BTreeMap<String, ClockOffset> =
        clock_offsets(state).into_iter().map(|(name, offset)| (name, offset.into())).collect();
    let request = HeartbeatRequest {
        leader: state.name(),
        members: rows
            .iter()
            .map(|r| ClusterMemberLocal {
                name: r.name.clone(),
                address: r.address.clone(),
                certificate: r.certificate.clone(),
            })
            .collect(),
        clocks: BTreeMap::new(),
        monitors,
    };

    // A member whose trust store held exactly this list at its last answer gets the round
    // without it. Forgotten for a member that does not answer: it gets the whole list again.
    let digest = members_digest(request.members.iter());
    let synced: HashSet<String> =
        state.trust_digests().iter().filter(|(_, d)| **d == digest).map(|(a, _)| a.clone()).collect();
    let lean = HeartbeatRequest { members: Vec::new(), ..request.clone() };
    let deadline = probe_timeout(state.settings().heartbeat);
    let mut probes = tokio::task::JoinSet::new();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(ROUND_CONCURRENCY));
    for row in rows.iter().filter(|r| r.address != runtime.address) {
        let client = state.member_client(&row.address)?.with_timeout(deadline);
        let address = row.address.clone();
        let mut request = match synced.contains(&address) {
            true => {
                state.metrics().heartbeat_lists_left_out.inc();
                lean.clone()
            }
            false => request.clone(),
        };
        if state.clock().is_reader(&address) {
            request.clocks = clocks.clone();
        }
        let permits = permits.clone();
        probes.spawn(async move {
            // Never closed: the permit always comes.
            let _permit = permits.acquire_owned().await.ok();
            let (sent, start) = (SystemTime::now(), Instant::now());
            let answer = client.heartbeat(&request).await;
            (address, answer, sent, start.elapsed())
        });
    }
    let mut answers: HashMap<String, HeartbeatResponse> = HashMap::new();
    let mut samples: BTreeMap<String, Sample> = BTreeMap::from([(state.name(), Sample::LEADER)]);
    while let Some(joined) = probes.join_next().await {
        match joined {
            Ok((address, Ok(answer), sent, round_trip)) => {
                let time = humantime::parse_rfc3339_weak(&answer.time).ok();
                state.clock().set_reader(&address, time.is_some());
                if let (Some(time), Some(row)) = (time, rows.iter().find(|r| r.address == address)) {
                    samples.insert(row.name.clone(), Sample::measure(sent, round_trip, time));
                }
                answers.insert(address, answer);
            }
            Ok((address, Err(err), ..)) => {
                // It may have been rolled back to software that refuses the offsets: the next
                // round asks it without them, and its answer tells again.
                state.clock().set_reader(&address, false);
                tracing::debug!(member = address, error = %err, "no heartbeat answer")
            }
            Err(_) => {}
        }
    }
    *state.trust_digests() =
        answers.iter().filter_map(|(a, answer)| Some((a.clone(), answer.trust_digest.clone()?))).collect();
    // Without a majority of the members' clocks this round, the offsets learned before stand.
    if let Some(offsets) = clock::offsets(&samples, rows.len()) {
        state.clock().learn(&state.name(), offsets, true);
    }
    // A leader that has never learned its offset could be the skewed one: it leaves expired
    // tokens for a later round rather than prune by its own clock.
    let prune = state.clock().own_offset().is_some();

    let roles_now: HashMap<String, Option<dqlite::Role>> = nodes.iter().map(|n| (n.address.clone(), n.role)).collect();
    let time = clock::format(state.clock().now());
    let expired_before = state.clock().now().checked_sub(tokens::KEPT_AFTER_EXPIRY).unwrap_or(SystemTime::UNIX_EPOCH);
    let (answered, own_address) = (answers.keys().cloned().collect::<HashSet<_>>(), runtime.address.clone());
    let (seen, own) = (answered.clone(), own_address.clone());
    runtime
        .db
        .transaction(move |tx| {
            let answered = seen;
            Box::pin(async move {
                // The rows as they are now, not as the round read them: a joiner that recorded
                // its role since must not get a stale PENDING back.
                for row in &members::list(tx).await? {
                    let role = recorded_role(&row.role, roles_now.get(&row.address).copied());
                    let alive = row.address == own || answered.contains(&row.address);
                    let heartbeat = if alive { time.as_str() } else { row.heartbeat.as_str() };
                    if role != row.role || heartbeat != row.heartbeat {
                        members::set_heartbeat(tx, &row.name, role, heartbeat).await?;
                    }
                }
                if prune {
                    tokens::delete_expired(tx, expired_before).await?;
                }
                Ok(())
            })
        })
        .await?;
    sync_truststore(state, &request.leader, &request.members);
    stalled::apply(state, &runtime, &rows, &nodes, &answered).await;

    // A member that cannot write its raft log counts as gone for its role: another takes its
    // vote while it cannot persist.
    let own = report(state);
    let mut cannot_log = Vec::new();
    for (address, problem) in
        answers.values().map(|a| (&a.address, &a.raft_log_problem)).chain([(&own_address, &own.raft_log_problem)])
    {
        if let Some(problem) = problem {
            tracing::warn!(member = %address, %problem, "a member cannot write its raft log; its role is handed on");
            cannot_log.push(address.clone());
        }
    }
    let mut placement: HashMap<String, Placement> = answers
        .values()
        .map(|a| (a.address.clone(), Placement { failure_domain: a.failure_domain, weight: a.weight }))
        .collect();
    placement.insert(own_address.clone(), Placement { failure_domain: own.failure_domain, weight: own.weight });
    // Under the role lock, on the configuration as it is now (a join may have changed it).
    let _roles = state.lock_roles().await;
    let nodes = client.cluster().await.unwrap_or(nodes);
    let online = role_candidates(answered, &own_address, &cannot_log, &rows, &nodes);
    if let Some(change) = roles::next_change(&nodes, &online, &placement, &own_address, Targets::default()) {
        tracing::info!(member = change.address, role = %change.role, reason = change.reason, "changing a member's role");
        if let Err(err) = client.assign(change.id, change.role).await {
            tracing::warn!(member = change.address, error = %err, "role change failed; retrying next round");
        }
    }

    let after = client.cluster().await.unwrap_or(nodes);
    let statuses = role_statuses(&rows, &after);
    let hooks = state.settings().hooks.clone();
    if let Err(err) = hooks.on_heartbeat(state, &statuses).await {
        tracing::warn!(error = %err, "the OnHeartbeat hook failed");
    }
    timer.succeeded();
    Ok(())
}

/// Each member's role as the round found it recorded, and as it is after the round (dqlite's,
/// as the round records it), by name.
fn role_statuses(rows: &[members::MemberRow], nodes: &[dqlite::NodeInfo]) -> BTreeMap<String, RoleStatus> {
    rows.iter()
        .map(|row| {
            let node = nodes.iter().find(|n| n.address == row.address).map(|n| n.role);
            (row.name.clone(), RoleStatus { old: row.role.clone(), new: recorded_role(&row.role, node).to_owned() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::role;

    fn row(address: &str, role: &str) -> members::MemberRow {
        members::MemberRow {
            name: address.to_owned(),
            address: address.to_owned(),
            certificate: String::new(),
            schema_internal: 0,
            schema_external: 0,
            heartbeat: String::new(),
            role: role.to_owned(),
            api_extensions: Vec::new(),
        }
    }

    fn node(address: &str, role: Option<dqlite::Role>) -> dqlite::NodeInfo {
        dqlite::NodeInfo { id: dqlite::generate_id(address), address: address.to_owned(), role }
    }

    #[test]
    fn the_members_digest_is_the_same_for_the_same_members_in_any_order_and_differs_for_any_change() {
        let member = |name: &str, address: &str, cert: &str| ClusterMemberLocal {
            name: name.to_owned(),
            address: address.to_owned(),
            certificate: cert.to_owned(),
        };
        let (a, b) = (member("a", "10.0.0.1:1", "A"), member("b", "10.0.0.2:1", "B"));
        let digest = |members: &[&ClusterMemberLocal]| members_digest(members.iter().copied());
        assert_eq!(digest(&[&a, &b]), digest(&[&b, &a]));
        let changes = [
            member("a", "10.0.0.1:2", "A"),
            member("a", "10.0.0.1:1", "A2"),
            member("c", "10.0.0.1:1", "A"),
            // Fields run together differently: still another digest.
            member("a1", "0.0.0.1:1", "A"),
        ];
        for changed in &changes {
            assert_ne!(digest(&[&a, &b]), digest(&[changed, &b]), "{changed:?}");
        }
        assert_ne!(digest(&[&a, &b]), digest(&[&a]));
        assert_ne!(digest(&[&a]), digest(&[]));
    }

    #[test]
    fn the_heartbeat_hook_sees_each_members_role_before_and_after_the_round() {
        let rows = [row("a", role::VOTER), row("b", role::STAND_BY), row("j", role::PENDING), row("gone", role::SPARE)];
        let nodes = [
            node("a", Some(dqlite::Role::Voter)),
            node("b", Some(dqlite::Role::Voter)),
            node("j", Some(dqlite::Role::Spare)),
        ];
        let statuses = role_statuses(&rows, &nodes);
        let seen: Vec<(&str, &str, &str, bool)> =
            statuses.iter().map(|(name, s)| (name.as_str(), s.old.as_str(), s.new.as_str(), s.changed())).collect();
        assert_eq!(
            seen,
            [
                ("a", role::VOTER, role::VOTER, false),
                ("b", role::STAND_BY, role::VOTER, true),
                // A joiner whose node is still a spare stays PENDING; a row without a node
                // keeps what it has.
                ("gone", role::SPARE, role::SPARE, false),
                ("j", role::PENDING, role::PENDING, false),
            ]
        );
    }

    #[test]
    fn a_joiner_whose_node_is_a_spare_is_never_a_role_candidate() {
        use dqlite::Role::{Spare, StandBy, Voter};
        let rows = [row("l", role::VOTER), row("a", role::SPARE), row("j", role::PENDING), row("k", role::PENDING)];
        let nodes = [node("l", Some(Voter)), node("a", Some(Spare)), node("j", Some(Spare)), node("k", Some(StandBy))];
        // (answered, cannot write its log, expected candidates)
        let cases: [(&[&str], &[&str], &[&str]); 4] = [
            // A joiner that answered while its node is a spare: left to its own join.
            (&["a", "j"], &[], &["a", "l"]),
            // A joiner whose node already took a role is judged like any member.
            (&["k"], &[], &["k", "l"]),
            (&[], &[], &["l"]),
            (&["a", "k"], &["a", "l"], &["k"]),
        ];
        for (answered, cannot_log, expected) in cases {
            let answered = answered.iter().map(|a| (*a).to_owned()).collect();
            let cannot_log: Vec<String> = cannot_log.iter().map(|a| (*a).to_owned()).collect();
            let mut online: Vec<String> =
                role_candidates(answered, "l", &cannot_log, &rows, &nodes).into_iter().collect();
            online.sort();
            assert_eq!(online, expected, "cannot log: {cannot_log:?}");
        }
    }
}
