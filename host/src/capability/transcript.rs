//! A transcript of one plugin call's capability calls — each with its
//! arguments and its answer — recorded live and played back offline.
//!
//! Why here: every capability call passes [`super::CallPath`], so one
//! [`Script`] installed there sees all of them, in order, without a line in
//! any capability's logic. Recording keeps the typed values (a clone or a
//! shared handle) and turns them into JSON only when a capture is kept, so
//! recording every batch (capture `failures`) costs little on the happy path.
//! Playing back answers each call from the transcript instead of running it,
//! and names the first call that does not match what was recorded.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::bindings::CapabilityError;

/// Calls kept per transcript; past it a transcript is marked incomplete.
pub const MAX_CALLS: usize = 10_000;
/// Characters of a value shown in a divergence.
const SHOWN: usize = 200;

/// Why a played-back call got no answer from the transcript (it is
/// answered `unavailable` with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unanswered(pub String);

/// A value that can be written into a transcript later (kept typed until then).
pub trait Answer: Send + Sync {
    fn to_json(&self) -> Value;
}

impl<T: Serialize + Send + Sync> Answer for T {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl std::fmt::Debug for dyn Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Answer")
    }
}

/// One capability call as stored: `call` is `capability.op`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub call: String,
    /// Database, bucket or subject (`transaction` for calls on a transaction).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    #[serde(default)]
    pub args: Value,
    /// The answer, when the call succeeded (may be `null`).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub ok: Option<Value>,
    /// The error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CapabilityError>,
}

/// `"ok": null` is an answer (a missing key, a unit), not a missing field.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Entry {
    fn is_log(&self) -> bool {
        self.call.starts_with("log.")
    }
}

/// A call kept typed until the transcript is written.
struct Pending {
    call: String,
    target: String,
    args: Option<Arc<dyn Answer>>,
    result: Result<Arc<dyn Answer>, CapabilityError>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("call", &self.call).finish()
    }
}

/// What a call path does with capability calls while a script is installed.
#[derive(Debug)]
pub enum Script {
    /// Calls run; each is written down.
    Record(Recorded),
    /// Calls do not run: they are answered from a transcript.
    Replay(Replayer),
}

/// The calls of one plugin call, as made.
#[derive(Debug, Default)]
pub struct Recorded {
    calls: Vec<Pending>,
    /// Calls past [`MAX_CALLS`], not kept.
    pub dropped: u64,
}

impl Recorded {
    pub(super) fn push(
        &mut self,
        call: String,
        target: &str,
        args: Option<Arc<dyn Answer>>,
        result: Result<Arc<dyn Answer>, CapabilityError>,
    ) {
        if self.calls.len() >= MAX_CALLS {
            self.dropped += 1;
            return;
        }
        self.calls.push(Pending {
            call,
            target: target.to_owned(),
            args,
            result,
        });
    }

    /// The transcript, as JSON entries.
    pub fn entries(&self) -> Vec<Entry> {
        self.calls
            .iter()
            .map(|p| {
                let (ok, error) = match &p.result {
                    Ok(v) => (Some(v.to_json()), None),
                    Err(e) => (None, Some(e.clone())),
                };
                Entry {
                    call: p.call.clone(),
                    target: p.target.clone(),
                    args: p.args.as_ref().map(|a| a.to_json()).unwrap_or(Value::Null),
                    ok,
                    error,
                }
            })
            .collect()
    }
}

/// The first call a replay could not answer from the transcript.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Divergence {
    /// 1-based, counting the calls that are not log lines.
    pub number: usize,
    /// The call the plugin made now.
    pub now: Entry,
    /// The call recorded at that place, if any.
    pub then: Option<Entry>,
    /// What differs, in words.
    pub detail: String,
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "call {}: {} on `{}`: {}",
            self.number, self.now.call, self.now.target, self.detail
        )
    }
}

/// Plays a transcript back, in order — or, for a test fixture, answers
/// each call with the first declared answer that fits it (see
/// [`Replayer::fixture`]). Log lines in a transcript are not matched (they
/// ask for nothing); the lines the plugin logs now are kept.
#[derive(Debug, Default)]
pub struct Replayer {
    calls: Vec<Entry>,
    next: usize,
    answered: usize,
    /// A fixture's answers: matched by content, not order.
    loose: Option<Vec<bool>>,
    pub divergence: Option<Box<Divergence>>,
    /// Every call the plugin made now (log lines included), with its answer.
    pub made: Vec<Entry>,
}

impl Replayer {
    pub fn new(transcript: Vec<Entry>) -> Self {
        Replayer {
            calls: transcript.into_iter().filter(|e| !e.is_log()).collect(),
            ..Replayer::default()
        }
    }

