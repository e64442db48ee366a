//! `microctl`: drives a `microd` member through the control socket in its state directory.
//!
//! This file is the command line (clap) and a dispatch of each command to the typed client and
//! a module: printing lives in [`format`](mod@format), [`listings`] and [`sql`], the SQL shell in
//! [`shell`], the members read from this member's own files (`cluster list --local`) in
//! [`local`], completions and man pages in [`docs`], and failures become one line on stderr and
//! a stable exit code in [`exit`].
#![forbid(unsafe_code)]

mod certificates;
mod complete;
mod database;
mod docs;
mod doctor;
mod exit;
mod format;
mod listings;
mod local;
mod monitoring;
mod progress;
mod recover;
mod shell;
mod sql;
mod waitready;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::{ArgGroup, CommandFactory, Parser, Subcommand};
use exit::Code;
use format::Format;
use microcluster::api::{CertificatesRotate, Control, ServerAddress};
use microcluster::client::{Client, Method};
use microcluster::tls;

/// Joining waits for the database to replicate to the new member, and removal for the member to
/// be demoted and reset, so both get far longer than the client's default deadline.
const SLOW_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a connection to another member may take to open (an address nobody answers at
/// would otherwise hold the command for the whole request deadline).
const REMOTE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The start of `microctl --help`'s closing text; the exit codes follow.
const EXAMPLE: &str = "Example (the tutorial's three-member cluster):
  microctl --state-dir /tmp/mc1 init mc1 127.0.0.1:9001 --bootstrap
  token=$(microctl --state-dir /tmp/mc1 tokens add mc2)
  microctl --state-dir /tmp/mc2 init mc2 127.0.0.1:9002 --token \"$token\"
  microctl --state-dir /tmp/mc1 cluster list
  microctl --state-dir /tmp/mc1 sql \"SELECT name FROM sqlite_master WHERE type='table'\"";

/// Control a microd cluster member through the control socket in its state directory.
/// `--consistency` of `microctl sql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Consistency {
    /// Confirmed with a majority of the voters: never misses an acknowledged write.
    Linearizable,
    /// Whichever node believes it leads.
    Weak,
}

