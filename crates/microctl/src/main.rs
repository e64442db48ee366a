//! `microctl`: drives a `microd` member through the control socket in its state directory.
//!
//! Argument parsing and dispatch over microcluster's typed client; the printing lives in
//! [`format`](mod@format), [`listings`] and [`sql`]. Errors are one line on stderr and exit code 1 (usage
//! errors are clap's, exit code 2).
#![forbid(unsafe_code)]

mod format;
mod listings;
mod sql;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use clap::{ArgGroup, Parser, Subcommand};
use format::Format;
use microcluster::api::{Control, ServerAddress};
use microcluster::client::{Client, ClientError, Method};
use microcluster::tls;

/// Joining waits for the database to replicate to the new member, and removal for the member to
/// be demoted and reset, so both get far longer than the client's default deadline.
const SLOW_TIMEOUT: Duration = Duration::from_secs(120);
/// `waitready` polling interval.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Deadline of one `waitready` probe, so a hung daemon does not stall the loop.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Control a microd cluster member through the control socket in its state directory.
#[derive(Debug, Parser)]
#[command(
    name = "microctl",
    version,
    about,
    after_help = "Example (the tutorial's three-member cluster):
  microctl --state-dir /tmp/mc1 init mc1 127.0.0.1:9001 --bootstrap
  token=$(microctl --state-dir /tmp/mc1 tokens add mc2)
  microctl --state-dir /tmp/mc2 init mc2 127.0.0.1:9002 --token \"$token\"
  microctl --state-dir /tmp/mc1 cluster list
  microctl --state-dir /tmp/mc1 sql \"SELECT name FROM sqlite_master WHERE type='table'\""
)]
struct Cli {
    /// The member's state directory (its control socket is DIR/control.socket).
    #[arg(long, value_name = "DIR", env = "STATE_DIR", default_value = "/var/lib/microd", global = true)]
    #[arg(help_heading = "Global options")]
    state_dir: PathBuf,
    /// More output (accepted for compatibility; currently no effect).
    #[arg(short, long, global = true, help_heading = "Global options")]
    verbose: bool,
    /// Debug output (accepted for compatibility; currently no effect).
    #[arg(short, long, global = true, help_heading = "Global options")]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bootstrap a new cluster with this member, or join one with a token.
    #[command(group(ArgGroup::new("mode").required(true).args(["bootstrap", "token"])))]
    Init {
        /// This member's name (unique in the cluster).
        name: String,
        /// This member's cluster address, ip:port.
        address: String,
        /// Start a new cluster with this member as its first.
        #[arg(long)]
        bootstrap: bool,
        /// Join the cluster that issued this token (see `tokens add`).
        #[arg(long)]
        token: Option<String>,
        /// Configuration for the daemon's init hooks (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
        config: Vec<(String, String)>,
    },
    /// Manage join tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Manage cluster members.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage this member's additional listeners.
    #[command(subcommand)]
    Servers(ServersCommand),
    /// Run SQL on the cluster database.
    #[command(after_help = "Examples:
  microctl sql \"SELECT name FROM sqlite_master WHERE type='table'\"
  microctl sql \"INSERT INTO extended_table (key, value) VALUES ('k', 'v'); SELECT * FROM extended_table\"
  microctl sql .dump
  microctl sql - < queries.sql")]
    Sql {
        /// SQL statements separated by `;` (each runs in its own transaction), `-` to read them
        /// from standard input, `.dump` for a dump of the database or `.schema` for its schema.
        query: String,
    },
    /// Wait until the daemon answers and is ready.
    Waitready {
        /// Give up after this many seconds (0: wait forever).
        #[arg(short, long, value_name = "SECONDS", default_value_t = 0)]
        timeout: u64,
    },
    /// Stop the daemon.
    Shutdown,
    /// The example's extended API: ask the member at ADDRESS to greet every other member.
    ///
    /// Connects over HTTPS with this member's certificate, so this member must be initialised.
    Extended {
        /// A cluster member's address, ip:port.
        address: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Issue a join token for a new member; prints only the token.
    Add {
        /// Name of the member that may use it.
        name: String,
        /// How long it stays valid, e.g. 3h, 90s or 1day (`0` or `never`: no expiry).
        #[arg(short, long, value_name = "DURATION", default_value = "3h", value_parser = parse_expiry)]
        expire_after: Expiry,
    },
    /// List outstanding join tokens.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Revoke a join token.
    Revoke {
        /// The member name it was issued for.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// List members with their role and status.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Remove a member from the cluster.
    Remove {
        /// The member's name.
        name: String,
        /// Remove it even if it cannot be reached or fails to reset itself.
        #[arg(short, long)]
        force: bool,
    },
    /// Hand leadership to another voter (NAME, or any), e.g. before maintenance.
    TransferLeader {
        /// The voter that should lead.
        name: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ServersCommand {
    /// List the listeners and their addresses.
    List,
    /// Move a listener to ADDRESS (empty: turn it off) without restarting the daemon.
    Set {
        /// Server name.
        name: String,
        /// ip:port, or "" to stop listening.
        address: String,
    },
}

/// A token's validity; `None` never expires.
#[derive(Debug, Clone, Copy)]
struct Expiry(Option<Duration>);

fn parse_expiry(text: &str) -> Result<Expiry, String> {
    if text == "never" {
        return Ok(Expiry(None));
    }
    let duration = humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 3h, 90s, 1day, never)"))?;
    // The API encodes "no expiry" as zero, so a zero duration can only mean that.
    Ok(Expiry(Some(duration).filter(|d| !d.is_zero())))
}

fn parse_config(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE, e.g. --config foo=bar".to_owned()),
    }
}

/// Explains failures to reach the control socket, whose usual cause is a daemon that is not
/// running or a wrong `--state-dir`; the daemon's own errors pass through unchanged.
fn explain(dir: &Path, err: ClientError) -> anyhow::Error {
    match err {
        ClientError::Connect { target, source } => {
            let hint = if source.kind() == std::io::ErrorKind::PermissionDenied {
                "do you have permission to use it?".to_owned()
            } else {
                format!("is microd running with --state-dir {}?", dir.display())
            };
            let why = if dir.is_dir() { source.to_string() } else { format!("{} does not exist", dir.display()) };
            anyhow!("cannot reach the daemon at {target}: {why} ({hint})")
        }
        other => other.into(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.state_dir.as_path();
    let client = Client::unix(dir.join("control.socket"));
    let explain = |err| explain(dir, err);
    match cli.command {
        Command::Init { name, address, bootstrap, token, config } => {
            let control = Control {
                bootstrap,
                join_token: token.unwrap_or_default(),
                config: config.into_iter().collect::<BTreeMap<_, _>>(),
                name: name.clone(),
                address,
            };
            let what = if bootstrap { "bootstrapping" } else { "joining" };
            client
                .with_timeout(SLOW_TIMEOUT)
                .control(&control)
                .await
                .map_err(explain)
                .with_context(|| format!("{what} member {name}"))?;
        }
        Command::Tokens(TokensCommand::Add { name, expire_after }) => {
            let token = client
                .add_token(&name, expire_after.0)
                .await
                .map_err(explain)
                .with_context(|| format!("issuing a token for {name}"))?;
            emit(&format!("{token}\n"))?;
        }
        Command::Tokens(TokensCommand::List { format }) => {
            let tokens = client.tokens().await.map_err(explain)?;
            emit(&listings::tokens(&tokens).render(format))?;
        }
        Command::Tokens(TokensCommand::Revoke { name }) => {
            client
                .revoke_token(&name)
                .await
                .map_err(explain)
                .with_context(|| format!("revoking the token for {name}"))?;
        }
        Command::Cluster(ClusterCommand::List { format }) => {
            let members = client.cluster_members().await.map_err(explain)?;
            emit(&listings::members(&members).render(format))?;
        }
        Command::Cluster(ClusterCommand::Remove { name, force }) => {
            client
                .with_timeout(SLOW_TIMEOUT)
                .remove_member(&name, force)
                .await
                .map_err(explain)
                .with_context(|| format!("removing member {name}"))?;
        }
        Command::Cluster(ClusterCommand::TransferLeader { name }) => {
            let leader = client.transfer_leader(name.as_deref().unwrap_or_default()).await.map_err(explain)?;
            emit(&format!("{leader} is the leader\n"))?;
        }
        Command::Servers(ServersCommand::List) => {
            let servers = client.servers().await.map_err(explain)?;
            let rows: Vec<Vec<String>> = servers.iter().map(|(n, s)| vec![n.clone(), s.address.clone()]).collect();
            emit(&format::table(&["NAME".into(), "ADDRESS".into()], &rows))?;
        }
        Command::Servers(ServersCommand::Set { name, address }) => {
            // The endpoint replaces the whole set, so the other listeners are sent back as they are.
            let mut servers = client.servers().await.map_err(explain)?;
            servers.insert(name.clone(), ServerAddress { address });
            client.set_servers(&servers).await.map_err(explain).with_context(|| format!("moving listener {name}"))?;
        }
        Command::Sql { query } => {
            let text = match sql::request(&query)? {
                sql::Request::Dump { schema_only } => {
                    sql::render_dump(client.sql_dump(schema_only).await.map_err(explain)?)
                }
                sql::Request::Statements(query) => sql::render(&client.sql(&query).await.map_err(explain)?),
            };
            emit(&text)?;
        }
        Command::Waitready { timeout } => waitready(&client, dir, timeout).await?,
        Command::Shutdown => client.shutdown().await.map_err(explain)?,
        Command::Extended { address } => {
            let answer: String = remote_client(dir, &address)?
                .query(Method::POST, "/1.0/extended", None::<&()>)
                .await
                .with_context(|| format!("calling the extended API on {address}"))?;
            emit(&answer)?;
        }
    }
    Ok(())
}

/// Polls the socket until the daemon says it is ready, showing progress on a terminal.
async fn waitready(client: &Client, dir: &Path, timeout: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = (timeout > 0).then(|| start + Duration::from_secs(timeout));
    let progress = std::io::stderr().is_terminal();
    let clear = || {
        if progress {
            eprint!("\r\x1b[2K");
        }
    };
    loop {
        let budget = deadline.map_or(PROBE_TIMEOUT, |d| {
            d.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(100), PROBE_TIMEOUT)
        });
        let err = match client.clone().with_timeout(budget).ready().await {
            Ok(()) => {
                clear();
                return Ok(());
            }
            Err(err) => err,
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            clear();
            let why = explain(dir, err);
            bail!("timed out after {timeout} s waiting for the daemon at {} to be ready: {why:#}", dir.display());
        }
        if progress {
            let elapsed = start.elapsed().as_secs();
            eprint!("\r\x1b[2Kwaiting for the daemon at {} ({elapsed} s): {:.60}", dir.display(), err.to_string());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A client of another member, authenticated with this member's certificate and trusting only
/// a server that presents this cluster's certificate.
fn remote_client(dir: &Path, address: &str) -> anyhow::Result<Client> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|err| {
            if err.kind() == std::io::ErrorKind::NotFound {
                anyhow!("{} does not exist: the member must be initialised first (microctl init)", path.display())
            } else {
                anyhow!("reading {}: {err}", path.display())
            }
        })
    };
    let identity = tls::Identity { cert_pem: read("server.crt")?, key_pem: read("server.key")? };
    let cluster = tls::fingerprint_pem(&read("cluster.crt")?)
        .with_context(|| format!("reading {}", dir.join("cluster.crt").display()))?;
    let config = tls::client_config(Some(&identity), vec![cluster])
        .with_context(|| format!("loading {} and server.key", dir.join("server.crt").display()))?;
    Ok(Client::https(address, config))
}

/// Writes to stdout; a reader that went away (`microctl ... | head -1`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err).context("writing to standard output"),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One request at a time: a single-threaded runtime is all the CLI needs.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("microctl").chain(args.iter().copied()))
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn init_needs_exactly_one_of_bootstrap_and_token() {
        assert!(parse(&["init", "mc1", "127.0.0.1:9001"]).is_err());
        assert!(parse(&["init", "mc1", "127.0.0.1:9001", "--bootstrap", "--token", "t"]).is_err());
        assert!(parse(&["init", "mc1", "127.0.0.1:9001", "--bootstrap"]).is_ok());
        let cli = parse(&["init", "mc2", "127.0.0.1:9002", "--token", "t", "--config", "a=b=c"]).unwrap();
        let Command::Init { token, config, bootstrap, .. } = cli.command else { panic!("not init") };
        assert_eq!((token.as_deref(), bootstrap), (Some("t"), false));
        assert_eq!(config, vec![("a".to_owned(), "b=c".to_owned())]);
        assert!(parse(&["init", "mc1", "a:1", "--bootstrap", "--config", "novalue"]).is_err());
        assert!(parse(&["init", "mc1", "a:1", "--bootstrap", "--config", "=v"]).is_err());
    }

    #[test]
    fn expiry_accepts_durations_and_never() {
        let expiry = |s: &str| parse_expiry(s).map(|e| e.0);
        assert_eq!(expiry("3h"), Ok(Some(Duration::from_secs(3 * 3600))));
        assert_eq!(expiry("90s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(expiry("0"), Ok(None));
        assert_eq!(expiry("never"), Ok(None));
        assert!(expiry("soon").is_err());
        let cli = parse(&["tokens", "add", "mc2"]).unwrap();
        let Command::Tokens(TokensCommand::Add { expire_after, .. }) = cli.command else { panic!("not tokens add") };
        assert_eq!(expire_after.0, Some(Duration::from_secs(3 * 3600)));
    }

    #[test]
    fn state_dir_is_global() {
        let cli = parse(&["cluster", "list", "--state-dir", "/tmp/mc1", "-f", "json"]).unwrap();
        assert_eq!(cli.state_dir, PathBuf::from("/tmp/mc1"));
    }

    #[test]
    fn unreachable_daemon_is_explained() {
        let dir = Path::new("/nonexistent/microctl-test");
        let err = ClientError::Connect {
            target: "/nonexistent/microctl-test/control.socket".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(
            format!("{:#}", explain(dir, err)),
            "cannot reach the daemon at /nonexistent/microctl-test/control.socket: /nonexistent/microctl-test \
             does not exist (is microd running with --state-dir /nonexistent/microctl-test?)"
        );
    }
}