    /// Answers from a test fixture: a call gets the first unused answer
    /// that fits it (same call; same target unless the answer gives none;
    /// every argument the answer gives equal), else the first used one that
    /// fits, else a default — writes succeed (`execute` affects 1 row,
    /// `insert_rows`/`execute_batch` all theirs, `publish` is stored,
    /// `kv.put` is revision 1), `kv.get` finds nothing, and `sql.query`
    /// answers `unavailable`, naming the answer to declare.
    pub fn fixture(answers: Vec<Entry>) -> Self {
        let used = vec![false; answers.len()];
        Replayer {
            calls: answers,
            loose: Some(used),
            ..Replayer::default()
        }
    }

    /// Recorded calls the plugin did not make (after the last it made).
    pub fn unmade(&self) -> &[Entry] {
        if self.divergence.is_some() || self.loose.is_some() {
            return &[];
        }
        &self.calls[self.next.min(self.calls.len())..]
    }

    /// A fixture's answer to `now` (see [`Replayer::fixture`]).
    fn declared(&mut self, now: &Entry) -> Result<Result<Value, CapabilityError>, Unanswered> {
        let used = self.loose.get_or_insert_with(Vec::new);
        let fitting: Vec<usize> = (0..self.calls.len())
            .filter(|&i| fits(&self.calls[i], now))
            .collect();
        let pick = fitting
            .iter()
            .copied()
            .find(|&i| !used.get(i).copied().unwrap_or(true))
            .or_else(|| fitting.first().copied());
        if let Some(i) = pick {
            if let Some(u) = used.get_mut(i) {
                *u = true;
            }
            let a = &self.calls[i];
            return Ok(match (&a.error, &a.ok) {
                (Some(e), _) => Err(e.clone()),
                (None, ok) => Ok(ok.clone().unwrap_or(Value::Null)),
            });
        }
        let count = |key: &str| {
            now.args
                .get(key)
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
        };
        Ok(Ok(match now.call.as_str() {
            "sql.execute" => Value::from(1),
            "sql.execute_batch" => Value::from(count("param_rows")),
            "sql.insert_rows" => Value::from(count("rows")),
            "sql.begin" => Value::from(0),
            "publish.publish" => {
                serde_json::json!({"stream": "", "sequence": 0, "duplicate": false})
            }
            "kv.put" | "kv.compare_and_set" => Value::from(1),
            "kv.get" | "kv.delete" | "sql.commit" => Value::Null,
            _ => {
                return Err(Unanswered(format!(
                    "the fixture declares no answer for {} on `{}` with {} (add one to `answers`)",
                    now.call,
                    now.target,
                    short(&now.args)
                )));
            }
        }))
    }

    pub(super) fn log(&mut self, entry: Entry) {
        self.made.push(entry);
    }

    /// The recorded answer to `now` (its `ok`/`error` are ignored), or the
    /// reason there is none — the first such is the divergence.
    pub(super) fn answer(
        &mut self,
        mut now: Entry,
    ) -> Result<Result<Value, CapabilityError>, Unanswered> {
        self.answered += 1;
        let answer = match (&self.divergence, self.calls.get(self.next)) {
            _ if self.loose.is_some() => self.declared(&now),
            (Some(d), _) => Err(Unanswered(format!(
                "the replay diverged at call {} ({}); later calls are not answered",
                d.number, d.now.call
            ))),
            (None, None) => {
                Err(self.diverge(&now, None, "the transcript holds no more calls".into()))
            }
            (None, Some(then)) => match differs(then, &now) {
                Some(detail) => {
                    let then = then.clone();
                    Err(self.diverge(&now, Some(then), detail))
                }
                None => {
                    self.next += 1;
                    Ok(match (&then.error, &then.ok) {
                        (Some(e), _) => Err(e.clone()),
                        (None, ok) => Ok(ok.clone().unwrap_or(Value::Null)),
                    })
                }
            },
        };
        match &answer {
            Ok(Ok(v)) => now.ok = Some(v.clone()),
            Ok(Err(e)) => now.error = Some(e.clone()),
            Err(why) => now.error = Some(CapabilityError::Unavailable(why.0.clone())),
        }
        self.made.push(now);
        answer
    }

    fn diverge(&mut self, now: &Entry, then: Option<Entry>, detail: String) -> Unanswered {
        let d = Divergence {
            number: self.answered,
            now: now.clone(),
            then,
            detail,
        };
        let text = format!("replay: no recorded answer: {d}");
        self.divergence = Some(Box::new(d));
        Unanswered(text)
    }
}

/// Whether a fixture's `answer` (or expected effect) fits the call `now`:
/// same call, same target unless it gives none, every argument it gives equal.
pub fn fits(answer: &Entry, now: &Entry) -> bool {
    if answer.call != now.call || !(answer.target.is_empty() || answer.target == now.target) {
        return false;
    }
    match &answer.args {
        Value::Null => true,
        Value::Object(want) => want.iter().all(|(k, v)| now.args.get(k) == Some(v)),
        other => *other == now.args,
    }
}

