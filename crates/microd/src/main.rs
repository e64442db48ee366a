//! `microd`: the example member daemon. Flags and the config file (`config`), logging set-up
//! (`logging`) and systemd notifications (`notify`) over [`microcluster::App`]; the application
//! itself (schema, endpoints, hooks) is in `extension`.
#![forbid(unsafe_code)]

mod config;
mod extension;
mod logging;
mod notify;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use microcluster::{App, Args, ConnectionLimits, DaemonArgs};

use config::{Config, LogFormat, LogLevel, Settings};

/// Runs a microcluster member: a unix control socket at once, and after `microctl init` an
/// HTTPS address serving the cluster API and the replicated database.
///
/// Each flag overrides its key in the config file; a key left out takes the default shown.
#[derive(Debug, Parser)]
#[command(name = "microd", version, about)]
struct Cli {
    /// Config file [default: /etc/microd/microd.toml if it exists].
    #[arg(long, env = "MICROD_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// State directory, created if missing [key: state_dir; default: /var/lib/microd].
    #[arg(long, env = "STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Heartbeat interval, e.g. 10s, 1s, 500ms [key: heartbeat; default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_heartbeat)]
    heartbeat: Option<Duration>,
    /// Interrupt SQL statements that run longer than this, 0: never [key: statement_timeout;
    /// default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_statement_timeout)]
    statement_timeout: Option<Duration>,
    /// Expected network round trip between members [key: network_latency; default: 40ms].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_network_latency)]
    network_latency: Option<Duration>,
    /// Group that may use the control socket, name or id [key: socket_group].
    #[arg(long, env = "SOCKET_GROUP", value_name = "GROUP")]
    socket_group: Option<String>,
    /// This member's failure domain [key: failure_domain; default: daemon.toml's].
    #[arg(long, value_name = "N")]
    failure_domain: Option<u64>,
    /// Longest a client may take for its TLS handshake or a request head
    /// [key: http_header_timeout; default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_http_timeout)]
    http_header_timeout: Option<Duration>,
    /// Longest a kept-alive connection may wait for its next request [key: http_idle_timeout;
    /// default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_http_timeout)]
    http_idle_timeout: Option<Duration>,
    /// At shutdown, how long requests under way get to finish before their connections close
    /// [key: http_drain_timeout; default: 1s; 0s: at once].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_drain_timeout)]
    http_drain_timeout: Option<Duration>,
    /// Most connections one TCP listener holds, a quarter of them for untrusted clients
    /// [key: max_connections; default: from the open-file limit, at most 8192].
    #[arg(long, value_name = "N", value_parser = config::parse_max_connections)]
    max_connections: Option<usize>,
    /// Log level [key: log_level; default: warn].
    #[arg(long, value_enum, value_name = "LEVEL", conflicts_with_all = ["verbose", "debug"])]
    log_level: Option<LogLevel>,
    /// Log format [key: log_format; default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    /// Log informational messages (--log-level info).
    #[arg(short, long)]
    verbose: bool,
    /// Log debug messages (--log-level debug).
    #[arg(short, long)]
    debug: bool,
    /// Write the man page microd.1 into DIR and exit (for `make install`).
    #[arg(long, value_name = "DIR", hide = true)]
    generate_manpage: Option<PathBuf>,
}

impl Cli {
    /// The settings the flags (and their environment variables) give.
    fn flags(&self) -> Config {
        let verbosity = if self.debug { Some(LogLevel::Debug) } else { self.verbose.then_some(LogLevel::Info) };
        Config {
            state_dir: self.state_dir.clone(),
            heartbeat: self.heartbeat,
            statement_timeout: self.statement_timeout,
            network_latency: self.network_latency,
            socket_group: self.socket_group.clone(),
            failure_domain: self.failure_domain,
            http_header_timeout: self.http_header_timeout,
            http_idle_timeout: self.http_idle_timeout,
            http_drain_timeout: self.http_drain_timeout,
            max_connections: self.max_connections,
            log_level: self.log_level.or(verbosity),
            log_format: self.log_format,
        }
    }
}

fn write_manpage(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("microd.1");
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut page).context("rendering the man page")?;
    page.extend_from_slice(PAGE_SECTIONS.as_bytes());
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))
}

/// What clap does not know, appended to the page (roff).
const PAGE_SECTIONS: &str = r#".SH ENVIRONMENT
.TP
\fBSTATE_DIR\fR, \fBMICROD_CONFIG\fR, \fBSOCKET_GROUP\fR
As \fB\-\-state\-dir\fR, \fB\-\-config\fR and \fB\-\-socket\-group\fR (the flags win).
.TP
\fBMICROD_LOG\fR
A log filter, as \fBRUST_LOG\fR takes it (\fBinfo,microcluster=debug\fR).
.TP
\fBNO_COLOR\fR
Set to anything: no colours in the log, even on a terminal.
.TP
\fBJOURNAL_STREAM\fR, \fBINVOCATION_ID\fR
Set by systemd: the log goes without timestamps, with syslog priorities, for the journal.
.SH FILES
.TP
\fB/etc/microd/microd.toml\fR
The configuration file, when \fB\-\-config\fR names it.
.TP
\fB/var/lib/microd\fR
The default state directory: \fBcontrol.socket\fR, \fBdaemon.toml\fR, \fBserver.crt\fR/\fB.key\fR, \fBcluster.crt\fR/\fB.key\fR, \fBtruststore/\fR, \fBdatabase/\fR.
.SH "EXIT STATUS"
.TP
\fB0\fR
Stopped cleanly (SIGTERM, SIGINT or \fBmicroctl shutdown\fR).
.TP
\fB1\fR
Failed: a damaged or missing state file, an address in use, a bad configuration; one line on standard error names the cause.
.TP
\fB2\fR
Usage error.
"#;

