//! The seam between the layers under the life cycle and the life cycle itself. Init, reset
//! and resume are the life cycle's (`lifecycle::member::MemberLifecycle` implements
//! [`Lifecycle`]); a handler that inits or resets the member, and a restart of the runtime,
//! reach them through the [`State`].

use std::sync::Arc;

use crate::api::Control;
use crate::server::error::Error;
use crate::server::state::State;
use crate::server::state::http::BoxFuture;
use crate::server::state::runtime::Runtime;

/// How a member becomes initialised, comes back up and goes back to uninitialised.
pub(crate) trait Lifecycle: Send + Sync {
    /// Makes this uninitialised member a new cluster's first member (`control.bootstrap`) or
    /// joins it to a cluster (`control.join_token`).
    fn init<'a>(&'a self, state: &'a State, control: &'a Control) -> BoxFuture<'a, Result<(), Error>>;

    /// Starts an initialised member's runtime with this node id, applying a pending recovery
    /// plan and opening the database, then its background tasks.
    fn resume(&self, state: State, node_id: u64) -> BoxFuture<'static, ()>;

    /// Turns this member, removed from its cluster as `name` while the membership was at
    /// `epoch`, back into an uninitialised daemon; nothing when a later membership began since.
    fn reset(&self, state: State, name: String, epoch: u64) -> BoxFuture<'static, ()>;

    /// Starts what runs beside a runtime whose database is online (heartbeats, checkpoints
    /// following the node's role, memory given back after bursts, the disk watch), tied to the
    /// runtime's life.
    fn start_background(&self, state: &State, runtime: &Arc<Runtime>);
}
