//! The checks, pure: what the gathered [`View`] says is wrong, each finding with the repair
//! that fixes it when one can be proved safe.

use super::*;

/// What the checks find in `view`, in order: rows against nodes, nodes against rows, roles,
/// the members' trust stores, the leader's, uniqueness, clocks, raft logs.
pub(super) fn plan(view: &View) -> Vec<Finding> {
    let ctx = Context::new(view);
    let mut out = Vec::new();
    rows_have_nodes(&ctx, &mut out);
    nodes_have_rows(&ctx, &mut out);
    roles_match(&ctx, &mut out);
    for row in view.rows.iter().filter(|r| r.member.address != view.leader_address) {
        let name = row.member.name.as_str();
        let store = Store::Member { address: row.member.address.clone() };
        match view.answers.get(name) {
            Some(Answer::Trusts(entries)) => compare_trust(&ctx, check::TRUST, name, store, entries, &mut out),
            Some(Answer::Unreachable(err) | Answer::Failed(err)) => out.push(finding(
                check::TRUST,
                name,
                Outcome::Skipped,
                format!("its trust store could not be read: {err}"),
            )),
            Some(Answer::Refused(err)) => out.push(finding(
                check::TRUST,
                name,
                Outcome::Problem,
                format!(
                    "it refuses the leader ({err}): its trust store lacks {} or holds another certificate for it, \
                     which no request can fix; copy truststore/{}.toml from another member into its state \
                     directory and restart it",
                    view.leader, view.leader
                ),
            )),
            None => {}
        }
    }
    compare_trust(&ctx, check::LEADER_TRUST, &view.leader, Store::Leader, &view.leader_trust, &mut out);
    unique(view, &mut out);
    clocks(view, &mut out);
    raft_logs(view, &mut out);
    out
}

/// Lookups the checks share.
struct Context<'v> {
    view: &'v View,
    node_at: HashMap<&'v str, &'v NodeInfo>,
    row_at: HashMap<&'v str, &'v Row>,
    /// Rows of failed joins, to be rolled back as the leader's heartbeat would
    /// ([`stalled::judge`]): PENDING without progress past the bound, unreachable, and never
    /// in dqlite's configuration or only as a spare.
    failed_joins: HashSet<&'v str>,
}

