//! The one error type every chatstate crate returns.
//!
//! Callers branch on [`ErrorKind`]; [`Error::is_temporary`] says whether a retry can
//! help. An error carries the operation and the key it concerns (keys are ids, never
//! values), a message, and the underlying source. It never carries a stored value or
//! a secret: `Display` and `Debug` are safe to log.

use std::borrow::Cow;
use std::fmt;

/// Shorthand for `Result<T, chatstate_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, for callers to branch on.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The thing the operation needs does not exist (or has expired).
    NotFound,
    /// A create found the thing already there.
    AlreadyExists,
    /// A precondition did not hold: a stale version, a lock held by someone else.
    Conflict,
    /// The caller passed something invalid: an empty or oversize id, an oversize value.
    InvalidInput,
    /// The backend could not be reached or is overloaded. Temporary: retrying can help.
    Unavailable,
    /// The backend did not answer in time. Temporary: retrying can help.
    Timeout,
    /// Stored bytes could not be decoded: corrupt, truncated, another codec or format.
    Decode,
    /// Stored data has the wrong shape for the operation (Redis `WRONGTYPE`, say).
    WrongType,
    /// A configuration value is missing or malformed.
    Config,
    /// The backend does not support the operation.
    Unsupported,
    /// A bug or an unexpected state inside chatstate or the backend.
    Internal,
}

impl ErrorKind {
    /// A short lowercase name, stable across versions, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::Conflict => "conflict",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Decode => "decode",
            ErrorKind::WrongType => "wrong_type",
            ErrorKind::Config => "config",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chatstate error: a kind, a message, optional operation and key context, and the
/// source error.
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    operation: Option<&'static str>,
    key: Option<String>,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind` with a message. The message must not contain stored
    /// values or secrets.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            operation: None,
            key: None,
            source: None,
        }
    }

    /// Shorthand for an [`ErrorKind::InvalidInput`] error.
    pub fn invalid_input(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::InvalidInput, message)
    }

    /// Shorthand for an [`ErrorKind::Decode`] error.
    pub fn decode(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Decode, message)
    }

    /// Shorthand for an [`ErrorKind::Config`] error.
    pub fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Config, message)
    }

    /// Shorthand for an [`ErrorKind::Conflict`] error.
    pub fn conflict(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::Conflict, message)
    }

    /// Shorthand for an [`ErrorKind::NotFound`] error.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }

    /// Attaches the operation that failed (`"append_messages"`, `"get"`, ...).
    pub fn with_operation(mut self, operation: &'static str) -> Self {
        self.operation = Some(operation);
        self
    }

    /// Attaches the key the operation concerned, as the store lays it out. Keys are
    /// ids, never values or secrets.
    pub fn with_key(mut self, key: impl fmt::Display) -> Self {
        self.key = Some(key.to_string());
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without operation or key.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The operation that failed, when known.
    pub fn operation(&self) -> Option<&'static str> {
        self.operation
    }

    /// The key the operation concerned, when known.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Whether retrying the same operation later can succeed (the backend was
    /// unavailable or slow). Only temporary errors should be retried.
    pub fn is_temporary(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable | ErrorKind::Timeout)
    }
}

/// Attaches the failing operation to an error result, where the operation is known.
pub trait ResultExt<T> {
    /// The result, its error (if any) naming `operation`.
    fn in_op(self, operation: &'static str) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn in_op(self, operation: &'static str) -> Result<T> {
        self.map_err(|e| e.with_operation(operation))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        match (self.operation, &self.key) {
            (Some(op), Some(key)) => write!(f, " (in {op}, key {key})"),
            (Some(op), None) => write!(f, " (in {op})"),
            (None, Some(key)) => write!(f, " (key {key})"),
            (None, None) => Ok(()),
        }?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("operation", &self.operation)
            .field("key", &self.key)
            .field("source", &self.source.as_ref().map(|s| s.to_string()))
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_kind_operation_and_key() {
        let err = Error::conflict("version 3 is stale")
            .with_operation("update")
            .with_key("t:c:u");
        assert_eq!(
            err.to_string(),
            "conflict: version 3 is stale (in update, key t:c:u)"
        );
        assert_eq!(err.kind(), ErrorKind::Conflict);
        assert!(!err.is_temporary());
    }

    #[test]
    fn temporary_kinds() {
        assert!(Error::new(ErrorKind::Unavailable, "down").is_temporary());
        assert!(Error::new(ErrorKind::Timeout, "slow").is_temporary());
        assert!(!Error::decode("bad").is_temporary());
    }

    #[test]
    fn source_is_kept() {
        let io = std::io::Error::other("disk on fire");
        let err = Error::new(ErrorKind::Unavailable, "write failed").with_source(io);
        let source = std::error::Error::source(&err).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("disk on fire"));
        assert!(err.to_string().ends_with(": disk on fire"));
    }
}
