//! The error every capability call returns (`variant error` in the WIT),
//! as a Rust error with a readable `Display` for log lines and reasons.

use crate::bindings::jetplug::plugin::types::Error as RawError;

/// Why a capability call failed. Errors are values, never traps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Outside the plugin's grant; says what was refused.
    AccessDenied(String),
    /// The key, bucket or database does not exist.
    NotFound,
    /// A downstream (NATS, PostgreSQL) is unreachable or overloaded right
    /// now: retry later. The host's circuit breaker counts these.
    Unavailable(String),
    /// The request is wrong (bad SQL, subject, parameter type, revision).
    Invalid(String),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::AccessDenied(m) => write!(f, "access denied: {m}"),
            Error::NotFound => f.write_str("not found"),
            Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            Error::Invalid(m) => write!(f, "invalid: {m}"),
            Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// A downstream is down or overloaded: retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

impl From<RawError> for Error {
    fn from(e: RawError) -> Self {
        match e {
            RawError::AccessDenied(m) => Error::AccessDenied(m),
            RawError::NotFound => Error::NotFound,
            RawError::Unavailable(m) => Error::Unavailable(m),
            RawError::Invalid(m) => Error::Invalid(m),
            RawError::Other(m) => Error::Other(m),
        }
    }
}