impl<'v> Context<'v> {
    fn new(view: &'v View) -> Context<'v> {
        let node_at: HashMap<&str, &NodeInfo> = view.nodes.iter().map(|n| (n.address.as_str(), n)).collect();
        let row_at = view.rows.iter().map(|r| (r.member.address.as_str(), r)).collect();
        let mut ctx = Context { view, node_at, row_at, failed_joins: HashSet::new() };
        ctx.failed_joins = view
            .rows
            .iter()
            .filter(|r| r.role == role::PENDING && r.member.address != view.leader_address)
            .filter(|r| matches!(ctx.verdict(r), stalled::Verdict::RollBack { .. }))
            .map(|r| r.member.name.as_str())
            .collect();
        ctx
    }

    /// What the leader's rollback of stalled joins makes of a PENDING row.
    fn verdict(&self, row: &Row) -> stalled::Verdict {
        let answers = !matches!(self.view.answers.get(&row.member.name), Some(Answer::Unreachable(_)));
        let node = self.node_at.get(row.member.address.as_str()).copied();
        stalled::judge(&stalled::Pending { quiet_for: row.quiet_for, node, answers }, self.view.bound)
    }

    /// Still joining: PENDING, with progress within the bound.
    fn joining(&self, row: &Row) -> bool {
        row.role == role::PENDING && row.quiet_for.is_some_and(|quiet| quiet < self.view.bound)
    }

    /// The rows every trust store must hold.
    fn members(&self) -> impl Iterator<Item = &'v Row> + '_ {
        self.view.rows.iter().filter(|r| !self.failed_joins.contains(r.member.name.as_str()))
    }
}

fn rows_have_nodes(ctx: &Context, out: &mut Vec<Finding>) {
    for row in &ctx.view.rows {
        let (name, address) = (row.member.name.as_str(), row.member.address.as_str());
        let quiet = row.quiet_for.map_or("an unknown time".to_owned(), |q| format!("{}s", q.as_secs()));
        let (outcome, detail) = if ctx.failed_joins.contains(name) {
            let node = match ctx.node_at.get(address) {
                Some(node) => format!("its node {} a spare that never got a role", node.id),
                None => "never in the dqlite configuration".to_owned(),
            };
            let detail = format!("PENDING without progress for {quiet}, {node}, and unreachable: a failed join");
            (Outcome::Repair(Repair::DeleteRow { name: name.to_owned() }), detail)
        } else if let Some(node) = ctx.node_at.get(address) {
            (Outcome::Ok, format!("dqlite node {} at {address}", node.id))
        } else if ctx.joining(row) {
            (Outcome::Skipped, format!("joining (last progress {quiet} ago): not in the dqlite configuration yet"))
        } else if row.role == role::PENDING {
            let answers = match ctx.view.answers.get(name) {
                Some(Answer::Unreachable(_)) => "",
                _ => " (it answers, so it is left alone)",
            };
            let detail = format!(
                "PENDING without progress for {quiet} and not in the dqlite configuration{answers}; if its join \
                 failed, run `microctl cluster remove {name} --force`"
            );
            (Outcome::Problem, detail)
        } else {
            let detail = format!(
                "no dqlite node at {address}: it takes no part in the database; run `microctl cluster remove \
                 {name} --force` and join it again"
            );
            (Outcome::Problem, detail)
        };
        out.push(finding(check::ROW_NODE, name, outcome, detail));
    }
}

fn nodes_have_rows(ctx: &Context, out: &mut Vec<Finding>) {
    let view = ctx.view;
    let voters = view.nodes.iter().filter(|n| n.role == Some(Role::Voter)).count();
    // Voters that can vote now: the leader and the members that answered.
    let online: HashSet<&str> = view
        .rows
        .iter()
        .filter(|r| matches!(view.answers.get(&r.member.name), Some(Answer::Trusts(_))))
        .map(|r| r.member.address.as_str())
        .chain([view.leader_address.as_str()])
        .collect();
    let online_voters =
        view.nodes.iter().filter(|n| n.role == Some(Role::Voter) && online.contains(n.address.as_str())).count();
    let mut voters_removed = 0;
    let unasked: Vec<&str> =
        view.answers.iter().filter(|(_, a)| !matches!(a, Answer::Trusts(_))).map(|(n, _)| n.as_str()).collect();

    let mut nodes: Vec<&NodeInfo> = view.nodes.iter().collect();
    nodes.sort_by(|a, b| a.address.cmp(&b.address));
    for node in nodes {
        let address = node.address.as_str();
        if let Some(row) = ctx.row_at.get(address) {
            let name = row.member.name.as_str();
            let (outcome, detail) = if ctx.failed_joins.contains(name) {
                let repair = Repair::RemoveJoinNode { name: name.to_owned(), id: node.id };
                (Outcome::Repair(repair), format!("dqlite node {}, the spare a failed join added", node.id))
            } else {
                (Outcome::Ok, format!("dqlite node {}", node.id))
            };
            out.push(finding(check::NODE_ROW, name, outcome, detail));
            continue;
        }
        let what = format!("dqlite node {} ({}) at {address} has no row", node.id, role_name(node.role));
        // Who still trusts that address, and as whom.
        let mut trusted_as: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let stores = std::iter::once((view.leader.as_str(), &view.leader_trust)).chain(
            view.answers
                .iter()
                .filter_map(|(n, a)| if let Answer::Trusts(t) = a { Some((n.as_str(), t)) } else { None }),
        );
        for (owner, entries) in stores {
            for entry in entries.iter().filter(|e| e.address == address) {
                trusted_as.entry(entry.name.as_str()).or_default().push(owner);
            }
        }
        let (outcome, detail) = if address == view.leader_address {
            (Outcome::Problem, format!("{what}: it is this member, the leader, which the doctor never removes"))
        } else if let Some((name, owners)) = trusted_as.iter().next() {
            let detail = format!(
                "{what}, but {} still trust{} it as {name}; once none does (the trust-store repairs, or the next \
                 heartbeat), run the doctor again to remove it",
                owners.join(", "),
                if owners.len() == 1 { "s" } else { "" }
            );
            (Outcome::Problem, detail)
        } else if !unasked.is_empty() {
            let detail = format!(
                "{what}; it cannot be proven unused while {} cannot be asked: run the doctor again when they answer",
                unasked.join(", ")
            );
            (Outcome::Problem, detail)
        } else if node.role == Some(Role::Voter) && !quorum_survives(voters - voters_removed, online_voters) {
            let detail = format!(
                "{what}, but without this voter too few online voters would be left for a quorum: bring the \
                 others back first"
            );
            (Outcome::Problem, detail)
        } else {
            if node.role == Some(Role::Voter) {
                voters_removed += 1;
            }
            let detail = format!("{what} and no member trusts its address: an orphan, e.g. of a failed join");
            (Outcome::Repair(Repair::RemoveNode { id: node.id }), detail)
        };
        out.push(finding(check::NODE_ROW, address, outcome, detail));
    }
}

/// Whether removing one offline voter out of `voters` leaves `online` voters a quorum of the
/// rest.
fn quorum_survives(voters: usize, online: usize) -> bool {
    let left = voters.saturating_sub(1);
    left > 0 && online > left / 2
}

fn roles_match(ctx: &Context, out: &mut Vec<Finding>) {
    for row in &ctx.view.rows {
        let Some(node) = ctx.node_at.get(row.member.address.as_str()) else { continue };
        let name = row.member.name.as_str();
        if ctx.failed_joins.contains(name) {
            continue;
        }
        let recorded = recorded_role(&row.role, Some(node.role));
        let (outcome, detail) = match node.role {
            _ if ctx.joining(row) => (Outcome::Skipped, format!("joining: dqlite has it as {}", role_name(node.role))),
            None => (Outcome::Problem, "dqlite reports a role this software does not know".to_owned()),
            // A joiner added as a spare that answers: its own join gives it its role or undoes itself.
            Some(_) if recorded == role::PENDING => {
                (Outcome::Skipped, "joining: dqlite has it as a spare, and it answers".to_owned())
            }
            Some(_) if recorded == row.role => (Outcome::Ok, row.role.clone()),
            Some(_) => {
                let to = recorded.to_owned();
                let detail = format!("the database says {}, dqlite says {to}", row.role);
                (Outcome::Repair(Repair::SetRole { name: name.to_owned(), from: row.role.clone(), to }), detail)
            }
        };
        out.push(finding(check::ROLE, name, outcome, detail));
    }
}

/// A trust store against the rows: every member with its address and certificate, nothing else.
fn compare_trust(
    ctx: &Context,
    check: &'static str,
    owner: &str,
    store: Store,
    entries: &[Trusted],
    out: &mut Vec<Finding>,
) {
    let before = out.len();
    let by_name: HashMap<&str, &Trusted> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    let members: Vec<&Row> = ctx.members().collect();
    for row in &members {
        let name = &row.member.name;
        let found = match by_name.get(name.as_str()) {
            None => format!("does not trust {name}"),
            Some(t) if t.address != row.member.address => {
                format!("trusts {name} at {}, the database says {}", t.address, row.member.address)
            }
            Some(t) if t.fingerprint != row.fingerprint => {
                format!(
                    "trusts {name} with certificate {:.12}, the database has {:.12}",
                    t.fingerprint, row.fingerprint
                )
            }
            Some(_) => continue,
        };
        let outcome = if row.fingerprint.is_empty() {
            Outcome::Problem
        } else {
            Outcome::Repair(Repair::Trust { store: store.clone(), member: row.member.clone() })
        };
        out.push(finding(check, owner, outcome, found));
    }
    let mut extra: Vec<&Trusted> =
        entries.iter().filter(|e| !members.iter().any(|r| r.member.name == e.name)).collect();
    extra.sort_by(|a, b| a.name.cmp(&b.name));
    for entry in extra {
        let (name, address) = (entry.name.as_str(), entry.address.as_str());
        let (outcome, detail) = if name == owner || name == ctx.view.leader {
            let who = if name == owner { "itself" } else { "the leader" };
            let detail = format!("trusts {who}, {name} at {address}, which has no row; the doctor never removes {who}");
            (Outcome::Problem, detail)
        } else {
            // The table is the truth for who is a member: the heartbeat drops such an entry too.
            let why = if ctx.failed_joins.contains(name) { "whose join failed" } else { "which is not a member" };
            let repair = Repair::Distrust { store: store.clone(), name: name.to_owned() };
            (Outcome::Repair(repair), format!("trusts {name} at {address}, {why}"))
        };
        out.push(finding(check, owner, outcome, detail));
    }
    if out.len() == before {
        out.push(finding(check, owner, Outcome::Ok, format!("trusts exactly the {} members", members.len())));
    }
}

fn unique(view: &View, out: &mut Vec<Finding>) {
    let before = out.len();
    let mut report = |what: &str, values: Vec<String>| {
        let mut seen = BTreeSet::new();
        let duplicated: BTreeSet<String> = values.into_iter().filter(|v| !seen.insert(v.clone())).collect();
        for value in duplicated {
            out.push(finding(
                check::UNIQUE,
                &value,
                Outcome::Problem,
                format!("{what} {value} is used more than once; this needs recovery by hand"),
            ));
        }
    };
    report("dqlite node id", view.nodes.iter().map(|n| n.id.to_string()).collect());
    report("dqlite node address", view.nodes.iter().map(|n| n.address.clone()).collect());
    report("member address", view.rows.iter().map(|r| r.member.address.clone()).collect());
    report("member name", view.rows.iter().map(|r| r.member.name.clone()).collect());
    if out.len() == before {
        let detail =
            format!("{} node ids and addresses, {} member names and addresses", view.nodes.len(), view.rows.len());
        out.push(finding(check::UNIQUE, "-", Outcome::Ok, detail));
    }
}

/// Every member's clock against the cluster's time. Nothing to repair: the fix is on the host.
/// Joining members are left out: they are measured once they serve.
fn clocks(view: &View, out: &mut Vec<Finding>) {
    for row in view.rows.iter().filter(|r| r.role != role::PENDING) {
        let name = row.member.name.as_str();
        let (outcome, detail) = match &view.clocks {
            None => (
                Outcome::Skipped,
                "too few members told their time to tell whose clock is off (a majority must)".to_owned(),
            ),
            Some(clocks) => match clocks.get(name) {
                None => (
                    Outcome::Skipped,
                    "it did not tell its time (it did not answer, or runs older software)".to_owned(),
                ),
                Some(offset) if offset.skewed() => (Outcome::Problem, offset.warning(name)),
                Some(offset) => (
                    Outcome::Ok,
                    format!("{} the cluster's time (bound {} s)", offset.relation(), SKEW_BOUND.as_secs()),
                ),
            },
        };
        out.push(finding(check::CLOCK, name, outcome, detail));
    }
}

/// Whether every member can write its raft log. Nothing to repair from here: the fix is the
/// member's disk (the heartbeat already hands its vote to another member meanwhile).
fn raft_logs(view: &View, out: &mut Vec<Finding>) {
    for row in view.rows.iter().filter(|r| r.role != role::PENDING) {
        let name = row.member.name.as_str();
        let (outcome, detail) = match view.raft_logs.get(name) {
            None => (Outcome::Skipped, "it did not say (it did not answer, or runs older software)".to_owned()),
            Some(Some(problem)) => (Outcome::Problem, format!("{name} {problem}")),
            Some(None) => (Outcome::Ok, "it writes its raft log".to_owned()),
        };
        out.push(finding(check::RAFT_LOG, name, outcome, detail));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: u64) -> ClusterMemberLocal {
        ClusterMemberLocal {
            name: format!("m{i}"),
            address: format!("10.0.0.{i}:9000"),
            certificate: format!("pem{i}"),
        }
    }

    fn row(i: u64, role: &str) -> Row {
        Row { member: member(i), fingerprint: format!("fp{i}"), role: role.into(), quiet_for: None }
    }

    fn trusted(i: u64) -> Trusted {
        Trusted { name: format!("m{i}"), address: format!("10.0.0.{i}:9000"), fingerprint: format!("fp{i}") }
    }

    fn node(i: u64, role: Role) -> NodeInfo {
        NodeInfo { id: i, address: format!("10.0.0.{i}:9000"), role: Some(role) }
    }

    /// `n` voters, m1 leading, every trust store right.
    fn healthy(n: u64) -> View {
        let all: Vec<Trusted> = (1..=n).map(trusted).collect();
        View {
            leader: "m1".into(),
            leader_address: member(1).address,
            nodes: (1..=n).map(|i| node(i, Role::Voter)).collect(),
            rows: (1..=n).map(|i| row(i, role::VOTER)).collect(),
            leader_trust: all.clone(),
            answers: (2..=n).map(|i| (format!("m{i}"), Answer::Trusts(all.clone()))).collect(),
            bound: Duration::from_secs(120),
            clocks: Some((1..=n).map(|i| (format!("m{i}"), Offset::default())).collect()),
            raft_logs: (1..=n).map(|i| (format!("m{i}"), None)).collect(),
        }
    }

    fn trusts<'v>(view: &'v mut View, name: &str) -> &'v mut Vec<Trusted> {
        match view.answers.get_mut(name) {
            Some(Answer::Trusts(entries)) => entries,
            _ => panic!("{name} did not answer"),
        }
    }

    fn repairs(findings: &[Finding]) -> Vec<Repair> {
        findings
            .iter()
            .filter_map(|f| if let Outcome::Repair(r) = &f.outcome { Some(r.clone()) } else { None })
            .collect()
    }

    fn with(findings: &[Finding], outcome: Outcome) -> Vec<(&'static str, String)> {
        findings.iter().filter(|f| f.outcome == outcome).map(|f| (f.check, f.member.clone())).collect()
    }

    fn at(i: u64) -> Store {
        Store::Member { address: member(i).address }
    }

    #[test]
    fn a_healthy_cluster_is_all_ok() {
        let findings = plan(&healthy(3));
        assert!(findings.iter().all(|f| f.outcome == Outcome::Ok), "{findings:#?}");
        let checks: Vec<&str> = findings.iter().map(|f| f.check).collect();
        let expected = [[check::ROW_NODE; 3], [check::NODE_ROW; 3], [check::ROLE; 3]].concat();
        assert_eq!(checks[..9], expected[..]);
        assert_eq!(checks[9..13], [check::TRUST, check::TRUST, check::LEADER_TRUST, check::UNIQUE]);
        assert_eq!(checks[13..16], [check::CLOCK; 3]);
        assert_eq!(checks[16..], [check::RAFT_LOG; 3]);
    }

    #[test]
    fn a_member_that_cannot_write_its_raft_log_is_a_problem_naming_it() {
        let mut view = healthy(3);
        view.raft_logs.insert("m3".into(), Some("cannot write its raft log: 0 KiB free".into()));
        view.raft_logs.remove("m2");
        let findings = plan(&view);
        let logs: Vec<(&Outcome, &str)> =
            findings.iter().filter(|f| f.check == check::RAFT_LOG).map(|f| (&f.outcome, f.detail.as_str())).collect();
        assert_eq!(logs[0].0, &Outcome::Ok);
        assert_eq!(logs[1].0, &Outcome::Skipped, "m2 did not say");
        assert_eq!(logs[2], (&Outcome::Problem, "m3 cannot write its raft log: 0 KiB free"));
        assert_eq!(repairs(&findings), [], "a disk is never repaired from here");
    }

    #[test]
    fn trust_stores_are_repaired_from_the_table() {
        let mut view = healthy(3);
        trusts(&mut view, "m2").retain(|t| t.name != "m3");
        trusts(&mut view, "m3")[0].address = "10.0.0.99:9000".into();
        view.leader_trust[1].fingerprint = "other".into();
        view.leader_trust.push(Trusted {
            name: "gone".into(),
            address: "10.0.0.50:9000".into(),
            fingerprint: "x".into(),
        });
        assert_eq!(
            repairs(&plan(&view)),
            [
                Repair::Trust { store: at(2), member: member(3) },
                Repair::Trust { store: at(3), member: member(1) },
                Repair::Trust { store: Store::Leader, member: member(2) },
                Repair::Distrust { store: Store::Leader, name: "gone".into() },
            ]
        );
        // A member that refuses the leader cannot be fixed by a request.
        view.answers.insert("m3".into(), Answer::Refused("403".into()));
        view.answers.insert("m2".into(), Answer::Unreachable("timed out".into()));
        let findings = plan(&view);
        assert_eq!(with(&findings, Outcome::Problem), [(check::TRUST, "m3".to_owned())]);
        assert_eq!(with(&findings, Outcome::Skipped), [(check::TRUST, "m2".to_owned())]);
    }

    #[test]
    fn roles_come_from_dqlite() {
        let mut view = healthy(3);
        view.rows[2].role = role::SPARE.into();
        let to = role::VOTER.to_owned();
        assert_eq!(repairs(&plan(&view)), [Repair::SetRole { name: "m3".into(), from: role::SPARE.into(), to }]);
    }

    #[test]
    fn an_orphan_node_is_removed_only_when_provably_unused() {
        let mut view = healthy(3);
        view.nodes.push(node(9, Role::StandBy));
        assert_eq!(repairs(&plan(&view)), [Repair::RemoveNode { id: 9 }]);

        // Still trusted somewhere: that entry goes first, the node on a later run.
        trusts(&mut view, "m2").push(trusted(9));
        let findings = plan(&view);
        assert_eq!(repairs(&findings), [Repair::Distrust { store: at(2), name: "m9".into() }]);
        assert_eq!(with(&findings, Outcome::Problem), [(check::NODE_ROW, "10.0.0.9:9000".to_owned())]);

        // A member that cannot be asked might trust it.
        trusts(&mut view, "m2").pop();
        view.answers.insert("m3".into(), Answer::Unreachable("timed out".into()));
        assert_eq!(repairs(&plan(&view)), []);
    }

    #[test]
    fn an_orphan_voter_is_removed_only_if_a_quorum_is_left() {
        let mut view = healthy(3);
        view.nodes.push(node(9, Role::Voter));
        assert_eq!(repairs(&plan(&view)), [Repair::RemoveNode { id: 9 }]);

        // m1 alone out of three voters: removing either orphan leaves 1 online of 2.
        let mut view = healthy(1);
        view.nodes.extend([node(8, Role::Voter), node(9, Role::Voter)]);
        let findings = plan(&view);
        assert_eq!(repairs(&findings), []);
        assert_eq!(with(&findings, Outcome::Problem).len(), 2);
        assert!(quorum_survives(2, 1) && quorum_survives(4, 2) && !quorum_survives(3, 1) && !quorum_survives(1, 1));
    }

    #[test]
    fn a_failed_join_is_undone_and_a_joining_member_left_alone() {
        let mut view = healthy(3);
        view.rows.push(Row { quiet_for: Some(Duration::from_secs(600)), ..row(4, role::PENDING) });
        view.answers.insert("m4".into(), Answer::Unreachable("connection refused".into()));
        view.leader_trust.push(trusted(4));
        trusts(&mut view, "m2").push(trusted(4));
        assert_eq!(
            repairs(&plan(&view)),
            [
                Repair::DeleteRow { name: "m4".into() },
                Repair::Distrust { store: at(2), name: "m4".into() },
                Repair::Distrust { store: Store::Leader, name: "m4".into() },
            ]
        );

        // Joining for 30 s: skipped, and trusted where it is missing.
        view.rows[3].quiet_for = Some(Duration::from_secs(30));
        let findings = plan(&view);
        assert_eq!(repairs(&findings), [Repair::Trust { store: at(3), member: member(4) }]);
        assert_eq!(with(&findings, Outcome::Skipped), [(check::ROW_NODE, "m4".into()), (check::TRUST, "m4".into())]);

        // Of unknown age, or answering: not provably failed.
        view.rows[3].quiet_for = None;
        assert!(with(&plan(&view), Outcome::Problem).contains(&(check::ROW_NODE, "m4".into())));
        view.rows[3].quiet_for = Some(Duration::from_secs(600));
        view.answers.insert("m4".into(), Answer::Trusts(view.leader_trust.clone()));
        assert!(!repairs(&plan(&view)).contains(&Repair::DeleteRow { name: "m4".into() }));
    }

    #[test]
    fn a_join_that_stalled_as_a_spare_is_undone_with_its_node() {
        // m4 was added as a spare, then went silent before taking its role.
        let mut view = healthy(3);
        view.nodes.push(node(4, Role::Spare));
        view.rows.push(Row { quiet_for: Some(Duration::from_secs(600)), ..row(4, role::PENDING) });
        view.answers.insert("m4".into(), Answer::Unreachable("connection refused".into()));
        view.leader_trust.push(trusted(4));
        trusts(&mut view, "m3").push(trusted(4));
        let findings = plan(&view);
        assert_eq!(
            repairs(&findings),
            [
                Repair::DeleteRow { name: "m4".into() },
                Repair::RemoveJoinNode { name: "m4".into(), id: 4 },
                Repair::Distrust { store: at(3), name: "m4".into() },
                Repair::Distrust { store: Store::Leader, name: "m4".into() },
            ]
        );
        assert!(with(&findings, Outcome::Problem).is_empty(), "{findings:#?}");

        // Each case: (quiet for, answers, dqlite role) -> the repairs, the skipped checks.
        let joining = Some(Duration::from_secs(30));
        let quiet = Some(Duration::from_secs(600));
        for (quiet_for, answers, dqlite_role, deleted, skipped) in [
            // Recent progress: still joining, whatever it says.
            (joining, false, Role::Spare, false, vec![(check::ROLE, "m4".to_owned())]),
            // It answers: its own join finishes or undoes itself.
            (quiet, true, Role::Spare, false, vec![(check::ROLE, "m4".to_owned())]),
            // It has a role: only the row's role is behind.
            (quiet, false, Role::Voter, false, vec![]),
            (quiet, false, Role::Spare, true, vec![]),
        ] {
            let mut view = view.clone();
            view.rows[3].quiet_for = quiet_for;
            view.nodes[3].role = Some(dqlite_role);
            if answers {
                view.answers.insert("m4".into(), Answer::Trusts(view.leader_trust.clone()));
            }
            let findings = plan(&view);
            let planned = repairs(&findings);
            let case = format!("{quiet_for:?} answers={answers} {dqlite_role:?}: {findings:#?}");
            assert_eq!(planned.contains(&Repair::DeleteRow { name: "m4".into() }), deleted, "{case}");
            let skipped_now: Vec<_> =
                with(&findings, Outcome::Skipped).into_iter().filter(|(c, _)| *c == check::ROLE).collect();
            assert_eq!(skipped_now, skipped, "{case}");
            if dqlite_role == Role::Voter {
                let to = role::VOTER.to_owned();
                assert!(
                    planned.contains(&Repair::SetRole { name: "m4".into(), from: role::PENDING.into(), to }),
                    "{case}"
                );
            }
        }
    }

    #[test]
    fn the_leader_is_never_removed_and_duplicates_are_reported() {
        let mut view = healthy(2);
        view.rows.remove(0);
        view.leader_trust.retain(|t| t.name != "m2");
        let findings = plan(&view);
        assert_eq!(repairs(&findings), [Repair::Trust { store: Store::Leader, member: member(2) }]);
        let problems = with(&findings, Outcome::Problem);
        assert!(problems.contains(&(check::NODE_ROW, member(1).address)), "{findings:#?}");
        assert!(problems.contains(&(check::LEADER_TRUST, "m1".into())), "{findings:#?}");
        assert!(problems.contains(&(check::TRUST, "m2".into())), "{findings:#?}");

        let mut view = healthy(2);
        view.nodes.push(NodeInfo { id: 7, ..node(2, Role::Spare) });
        let problems = with(&plan(&view), Outcome::Problem);
        assert!(problems.contains(&(check::UNIQUE, member(2).address)), "{problems:?}");
    }

    #[test]
    fn a_clock_off_the_others_is_a_problem_naming_the_member_and_the_fix() {
        const DAY: i64 = 86_400 * 1_000_000_000;
        // (what, m1..m3's offsets in ns (`None`: did not tell its time), whether a majority told,
        // the expected outcomes)
        type Case = (&'static str, [Option<i64>; 3], bool, [Outcome; 3]);
        let cases: [Case; 5] = [
            (
                "all in time",
                [Some(0), Some(1_000_000), Some(-2_000_000)],
                true,
                [Outcome::Ok, Outcome::Ok, Outcome::Ok],
            ),
            (
                "m3 two days ahead",
                [Some(0), Some(0), Some(2 * DAY)],
                true,
                [Outcome::Ok, Outcome::Ok, Outcome::Problem],
            ),
            (
                "m1 (the leader) behind",
                [Some(-DAY), Some(0), Some(0)],
                true,
                [Outcome::Problem, Outcome::Ok, Outcome::Ok],
            ),
            ("m2 did not tell", [Some(0), None, Some(0)], true, [Outcome::Ok, Outcome::Skipped, Outcome::Ok]),
            ("too few told", [Some(0), None, None], false, [Outcome::Skipped, Outcome::Skipped, Outcome::Skipped]),
        ];
        for (what, offsets, majority, expected) in cases {
            let mut view = healthy(3);
            view.clocks = majority.then(|| {
                (1..=3)
                    .zip(offsets)
                    .filter_map(|(i, o)| o.map(|nanos| (format!("m{i}"), Offset { nanos, uncertainty: 1_000_000 })))
                    .collect()
            });
            let findings = plan(&view);
            let clocks: Vec<&Finding> = findings.iter().filter(|f| f.check == check::CLOCK).collect();
            let outcomes: Vec<Outcome> = clocks.iter().map(|f| f.outcome.clone()).collect();
            assert_eq!(outcomes, expected, "{what}: {clocks:#?}");
            for f in clocks.iter().filter(|f| f.outcome == Outcome::Problem) {
                assert!(
                    f.detail.starts_with(&format!("{}'s clock is 1day", f.member)) || f.detail.contains("2days ahead"),
                    "{what}: {f:?}"
                );
                assert!(f.detail.contains("chronyc"), "{what}: the fix is named: {f:?}");
            }
            assert_eq!(repairs(&findings), [], "{what}: a clock is never repaired from here");
        }
    }

    #[test]
    fn results_say_what_was_or_would_be_done() {
        let f = finding(check::ROLE, "m3", Outcome::Repair(Repair::DeleteRow { name: "m3".into() }), "x".into());
        let check = result_of(f.clone(), None);
        assert_eq!(
            (check.status.as_str(), check.detail.as_str()),
            ("PROBLEM", "x (repairable: without --check the doctor would delete its row)")
        );
        let done = result_of(f.clone(), Some(Ok(())));
        assert_eq!((done.status.as_str(), done.detail.as_str()), ("REPAIRED", "x (repaired: deleted its row)"));
        let failed = result_of(f, Some(Err("no leader".into())));
        assert_eq!(
            (failed.status.as_str(), failed.detail.as_str()),
            ("PROBLEM", "x (could not delete its row: no leader)")
        );
    }
}
