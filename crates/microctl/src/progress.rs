//! A progress line on standard error while a long request runs (a backup, a restore), only on a
//! terminal and only with the people's formats: never into a pipe, a file or JSON.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::format::Format;

/// How often the line is redrawn.
const TICK: Duration = Duration::from_millis(250);

/// Whether standard error is a terminal that takes the line's redrawing (not `TERM=dumb`).
pub(crate) fn on_terminal() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("TERM").is_none_or(|t| t != "dumb")
}

/// Runs `work`; meanwhile, when a person reads the output, shows `what` and the time so far on
/// one line of standard error, drawn at once and cleared when the work ends.
pub(crate) async fn while_running<T>(what: &str, format: Format, work: impl Future<Output = T>) -> T {
    if !matches!(format, Format::Table | Format::Compact) || !on_terminal() {
        return work.await;
    }
    let start = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    let mut work = std::pin::pin!(work);
    let out = loop {
        tokio::select! {
            out = &mut work => break out,
            _ = ticks.tick() => eprint!("\r\x1b[2K{what}… {:.1} s", start.elapsed().as_secs_f64()),
        }
    };
    eprint!("\r\x1b[2K");
    out
}

/// A size for people: `512 bytes`, `3.4 KiB`, `48.0 MiB`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(0), "0 bytes");
        assert_eq!(size(1023), "1023 bytes");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(48 * 1024 * 1024 + 100), "48.0 MiB");
        assert_eq!(size(u64::MAX), "16777216.0 TiB");
    }

    #[tokio::test]
    async fn without_a_terminal_the_work_just_runs() {
        // Tests run with standard error captured (not a terminal): nothing is drawn.
        assert_eq!(while_running("waiting", Format::Table, async { 7 }).await, 7);
        assert_eq!(while_running("waiting", Format::Json, async { 8 }).await, 8);
    }
}
