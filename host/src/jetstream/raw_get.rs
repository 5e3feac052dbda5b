//! Reading one stored message by sequence, leniently.
//!
//! NATS subjects and headers are bytes on the wire and nats-server accepts
//! any, but async-nats only parses valid UTF-8: a message whose subject or
//! headers are not UTF-8 makes the client drop its connection instead of
//! delivering it. Such a message can never be handled; after its last
//! delivery the `MAX_DELIVERIES` advisory names it, and this reader fetches
//! it through the JetStream API (`STREAM.MSG.GET`, JSON with base64 fields)
//! without that parser, replacing invalid bytes with U+FFFD, so it can be
//! dead-lettered with its payload intact and a reason that says why.

use base64::Engine as _;
use serde::Deserialize;

/// A stored message, with subject and headers made valid UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub subject: String,
    pub seq: u64,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    pub published_at_ms: i64,
    /// The subject or a header was not valid UTF-8 (bytes were replaced).
    pub not_utf8: bool,
}

/// Why a stored message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RawGetError {
    #[error("request for message {seq} of stream `{stream}` failed: {reason}")]
    Request {
        stream: String,
        seq: u64,
        reason: String,
    },
    #[error("stream `{stream}` answered for message {seq}: {reason}")]
    Api {
        stream: String,
        seq: u64,
        reason: String,
    },
}

#[derive(Deserialize)]
struct Response {
    message: Option<Stored>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    description: String,
}

#[derive(Deserialize)]
struct Stored {
    subject: String,
    seq: u64,
    hdrs: Option<String>,
    data: Option<String>,
    time: Option<String>,
}

/// Fetches message `seq` of `stream`.
pub async fn get(
    client: &async_nats::Client,
    stream: &str,
    seq: u64,
) -> Result<RawMessage, RawGetError> {
    fetch(client, stream, seq, None).await
}

/// Fetches the first message of `stream` at or after `seq` whose subject
/// matches `subject` (wildcards allowed).
pub async fn next(
    client: &async_nats::Client,
    stream: &str,
    seq: u64,
    subject: &str,
) -> Result<RawMessage, RawGetError> {
    fetch(client, stream, seq, Some(subject)).await
}

async fn fetch(
    client: &async_nats::Client,
    stream: &str,
    seq: u64,
    subject: Option<&str>,
) -> Result<RawMessage, RawGetError> {
    let request = |reason: String| RawGetError::Request {
        stream: stream.to_owned(),
        seq,
        reason,
    };
    let body = match subject {
        Some(subject) => serde_json::json!({ "seq": seq, "next_by_subj": subject }),
        None => serde_json::json!({ "seq": seq }),
    }
    .to_string();
    let reply = client
        .request(format!("$JS.API.STREAM.MSG.GET.{stream}"), body.into())
        .await
        .map_err(|e| request(e.to_string()))?;
    parse(&reply.payload).map_err(|e| RawGetError::Api {
        stream: stream.to_owned(),
        seq,
        reason: e.to_string(),
    })
}

/// An answer to a direct get that holds no usable message.
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Refused(String),
    #[error("no message in the answer")]
    NoMessage,
    #[error("{0}")]
    Base64(#[from] base64::DecodeError),
}

fn parse(json: &[u8]) -> Result<RawMessage, Unusable> {
    let r: Response = serde_json::from_slice(json)?;
    if let Some(e) = r.error {
        return Err(Unusable::Refused(e.description));
    }
    let m = r.message.ok_or(Unusable::NoMessage)?;
    let b64 = |s: &Option<String>| -> Result<Vec<u8>, Unusable> {
        match s {
            Some(s) => Ok(base64::engine::general_purpose::STANDARD.decode(s)?),
            None => Ok(Vec::new()),
        }
    };
    let header_bytes = b64(&m.hdrs)?;
    let headers_utf8 = std::str::from_utf8(&header_bytes).is_ok();
    let headers = String::from_utf8_lossy(&header_bytes)
        .lines()
        .skip(1) // NATS/1.0
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let published_at_ms = m
        .time
        .as_deref()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .and_then(|t| i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
        .unwrap_or(0);
    Ok(RawMessage {
        // The server writes invalid subject bytes into its JSON as U+FFFD.
        not_utf8: !headers_utf8 || m.subject.contains('\u{FFFD}'),
        subject: m.subject,
        seq: m.seq,
        headers,
        payload: b64(&m.data)?,
        published_at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn invalid_header_bytes_are_replaced_and_flagged() -> Result<(), Unusable> {
        let json = format!(
            r#"{{"message":{{"subject":"events.x","seq":3,"hdrs":"{}","data":"{}","time":"2026-11-22T22:08:33.5Z"}}}}"#,
            b64(b"NATS/1.0\r\nX-Bad: \xff\xfe\r\nX-Ok: yes\r\n\r\n"),
            b64(b"payload")
        );
        let m = parse(json.as_bytes())?;
        assert!(m.not_utf8);
        assert_eq!(m.seq, 3);
        assert_eq!(m.payload, b"payload");
        assert_eq!(
            m.headers,
            vec![
                ("X-Bad".into(), "\u{FFFD}\u{FFFD}".into()),
                ("X-Ok".into(), "yes".into())
            ]
        );
        assert!(m.published_at_ms > 0);
        Ok(())
    }

    #[test]
    fn replaced_subject_is_flagged_and_clean_messages_are_not() -> Result<(), Unusable> {
        let bad = r#"{"message":{"subject":"events.\ufffd","seq":2,"data":"eA=="}}"#;
        assert!(parse(bad.as_bytes())?.not_utf8);
        let ok = r#"{"message":{"subject":"events.ø","seq":2}}"#;
        let m = parse(ok.as_bytes())?;
        assert!(!m.not_utf8);
        assert!(m.payload.is_empty());
        let missing = r#"{"error":{"code":404,"err_code":10037,"description":"no message found"}}"#;
        assert!(
            matches!(parse(missing.as_bytes()), Err(Unusable::Refused(r)) if r == "no message found")
        );
        Ok(())
    }
}
