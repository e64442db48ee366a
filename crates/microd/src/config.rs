//! The configuration file (`--config`, `MICROD_CONFIG`, else `/etc/microd/microd.toml` when it
//! exists): its keys, the value parsers the flags share, and how a flag, the file and the
//! default combine into [`Settings`]. Every problem is found before the daemon touches its
//! state directory, and reported in one line naming the file and the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The file read when neither `--config` nor `MICROD_CONFIG` names one (and only if it exists).
pub(crate) const DEFAULT_PATH: &str = "/etc/microd/microd.toml";

const DEFAULT_STATE_DIR: &str = "/var/lib/microd";
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_NETWORK_LATENCY: Duration = Duration::from_millis(40);
const DEFAULT_HTTP_HEADER_TIMEOUT: Duration = microcluster::server::rest::DEFAULT_HEADER_TIMEOUT;
const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = microcluster::server::rest::DEFAULT_IDLE_TIMEOUT;
const DEFAULT_HTTP_DRAIN_TIMEOUT: Duration = microcluster::server::rest::DEFAULT_DRAIN_TIMEOUT;

/// Every key the file may hold, in the order `config/microd.toml` documents them.
pub(crate) const KEYS: &[&str] = &[
    "state_dir",
    "heartbeat",
    "statement_timeout",
    "network_latency",
    "socket_group",
    "failure_domain",
    "http_header_timeout",
    "http_idle_timeout",
    "http_drain_timeout",
    "max_connections",
    "log_level",
    "log_format",
];

/// How much is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The most verbose level logged.
    pub(crate) fn max(self) -> tracing::Level {
        match self {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// For people (colours and timestamps on a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// One source of settings (the flags, or the file): every key optional, absent meaning "the
/// next source decides".
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    pub(crate) state_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "heartbeat")]
    pub(crate) heartbeat: Option<Duration>,
    /// `Duration::ZERO`: no limit.
    #[serde(default, deserialize_with = "statement_timeout")]
    pub(crate) statement_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "network_latency")]
    pub(crate) network_latency: Option<Duration>,
    pub(crate) socket_group: Option<String>,
    pub(crate) failure_domain: Option<u64>,
    #[serde(default, deserialize_with = "http_timeout")]
    pub(crate) http_header_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "http_timeout")]
    pub(crate) http_idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "drain_timeout")]
    pub(crate) http_drain_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "max_connections")]
    pub(crate) max_connections: Option<usize>,
    pub(crate) log_level: Option<LogLevel>,
    pub(crate) log_format: Option<LogFormat>,
}

impl Config {
    /// Each key from `self`, else from `other`.
    pub(crate) fn or(self, other: Config) -> Config {
        Config {
            state_dir: self.state_dir.or(other.state_dir),
            heartbeat: self.heartbeat.or(other.heartbeat),
            statement_timeout: self.statement_timeout.or(other.statement_timeout),
            network_latency: self.network_latency.or(other.network_latency),
            socket_group: self.socket_group.or(other.socket_group),
            failure_domain: self.failure_domain.or(other.failure_domain),
            http_header_timeout: self.http_header_timeout.or(other.http_header_timeout),
            http_idle_timeout: self.http_idle_timeout.or(other.http_idle_timeout),
            http_drain_timeout: self.http_drain_timeout.or(other.http_drain_timeout),
            max_connections: self.max_connections.or(other.max_connections),
            log_level: self.log_level.or(other.log_level),
            log_format: self.log_format.or(other.log_format),
        }
    }
}

/// The state directory systemd made for the unit (`StateDirectory=`; the first if several).
fn systemd_state_directory() -> Option<PathBuf> {
    let dirs = std::env::var_os("STATE_DIRECTORY")?;
    let first = dirs.to_str()?.split(':').next()?.to_owned();
    (!first.is_empty()).then(|| first.into())
}

