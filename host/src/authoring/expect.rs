//! Expectations in test fixtures: what a plugin must answer for a message
//! (`"expect"` on a JSONL line), and the comparison `jetplug test` prints
//! when it answers something else.
//!
//! Forms: `"ack"`, `"retry"`, `"term"`, `"failed"`, or an object
//! `{"decision": "retry", "delay_ms": 250}` (`null` = the host's backoff,
//! absent = any delay), `{"decision": "term", "reason": "REGEX"}` (a regular
//! expression searched in the reason), `{"decision": "failed", "error":
//! "deadline"}` (the batch failure kind).

use regex::Regex;
use serde::Deserialize;

use crate::bindings::Decision;

/// What a message's outcome must be.
#[derive(Debug, Clone)]
pub enum Expectation {
    /// `ack`.
    Ack,
    /// `retry`; `None` accepts any delay, `Some(None)` only the host's
    /// backoff, `Some(Some(ms))` exactly that delay.
    Retry { delay_ms: Option<Option<u32>> },
    /// `term`, with a reason matching the pattern if one is given.
    Term { reason: Option<Regex> },
    /// The batch fails (trap, deadline, ...), of this kind if given.
    Failed { error: Option<String> },
}

/// What actually happened to a message.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The plugin returned this decision.
    Decided(&'a Decision),
    /// Its batch failed with this kind and reason.
    Failed { kind: &'a str, reason: &'a str },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    decision: String,
    #[serde(default, deserialize_with = "present")]
    delay_ms: Option<Option<u32>>,
    reason: Option<String>,
    error: Option<String>,
}

/// Distinguishes `"delay_ms": null` (Some(None)) from an absent key (None).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

/// An `expect` value that is not one of the forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExpectError(pub String);

impl Expectation {
    /// Parses the `expect` value of a fixture line.
    pub fn parse(value: &serde_json::Value) -> Result<Self, ExpectError> {
        let raw = match value {
            serde_json::Value::String(s) => Raw {
                decision: s.clone(),
                delay_ms: None,
                reason: None,
                error: None,
            },
            serde_json::Value::Object(_) => Raw::deserialize(value)
                .map_err(|e| ExpectError(format!("invalid `expect`: {e}")))?,
            other => {
                return Err(ExpectError(format!(
                    "invalid `expect`: {other} (use \"ack\", \"retry\", \"term\", \"failed\" or an object with `decision`)"
                )));
            }
        };
        let only = |allowed: &[&str]| -> Result<(), ExpectError> {
            let given = [
                ("delay_ms", raw.delay_ms.is_some()),
                ("reason", raw.reason.is_some()),
                ("error", raw.error.is_some()),
            ];
            match given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
                Some((k, _)) => Err(ExpectError(format!(
                    "invalid `expect`: `{k}` does not apply to `{}`",
                    raw.decision
                ))),
                None => Ok(()),
            }
        };
        match raw.decision.as_str() {
            "ack" => only(&[]).map(|()| Expectation::Ack),
            "retry" => only(&["delay_ms"]).map(|()| Expectation::Retry {
                delay_ms: raw.delay_ms,
            }),
            "term" => {
                only(&["reason"])?;
                let reason = raw
                    .reason
                    .as_deref()
                    .map(Regex::new)
                    .transpose()
                    .map_err(|e| {
                        ExpectError(format!(
                            "invalid `expect`: `reason` is not a regular expression: {e}"
                        ))
                    })?;
                Ok(Expectation::Term { reason })
            }
            "failed" => only(&["error"]).map(|()| Expectation::Failed { error: raw.error }),
            other => Err(ExpectError(format!(
                "invalid `expect`: unknown decision `{other}` (use ack, retry, term or failed)"
            ))),
        }
    }

    /// Whether `outcome` meets the expectation.
    pub fn matches(&self, outcome: Outcome<'_>) -> bool {
        match (self, outcome) {
            (Expectation::Ack, Outcome::Decided(Decision::Ack)) => true,
            (Expectation::Retry { delay_ms }, Outcome::Decided(Decision::Retry(got))) => {
                delay_ms.is_none_or(|want| want == *got)
            }
            (Expectation::Term { reason }, Outcome::Decided(Decision::Term(got))) => {
                reason.as_ref().is_none_or(|re| re.is_match(got))
            }
            (Expectation::Failed { error }, Outcome::Failed { kind, .. }) => {
                error.as_deref().is_none_or(|want| want == kind)
            }
            _ => false,
        }
    }

    /// The expectation in words, e.g. `term matching /not JSON/`.
    pub fn describe(&self) -> String {
        match self {
            Expectation::Ack => "ack".into(),
            Expectation::Retry { delay_ms: None } => "retry".into(),
            Expectation::Retry {
                delay_ms: Some(None),
            } => "retry (host backoff)".into(),
            Expectation::Retry {
                delay_ms: Some(Some(ms)),
            } => format!("retry after {ms} ms"),
            Expectation::Term { reason: None } => "term".into(),
            Expectation::Term { reason: Some(re) } => format!("term matching /{}/", re.as_str()),
            Expectation::Failed { error: None } => "failed batch".into(),
            Expectation::Failed { error: Some(k) } => format!("failed batch ({k})"),
        }
    }
}

