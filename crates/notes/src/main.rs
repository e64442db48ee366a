//! `notesd`: a small replicated notes service, written the way a team porting a Go
//! microcluster service (MicroCeph, MicroOVN and their like) would write theirs on this library:
//!
//! - its own REST API on every member's cluster address and control socket (`api`): notes
//!   read and written through any member, an old path kept as an alias, a created note
//!   answered `201 Created`, a watch of changes streamed as server-sent events, a file served
//!   from the member's disk, a connection upgraded to a protocol of its own (an echo), a
//!   question put to every other member at once, and a deletion only an operator on the machine
//!   (the control socket) may make;
//! - its own schema, in three updates (`schema`);
//! - hooks that do real work (`hooks`): every member keeps a file listing the cluster's
//!   members in step with the membership;
//! - endpoints served before the member is initialised, for a peer looking for members to
//!   form a cluster with: `GET /1.0/discovery` on the pre-init address (`--pre-init-address`,
//!   then on the member's address), and a beacon on a listener of its own (`--beacon`).
//!
//! Run a member with `notesd --state-dir DIR`, initialise it with `microctl --state-dir DIR
//! init ...` as any member, and use the API through the control socket or the member's address.

mod api;
mod hooks;
mod schema;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use microcluster::{App, Args, DaemonArgs};

#[derive(Debug, Parser)]
#[command(name = "notesd", version, about = "A replicated notes service on microcluster")]
struct Cli {
    /// The member's state directory.
    #[arg(long)]
    state_dir: PathBuf,
    /// How often the leader heartbeats the members.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Log at debug level.
    #[arg(long)]
    debug: bool,
    /// Serve the discovery endpoint (and the core API's status) here before the member is
    /// initialised, over HTTPS with the member's own certificate.
    #[arg(long, value_name = "IP:PORT")]
    pre_init_address: Option<String>,
    /// Serve the beacon, a listener of its own, here, from the daemon's start on.
    #[arg(long, value_name = "IP:PORT")]
    beacon: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let level = if cli.debug { tracing::Level::DEBUG } else { tracing::Level::INFO };
    tracing_subscriber::fmt().with_max_level(level).init();
    let daemon = DaemonArgs {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        heartbeat_interval: cli.heartbeat,
        api_extensions: vec!["notes".into(), "notes_watch".into()],
        extensions_schema: schema::updates(),
        hooks: Arc::new(hooks::MembersFile),
        servers: api::servers(cli.beacon),
        pre_init_address: cli.pre_init_address,
        ..DaemonArgs::default()
    };
    App::new(Args { state_dir: cli.state_dir }).start(daemon).await?;
    Ok(())
}