/// What the daemon runs with: flag, else config file, else systemd's `$STATE_DIRECTORY`, else
/// the default.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Settings {
    pub(crate) state_dir: PathBuf,
    pub(crate) heartbeat: Duration,
    /// `None`: no limit.
    pub(crate) statement_timeout: Option<Duration>,
    pub(crate) network_latency: Duration,
    pub(crate) socket_group: Option<String>,
    /// `None`: keep the state directory's `daemon.toml` value.
    pub(crate) failure_domain: Option<u64>,
    pub(crate) http_header_timeout: Duration,
    pub(crate) http_idle_timeout: Duration,
    pub(crate) http_drain_timeout: Duration,
    /// `None`: derived from the open-file limit.
    pub(crate) max_connections: Option<usize>,
    pub(crate) log_level: LogLevel,
    pub(crate) log_format: LogFormat,
}

impl Settings {
    /// Combines the flags with the file's keys and the defaults.
    pub(crate) fn new(flags: Config, file: Config) -> Settings {
        let c = flags.or(file);
        Settings {
            state_dir: c.state_dir.or_else(systemd_state_directory).unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            heartbeat: c.heartbeat.unwrap_or(DEFAULT_HEARTBEAT),
            statement_timeout: Some(c.statement_timeout.unwrap_or(DEFAULT_STATEMENT_TIMEOUT)).filter(|d| !d.is_zero()),
            network_latency: c.network_latency.unwrap_or(DEFAULT_NETWORK_LATENCY),
            socket_group: c.socket_group,
            failure_domain: c.failure_domain,
            http_header_timeout: c.http_header_timeout.unwrap_or(DEFAULT_HTTP_HEADER_TIMEOUT),
            http_idle_timeout: c.http_idle_timeout.unwrap_or(DEFAULT_HTTP_IDLE_TIMEOUT),
            http_drain_timeout: c.http_drain_timeout.unwrap_or(DEFAULT_HTTP_DRAIN_TIMEOUT),
            max_connections: c.max_connections,
            log_level: c.log_level.unwrap_or(LogLevel::Warn),
            log_format: c.log_format.unwrap_or(LogFormat::Text),
        }
    }
}

/// Reads the file `named` (which must exist), or else [`DEFAULT_PATH`] if it exists, or else
/// nothing (an empty config). Errors are one line starting with the file's path.
pub(crate) fn load(named: Option<&Path>) -> anyhow::Result<Config> {
    let path = match named {
        Some(path) => path,
        None if Path::new(DEFAULT_PATH).exists() => Path::new(DEFAULT_PATH),
        None => return Ok(Config::default()),
    };
    let text = std::fs::read_to_string(path).map_err(|err| {
        anyhow::anyhow!(
            "cannot read the config file {}: {err} (name another with --config or MICROD_CONFIG)",
            path.display()
        )
    })?;
    parse(&text).map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))
}

/// Parses a config file's text. Each key is checked on its own first, so that an error can
/// name its key (serde's messages for a bad value do not).
pub(crate) fn parse(text: &str) -> Result<Config, String> {
    let table: toml::Table = text.parse().map_err(|err: toml::de::Error| {
        let line = err.span().map_or(1, |span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        format!("line {line}: invalid TOML: {}", err.message().trim().replace('\n', "; "))
    })?;
    for (key, value) in &table {
        if !KEYS.contains(&key.as_str()) {
            return Err(format!("unknown key {key:?} (expected one of: {})", KEYS.join(", ")));
        }
        let one = toml::Table::from_iter([(key.clone(), value.clone())]);
        toml::Value::Table(one).try_into::<Config>().map_err(|err| format!("key {key}: {}", err.message()))?;
    }
    toml::Value::Table(table).try_into().map_err(|err| err.message().to_owned())
}

/// `--heartbeat` / `heartbeat`: a duration of at least 100 ms.
pub(crate) fn parse_heartbeat(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text, "10s, 1s, 500ms")?;
    if d < Duration::from_millis(100) {
        return Err(format!("{text:?} is too short: the heartbeat must be at least 100ms"));
    }
    Ok(d)
}

/// `--statement-timeout` / `statement_timeout`: a duration, `0` for no limit.
pub(crate) fn parse_statement_timeout(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    parse_duration(text, "5s, 1m, 0 for no limit")
}

/// `--network-latency` / `network_latency`: 1 ms to 1 h (libdqlite takes whole milliseconds).
pub(crate) fn parse_network_latency(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text, "40ms, 200ms, 1s")?;
    if !(Duration::from_millis(1)..=Duration::from_secs(3600)).contains(&d) {
        return Err(format!("{text:?} is out of range: the network latency must be between 1ms and 1h"));
    }
    Ok(d)
}

