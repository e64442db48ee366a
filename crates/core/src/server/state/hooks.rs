//! Lifecycle hooks an application implements to act at each step of a member's life. Every
//! method has a default that does nothing; implement the ones you need.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use crate::api::{ClusterMemberLocal, MemberConfig, RoleStatus};
use crate::server::state::State;

/// What a hook returns on failure (any error type).
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// The future a hook returns.
pub type HookFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HookError>> + Send + 'a>>;

/// Configuration passed to `init` (`--config key=value`).
pub type InitConfig = BTreeMap<String, String>;

fn done<'a>() -> HookFuture<'a> {
    Box::pin(std::future::ready(Ok(())))
}

/// Lifecycle hooks. Where a hook runs and what its failure does:
///
/// ```
/// use microcluster::{HookFuture, Hooks, State};
///
/// struct Audit;
///
/// impl Hooks for Audit {
///     fn on_new_member<'a>(&'a self, state: &'a State, member: &'a microcluster::api::ClusterMemberLocal) -> HookFuture<'a> {
///         Box::pin(async move {
///             state.exec("INSERT INTO audit (event) VALUES (?)", &[format!("{} joined", member.name).into()]).await?;
///             Ok(())
///         })
///     }
/// }
/// ```
///
/// | hook | runs on | when | on error |
/// |---|---|---|---|
/// | `on_daemon_start` | every member | each daemon start, initialised or not, before it resumes or waits for init (no database yet) | the daemon stops with the error |
/// | `pre_init` | the member being initialised | before anything is written (its name and address are set) | init fails, nothing changed |
/// | `post_bootstrap` | the bootstrapping member | after the database exists | bootstrap undone |
/// | `pre_join` | the joiner | after its database is up | join undone everywhere |
/// | `on_new_member` | every existing member | after the joiner's `pre_join` | join undone everywhere (a member that cannot run it, being unreachable, not ready or still joining itself, is skipped) |
/// | `post_join` | the joiner | after `on_new_member` everywhere | join undone everywhere |
/// | `on_start` | every member | each start once the database is up (after bootstrap or join the first time) | the daemon stops (a bootstrap or join it ends is undone) |
/// | `pre_remove` | the member leaving | before it is removed | removal refused (unless forced) |
/// | `post_remove` | the member that removed it, then every other member left | after a removal | the removal stands; the error is returned to the caller |
/// | `on_heartbeat` | the leader | after each heartbeat round, with each member's role before and after it | logged |
/// | `on_daemon_config_update` | every other member | after a member changed its listeners (`PUT /core/1.0/daemon/servers`) or its address | the change stands; the error is returned to the caller of the listener change (a member that cannot run it is skipped); logged after an address change |
/// | `on_stop` | every member | during shutdown, for 5 s at most | logged |
///
/// Tasks a hook starts that should last until the daemon stops wait on [`State::stopping`].
pub trait Hooks: Send + Sync + 'static {
    /// Before bootstrap or join.
    fn pre_init<'a>(&'a self, _state: &'a State, _bootstrap: bool, _config: &'a InitConfig) -> HookFuture<'a> {
        done()
    }

    /// After a new cluster was bootstrapped.
    fn post_bootstrap<'a>(&'a self, _state: &'a State, _config: &'a InitConfig) -> HookFuture<'a> {
        done()
    }

    /// On the joiner, once its database is up, before the others are told.
    fn pre_join<'a>(&'a self, _state: &'a State, _config: &'a InitConfig) -> HookFuture<'a> {
        done()
    }

    /// On the joiner, after every existing member ran `on_new_member`.
    fn post_join<'a>(&'a self, _state: &'a State, _config: &'a InitConfig) -> HookFuture<'a> {
        done()
    }

    /// On every existing member when a member joined.
    fn on_new_member<'a>(&'a self, _state: &'a State, _member: &'a ClusterMemberLocal) -> HookFuture<'a> {
        done()
    }

    /// Each time the daemon starts, once its database is up.
    fn on_start<'a>(&'a self, _state: &'a State) -> HookFuture<'a> {
        done()
    }

    /// On the member being removed, before it is removed.
    fn pre_remove<'a>(&'a self, _state: &'a State, _force: bool) -> HookFuture<'a> {
        done()
    }

    /// On every remaining member after a removal.
    fn post_remove<'a>(&'a self, _state: &'a State, _force: bool) -> HookFuture<'a> {
        done()
    }

    /// On the leader after each heartbeat round, with every member's role before and after
    /// it, by name.
    fn on_heartbeat<'a>(&'a self, _state: &'a State, _roles: &'a BTreeMap<String, RoleStatus>) -> HookFuture<'a> {
        done()
    }

    /// Each time the daemon starts, initialised or not, once its control socket serves and
    /// before it resumes its membership or waits for `init`: for work that does not need the
    /// database (a pre-init discovery service, say). Tasks it starts can end with
    /// [`State::stopping`].
    fn on_daemon_start<'a>(&'a self, _state: &'a State) -> HookFuture<'a> {
        done()
    }

    /// On every other member after a member changed its listeners' addresses
    /// (`PUT /core/1.0/daemon/servers`) or its own (`cluster set-address`); `config` is that
    /// member's new configuration.
    fn on_daemon_config_update<'a>(&'a self, _state: &'a State, _config: &'a MemberConfig) -> HookFuture<'a> {
        done()
    }

    /// During shutdown.
    fn on_stop<'a>(&'a self, _state: &'a State) -> HookFuture<'a> {
        done()
    }
}

/// Hooks that do nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl Hooks for NoHooks {}
