//! Test hook: named steps of a join at which a debug build kills its own process, so that the
//! end-to-end tests can interrupt a join at an exact step instead of guessing with timers.
//!
//! `MICROD_FAULT_POINT` holds a comma-separated list of `POINT` or `POINT@NAME` (NAME: the
//! member being joined, so that only that join is cut). The process sends itself SIGKILL, as
//! an operator's `kill -9` or a power cut would: nothing is flushed, stopped or undone.
//! Release builds compile every point to nothing and never read the variable.

/// The points, for the documentation and the tests: where each sits in a join.
#[cfg(debug_assertions)]
pub(crate) const POINTS: &[&str] = &[
    // On the joiner.
    "join:before-admit",
    "join:after-admit",
    "join:after-files",
    "join:after-add",
    "join:before-post-join",
    // On the leader.
    "admit:after-insert",
    "admit:before-answer",
    "role:before-assign",
    "role:after-assign",
];

/// Kills this process if `MICROD_FAULT_POINT` names `point` for `subject` (debug builds only).
#[inline]
pub(crate) fn point(point: &str, subject: &str) {
    #[cfg(debug_assertions)]
    if armed(point, subject) {
        kill_self(point, subject);
    }
    #[cfg(not(debug_assertions))]
    let _ = (point, subject);
}

#[cfg(debug_assertions)]
fn armed(point: &str, subject: &str) -> bool {
    static ARMED: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        let value = std::env::var("MICROD_FAULT_POINT").unwrap_or_default();
        let armed: Vec<String> = value.split(',').map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
        for entry in &armed {
            let name = entry.split('@').next().unwrap_or_default();
            if !POINTS.contains(&name) {
                tracing::error!(point = entry, known = ?POINTS, "MICROD_FAULT_POINT names an unknown point");
            }
        }
        armed
    });
    armed.iter().any(|entry| match entry.split_once('@') {
        Some((name, who)) => name == point && who == subject,
        None => entry == point,
    })
}

#[cfg(debug_assertions)]
fn kill_self(point: &str, subject: &str) -> ! {
    // SIGKILL rather than abort(): no core file, and exactly what `kill -9` does. The crate
    // has no unsafe code to call kill(2) with, and a debug-only hook may spawn `kill`.
    eprintln!("MICROD_FAULT_POINT: killing this process at {point} (joining {subject})");
    let pid = std::process::id().to_string();
    let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
    std::thread::sleep(std::time::Duration::from_secs(5));
    std::process::abort();
}