/// `--http-header-timeout` / `--http-idle-timeout` and their keys: 1 s to 1 h.
pub(crate) fn parse_http_timeout(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text, "10s, 1m")?;
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&d) {
        return Err(format!("{text:?} is out of range: HTTP timeouts are between 1s and 1h"));
    }
    Ok(d)
}

/// `--http-drain-timeout` / `http_drain_timeout`: 0 (close at once) to 1 min.
pub(crate) fn parse_drain_timeout(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text, "1s, 5s, 0s")?;
    if d > Duration::from_secs(60) {
        return Err(format!("{text:?} is out of range: the drain timeout is between 0s and 1m"));
    }
    Ok(d)
}

/// `--max-connections` / `max_connections`: 32 to 1 000 000.
pub(crate) fn parse_max_connections(text: &str) -> Result<usize, String> {
    let n: usize = text.parse().map_err(|_| format!("invalid number {text:?}"))?;
    check_max_connections(n)
}

fn check_max_connections(n: usize) -> Result<usize, String> {
    if !(32..=1_000_000).contains(&n) {
        return Err(format!("{n} is out of range: max_connections is between 32 and 1000000"));
    }
    Ok(n)
}

fn parse_duration(text: &str, examples: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("invalid duration {text:?}: {err} (examples: {examples})"))
}

/// A duration key: a string given to `parse` (a number alone would leave the unit unsaid).
fn duration_with<'de, D: Deserializer<'de>>(
    d: D,
    parse: fn(&str) -> Result<Duration, String>,
) -> Result<Option<Duration>, D::Error> {
    struct DurationText(fn(&str) -> Result<Duration, String>);
    impl serde::de::Visitor<'_> for DurationText {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration string such as \"10s\"")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
            (self.0)(text).map_err(E::custom)
        }
    }
    d.deserialize_str(DurationText(parse)).map(Some)
}

fn heartbeat<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_with(d, parse_heartbeat)
}

fn statement_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_with(d, parse_statement_timeout)
}

fn network_latency<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_with(d, parse_network_latency)
}

fn http_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_with(d, parse_http_timeout)
}

fn drain_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_with(d, parse_drain_timeout)
}