/// How `now` differs from the recorded `then`, in words; None if it does not.
fn differs(then: &Entry, now: &Entry) -> Option<String> {
    if then.call != now.call {
        return Some(format!(
            "the plugin called {} where {} was recorded",
            now.call, then.call
        ));
    }
    if then.target != now.target {
        return Some(format!(
            "target `{}`, recorded `{}`",
            now.target, then.target
        ));
    }
    if then.args == now.args {
        return None;
    }
    if let (Value::Object(a), Value::Object(b)) = (&then.args, &now.args) {
        for (k, was) in a {
            let is = b.get(k).unwrap_or(&Value::Null);
            if is != was {
                return Some(format!(
                    "argument `{k}` differs: now {}, recorded {}",
                    short(is),
                    short(was)
                ));
            }
        }
        if let Some(k) = b.keys().find(|k| !a.contains_key(*k)) {
            return Some(format!("argument `{k}` was not recorded"));
        }
    }
    Some(format!(
        "arguments differ: now {}, recorded {}",
        short(&now.args),
        short(&then.args)
    ))
}

/// Bytes as JSON: text when they are UTF-8, else `{"base64": "…"}`.
pub fn text_or_bytes(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => {
            use base64::Engine;
            serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
    }
}

/// `v` as JSON text, cut to [`SHOWN`] characters.
pub fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() <= SHOWN {
        return text;
    }
    let mut cut: String = text.chars().take(SHOWN).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(call: &str, args: Value, ok: Value) -> Entry {
        Entry {
            call: call.into(),
            target: "db".into(),
            args,
            ok: Some(ok),
            error: None,
        }
    }

    #[test]
    fn a_null_answer_is_kept_through_json() {
        let e = entry("kv.get", json!({"key": "k"}), Value::Null);
        let text = serde_json::to_string(&e).unwrap_or_default();
        assert!(text.contains("\"ok\":null"), "{text}");
        let back: Entry = serde_json::from_str(&text).expect("entry");
        assert_eq!(back, e);
    }

    #[test]
    fn replay_answers_in_order_and_names_the_first_divergence() {
        let log = Entry {
            call: "log.log".into(),
            ..entry("log.log", json!({"message": "hi"}), Value::Null)
        };
        let mut r = Replayer::new(vec![
            entry(
                "sql.query",
                json!({"statement": "SELECT 1", "params": []}),
                json!(1),
            ),
            log,
            entry("kv.get", json!({"key": "a"}), json!(2)),
        ]);
        let first = r.answer(entry(
            "sql.query",
            json!({"statement": "SELECT 1", "params": []}),
            Value::Null,
        ));
        assert_eq!(first, Ok(Ok(json!(1))));
        let second = r.answer(entry("kv.get", json!({"key": "b"}), Value::Null));
        assert!(second.is_err());
        let d = r.divergence.clone().expect("a divergence");
        assert_eq!(d.number, 2);
        assert!(
            d.detail
                .contains("argument `key` differs: now \"b\", recorded \"a\""),
            "{}",
            d.detail
        );
        let third = r.answer(entry("kv.get", json!({"key": "a"}), Value::Null));
        assert!(matches!(third, Err(m) if m.0.contains("diverged at call 2")));
        assert_eq!(r.made.len(), 3);
    }

    #[test]
    fn a_fixture_answers_by_content_and_writes_succeed_by_default() {
        let mut f = Replayer::fixture(vec![
            Entry {
                target: String::new(),
                ..entry(
                    "sql.query",
                    json!({"params": [{"text": "a2"}]}),
                    json!({"rows": 1}),
                )
            },
            entry("sql.query", Value::Null, json!({"rows": 0})),
        ]);
        let q = |p: &str| {
            entry(
                "sql.query",
                json!({"statement": "S", "params": [{"text": p}]}),
                Value::Null,
            )
        };
        assert_eq!(f.answer(q("a1")), Ok(Ok(json!({"rows": 0}))));
        assert_eq!(f.answer(q("a2")), Ok(Ok(json!({"rows": 1}))));
        assert_eq!(
            f.answer(q("a2")),
            Ok(Ok(json!({"rows": 1}))),
            "reused when all are used"
        );
        let w = entry("sql.insert_rows", json!({"rows": [[1], [2]]}), Value::Null);
        assert_eq!(f.answer(w), Ok(Ok(json!(2))));
        let mut empty = Replayer::fixture(Vec::new());
        let e = empty.answer(q("a1"));
        assert!(matches!(e, Err(m) if m.0.contains("declares no answer for sql.query")));
        assert!(empty.divergence.is_none(), "a fixture does not diverge");
        assert_eq!(f.made.len(), 4);
    }

    #[test]
    fn a_recorded_call_not_made_is_left_over() {
        let mut r = Replayer::new(vec![
            entry("sql.execute", json!({}), json!(1)),
            entry("publish.publish", json!({}), json!({})),
        ]);
        assert!(
            r.answer(entry("sql.execute", json!({}), Value::Null))
                .is_ok()
        );
        assert_eq!(r.unmade().len(), 1);
        assert_eq!(r.unmade()[0].call, "publish.publish");
    }
}
