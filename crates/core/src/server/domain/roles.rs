//! Role rebalancing: given dqlite's configuration and which members are online, the next single
//! role change that brings the cluster closer to its targets (3 voters, 3 stand-bys) without
//! ever leaving the voters short of a quorum.
//!
//! Pure logic, run by the leader on every heartbeat round; applying one change per round keeps
//! raft to one configuration change at a time.

use std::collections::{HashMap, HashSet};

use dqlite::{NodeInfo, Role};

/// Targets for the number of voters and stand-bys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Targets {
    pub(crate) voters: usize,
    pub(crate) stand_bys: usize,
}

impl Default for Targets {
    fn default() -> Self {
        Targets { voters: 3, stand_bys: 3 }
    }
}

/// Where a node sits for placement: its failure domain and weight (lower weight is preferred).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Placement {
    pub(crate) failure_domain: u64,
    pub(crate) weight: u64,
}

/// One role change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) id: u64,
    pub(crate) address: String,
    pub(crate) role: Role,
    pub(crate) reason: &'static str,
}

fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// The next role change, if any. `online` holds the addresses that answered (the leader
/// included); `leader` is never demoted.
pub(crate) fn next_change(
    nodes: &[NodeInfo],
    online: &HashSet<String>,
    placement: &HashMap<String, Placement>,
    leader: &str,
    targets: Targets,
) -> Option<Change> {
    let with = |role: Role| nodes.iter().filter(move |n| n.role == Some(role));
    let is_online = |n: &&NodeInfo| online.contains(&n.address);
    let voters: Vec<&NodeInfo> = with(Role::Voter).collect();
    let online_voters = voters.iter().filter(|n| is_online(n)).count();
    let stand_bys: Vec<&NodeInfo> = with(Role::StandBy).collect();
    let online_stand_bys = stand_bys.iter().filter(|n| is_online(n)).count();
    let place = |n: &NodeInfo| placement.get(&n.address).copied().unwrap_or_default();
    // Candidates in failure domains the role does not use yet come first, then lower weight.
    let best = |candidates: Vec<&NodeInfo>, holders: &[&NodeInfo]| -> Option<NodeInfo> {
        let used: HashSet<u64> = holders.iter().filter(|n| is_online(n)).map(|n| place(n).failure_domain).collect();
        candidates
            .into_iter()
            .min_by_key(|n| (used.contains(&place(n).failure_domain), place(n).weight, n.address.clone()))
            .cloned()
    };
    let change = |n: NodeInfo, role, reason| Some(Change { id: n.id, address: n.address, role, reason });

    // 1. Too few voters online: promote an online stand-by, else an online spare.
    if online_voters < targets.voters {
        let spares: Vec<&NodeInfo> = with(Role::Spare).filter(is_online).collect();
        let pool: Vec<&NodeInfo> =
            if online_stand_bys > 0 { stand_bys.iter().copied().filter(is_online).collect() } else { spares };
        // With fewer than 3 nodes in all, keep what there is: a second voter adds no safety.
        if nodes.len() >= 3
            && let Some(n) = best(pool, &voters)
        {
            return change(n, Role::Voter, "too few voters online");
        }
    }
    // 2. An offline voter that has been replaced (more voters than wanted): demote it, if the
    //    remaining voters still make a quorum. Without a replacement it keeps its vote, so that
    //    it counts again the moment it comes back.
    if voters.len() > targets.voters
        && let Some(dead) = voters.iter().find(|n| !is_online(n) && n.address != leader)
    {
        let remaining = voters.len() - 1;
        if online_voters >= quorum(remaining) && remaining >= 1 {
            return change((*dead).clone(), Role::Spare, "voter offline");
        }
    }
    // 3. More voters than wanted (e.g. a dead voter came back after a promotion).
    if voters.len() > targets.voters {
        let surplus: Vec<&NodeInfo> = voters.iter().copied().filter(|n| n.address != leader).collect();
        if let Some(n) = surplus.into_iter().max_by_key(|n| (place(n).weight, n.address.clone())).cloned() {
            let role = if online_stand_bys < targets.stand_bys { Role::StandBy } else { Role::Spare };
            if online_voters - usize::from(is_online(&&n)) >= quorum(voters.len() - 1) {
                return change(n, role, "more voters than needed");
            }
        }
    }
    // 4. Too few stand-bys online: promote an online spare.
    if online_stand_bys < targets.stand_bys {
        let spares: Vec<&NodeInfo> = with(Role::Spare).filter(is_online).collect();
        if let Some(n) = best(spares, &stand_bys) {
            return change(n, Role::StandBy, "too few stand-bys online");
        }
    }
    // 5. An offline stand-by: demote it so a live member can take its place.
    if let Some(dead) = stand_bys.iter().find(|n| !is_online(n)) {
        return change((*dead).clone(), Role::Spare, "stand-by offline");
    }
    // 6. More stand-bys than wanted.
    if stand_bys.len() > targets.stand_bys
        && let Some(n) = stand_bys.iter().max_by_key(|n| (place(n).weight, n.address.clone()))
    {
        return change((*n).clone(), Role::Spare, "more stand-bys than needed");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u64, role: Role) -> NodeInfo {
        NodeInfo { id: i, address: format!("n{i}"), role: Some(role) }
    }

    fn online(ids: &[u64]) -> HashSet<String> {
        ids.iter().map(|i| format!("n{i}")).collect()
    }

    fn plan(nodes: &[NodeInfo], up: &[u64]) -> Option<(u64, Role)> {
        next_change(nodes, &online(up), &HashMap::new(), "n1", Targets::default()).map(|c| (c.id, c.role))
    }

    /// Applies changes until none is left; returns the final roles.
    fn settle(mut nodes: Vec<NodeInfo>, up: &[u64]) -> Vec<NodeInfo> {
        for _ in 0..20 {
            let voters_before = nodes.iter().filter(|n| n.role == Some(Role::Voter)).count();
            match plan(&nodes, up) {
                Some((id, role)) => {
                    nodes.iter_mut().find(|n| n.id == id).unwrap().role = Some(role);
                    let voters = nodes.iter().filter(|n| n.role == Some(Role::Voter));
                    let live = voters.clone().filter(|n| up.contains(&n.id)).count();
                    assert!(live >= quorum(voters.count()), "quorum lost after a change (had {voters_before})");
                }
                None => return nodes,
            }
        }
        panic!("did not settle");
    }

    fn roles(nodes: &[NodeInfo]) -> Vec<(u64, Role)> {
        nodes.iter().map(|n| (n.id, n.role.unwrap())).collect()
    }

    #[test]
    fn a_dead_voter_is_replaced_by_a_stand_by_then_demoted() {
        let nodes = vec![node(1, Role::Voter), node(2, Role::Voter), node(3, Role::Voter), node(4, Role::StandBy)];
        assert_eq!(plan(&nodes, &[1, 2, 4]), Some((4, Role::Voter)));
        let settled = settle(nodes, &[1, 2, 4]);
        assert_eq!(roles(&settled), [(1, Role::Voter), (2, Role::Voter), (3, Role::Spare), (4, Role::Voter)]);
    }

    #[test]
    fn a_returning_member_becomes_a_stand_by() {
        let nodes = vec![node(1, Role::Voter), node(2, Role::Voter), node(3, Role::Spare), node(4, Role::Voter)];
        assert_eq!(plan(&nodes, &[1, 2, 3, 4]), Some((3, Role::StandBy)));
    }

    #[test]
    fn spares_fill_voters_and_stand_bys() {
        let mut nodes = vec![node(1, Role::Voter)];
        nodes.extend((2..=7).map(|i| node(i, Role::Spare)));
        let settled = settle(nodes, &[1, 2, 3, 4, 5, 6, 7]);
        let count = |r| settled.iter().filter(|n| n.role == Some(r)).count();
        assert_eq!((count(Role::Voter), count(Role::StandBy), count(Role::Spare)), (3, 3, 1));
    }

    #[test]
    fn nothing_changes_without_quorum_or_when_healthy() {
        let nodes = vec![node(1, Role::Voter), node(2, Role::Voter), node(3, Role::Voter)];
        assert_eq!(plan(&nodes, &[1, 2, 3]), None);
        // One voter down and nobody to replace it: it keeps its vote for when it returns.
        assert_eq!(plan(&nodes, &[1, 2]), None);
        // Two of three voters dead: demoting either would leave 1 of 2 live — no quorum.
        assert_eq!(plan(&nodes, &[1]), None);
        // Two nodes only: leave them be.
        let two = vec![node(1, Role::Voter), node(2, Role::Spare)];
        assert_eq!(plan(&two, &[1, 2]), Some((2, Role::StandBy)));
    }

    #[test]
    fn failure_domains_spread_voters() {
        let nodes = vec![node(1, Role::Voter), node(2, Role::Voter), node(3, Role::Spare), node(4, Role::Spare)];
        let placement: HashMap<String, Placement> = [
            ("n1", Placement { failure_domain: 1, weight: 0 }),
            ("n2", Placement { failure_domain: 2, weight: 0 }),
            ("n3", Placement { failure_domain: 1, weight: 0 }),
            ("n4", Placement { failure_domain: 3, weight: 5 }),
        ]
        .into_iter()
        .map(|(a, p)| (a.to_owned(), p))
        .collect();
        let change = next_change(&nodes, &online(&[1, 2, 3, 4]), &placement, "n1", Targets::default()).unwrap();
        assert_eq!((change.id, change.role), (4, Role::Voter));
    }

    #[test]
    fn the_leader_is_never_demoted() {
        let nodes = vec![node(1, Role::Voter), node(2, Role::Voter), node(3, Role::Voter), node(4, Role::Voter)];
        let change = plan(&nodes, &[1, 2, 3, 4]).unwrap();
        assert_ne!(change.0, 1);
        assert_eq!(change.1, Role::StandBy);
    }
}
