//! How microctl ends: the stable exit codes, chosen from the type of the failure found in the
//! error chain (never from its text), and the one-line message printed for it.
//!
//! Call sites only add context (`.context("removing member m2")`) and let the client's
//! [`ClientError`] travel up: an unreachable control socket is explained here, once, with the
//! state directory that was used.

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use microcluster::client::ClientError;

/// The exit codes scripts may rely on; [`HELP`] and docs/reference.md document them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// Everything worked.
    Success = 0,
    /// The request failed: the daemon answered with an error (or a local step failed).
    Failed = 1,
    /// The command line is wrong (clap exits with this code itself).
    Usage = 2,
    /// The daemon cannot be reached: no socket, connection refused, permission denied.
    Unreachable = 3,
    /// A deadline passed: `waitready --timeout`, or a request's.
    TimedOut = 4,
}

/// The exit codes, for `microctl --help`.
pub(crate) const HELP: &str = "Exit codes:
  0  success
  1  the request failed (the daemon answered with an error)
  2  usage error
  3  the daemon cannot be reached (no socket, connection refused, permission denied)
  4  timed out (waitready --timeout, or a request deadline)";

impl Code {
    /// The code for a failure: the outermost typed cause in the chain decides.
    pub(crate) fn of(err: &anyhow::Error) -> Code {
        for cause in err.chain() {
            if let Some(reported) = cause.downcast_ref::<Reported>() {
                return reported.0;
            }
            if cause.is::<TimedOut>() {
                return Code::TimedOut;
            }
            if let Some(err) = cause.downcast_ref::<ClientError>() {
                return Code::of_client(err);
            }
        }
        Code::Failed
    }

    /// The code for one failed request.
    pub(crate) fn of_client(err: &ClientError) -> Code {
        match err {
            // A TLS failure means no trusted connection could be made: the member was not reached.
            ClientError::Connect { .. } | ClientError::Tls { .. } => Code::Unreachable,
            ClientError::Timeout { .. } => Code::TimedOut,
            // The exchange started (Http), or the daemon answered (Api, Decode).
            _ => Code::Failed,
        }
    }
}

impl From<Code> for ExitCode {
    fn from(code: Code) -> ExitCode {
        ExitCode::from(code as u8)
    }
}

/// A deadline that microctl itself keeps ran out; the last error seen is its source.
#[derive(Debug)]
pub(crate) struct TimedOut {
    /// What was waited for, and how long.
    pub(crate) what: String,
    /// Why the last attempt failed.
    pub(crate) last: ClientError,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

impl std::error::Error for TimedOut {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.last)
    }
}

/// Failures that were already printed (the SQL shell's statements): exit with `.0`, print
/// nothing more.
#[derive(Debug)]
pub(crate) struct Reported(pub(crate) Code);

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("some commands failed")
    }
}

impl std::error::Error for Reported {}

/// The one-line message for a failure (without `Error: `), or `None` when it was already
/// reported.
///
/// Like [`microcluster::report::one_line`] (causes joined by `: `, each left out when an
/// outer message already contains it), except that failing to connect to `state_dir`'s socket
/// is explained with the usual causes: a daemon that is not running, a wrong `--state-dir`, or
/// missing permissions.
pub(crate) fn message(err: &anyhow::Error, state_dir: &Path) -> Option<String> {
    let mut line = String::new();
    for cause in err.chain() {
        if cause.is::<Reported>() {
            return None;
        }
        let explained = match cause.downcast_ref::<ClientError>() {
            Some(ClientError::Connect { target, source }) => Some(unreachable(state_dir, target, source)),
            _ => None,
        };
        let stop = explained.is_some();
        let text = explained.unwrap_or_else(|| cause.to_string());
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        if stop {
            break;
        }
    }
    Some(line)
}