impl Outcome<'_> {
    /// The outcome in words, e.g. `term: payload is not JSON`.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Decided(Decision::Ack) => "ack".into(),
            Outcome::Decided(Decision::Retry(None)) => "retry (host backoff)".into(),
            Outcome::Decided(Decision::Retry(Some(ms))) => format!("retry after {ms} ms"),
            Outcome::Decided(Decision::Term(r)) => format!("term: {r}"),
            Outcome::Failed { kind, reason } => format!("failed batch ({kind}): {reason}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Result<Expectation, ExpectError> {
        Expectation::parse(&v)
    }

    #[test]
    fn forms_and_matching() -> Result<(), ExpectError> {
        let ack = parse(json!("ack"))?;
        assert!(ack.matches(Outcome::Decided(&Decision::Ack)));
        assert!(!ack.matches(Outcome::Decided(&Decision::Retry(None))));

        let any_retry = parse(json!("retry"))?;
        assert!(any_retry.matches(Outcome::Decided(&Decision::Retry(Some(5)))));
        assert!(any_retry.matches(Outcome::Decided(&Decision::Retry(None))));
        let backoff = parse(json!({"decision": "retry", "delay_ms": null}))?;
        assert!(backoff.matches(Outcome::Decided(&Decision::Retry(None))));
        assert!(!backoff.matches(Outcome::Decided(&Decision::Retry(Some(5)))));
        let exact = parse(json!({"decision": "retry", "delay_ms": 250}))?;
        assert!(exact.matches(Outcome::Decided(&Decision::Retry(Some(250)))));
        assert!(!exact.matches(Outcome::Decided(&Decision::Retry(Some(251)))));
        assert_eq!(exact.describe(), "retry after 250 ms");

        let term = parse(json!({"decision": "term", "reason": "not JSON"}))?;
        assert!(term.matches(Outcome::Decided(&Decision::Term(
            "payload is not JSON: x".into()
        ))));
        assert!(!term.matches(Outcome::Decided(&Decision::Term("other".into()))));
        assert_eq!(term.describe(), "term matching /not JSON/");

        let failed = parse(json!({"decision": "failed", "error": "deadline"}))?;
        assert!(failed.matches(Outcome::Failed {
            kind: "deadline",
            reason: "x"
        }));
        assert!(!failed.matches(Outcome::Failed {
            kind: "trap",
            reason: "x"
        }));
        Ok(())
    }

    #[test]
    fn bad_expectations_say_why() {
        let cases = [
            (json!("maybe"), "unknown decision `maybe`"),
            (json!(3), "invalid `expect`: 3"),
            (
                json!({"decision": "ack", "reason": "x"}),
                "`reason` does not apply to `ack`",
            ),
            (
                json!({"decision": "term", "reason": "("}),
                "not a regular expression",
            ),
            (
                json!({"decision": "retry", "delay": 1}),
                "unknown field `delay`",
            ),
            (json!({"reason": "x"}), "missing field `decision`"),
        ];
        for (v, want) in cases {
            let err = Expectation::parse(&v)
                .err()
                .map(|e| e.0)
                .unwrap_or_default();
            assert!(err.contains(want), "{v}: {err}");
        }
    }
}
