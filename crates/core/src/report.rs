//! Errors as one line for people: every cause in the chain, each said once.

use std::error::Error;

/// `err` and its causes joined with `: `, skipping a cause whose text the line already holds
/// (many errors repeat their source in their own message).
///
/// ```
/// let io = std::io::Error::other("disk full");
/// let err = std::io::Error::new(std::io::ErrorKind::Other, io);
/// assert_eq!(microcluster::report::one_line(&err), "disk full");
/// ```
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening {0}: {1}")]
    struct Repeats(&'static str, #[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("starting")]
    struct Wraps(#[source] Repeats);

    #[test]
    fn causes_appear_once() {
        let err = Wraps(Repeats("/x", std::io::Error::other("read-only")));
        assert_eq!(one_line(&err), "starting: opening /x: read-only");
    }
}
