//! Logging set-up: `tracing` events to standard error, as text for people or as one JSON
//! object per line. Text has colours and timestamps on a terminal; under systemd it has
//! neither, since the journal stamps each line itself and shows no escape codes, and when
//! standard error is the journal each line starts with its syslog priority (`<4>` for a
//! warning), which journald strips and records, so `journalctl -p warning` works.

use std::fmt;
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, LogLevel};

/// Installs the global subscriber. `MICROD_LOG` (comma-separated `level` and `target=level`
/// directives, such as `info,microcluster::server::domain::heartbeat=debug`) overrides `level`; one
/// that does not parse is reported and `level` is used.
///
/// The filter is `Targets`, not `EnvFilter`: span and field filters are the only thing it
/// lacks, and `EnvFilter` brings a regex engine with it, about 180 KiB of code that every
/// member kept resident.
pub(crate) fn init(level: LogLevel, format: LogFormat) {
    let (filter, rejected) = filter(std::env::var("MICROD_LOG").ok(), level);
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let output: Box<dyn Layer<Registry> + Send + Sync> = match format {
        // Timestamps stay in JSON: whoever parses the lines may not read them from the journal.
        LogFormat::Json => text.with_ansi(false).json().flatten_event(true).boxed(),
        LogFormat::Text if stderr_is_journal() => text
            .with_ansi(false)
            .event_format(SyslogPriority(tracing_subscriber::fmt::format().with_ansi(false).without_time()))
            .boxed(),
        LogFormat::Text if under_systemd() => text.with_ansi(false).without_time().boxed(),
        LogFormat::Text => text.with_ansi(colours()).boxed(),
    };
    tracing_subscriber::registry().with(output.with_filter(filter)).init();
    if let Some(rejected) = rejected {
        // Under `--log-level error` a warning would be filtered out, and the operator would
        // never learn that the variable they set is ignored.
        if level.max() >= Level::WARN {
            tracing::warn!("{rejected}");
        } else {
            tracing::error!("{rejected}");
        }
    }
}

/// The filter from `MICROD_LOG` if it is set and parses, else from `level`; and why
/// `MICROD_LOG` was not used, when it was set.
fn filter(spec: Option<String>, level: LogLevel) -> (Targets, Option<String>) {
    let Some(spec) = spec else {
        return (level_filter(level), None);
    };
    match spec.parse::<Targets>() {
        Ok(filter) => (filter, None),
        Err(err) => (
            level_filter(level),
            Some(format!(
                "MICROD_LOG={spec:?} ignored ({err}): it takes a level and target=level directives, such as \"info,microcluster=debug\""
            )),
        ),
    }
}

/// The filter of a `--log-level`. hyper and rustls log every closed or refused connection, which
/// is a member's everyday business, so they are held to warnings unless the level is quieter.
fn level_filter(level: LogLevel) -> Targets {
    let chatty = level.max().min(Level::WARN);
    Targets::new().with_default(level.max()).with_target("hyper", chatty).with_target("rustls", chatty)
}

/// Whether systemd started us: it sets `INVOCATION_ID` for every service, and `JOURNAL_STREAM`
/// when standard output or error goes to the journal.
fn under_systemd() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some()
}

/// Whether standard error is the journal stream systemd named in `JOURNAL_STREAM`
/// (`DEVICE:INODE`), rather than a file or pipe the unit redirected it to.
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| dev.parse() == Ok(m.dev()) && ino.parse() == Ok(m.ino()))
}

/// Prefixes each event with its syslog priority (`sd-daemon(3)`).
struct SyslogPriority<F>(F);

impl<S, N, F> FormatEvent<S, N> for SyslogPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Whether the log may be coloured: on a terminal, unless `NO_COLOR` is set to anything
/// (<https://no-color.org>).
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(filter: &Targets, target: &str, level: Level) -> bool {
        filter.would_enable(target, &level)
    }

    #[test]
    fn the_level_holds_hyper_and_rustls_to_warnings() {
        let (filter, rejected) = filter(None, LogLevel::Debug);
        assert!(rejected.is_none());
        assert!(enabled(&filter, "microcluster::server", Level::DEBUG));
        assert!(!enabled(&filter, "microcluster::server", Level::TRACE));
        assert!(enabled(&filter, "hyper::proto::h1", Level::WARN));
        assert!(!enabled(&filter, "hyper::proto::h1", Level::INFO));
        assert!(!enabled(&filter, "rustls::conn", Level::INFO));
    }

    #[test]
    fn a_quieter_level_than_warnings_quiets_hyper_too() {
        let (filter, _) = filter(None, LogLevel::Error);
        assert!(!enabled(&filter, "hyper", Level::WARN));
        assert!(enabled(&filter, "microd", Level::ERROR));
    }

    #[test]
    fn microd_log_overrides_the_level() {
        let (filter, rejected) =
            filter(Some("info,microcluster::server::domain::heartbeat=trace".into()), LogLevel::Warn);
        assert!(rejected.is_none());
        assert!(enabled(&filter, "microd", Level::INFO));
        assert!(!enabled(&filter, "microd", Level::DEBUG));
        assert!(enabled(&filter, "microcluster::server::domain::heartbeat", Level::TRACE));
    }

    #[test]
    fn a_bad_microd_log_is_reported_and_the_level_used() {
        let (filter, rejected) = filter(Some("info,heartbeat=loud".into()), LogLevel::Warn);
        let rejected = rejected.expect("a bad directive is reported");
        assert!(rejected.contains("MICROD_LOG=\"info,heartbeat=loud\" ignored"), "{rejected}");
        assert!(enabled(&filter, "microd", Level::WARN));
        assert!(!enabled(&filter, "microd", Level::INFO));
    }
}
