//! Hooks that keep `STATE/notes/members.conf` (one `name address` line per member, sorted)
//! in step with the cluster on every member: written once the member is part of a cluster,
//! and again whenever the membership changes. The file is what a service would hand to a
//! program that is not cluster-aware (a proxy's upstreams, a monitoring target list).

use std::collections::BTreeMap;
use std::path::PathBuf;

use microcluster::api::{ClusterMemberLocal, MemberConfig, RoleStatus};
use microcluster::{HookFuture, Hooks, InitConfig, State};

/// The hooks.
#[derive(Debug)]
pub(crate) struct MembersFile;

/// Where the file is.
pub(crate) fn path(state: &State) -> PathBuf {
    state.state_dir().join("notes").join("members.conf")
}

/// Rewrites the file from the members this member trusts (itself included), replacing it in
/// one rename so a reader never sees half of it.
fn write(state: &State) -> Result<(), microcluster::HookError> {
    let mut members: Vec<(String, String)> = state.members().into_iter().map(|m| (m.name, m.address)).collect();
    members.sort();
    let text: String = members.iter().map(|(name, address)| format!("{name} {address}\n")).collect();
    let path = path(state);
    let dir = path.parent().ok_or("the members file has no directory")?;
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(".members.conf.tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, &path)?;
    Ok(())
}

fn rewrite<'a>(state: &'a State) -> HookFuture<'a> {
    Box::pin(async move { write(state) })
}

impl Hooks for MembersFile {
    fn post_bootstrap<'a>(&'a self, state: &'a State, _config: &'a InitConfig) -> HookFuture<'a> {
        rewrite(state)
    }

    fn post_join<'a>(&'a self, state: &'a State, _config: &'a InitConfig) -> HookFuture<'a> {
        rewrite(state)
    }

    fn on_start<'a>(&'a self, state: &'a State) -> HookFuture<'a> {
        rewrite(state)
    }

    fn on_new_member<'a>(&'a self, state: &'a State, _member: &'a ClusterMemberLocal) -> HookFuture<'a> {
        rewrite(state)
    }

    fn post_remove<'a>(&'a self, state: &'a State, _force: bool) -> HookFuture<'a> {
        rewrite(state)
    }

    fn on_daemon_config_update<'a>(&'a self, state: &'a State, _config: &'a MemberConfig) -> HookFuture<'a> {
        rewrite(state)
    }

    // The leader's round also catches a change a member missed (it was down when it happened).
    fn on_heartbeat<'a>(&'a self, state: &'a State, _roles: &'a BTreeMap<String, RoleStatus>) -> HookFuture<'a> {
        rewrite(state)
    }
}
