//! Quorum-loss recovery, the planning half: run on a member whose daemon is stopped, it reads
//! the member's raft log and trust store, asks the other members that still run for theirs, and
//! writes the plan (`STATE/recovery.json`) that the daemon applies when it next starts.
//!
//! The plan forces a new raft configuration of survivors only; the daemon hands it to the other
//! survivors over mutual TLS, so no database file is ever copied by hand. Only a member whose
//! log is at least as up to date as every other survivor's may plan (raft's own rule for who
//! may lead), and only while no member still sees a leader.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::api::{RecoveryMember, RecoveryPlan, RecoveryStatus, role};
use crate::client::Client;
use crate::raftlog::{self, RaftLogError, RaftState};
use crate::state_dir::{StateDir, StateDirError, write_atomic};
use crate::tls;
use crate::truststore;

/// The plan's file in the state directory.
pub const PLAN_FILE: &str = "recovery.json";
/// How long a running member gets to describe itself.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// Voters the new configuration starts with (the heartbeat's role rules take it from there).
const VOTERS: usize = 3;

/// Planning a recovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// The member's daemon runs; recovery rewrites its configuration offline.
    #[error(
        "microd is running with state directory {0} (it holds microd.lock): stop it first (e.g. `microctl shutdown` or `systemctl stop microd`); recovery is planned on a stopped member"
    )]
    DaemonRunning(String),
    /// The state directory is not an initialised member's.
    #[error("{0}")]
    NotInitialised(String),
    /// A file could not be read or written.
    #[error(transparent)]
    Files(#[from] StateDirError),
    /// The raft log could not be read.
    #[error(transparent)]
    Log(#[from] RaftLogError),
    /// The requested plan is not safe or not possible.
    #[error("{0}")]
    Refused(String),
}

/// How a member answered the survey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberState {
    /// The member being recovered (its daemon is stopped).
    This,
    /// Its daemon runs; `leader` is the leader its node sees (empty: none).
    Running {
        /// The leader its node follows.
        leader: String,
    },
    /// It did not answer.
    Unreachable(String),
}

/// One member of the last raft configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SurveyMember {
    /// Name (from the trust store; empty if no entry has its address).
    pub name: String,
    /// Address.
    pub address: String,
    /// dqlite node id.
    pub id: u64,
    /// Role in the last configuration.
    pub role: &'static str,
    /// Its log position, when known.
    pub log: Option<(u64, u64)>,
    /// How it answered.
    pub state: MemberState,
}

/// What the recovering member found.
#[derive(Debug, Clone)]
pub struct Survey {
    /// This member's name.
    pub name: String,
    /// This member's raft log.
    pub log: RaftState,
    /// Every member of the last configuration, this one first.
    pub members: Vec<SurveyMember>,
}

impl Survey {
    /// The members a plan keeps by default: this one and every one that answered.
    pub fn default_survivors(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| matches!(m.state, MemberState::This | MemberState::Running { .. }))
            .map(|m| m.name.clone())
            .collect()
    }
}

/// Reads this (stopped) member and asks the others.
pub async fn survey(state_dir: &Path) -> Result<Survey, RecoveryError> {
    if !state_dir.join("daemon.toml").is_file() {
        return Err(RecoveryError::NotInitialised(format!(
            "{} is not a member's state directory (no daemon.toml)",
            state_dir.display()
        )));
    }
    let dir = StateDir::open(state_dir)?;
    let _lock = dir.lock().map_err(|e| match e {
        StateDirError::Locked(path) => RecoveryError::DaemonRunning(path.display().to_string()),
        other => other.into(),
    })?;
    let config = dir.daemon_config()?;
    let node = dir.node_info()?.ok_or_else(|| {
        RecoveryError::NotInitialised(format!("{} is not initialised (no database/node.toml)", state_dir.display()))
    })?;
    let log = raftlog::read(&dir.database_dir())?;
    let trust = truststore::read(&dir.truststore_dir()).map_err(|e| RecoveryError::Refused(e.to_string()))?;
    let identity =
        dir.server_identity()?.ok_or_else(|| RecoveryError::NotInitialised("this member has no certificate".into()))?;
    let cluster = dir
        .cluster_identity()?
        .ok_or_else(|| RecoveryError::NotInitialised("this member has no cluster certificate".into()))?;
    let pin = cluster.fingerprint().map_err(|e| RecoveryError::Refused(e.to_string()))?;
    let tls = tls::client_config(Some(&identity), vec![pin]).map_err(|e| RecoveryError::Refused(e.to_string()))?;

    let asks = log.configuration.iter().filter(|s| s.id != node.id).map(|server| {
        let client = Client::https(server.address.clone(), tls.clone()).with_timeout(ASK_TIMEOUT);
        let id = server.id;
        async move { (id, client.recovery_status().await) }
    });
    let answers: BTreeMap<u64, _> = futures_join(asks).await.into_iter().collect();
    let mut members = Vec::new();
    for server in &log.configuration {
        let name = trust.by_address(&server.address).map(|e| e.member.name.clone()).unwrap_or_default();
        let (log_position, state) = if server.id == node.id {
            (Some((log.last_term, log.last_index)), MemberState::This)
        } else {
            match answers.get(&server.id) {
                Some(Ok(status)) => check_answer(status, server.id)
                    .map(|()| {
                        (
                            Some((status.last_term, status.last_index)),
                            MemberState::Running { leader: status.leader.clone() },
                        )
                    })
                    .unwrap_or_else(|why| (None, MemberState::Unreachable(why))),
                Some(Err(err)) => (None, MemberState::Unreachable(err.to_string())),
                None => (None, MemberState::Unreachable("not asked".into())),
            }
        };
        members.push(SurveyMember {
            name: if server.id == node.id { config.name.clone() } else { name },
            address: server.address.clone(),
            id: server.id,
            role: server.role,
            log: log_position,
            state,
        });
    }
    members.sort_by_key(|m| m.state != MemberState::This);
    Ok(Survey { name: config.name, log, members })
}