fn max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    let n = usize::deserialize(d)?;
    check_max_connections(n).map(Some).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const SHIPPED: &str = include_str!("../../../config/microd.toml");

    /// The shipped file with every `# key = value` line made active.
    fn shipped_uncommented() -> String {
        SHIPPED
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.split_once(" = ").is_some_and(|(key, _)| KEYS.contains(&key)) => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_shipped_file_parses_and_sets_nothing() {
        assert_eq!(parse(SHIPPED).unwrap(), Config::default());
    }

    #[test]
    fn the_shipped_file_documents_every_key_with_its_default() {
        let full = parse(&shipped_uncommented()).unwrap();
        // Destructured without `..`: a new field fails to compile here until it is documented.
        let Config {
            state_dir,
            heartbeat,
            statement_timeout,
            network_latency,
            socket_group,
            failure_domain,
            http_header_timeout,
            http_idle_timeout,
            http_drain_timeout,
            max_connections,
            log_level,
            log_format,
        } = full.clone();
        let set = [
            state_dir.is_some(),
            heartbeat.is_some(),
            statement_timeout.is_some(),
            network_latency.is_some(),
            socket_group.is_some(),
            failure_domain.is_some(),
            http_header_timeout.is_some(),
            http_idle_timeout.is_some(),
            http_drain_timeout.is_some(),
            max_connections.is_some(),
            log_level.is_some(),
            log_format.is_some(),
        ];
        assert_eq!(set.len(), KEYS.len());
        assert!(set.iter().all(|s| *s), "a key is missing from config/microd.toml: {full:?}");
        // socket_group, failure_domain and max_connections have no default (the owner's group;
        // daemon.toml's value; derived from the open-file limit), so the file shows an example.
        let documented = Settings {
            socket_group: None,
            failure_domain: None,
            max_connections: None,
            ..Settings::new(Config::default(), full)
        };
        assert_eq!(documented, Settings::new(Config::default(), Config::default()));
    }

    const REFERENCE: &str = include_str!("../../../docs/reference.md");

    /// docs/reference.md's config table: each key with its documented default, written as in
    /// a config file (`"10s"`), or its words for a key without one.
    fn reference_defaults() -> Vec<(String, String)> {
        let table = REFERENCE.split("| key | flag | default | meaning |").nth(1).expect("the reference's config table");
        table
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`').to_owned(), cells[3].trim_matches('`').to_owned())
            })
            .collect()
    }

    #[test]
    fn the_reference_documents_every_key_with_the_codes_default() {
        let documented = reference_defaults();
        let keys: Vec<&str> = documented.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, KEYS, "docs/reference.md's config table and the keys differ");
        let mut file = String::new();
        for (key, default) in &documented {
            if default.starts_with('"') {
                file.push_str(&format!("{key} = {default}\n"));
            } else {
                // Only the keys without a default may say so in words.
                assert!(
                    ["socket_group", "failure_domain", "max_connections"].contains(&key.as_str()),
                    "{key}'s documented default {default:?} is not a value"
                );
            }
        }
        let file = parse(&file).unwrap_or_else(|e| panic!("the reference's defaults do not parse: {e}\n{file}"));
        assert_eq!(Settings::new(Config::default(), file), Settings::new(Config::default(), Config::default()));
    }

    #[test]
    fn flags_override_the_file_key_by_key() {
        let file = parse("heartbeat = \"2s\"\nlog_format = \"json\"\nfailure_domain = 3\n").unwrap();
        let flags = Config { heartbeat: Some(Duration::from_secs(1)), ..Config::default() };
        let settings = Settings::new(flags, file);
        assert_eq!(settings.heartbeat, Duration::from_secs(1));
        assert_eq!(settings.log_format, LogFormat::Json);
        assert_eq!(settings.failure_domain, Some(3));
        assert_eq!(settings.statement_timeout, Some(DEFAULT_STATEMENT_TIMEOUT));
    }

    #[test]
    fn a_zero_statement_timeout_means_no_limit() {
        let settings = Settings::new(Config::default(), parse("statement_timeout = \"0\"").unwrap());
        assert_eq!(settings.statement_timeout, None);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, expected) in [
            ("hearbeat = \"1s\"", "unknown key \"hearbeat\" (expected one of: state_dir, heartbeat,"),
            ("heartbeat = \"ten\"", "key heartbeat: invalid duration \"ten\""),
            ("heartbeat = \"10ms\"", "key heartbeat: \"10ms\" is too short"),
            ("heartbeat = 10", "key heartbeat: invalid type: integer `10`, expected a duration string such as \"10s\""),
            ("network_latency = \"2h\"", "key network_latency: \"2h\" is out of range"),
            ("log_level = \"loud\"", "key log_level: unknown variant `loud`, expected one of"),
            ("log_format = \"xml\"", "key log_format: unknown variant `xml`"),
            ("failure_domain = -1", "key failure_domain: invalid value: integer `-1`"),
            ("http_header_timeout = \"0s\"", "key http_header_timeout: \"0s\" is out of range"),
            ("http_idle_timeout = \"2h\"", "key http_idle_timeout: \"2h\" is out of range"),
            ("http_drain_timeout = \"2m\"", "key http_drain_timeout: \"2m\" is out of range"),
            ("max_connections = 10", "key max_connections: 10 is out of range"),
            ("max_connections = \"many\"", "key max_connections: invalid type: string"),
            ("socket_group = 5", "key socket_group: invalid type: integer `5`"),
            ("[server]\nx = 1", "unknown key \"server\""),
            ("\n\nheartbeat = ", "line 3: invalid TOML"),
            ("heartbeat = \"1s", "line 1: invalid TOML: invalid basic string"),
            ("heartbeat = \"1s\"\nheartbeat = \"2s\"", "line 2: invalid TOML"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(expected), "{text:?}: {err:?} does not start with {expected:?}");
            assert!(!err.contains('\n'), "{text:?}: {err:?} is not one line");
        }
    }

    #[test]
    fn load_names_the_file() {
        let missing = Path::new("/nonexistent/microd.toml");
        let err = load(Some(missing)).unwrap_err().to_string();
        assert!(err.starts_with("cannot read the config file /nonexistent/microd.toml: "), "{err}");
    }
}
