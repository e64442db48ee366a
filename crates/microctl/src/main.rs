//! `microctl`: drives a `microd` member over its control socket. Argument parsing and output
//! formatting over microcluster's typed client; errors are one line on stderr.
#![forbid(unsafe_code)]

mod format;
mod sql;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use format::Format;
use microcluster::api::Control;
use microcluster::client::{Client, ClientError, Method};
use microcluster::tls;

/// Control a microd member through its state directory's control socket.
#[derive(Debug, Parser)]
#[command(name = "microctl", version, about)]
struct Cli {
    /// The member's state directory.
    #[arg(long, env = "STATE_DIR", default_value = "/var/lib/microd", global = true)]
    state_dir: PathBuf,
    /// Accepted for compatibility with microcluster's microctl.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Accepted for compatibility with microcluster's microctl.
    #[arg(short, long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bootstrap a new cluster with this member, or join one with a token.
    Init {
        /// This member's name.
        name: String,
        /// This member's address, ip:port.
        address: String,
        /// Start a new cluster.
        #[arg(long, conflicts_with = "token", required_unless_present = "token")]
        bootstrap: bool,
        /// Join the cluster that issued this token.
        #[arg(long)]
        token: Option<String>,
        /// Configuration passed to the init hooks (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
    /// Manage join tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Manage cluster members.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// This member's additional listeners (`servers list`, `servers set NAME ADDRESS`).
    #[command(subcommand)]
    Servers(ServersCommand),
    /// Run SQL on the cluster database (`-` reads it from stdin; `.dump`, `.schema`).
    Sql {
        /// The query.
        query: String,
    },
    /// Wait until the daemon is ready.
    Waitready {
        /// Give up after this many seconds (0: wait forever).
        #[arg(short, long, default_value_t = 0)]
        timeout: u64,
    },
    /// Stop the daemon.
    Shutdown,
    /// The example's extended API: greet every member through the member at ADDRESS.
    Extended {
        /// A member's address, ip:port.
        address: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Issue a join token for a new member (prints only the token).
    Add {
        /// Name of the member that may use it.
        name: String,
        /// Validity, e.g. 3h or 90s ("0" or "never": no expiry).
        #[arg(short, long, default_value = "3h")]
        expire_after: String,
    },
    /// List outstanding tokens.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Revoke a token.
    Revoke {
        /// The member name it was issued for.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ServersCommand {
    /// List the listeners and their addresses.
    List,
    /// Move a listener to ADDRESS (empty: turn it off), without restarting the daemon.
    Set {
        /// Server name.
        name: String,
        /// ip:port, or "" to stop listening.
        address: String,
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
    /// Hand leadership to another voter (any, or NAME), e.g. before maintenance.
    TransferLeader {
        /// The voter that should lead.
        name: Option<String>,
    },
    /// Remove a member.
    Remove {
        /// The member's name.
        name: String,
        /// Remove it even if it cannot be reached.
        #[arg(short, long)]
        force: bool,
    },
}

fn expiry(text: &str) -> anyhow::Result<Option<Duration>> {
    match text {
        "0" | "never" => Ok(None),
        _ => humantime::parse_duration(text)
            .map(Some)
            .with_context(|| format!("invalid --expire-after {text:?} (examples: 3h, 90s, never)")),
    }
}

fn local(dir: &Path) -> Client {
    Client::unix(dir.join("control.socket"))
}

/// Explains errors reaching the socket: the usual cause is a daemon that is not running.
fn socket_error(dir: &Path, err: ClientError) -> anyhow::Error {
    if matches!(err, ClientError::Connect { .. }) {
        anyhow::anyhow!("{err} (is microd running with --state-dir {}?)", dir.display())
    } else {
        err.into()
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.state_dir.as_path();
    let client = local(dir);
    let wrap = |err| socket_error(dir, err);
    match cli.command {
        Command::Init { name, address, bootstrap, token, config } => {
            let mut values = BTreeMap::new();
            for entry in config {
                let (k, v) = entry.split_once('=').with_context(|| format!("--config {entry:?} is not KEY=VALUE"))?;
                values.insert(k.to_owned(), v.to_owned());
            }
            let control = Control { bootstrap, join_token: token.unwrap_or_default(), name, address, config: values };
            client.with_timeout(Duration::from_secs(120)).control(&control).await.map_err(wrap)?;
        }
        Command::Tokens(TokensCommand::Add { name, expire_after }) => {
            let token = client.add_token(&name, expiry(&expire_after)?).await.map_err(wrap)?;
            println!("{token}");
        }
        Command::Tokens(TokensCommand::List { format }) => {
            let tokens = client.tokens().await.map_err(wrap)?;
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    vec![
                        t.name.clone(),
                        t.token.clone(),
                        if t.expires_at.is_empty() { "never".into() } else { t.expires_at.clone() },
                    ]
                })
                .collect();
            print!("{}", format::render(format, &["NAME", "TOKEN", "EXPIRES AT"], &rows, || serde_json::json!(tokens)));
        }
        Command::Tokens(TokensCommand::Revoke { name }) => {
            client.revoke_token(&name).await.map_err(wrap).with_context(|| format!("revoking the token for {name}"))?;
        }
        Command::Cluster(ClusterCommand::List { format }) => {
            let members = client.cluster_members().await.map_err(wrap)?;
            print!("{}", cluster_list(format, &members));
        }
        Command::Cluster(ClusterCommand::TransferLeader { name }) => {
            let leader = client.transfer_leader(name.as_deref().unwrap_or_default()).await.map_err(wrap)?;
            println!("{leader} is the leader");
        }
        Command::Cluster(ClusterCommand::Remove { name, force }) => {
            client
                .with_timeout(Duration::from_secs(120))
                .remove_member(&name, force)
                .await
                .map_err(wrap)
                .with_context(|| format!("removing member {name}"))?;
        }
        Command::Sql { query } => print!(
            "{}",
            sql::run(&client, &query).await.map_err(|e| match e.downcast::<ClientError>() {
                Ok(err) => wrap(err),
                Err(other) => other,
            })?
        ),
        Command::Servers(ServersCommand::List) => {
            let servers = client.servers().await.map_err(wrap)?;
            let rows: Vec<Vec<String>> = servers.iter().map(|(n, s)| vec![n.clone(), s.address.clone()]).collect();
            print!("{}", format::table(&["NAME".into(), "ADDRESS".into()], &rows));
        }
        Command::Servers(ServersCommand::Set { name, address }) => {
            let mut servers = client.servers().await.map_err(wrap)?;
            servers.insert(name.clone(), microcluster::api::ServerAddress { address });
            client.set_servers(&servers).await.map_err(wrap).with_context(|| format!("moving listener {name}"))?;
        }
        Command::Waitready { timeout } => waitready(&client, dir, timeout).await?,
        Command::Shutdown => client.shutdown().await.map_err(wrap)?,
        Command::Extended { address } => {
            let remote = remote_client(dir, &address)?;
            let answer: String = remote
                .query(Method::POST, "/1.0/extended", None::<&()>)
                .await
                .with_context(|| format!("calling the extended API on {address}"))?;
            print!("{answer}");
        }
    }
    Ok(())
}

fn cluster_list(format: Format, members: &[microcluster::api::ClusterMember]) -> String {
    let short = matches!(format, Format::Table);
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let fp = if short { m.fingerprint.chars().take(12).collect() } else { m.fingerprint.clone() };
            let mut row = vec![m.local.name.clone(), m.local.address.clone(), m.role.clone(), fp, m.status.clone()];
            if !short {
                row.extend([
                    m.status_reason.clone(),
                    m.last_heartbeat.clone(),
                    m.schema_internal_version.to_string(),
                    m.schema_external_version.to_string(),
                    m.extensions.join(" "),
                ]);
            }
            row
        })
        .collect();
    let header: &[&str] = if short {
        &["NAME", "ADDRESS", "ROLE", "FINGERPRINT", "STATUS"]
    } else {
        &[
            "NAME",
            "ADDRESS",
            "ROLE",
            "FINGERPRINT",
            "STATUS",
            "STATUS REASON",
            "LAST HEARTBEAT",
            "SCHEMA INTERNAL VERSION",
            "SCHEMA EXTERNAL VERSION",
            "EXTENSIONS",
        ]
    };
    format::render(format, header, &rows, || serde_json::json!(members))
}

async fn waitready(client: &Client, dir: &Path, timeout: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let progress = std::io::stderr().is_terminal();
    loop {
        let last = match client.clone().with_timeout(Duration::from_secs(5)).ready().await {
            Ok(()) => {
                if progress {
                    eprintln!("\rready after {:.1} s{:30}", start.elapsed().as_secs_f64(), "");
                }
                return Ok(());
            }
            Err(err) => err.to_string(),
        };
        if timeout > 0 && start.elapsed() >= Duration::from_secs(timeout) {
            bail!("timed out after {timeout} s waiting for the daemon at {} to be ready: {last}", dir.display());
        }
        if progress {
            eprint!("\rwaiting for {} ({:.0} s): {last:.60}", dir.display(), start.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A client of another member, authenticated with this member's certificate.
fn remote_client(dir: &Path, address: &str) -> anyhow::Result<Client> {
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .with_context(|| format!("reading {} (the member must be initialised first)", dir.join(file).display()))
    };
    let identity = tls::Identity { cert_pem: read("server.crt")?, key_pem: read("server.key")? };
    let cluster = tls::fingerprint_pem(&read("cluster.crt")?)?;
    Ok(Client::https(address, tls::client_config(Some(&identity), vec![cluster])?))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            eprintln!("Error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