/// A member that answers with another node id is not the member the configuration names.
fn check_answer(status: &RecoveryStatus, id: u64) -> Result<(), String> {
    if status.id == id { Ok(()) } else { Err(format!("answers as node {} instead of {id}", status.id)) }
}

/// Runs the futures concurrently (the survey asks every member at once).
async fn futures_join<F: std::future::Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        if let Ok(value) = handle.await {
            out.push(value);
        }
    }
    out
}

/// Plans a recovery keeping `survivors` (names; this member must be one). Refuses when a
/// member still sees a leader, when a survivor did not answer, or when a survivor's log is more
/// up to date than this member's.
pub fn plan(survey: &Survey, survivors: &[String], id: String, created: String) -> Result<RecoveryPlan, RecoveryError> {
    let refuse = |why: String| Err(RecoveryError::Refused(why));
    if let Some(m) =
        survey.members.iter().find(|m| matches!(&m.state, MemberState::Running { leader } if !leader.is_empty()))
    {
        let MemberState::Running { leader } = &m.state else { unreachable!() };
        return refuse(format!(
            "{} still follows the leader {leader}: the cluster has not lost its quorum, so there is nothing to recover (remove dead members with `microctl cluster remove NAME --force` instead)",
            m.name
        ));
    }
    if !survivors.contains(&survey.name) {
        return refuse(format!("this member ({}) must be one of the survivors", survey.name));
    }
    let mut kept = Vec::new();
    for name in survivors {
        let Some(member) = survey.members.iter().find(|m| &m.name == name) else {
            let known: Vec<&str> = survey.members.iter().map(|m| m.name.as_str()).collect();
            return refuse(format!("no member {name:?} in the last configuration ({})", known.join(", ")));
        };
        if let MemberState::Unreachable(why) = &member.state {
            return refuse(format!(
                "{name} did not answer ({why}): a survivor's daemon must run so it can take the new configuration; start it, or leave it out"
            ));
        }
        if member.role == role::SPARE && member.log.is_none_or(|(_, index)| index == 0) {
            return refuse(format!(
                "{name} is a spare without a copy of the log; leave it out and join it again later"
            ));
        }
        if kept.iter().any(|m: &&SurveyMember| m.name == member.name) {
            continue;
        }
        kept.push(member);
    }
    let ours = (survey.log.last_term, survey.log.last_index);
    if let Some(ahead) = kept.iter().find(|m| m.log.is_some_and(|position| position > ours)) {
        let (term, index) = ahead.log.unwrap_or_default();
        return refuse(format!(
            "{}'s log is more up to date (term {term}, index {index}) than this member's (term {}, index {}): plan the recovery on {} instead",
            ahead.name, ours.0, ours.1, ahead.name
        ));
    }
    // This member first, then the most up-to-date: the first ones vote.
    kept.sort_by_key(|m| (m.state != MemberState::This, std::cmp::Reverse(m.log)));
    let members = kept
        .iter()
        .enumerate()
        .map(|(i, m)| RecoveryMember {
            name: m.name.clone(),
            address: m.address.clone(),
            id: m.id,
            role: if i < VOTERS { role::VOTER } else { role::STAND_BY }.to_owned(),
        })
        .collect();
    let removed = survey
        .members
        .iter()
        .filter(|m| !kept.iter().any(|k| k.id == m.id))
        .map(|m| if m.name.is_empty() { m.address.clone() } else { m.name.clone() })
        .collect();
    Ok(RecoveryPlan { id, initiator: survey.name.clone(), created, members, removed })
}

