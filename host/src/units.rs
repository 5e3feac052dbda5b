//! Human-friendly durations (`250ms`, `30s`, `7d`) and sizes (`64MiB`,
//! `10GB`), shared by the CLI and the configuration.

use std::time::Duration;

/// A duration or size that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid duration `{text}` ({reason}); examples: 500ms, 30s, 5m, 7d")]
    Duration { text: String, reason: String },
    #[error("invalid size `{text}` ({reason}); examples: 64MiB, 10GB, 1048576")]
    Size { text: String, reason: String },
}

/// Parses a duration such as `500ms`, `30s`, `5m`, `7d`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    humantime::parse_duration(text.trim()).map_err(|e| UnitError::Duration {
        text: text.to_owned(),
        reason: e.to_string(),
    })
}

/// Parses a size such as `512KiB`, `64MiB`, `10GB` or a plain byte count.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| UnitError::Size {
            text: text.to_owned(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err_and(|e| e.to_string().contains("`soon`")));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err_and(|e| e.to_string().contains("`lots`")));
    }
}
