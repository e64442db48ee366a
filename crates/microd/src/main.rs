//! `microd`: the example member daemon. Argument parsing and logging set-up over
//! [`microcluster::App`]; the application itself (schema, endpoints, hooks) is in `extension`.
#![forbid(unsafe_code)]

mod extension;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use microcluster::{App, Args, DaemonArgs};

/// Runs a microcluster member: a unix control socket at once, and after `microctl init` an
/// HTTPS address serving the cluster API and the replicated database.
#[derive(Debug, Parser)]
#[command(name = "microd", version, about)]
struct Cli {
    /// State directory (created if missing).
    #[arg(long, env = "STATE_DIR", default_value = "/var/lib/microd")]
    state_dir: PathBuf,
    /// Heartbeat interval (e.g. 10s, 1s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// Interrupt SQL statements that run longer than this (0: never).
    #[arg(long, default_value = "5s", value_parser = parse_limit)]
    statement_timeout: Duration,
    /// Group that may use the control socket (name or id).
    #[arg(long, env = "SOCKET_GROUP")]
    socket_group: Option<String>,
    /// Log informational messages.
    #[arg(short, long)]
    verbose: bool,
    /// Log debug messages.
    #[arg(short, long)]
    debug: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 10s, 1s, 500ms)"))?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

fn parse_limit(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 5s, 1m, 0 for no limit)"))
}

fn init_logging(cli: &Cli) {
    let level = if cli.debug {
        "debug"
    } else if cli.verbose {
        "info"
    } else {
        "warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MICROD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},hyper=warn,rustls=warn")));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let app = App::new(Args { state_dir: cli.state_dir.clone() });
    let args = DaemonArgs {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        heartbeat_interval: cli.heartbeat,
        socket_group: cli.socket_group,
        statement_timeout: Some(cli.statement_timeout).filter(|d| !d.is_zero()),
        ..extension::daemon_args()
    };
    app.start(args).await.with_context(|| format!("microd with state directory {}", cli.state_dir.display()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {}", microcluster::report::one_line(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
