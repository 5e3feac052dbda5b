//! How PostgreSQL's errors read to a plugin: a statement's own mistakes
//! are `invalid`, a server that is out or busy is `unavailable` (retry,
//! and the breaker counts it), a missing privilege is `access-denied`.

use crate::bindings::CapabilityError;

/// `name` as a quoted SQL identifier.
pub(in crate::capability) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An error and its causes, `a: b: c` (a pool error alone says only
/// "db error"; the server's reason is in its source).
pub(in crate::capability) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text = format!("{text}: {t}");
        }
        source = s.source();
    }
    text
}

/// A PostgreSQL error as text, the server's reason included.
pub(in crate::capability) fn describe(e: &tokio_postgres::Error) -> String {
    chain(e)
}

/// Maps a PostgreSQL error to what the plugin sees.
pub(in crate::capability) fn pg_error(e: tokio_postgres::Error) -> CapabilityError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let text = match db.detail() {
            Some(d) => format!("{} ({code}): {d}", db.message()),
            None => format!("{} ({code})", db.message()),
        };
        // insufficient_privilege: outside the rights of the plugin's role.
        if code == "42501" {
            return CapabilityError::AccessDenied(text);
        }
        let retryable = code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code == "40001"
            || code == "40P01";
        return if retryable {
            CapabilityError::Unavailable(text)
        } else {
            CapabilityError::Invalid(text)
        };
    }
    let text = e.to_string();
    if text.starts_with("error serializing parameter") || text.contains("parameters but") {
        CapabilityError::Invalid(text)
    } else {
        CapabilityError::Unavailable(text)
    }
}
