//! Logging set-up: `tracing` events to standard error, as text for people or as one JSON
//! object per line. Text has colours and timestamps on a terminal; under systemd it has
//! neither, since the journal stamps each line itself and shows no escape codes, and when
//! standard error is the journal each line starts with its syslog priority (`<4>` for a
//! warning), which journald strips and records, so `journalctl -p warning` works.

use std::fmt;
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::{LogFormat, LogLevel};

/// Installs the global subscriber. `MICROD_LOG` (a filter such as `info,microcluster=debug`)
/// overrides `level`.
pub(crate) fn init(level: LogLevel, format: LogFormat) {
    let filter = EnvFilter::try_from_env("MICROD_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{},hyper=warn,rustls=warn", level.as_str())));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        // Timestamps stay in JSON: whoever parses the lines may not read them from the journal.
        LogFormat::Json => builder.with_ansi(false).json().flatten_event(true).init(),
        LogFormat::Text if stderr_is_journal() => builder
            .with_ansi(false)
            .event_format(SyslogPriority(tracing_subscriber::fmt::format().with_ansi(false).without_time()))
            .init(),
        LogFormat::Text if under_systemd() => builder.with_ansi(false).without_time().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
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