/// A fresh random plan id.
pub fn new_plan_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // An id only has to tell recoveries apart; the clock will do if the generator fails.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes = (nanos as u64).to_le_bytes();
    }
    tls::hex(&bytes)
}

/// Writes the plan for the daemon to apply at its next start (mode 0600).
pub fn write_plan(state_dir: &Path, plan: &RecoveryPlan) -> Result<(), RecoveryError> {
    let text =
        serde_json::to_vec_pretty(plan).map_err(|e| RecoveryError::Refused(format!("encoding the plan: {e}")))?;
    write_atomic(&state_dir.join(PLAN_FILE), &text, 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, id: u64, role: &'static str, log: Option<(u64, u64)>, state: MemberState) -> SurveyMember {
        SurveyMember { name: name.into(), address: format!("10.0.0.{id}:9001"), id, role, log, state }
    }

    fn survey(others: Vec<SurveyMember>) -> Survey {
        let log = RaftState { last_index: 100, last_term: 3, configuration: Vec::new(), configuration_index: 1 };
        let mut members = vec![member("m1", 1, "voter", Some((3, 100)), MemberState::This)];
        members.extend(others);
        Survey { name: "m1".into(), log, members }
    }

    fn running() -> MemberState {
        MemberState::Running { leader: String::new() }
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_lone_survivor_keeps_only_itself() {
        let s = survey(vec![
            member("m2", 2, "voter", None, MemberState::Unreachable("refused".into())),
            member("m3", 3, "voter", None, MemberState::Unreachable("refused".into())),
        ]);
        assert_eq!(s.default_survivors(), names(&["m1"]));
        let plan = plan(&s, &names(&["m1"]), "id".into(), "now".into()).unwrap();
        assert_eq!(plan.members.len(), 1);
        assert_eq!((plan.members[0].id, plan.members[0].role.as_str()), (1, "voter"));
        assert_eq!(plan.removed, names(&["m2", "m3"]));
        assert_eq!(plan.initiator, "m1");
    }

    #[test]
    fn survivors_beyond_three_are_stand_bys_and_unreachable_ones_are_refused() {
        let s = survey(vec![
            member("m2", 2, "voter", Some((3, 90)), running()),
            member("m3", 3, "stand-by", Some((3, 99)), running()),
            member("m4", 4, "stand-by", Some((2, 200)), running()),
            member("m5", 5, "voter", None, MemberState::Unreachable("timeout".into())),
        ]);
        assert_eq!(s.default_survivors(), names(&["m1", "m2", "m3", "m4"]));
        let p = plan(&s, &names(&["m1", "m2", "m3", "m4"]), "id".into(), "now".into()).unwrap();
        let roles: Vec<(&str, &str)> = p.members.iter().map(|m| (m.name.as_str(), m.role.as_str())).collect();
        assert_eq!(roles, [("m1", "voter"), ("m3", "voter"), ("m2", "voter"), ("m4", "stand-by")]);
        assert_eq!(p.removed, names(&["m5"]));
        let err = plan(&s, &names(&["m1", "m5"]), "id".into(), "now".into()).unwrap_err();
        assert!(err.to_string().contains("m5 did not answer"), "{err}");
        let err = plan(&s, &names(&["m2"]), "id".into(), "now".into()).unwrap_err();
        assert!(err.to_string().contains("must be one of the survivors"), "{err}");
        let err = plan(&s, &names(&["m1", "m9"]), "id".into(), "now".into()).unwrap_err();
        assert!(err.to_string().contains("no member \"m9\""), "{err}");
    }

    #[test]
    fn only_the_most_up_to_date_member_may_plan() {
        let s = survey(vec![member("m2", 2, "voter", Some((3, 101)), running())]);
        let err = plan(&s, &names(&["m1", "m2"]), "id".into(), "now".into()).unwrap_err();
        assert!(err.to_string().contains("plan the recovery on m2 instead"), "{err}");
        // Leaving the more up-to-date member out is the operator's choice.
        assert!(plan(&s, &names(&["m1"]), "id".into(), "now".into()).is_ok());
    }

    #[test]
    fn a_cluster_with_a_leader_is_not_recovered() {
        let s = survey(vec![member(
            "m2",
            2,
            "voter",
            Some((3, 100)),
            MemberState::Running { leader: "10.0.0.3:9001".into() },
        )]);
        let err = plan(&s, &names(&["m1"]), "id".into(), "now".into()).unwrap_err();
        assert!(err.to_string().contains("has not lost its quorum"), "{err}");
    }
}