impl From<Consistency> for microcluster::api::ReadConsistency {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::Linearizable => microcluster::api::ReadConsistency::Linearizable,
            Consistency::Weak => microcluster::api::ReadConsistency::Weak,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "microctl",
    version,
    about,
    after_help = format!("{EXAMPLE}\n\n{}", exit::HELP)
)]
struct Cli {
    /// The member's state directory (its control socket is DIR/control.socket).
    #[arg(long, value_name = "DIR", env = "STATE_DIR", default_value = "/var/lib/microd", global = true)]
    #[arg(help_heading = "Global options")]
    state_dir: PathBuf,
    /// Show each request sent to the member, its answer's status and how long it took (on
    /// standard error).
    #[arg(short, long, global = true, help_heading = "Global options")]
    verbose: bool,
    /// Show the client's debug messages too: connections, retries, certificates (on standard
    /// error).
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
    /// Manage monitoring credentials: certificates that may read metrics and status only.
    #[command(subcommand)]
    Monitoring(MonitoringCommand),
    /// Manage cluster members.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage this member's additional listeners.
    #[command(subcommand)]
    Servers(ServersCommand),
    /// Back up, restore and check the cluster database.
    #[command(subcommand)]
    Database(DatabaseCommand),
    /// Run SQL on the cluster database, or open an SQL shell.
    #[command(after_help = "Examples:
  microctl sql \"SELECT name FROM sqlite_master WHERE type='table'\"
  microctl sql \"INSERT INTO extended_table (key, value) VALUES ('k', 'v'); SELECT * FROM extended_table\"
  microctl sql -f json \"SELECT * FROM extended_table\"
  microctl sql .dump
  microctl sql - < queries.sql
  microctl sql                                 (the shell; .help lists its commands)
  printf '.tables\\nSELECT 1;\\n' | microctl sql")]
    Sql {
        /// SQL statements separated by `;` (each runs in its own transaction), `-` to read them
        /// from standard input as one batch, `.dump` for a dump of the database or `.schema` for
        /// its schema. Without it: a shell (statements line by line from standard input when it
        /// is not a terminal).
        query: Option<String>,
        /// Output format of results.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// How sure reads must be to see every write acknowledged before them: `linearizable`
        /// (the node that answers was confirmed as leader by a majority of the voters) or
        /// `weak` (whichever node believes it leads answers; one round trip less, but may miss
        /// writes acknowledged by a new leader around a leader change).
        #[arg(long, value_enum, default_value_t = Consistency::Linearizable)]
        consistency: Consistency,
    },
    /// Compare dqlite's configuration, the member table and every trust store; repair what
    /// provably drifted.
    ///
    /// Runs on the dqlite leader (any member forwards it there). Exits 0 when nothing is left
    /// unresolved, 1 while any PROBLEM remains.
    Doctor {
        /// Only report: change nothing.
        #[arg(long)]
        check: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Wait until the daemon answers and is ready.
    Waitready {
        /// Give up after this long: a duration (30s, 2m) or seconds (30); 0 waits forever.
        #[arg(short, long, value_name = "DURATION", default_value = "0", value_parser = parse_timeout)]
        timeout: Duration,
    },
    /// Stop the daemon (it hands its role and leadership over first); returns once it exited.
    Shutdown {
        /// Give up waiting for the exit after this long: a duration (30s, 2m) or seconds (60).
        #[arg(short, long, value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
        timeout: Duration,
    },
    /// The example's extended API: ask the member at ADDRESS to greet every other member.
    ///
    /// Connects over HTTPS with this member's certificate, so this member must be initialised.
    Extended {
        /// A cluster member's address, ip:port.
        address: String,
    },
    /// Print a shell completion script, e.g. `microctl completion bash > /etc/bash_completion.d/microctl`.
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (microctl.1 and one per subcommand) into DIR, creating it.
    Manpages {
        /// Where, e.g. /usr/local/share/man/man1.
        dir: PathBuf,
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
enum MonitoringCommand {
    /// Issue a credential (e.g. for Prometheus): writes NAME.crt and NAME.key (0600) into
    /// --out, the only copy of its key. It may read every member's `GET /core/1.0/metrics` and
    /// status over HTTPS, and is refused everything else.
    Add {
        /// What it is for, a host-name-like word (e.g. prometheus).
        name: String,
        /// Where to write NAME.crt and NAME.key.
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
    },
    /// List the credentials.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Revoke a credential: every member refuses it from then on.
    Revoke {
        /// Its name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// List members with their role and status, locally or through the member at ADDRESS.
    ///
    /// Without ADDRESS the member behind --state-dir answers over its control socket; with it,
    /// the member at ADDRESS answers over mutual TLS, authenticated with the certificates in
    /// --state-dir (this member must be initialised). `--local` asks no daemon at all.
    #[command(after_help = "Examples:
  microctl cluster list
  microctl cluster list 127.0.0.1:9002          (through another member)
  microctl cluster list --local -f compact      (from this member's files; the daemon may be stopped)")]
    List {
        /// Ask the member at this address (ip:port, or host:port) instead of this member's control
        /// socket.
        #[arg(value_name = "ADDRESS", value_parser = parse_remote_address, conflicts_with = "local")]
        address: Option<String>,
        /// List from this member's own files: no database query, no daemon needed.
        ///
        /// Prints ID, NAME, ADDRESS and ROLE: the last raft configuration in STATE/database
        /// (where Go microcluster reads its dqlite node store, cluster.yaml) with the names in
        /// STATE/truststore. Fails on a member that is not initialised. With the daemon running
        /// it may lag a configuration change that is under way.
        #[arg(short, long)]
        local: bool,
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
    /// Recover from quorum loss, on a stopped member: force a configuration of survivors.
    ///
    /// Shows the members of the last raft configuration with their log position, then writes a
    /// plan that microd applies when it starts; it hands the plan to the other survivors (whose
    /// microd must run) and drops the other members.
    Recover {
        /// Keep this member and every member that answered, without asking.
        #[arg(short, long)]
        yes: bool,
        /// A member to keep (repeatable; this member must be one).
        #[arg(long = "survivor", value_name = "NAME")]
        survivors: Vec<String>,
    },
    /// Hand leadership to another voter (NAME, or any), e.g. before maintenance.
    TransferLeader {
        /// The voter that should lead.
        name: Option<String>,
    },
    /// Move member NAME to a new ADDRESS while the rest of the cluster keeps its quorum.
    ///
    /// Run it with NAME's own state directory: the member steps down, rejoins at ADDRESS as a
    /// new dqlite node and catches up. Works too when its old address is gone (e.g. the machine
    /// was re-addressed), as long as the other members keep their quorum.
    SetAddress {
        /// The member's name (the member whose state directory is given).
        name: String,
        /// Its new address, ip:port.
        address: String,
    },
    /// Replace certificates while the cluster runs.
    #[command(subcommand)]
    Certificates(CertificatesCommand),
}

#[derive(Debug, Subcommand)]
enum CertificatesCommand {
    /// Replace certificates with new ones, on every member, without stopping anything.
    ///
    /// With no option, every certificate: the cluster certificate (what every member's address
    /// presents), each member's own (what it proves itself with to the others) and each
    /// extension server's dedicated one. Members trust the new certificates before anyone
    /// presents them, connections already open finish with the old ones, and afterwards the old
    /// ones are refused. A member that cannot be reached keeps its certificates and catches up
    /// by itself when it is back. Join tokens issued before carry the old cluster certificate's
    /// fingerprint: hand out the new text from `microctl tokens list`.
    #[command(after_help = "Examples:
  microctl cluster certificates rotate                 (everything)
  microctl cluster certificates rotate --cluster       (the cluster certificate only)
  microctl cluster certificates rotate --member m2     (m2's own certificate)")]
    Rotate {
        /// The cluster certificate.
        #[arg(long)]
        cluster: bool,
        /// A member's own certificate (repeatable).
        #[arg(long = "member", value_name = "NAME")]
        members: Vec<String>,
        /// An extension server's dedicated certificate, on every member (repeatable).
        #[arg(long = "server", value_name = "NAME")]
        servers: Vec<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Install a certificate and key from files: the cluster's (NAME `cluster`) or a member's.
    ///
    /// The pair is checked here and again by the cluster before anything changes (key type,
    /// that the key is the certificate's, validity, key usage, and for a member that the
    /// certificate names it); then it replaces the current one as `rotate` does.
    #[command(after_help = "Examples:
  microctl cluster certificates set cluster --cert cluster.pem --key cluster.key
  microctl cluster certificates set m2 --cert m2.pem --key m2.key")]
    Set {
        /// `cluster`, or the member's name.
        name: String,
        /// The certificate, PEM (`-`: standard input).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Its private key, PEM (`-`: standard input; one file at most).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// With `cluster`: a CA (PEM) that must have issued every member's certificate from now
        /// on (as `ca set` does).
        #[arg(long, value_name = "FILE")]
        ca: Option<PathBuf>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Require members' certificates to be issued by a CA, besides being pinned (or stop).
    #[command(subcommand)]
    Ca(CaCommand),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// From now on, a member's certificate is trusted only if this CA issued it.
    ///
    /// Every member's certificate must be issued by it already (install them first with
    /// `microctl cluster certificates set NAME`); afterwards `rotate` cannot make member
    /// certificates itself, and a joiner needs one the CA issued.
    Set {
        /// The CA certificate(s), PEM (`-`: standard input).
        file: PathBuf,
    },
    /// Stop requiring a CA: pinning alone, as before.
    Clear,
}

#[derive(Debug, Subcommand)]
enum DatabaseCommand {
    /// Write a consistent copy of the database (an SQLite file, mode 0600) to FILE.
    Backup {
        /// Where (replaced only once the new backup is complete); `-`: standard output, with
        /// the summary on standard error.
        file: PathBuf,
        /// First prove that it restores: into a scratch node, comparing row counts and checksum.
        #[arg(long)]
        verify: bool,
        /// Output format of the summary.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Restore a backup into this (new) cluster's application tables.
    Restore {
        /// The backup file; `-`: standard input.
        file: PathBuf,
        /// Replace rows that the tables already hold (otherwise refused).
        #[arg(long)]
        replace: bool,
        /// Output format of the summary.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Prove that a backup file restores (into a scratch node), without touching the cluster.
    Verify {
        /// The backup file.
        file: PathBuf,
        /// Output format of the summary.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
enum ServersCommand {
    /// List the listeners and their addresses.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
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

/// Another member's address: `ip:port` (`[v6]:port`) or `host:port`, with a port that is not 0.
fn parse_remote_address(text: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("{why}: expected ip:port, e.g. 10.0.0.1:9001"));
    if let Ok(address) = text.parse::<std::net::SocketAddr>() {
        return if address.port() == 0 { bad("the port must not be 0") } else { Ok(text.to_owned()) };
    }
    let Some((host, port)) = text.rsplit_once(':') else { return bad("no port") };
    if host.is_empty() || host.contains([':', '/', '[', ']']) || host.chars().any(char::is_whitespace) {
        return bad("not a host or an IP address");
    }
    match port.parse::<u16>() {
        Ok(0) => bad("the port must not be 0"),
        Ok(_) => Ok(text.to_owned()),
        Err(_) => bad("the port is not a number from 1 to 65535"),
    }
}

fn parse_config(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err("expected KEY=VALUE, e.g. --config foo=bar".to_owned()),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = cli.state_dir.as_path();
    let client = Client::unix(dir.join("control.socket"));
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
                .with_context(|| format!("{what} member {name}"))?;
        }
        Command::Tokens(TokensCommand::Add { name, expire_after }) => {
            let token =
                client.add_token(&name, expire_after.0).await.with_context(|| format!("issuing a token for {name}"))?;
            emit(&format!("{token}\n"))?;
        }
        Command::Tokens(TokensCommand::List { format }) => {
            emit(&listings::tokens(&client.tokens().await?).render(format))?;
        }
        Command::Tokens(TokensCommand::Revoke { name }) => {
            client.revoke_token(&name).await.with_context(|| format!("revoking the token for {name}"))?;
        }
        Command::Monitoring(MonitoringCommand::Add { name, out }) => {
            let credential =
                client.add_monitor(&name).await.with_context(|| format!("issuing the monitoring credential {name}"))?;
            let (cert, key) = monitoring::write(&credential, &out)?;
            emit(&format!(
                "{}
{}
",
                cert.display(),
                key.display()
            ))?;
        }
        Command::Monitoring(MonitoringCommand::List { format }) => {
            emit(&monitoring::listing(&client.monitors().await?).render(format))?;
        }
        Command::Monitoring(MonitoringCommand::Revoke { name }) => {
            client.revoke_monitor(&name).await.with_context(|| format!("revoking the monitoring credential {name}"))?;
        }
        Command::Cluster(ClusterCommand::List { local: true, format, .. }) => {
            let members = local::members(dir).context("listing the members from this member's files")?;
            emit(&local::listing(&members).render(format))?;
        }
        Command::Cluster(ClusterCommand::List { address: Some(address), format, .. }) => {
            let members = remote_client(dir, &address)?
                .with_connect_timeout(REMOTE_CONNECT_TIMEOUT)
                .cluster_members()
                .await
                .with_context(|| format!("listing the members through {address}"))?;
            emit(&listings::members(&members).render(format))?;
        }
        Command::Cluster(ClusterCommand::List { address: None, format, .. }) => {
            emit(&listings::members(&client.cluster_members().await?).render(format))?;
        }
        Command::Cluster(ClusterCommand::Remove { name, force }) => {
            client
                .with_timeout(SLOW_TIMEOUT)
                .remove_member(&name, force)
                .await
                .with_context(|| format!("removing member {name}"))?;
        }
        Command::Cluster(ClusterCommand::Recover { yes, survivors }) => {
            emit(&recover::run(dir, yes, survivors).await?)?
        }
        Command::Cluster(ClusterCommand::TransferLeader { name }) => {
            let leader = client.transfer_leader(name.as_deref().unwrap_or_default()).await?;
            emit(&format!("{leader} is the leader\n"))?;
        }
        Command::Cluster(ClusterCommand::SetAddress { name, address }) => {
            client
                .with_timeout(SLOW_TIMEOUT)
                .set_member_address(&name, &address)
                .await
                .with_context(|| format!("changing the address of member {name} to {address}"))?;
        }
        Command::Cluster(ClusterCommand::Certificates(CertificatesCommand::Rotate {
            cluster,
            members,
            servers,
            format,
        })) => {
            let request = CertificatesRotate { cluster, members, servers, ..CertificatesRotate::default() };
            let rotated = client
                .with_timeout(SLOW_TIMEOUT)
                .rotate_certificates(&request)
                .await
                .context("replacing certificates")?;
            emit(&certificates::listing(&rotated).render(format))?;
        }
        Command::Cluster(ClusterCommand::Certificates(CertificatesCommand::Set { name, cert, key, ca, format })) => {
            let pair = certificates::read_pair(&name, &cert, &key, ca.as_deref())?;
            let rotated = client
                .with_timeout(SLOW_TIMEOUT)
                .set_certificate(&name, &pair)
                .await
                .with_context(|| format!("installing the certificate for {name}"))?;
            emit(&certificates::listing(&rotated).render(format))?;
        }
        Command::Cluster(ClusterCommand::Certificates(CertificatesCommand::Ca(command))) => {
            let ca = match command {
                CaCommand::Set { file } => certificates::read_ca(&file)?,
                CaCommand::Clear => String::new(),
            };
            let pair = microcluster::api::KeyPair { ca, ..Default::default() };
            let rotated = client
                .with_timeout(SLOW_TIMEOUT)
                .set_certificate("ca", &pair)
                .await
                .context("changing the CA members' certificates must be issued by")?;
            emit(&certificates::listing(&rotated).render(Format::Table))?;
        }
        Command::Servers(ServersCommand::List { format }) => {
            emit(&listings::servers(&client.servers().await?).render(format))?;
        }
        Command::Servers(ServersCommand::Set { name, address }) => {
            // The endpoint replaces the whole set, so the other listeners are sent back as they are.
            let mut servers = client.servers().await?;
            servers.insert(name.clone(), ServerAddress { address });
            client.set_servers(&servers).await.with_context(|| format!("moving listener {name}"))?;
        }
        Command::Database(DatabaseCommand::Backup { file, verify, format }) => {
            emit(&database::backup(&client, &file, verify, format).await?)?;
        }
        Command::Database(DatabaseCommand::Restore { file, replace, format }) => {
            emit(&database::restore(&client, &file, replace, format).await?)?;
        }
        Command::Database(DatabaseCommand::Verify { file, format }) => {
            emit(&database::verify(&client, &file, format).await?)?;
        }
        Command::Sql { query: None, format, .. } => shell::run(&client, dir, format).await?,
        Command::Sql { query: Some(query), format, consistency } => match sql::request(&query)? {
            sql::Request::Dump { schema_only } => emit(&sql::render_dump(client.sql_dump(schema_only).await?))?,
            // CSV streams the rows of a single read, so an export of any size fits in memory.
            sql::Request::Statements(query) if format == Format::Csv => {
                sql::stream_csv(&client, &query, consistency.into()).await?
            }
            sql::Request::Statements(query) => {
                emit(&sql::render_as(&client.sql_with(&query, consistency.into()).await?, format))?
            }
        },
        Command::Doctor { check, format } => doctor::run(&client.with_timeout(SLOW_TIMEOUT), !check, format).await?,
        Command::Waitready { timeout } => waitready::run(&client, dir, timeout).await?,
        Command::Shutdown { timeout } => {
            client.shutdown().await?;
            waitready::stopped(dir, timeout).await?;
        }
        Command::Extended { address } => {
            let answer: String = remote_client(dir, &address)?
                .query(Method::POST, "/1.0/extended", None::<&()>)
                .await
                .with_context(|| format!("calling the extended API on {address}"))?;
            emit(&answer)?;
        }
        Command::Completion { shell } => emit(&docs::completion(Cli::command(), shell))?,
        Command::Manpages { dir } => {
            let pages = docs::manpages(Cli::command(), &dir)?;
            eprintln!("wrote {pages} man pages into {}", dir.display());
        }
    }
    Ok(())
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
/// A timeout as `waitready` and `shutdown` take it: a duration (`30s`, `2m`, `1h`) like every
/// other duration here, or bare seconds as Go microctl takes them.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse::<u64>().map(Duration::from_secs).map_err(|e| format!("{e}"));
    }
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 30s, 2m, 90)"))
}

fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err).context("writing to standard output"),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version requests are "errors" to clap, printed to stdout.
            let _ = err.print();
            return if err.use_stderr() { Code::Usage } else { Code::Success }.into();
        }
    };
    let state_dir = cli.state_dir.clone();
    log_to_stderr(cli.verbose, cli.debug);
    // One request at a time: a single-threaded runtime is all the CLI needs.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: starting the async runtime: {err}");
            return Code::Failed.into();
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => Code::Success.into(),
        Err(err) => {
            if let Some(message) = exit::message(&err, &state_dir) {
                eprintln!("Error: {message}");
            }
            Code::of(&err).into()
        }
    }
}

/// `-v`: the client library's request lines; `-d`: everything it logs at debug level. Without
/// either nothing is logged: errors are reported as the command's own message.
fn log_to_stderr(verbose: bool, debug: bool) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let filter = match (verbose, debug) {
        (_, true) => Targets::new().with_default(LevelFilter::DEBUG),
        (true, false) => Targets::new().with_target(microcluster::client::REQUEST_LOG_TARGET, LevelFilter::DEBUG),
        (false, false) => return,
    };
    let colour = progress::on_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .without_time()
        .with_level(debug)
        .with_target(debug);
    let _ = tracing_subscriber::registry().with(layer.with_filter(filter)).try_init();
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
    fn help_documents_the_exit_codes() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("3  the daemon cannot be reached"), "{help}");
    }

    #[test]
    fn usage_errors_exit_with_clap_code() {
        let err = parse(&["cluster", "frobnicate"]).unwrap_err();
        assert!(err.use_stderr());
        assert_eq!(err.exit_code(), Code::Usage as i32);
        let help = parse(&["--help"]).unwrap_err();
        assert!(!help.use_stderr());
    }

    #[test]
    fn every_list_takes_a_format() {
        for list in [&["cluster", "list"][..], &["tokens", "list"], &["servers", "list"], &["sql", "SELECT 1"]] {
            for format in ["table", "json", "yaml", "csv", "compact"] {
                let args: Vec<&str> = list.iter().copied().chain(["-f", format]).collect();
                assert!(parse(&args).is_ok(), "{args:?}");
            }
            let args: Vec<&str> = list.iter().copied().chain(["--format", "xml"]).collect();
            assert!(parse(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn cluster_list_takes_an_address_or_local() {
        let list = |args: &[&str]| {
            let cli = parse(&[&["cluster", "list"][..], args].concat())?;
            let Command::Cluster(ClusterCommand::List { address, local, format }) = cli.command else {
                panic!("not cluster list")
            };
            Ok::<_, clap::Error>((address, local, format))
        };
        assert_eq!(list(&[]).unwrap(), (None, false, Format::Table));
        assert_eq!(list(&["127.0.0.1:9002"]).unwrap(), (Some("127.0.0.1:9002".into()), false, Format::Table));
        assert_eq!(list(&["[::1]:9002", "-f", "json"]).unwrap(), (Some("[::1]:9002".into()), false, Format::Json));
        assert_eq!(list(&["node2.example.com:9002"]).unwrap().0.as_deref(), Some("node2.example.com:9002"));
        assert_eq!(list(&["-l", "-f", "compact"]).unwrap(), (None, true, Format::Compact));
        assert_eq!(list(&["--local"]).unwrap(), (None, true, Format::Table));
        // An address and --local contradict each other; a malformed address is a usage error.
        for bad in [&["127.0.0.1:9002", "--local"][..], &["127.0.0.1"], &["127.0.0.1:0"], &[":9001"], &["a:b"]] {
            let err = list(bad).unwrap_err();
            assert_eq!(err.exit_code(), Code::Usage as i32, "{bad:?}");
        }
        let err = list(&["127.0.0.1"]).unwrap_err().to_string();
        assert!(err.contains("expected ip:port"), "{err}");
        assert!(list(&["127.0.0.1:9002", "127.0.0.1:9003"]).is_err());
    }

    #[test]
    fn sql_without_a_query_is_the_shell() {
        let cli = parse(&["sql"]).unwrap();
        let Command::Sql { query, format, .. } = cli.command else { panic!("not sql") };
        assert_eq!((query, format), (None, Format::Table));
        assert!(parse(&["completion", "bash"]).is_ok());
        assert!(parse(&["completion", "tcsh"]).is_err());
        assert!(parse(&["manpages"]).is_err());
    }
}