fn unreachable(dir: &Path, target: &str, source: &std::io::Error) -> String {
    // The HTTPS client (`extended`) fails to connect to other members; only the control socket
    // has these usual causes.
    if target != dir.join("control.socket").display().to_string() {
        return format!("cannot reach {target}: {source}");
    }
    let hint = if source.kind() == std::io::ErrorKind::PermissionDenied {
        "do you have permission to use it?".to_owned()
    } else {
        format!("is microd running with --state-dir {}?", dir.display())
    };
    let why = if dir.is_dir() { source.to_string() } else { format!("{} does not exist", dir.display()) };
    format!("cannot reach the daemon at {target}: {why} ({hint})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use microcluster::client::StatusCode;
    use std::io::ErrorKind;
    use std::time::Duration;

    const DIR: &str = "/nonexistent/microctl-test";

    fn connect(kind: ErrorKind) -> ClientError {
        ClientError::Connect { target: format!("{DIR}/control.socket"), source: std::io::Error::from(kind) }
    }

    fn api() -> ClientError {
        ClientError::Api { status: StatusCode::NOT_FOUND, message: "no token for m9".into() }
    }

    fn timeout() -> ClientError {
        ClientError::Timeout { target: format!("{DIR}/control.socket"), after: Duration::from_secs(30) }
    }

    #[test]
    fn codes_come_from_the_typed_cause() {
        let code = |err: anyhow::Error| Code::of(&err);
        assert_eq!(code(connect(ErrorKind::NotFound).into()), Code::Unreachable);
        assert_eq!(code(connect(ErrorKind::ConnectionRefused).into()), Code::Unreachable);
        assert_eq!(code(anyhow::Error::from(connect(ErrorKind::PermissionDenied)).context("x")), Code::Unreachable);
        let tls = ClientError::Tls { target: "https://127.0.0.1:1".into(), source: ErrorKind::InvalidData.into() };
        assert_eq!(code(tls.into()), Code::Unreachable);
        assert_eq!(code(timeout().into()), Code::TimedOut);
        assert_eq!(code(anyhow::Error::from(api()).context("revoking the token for m9")), Code::Failed);
        let decode = ClientError::Decode { target: "t".into(), reason: "r".into() };
        assert_eq!(code(decode.into()), Code::Failed);
        assert_eq!(code(anyhow::anyhow!("reading the query")), Code::Failed);
        // The outermost typed cause wins: waiting ran out although the socket was missing.
        let waited = TimedOut { what: "timed out".into(), last: connect(ErrorKind::NotFound) };
        assert_eq!(code(waited.into()), Code::TimedOut);
        assert_eq!(code(Reported(Code::Unreachable).into()), Code::Unreachable);
        // Message text plays no part.
        assert_eq!(code(anyhow::anyhow!("cannot reach the daemon: timed out")), Code::Failed);
    }

    #[test]
    fn codes_are_stable() {
        let codes = [Code::Success, Code::Failed, Code::Usage, Code::Unreachable, Code::TimedOut];
        assert_eq!(codes.map(|c| c as u8), [0, 1, 2, 3, 4]);
        for code in codes {
            assert!(HELP.contains(&format!("  {}  ", code as u8)), "{code:?} is not in the help");
        }
    }

    #[test]
    fn unreachable_socket_is_explained_once() {
        let dir = Path::new(DIR);
        let err = anyhow::Error::from(connect(ErrorKind::NotFound)).context("bootstrapping member m1");
        assert_eq!(
            message(&err, dir).unwrap(),
            "bootstrapping member m1: cannot reach the daemon at /nonexistent/microctl-test/control.socket: \
             /nonexistent/microctl-test does not exist (is microd running with --state-dir \
             /nonexistent/microctl-test?)"
        );
        let denied = anyhow::Error::from(connect(ErrorKind::PermissionDenied));
        assert!(message(&denied, dir).unwrap().ends_with("(do you have permission to use it?)"));
        let elsewhere = ClientError::Connect {
            target: "https://127.0.0.1:9".into(),
            source: std::io::Error::from(ErrorKind::ConnectionRefused),
        };
        let err = anyhow::Error::from(elsewhere).context("calling the extended API on 127.0.0.1:9");
        assert_eq!(
            message(&err, dir).unwrap(),
            "calling the extended API on 127.0.0.1:9: cannot reach https://127.0.0.1:9: connection refused"
        );
    }

    #[test]
    fn other_failures_read_as_their_chain() {
        let dir = Path::new(DIR);
        let err = Err::<(), _>(api()).context("revoking the token for m9").unwrap_err();
        assert_eq!(message(&err, dir).unwrap(), "revoking the token for m9: no token for m9");
        let waited = TimedOut { what: "timed out after 1 s".into(), last: connect(ErrorKind::NotFound) };
        assert!(message(&waited.into(), dir).unwrap().starts_with("timed out after 1 s: cannot reach the daemon at"));
        assert_eq!(message(&Reported(Code::Failed).into(), dir), None);
    }
}