async fn run(settings: Settings) -> anyhow::Result<()> {
    let app = App::new(Args { state_dir: settings.state_dir.clone() });
    let args = DaemonArgs {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        heartbeat_interval: settings.heartbeat,
        socket_group: settings.socket_group,
        statement_timeout: settings.statement_timeout,
        network_latency: settings.network_latency,
        failure_domain: settings.failure_domain,
        connections: ConnectionLimits {
            header_timeout: settings.http_header_timeout,
            idle_timeout: settings.http_idle_timeout,
            max_connections: settings.max_connections,
            drain_timeout: settings.http_drain_timeout,
        },
        ..extension::daemon_args()
    };
    let notifier = notify::Notifier::from_env().map(Arc::new);
    if let Some(notifier) = &notifier {
        notify::spawn(notifier.clone(), app.clone());
    }
    let result = app.start(args).await;
    if let Some(notifier) = notifier {
        // Already sent on SIGTERM/SIGINT; this covers `microctl shutdown` and failures.
        notifier.stopping();
    }
    result
        .map_err(|err| read_only_hint(err.into(), &settings.state_dir))
        .with_context(|| format!("microd with state directory {}", settings.state_dir.display()))
}

/// Says what to do when the state directory is read-only under systemd: the unit's
/// `ProtectSystem=strict` leaves only its own `StateDirectory` writable.
fn read_only_hint(err: anyhow::Error, state_dir: &Path) -> anyhow::Error {
    let read_only =
        err.chain().any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.raw_os_error() == Some(30)))
            || err.chain().any(|cause| cause.to_string().contains("Read-only file system"));
    if read_only && std::env::var_os("INVOCATION_ID").is_some() {
        return err.context(format!(
            "under systemd the unit's ProtectSystem=strict makes everything but /var/lib/microd read-only: \
             run `systemctl edit microd` and add `[Service]` `ReadWritePaths={}`, or keep the default state directory",
            state_dir.display()
        ));
    }
    err
}

/// Raises the soft limit on open files to the hard one, as Go's runtime does for every program
/// since 1.19. The soft limit (1024 under systemd and most shells) exists for programs that
/// use `select(2)`, which this one (and libdqlite, on libuv's epoll) does not; every member
/// connection, tunnel and database file takes a descriptor, and the listeners derive their
/// connection caps from what is allowed.
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // An unlimited hard limit is not one the kernel takes for a soft one (it stops at
    // fs.nr_open): keep the soft limit then.
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else { return };
    if soft >= hard {
        return;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: Some(hard), maximum: Some(hard) }) {
        Ok(()) => tracing::info!(from = soft, to = hard, "raised the soft limit on open files to the hard limit"),
        Err(err) => tracing::warn!(soft, hard, error = %err, "could not raise the soft limit on open files"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = &cli.generate_manpage {
        return match write_manpage(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("Error: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    // Everything is checked before the state directory or any socket is touched.
    let file = match config::load(cli.config.as_deref()) {
        Ok(file) => file,
        Err(err) => {
            eprintln!("Error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let settings = Settings::new(cli.flags(), file);
    logging::init(settings.log_level, settings.log_format);
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: starting the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {}", microcluster::report::one_line(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::CommandFactory;

    use super::*;
    use config::{Config, Settings};

    /// Each flag's help names its key and default ("[key: heartbeat; default: 10s]"), and the
    /// defaults it shows are the code's.
    #[test]
    fn each_flags_help_shows_its_key_and_the_codes_default() {
        let mut keys = Vec::new();
        let mut file = String::new();
        for arg in Cli::command().get_arguments() {
            let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
            let Some(rest) = help.split("[key: ").nth(1) else { continue };
            let key = rest.split([';', ']']).next().unwrap().to_owned();
            let default = rest.split("; default: ").nth(1).map(|d| d.split([';', ']']).next().unwrap().to_owned());
            match (key.as_str(), default) {
                // No default: the owner's group; daemon.toml's value; from the open-file limit.
                ("socket_group", None) => {}
                ("failure_domain", Some(d)) => assert_eq!(d, "daemon.toml's"),
                ("max_connections", Some(d)) => assert!(d.starts_with("from the open-file limit"), "{d}"),
                (_, Some(d)) => file.push_str(&format!("{key} = {d:?}\n")),
                (_, None) => panic!("--{} shows no default for {key}", arg.get_id()),
            }
            keys.push(key);
        }
        assert_eq!(keys, config::KEYS, "the flags' keys and the config file's differ");
        let file = config::parse(&file).unwrap_or_else(|e| panic!("the flags' defaults do not parse: {e}\n{file}"));
        assert_eq!(Settings::new(Config::default(), file), Settings::new(Config::default(), Config::default()));
    }
}
