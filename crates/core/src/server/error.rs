//! What the layers under HTTP fail with: a kind that says whose the failure is, a message that
//! says what failed and what to do, and the error it came from. The HTTP layer turns a kind
//! into a status in one place (`rest::ApiError`'s `From<Error>`); nothing here knows HTTP.

use std::fmt;

/// Whose a failure is, and so what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something impossible: fix it and ask again.
    Invalid,
    /// The caller may not do this.
    Forbidden,
    /// What the request names does not exist.
    NotFound,
    /// The request conflicts with how things stand (already initialised, name taken, ...).
    Conflict,
    /// Not possible right now (no leader, not initialised, shutting down): ask again later.
    Unavailable,
    /// Something failed on this member's side.
    Internal,
    /// Another member answered with this HTTP status; it is passed on unchanged.
    Peer(u16),
}

impl ErrorKind {
    /// The request was refused as it stands (asking again unchanged gets the same answer).
    pub fn is_refusal(self) -> bool {
        match self {
            ErrorKind::Invalid | ErrorKind::Forbidden | ErrorKind::NotFound | ErrorKind::Conflict => true,
            ErrorKind::Unavailable | ErrorKind::Internal => false,
            ErrorKind::Peer(status) => (400..500).contains(&status),
        }
    }

    /// A member failed or was not ready (asking again later may succeed).
    pub fn is_member_side(self) -> bool {
        match self {
            ErrorKind::Unavailable | ErrorKind::Internal => true,
            ErrorKind::Invalid | ErrorKind::Forbidden | ErrorKind::NotFound | ErrorKind::Conflict => false,
            ErrorKind::Peer(status) => status >= 500,
        }
    }
}

/// A failure of an operation of the daemon.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// A failure of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), source: None }
    }

    /// The request is invalid.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, message)
    }

    /// The caller may not do this.
    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Forbidden, message)
    }

    /// No such thing.
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }

    /// Conflicts with how things stand.
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Conflict, message)
    }

    /// Not possible right now.
    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable, message)
    }

    /// Failed on this member's side.
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }

    /// Failed on this member's side because of `source`, whose text is the message and which
    /// stays reachable through [`std::error::Error::source`].
    pub fn wrap(source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error { kind: ErrorKind::Internal, message: source.to_string(), source: Some(Box::new(source)) }
    }

    /// Whose the failure is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What failed, and what to do.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefixes the message with what was being done.
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The same failure, of another kind.
    pub fn with_kind(mut self, kind: ErrorKind) -> Error {
        self.kind = kind;
        self
    }
}

/// The typed failure of one operation (why a join, a removal or a recovery plan was refused),
/// which knows its kind; it becomes an [`Error`] with itself as the source, so the message is
/// its text and a caller can still tell which failure it was.
pub(crate) trait OperationError: std::error::Error + Send + Sync + 'static {
    /// Whose the failure is.
    fn kind(&self) -> ErrorKind;
}

impl<E: OperationError> From<E> for Error {
    fn from(err: E) -> Error {
        let kind = err.kind();
        Error::wrap(err).with_kind(kind)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The one place where a database error gets its kind.
impl From<dqlite::Error> for Error {
    fn from(err: dqlite::Error) -> Error {
        let kind = match &err {
            e if e.is_not_leader() || e.is_ambiguous() => ErrorKind::Unavailable,
            dqlite::Error::NoLeader { .. } => ErrorKind::Unavailable,
            e if e.is_constraint() => ErrorKind::Conflict,
            dqlite::Error::Returning { .. }
            | dqlite::Error::NotReadOnly { .. }
            | dqlite::Error::MultipleStatements { .. }
            | dqlite::Error::EmptyStatement
            | dqlite::Error::ParamCount { .. }
            | dqlite::Error::UnsupportedParam { .. }
            | dqlite::Error::Encode(_)
            | dqlite::Error::TooManyRows { .. }
            | dqlite::Error::ResultTooLarge { .. } => ErrorKind::Invalid,
            _ => ErrorKind::Internal,
        };
        Error { kind, message: format!("database: {err}"), source: Some(Box::new(err)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_error_keeps_its_source_and_gets_one_kind() {
        let cases: Vec<(dqlite::Error, ErrorKind)> = vec![
            (dqlite::Error::EmptyStatement, ErrorKind::Invalid),
            (
                dqlite::Error::NoLeader { attempts: 3, servers: "a".into(), last_error: "b".into() },
                ErrorKind::Unavailable,
            ),
            (dqlite::Error::Server { code: 2067, message: "UNIQUE constraint failed".into() }, ErrorKind::Conflict),
            (dqlite::Error::Server { code: 1, message: "no such table: x".into() }, ErrorKind::Internal),
        ];
        for (err, kind) in cases {
            let text = err.to_string();
            let converted = Error::from(err);
            assert_eq!(converted.kind(), kind, "{text}");
            assert_eq!(converted.message(), format!("database: {text}"));
            let source = std::error::Error::source(&converted).expect("the source is kept");
            assert_eq!(source.to_string(), text);
        }
    }

    #[test]
    fn context_prefixes_the_message_and_keeps_the_kind() {
        let err = Error::conflict("name taken").context("joining");
        assert_eq!(err.to_string(), "joining: name taken");
        assert_eq!(err.kind(), ErrorKind::Conflict);
    }
}
