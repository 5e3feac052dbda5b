//! The one path every capability call takes: grant check, span, body,
//! counting and error bookkeeping, in that order, in [`Call::run`].
//!
//! Why one path: what must be true of *every* effect a plugin makes — it is
//! traced, counted per tenant, seen by the circuit breaker when a downstream
//! is out — is written once here instead of in each capability, and a
//! policy that must see every call (exactly-once effects, shadow runs,
//! recording a call transcript) has one place to wrap.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use super::Capability;
use super::transcript::{Answer, Entry, Script};
use crate::bindings::CapabilityError;
use crate::telemetry::CallTrace;

/// One instance's capability calls: the span they hang under, their counts
/// and errors (for the per-tenant metrics), and the `unavailable` answers
/// among them, so the host can tell a batch that failed because a
/// downstream is out (which the circuit breaker counts) from one the plugin
/// simply chose to retry. Cheap to clone: every capability of an instance
/// holds the same path.
#[derive(Debug, Clone, Default)]
pub struct CallPath(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    /// The span the running plugin call's capability calls hang under.
    trace: CallTrace,
    /// The batch transaction of an exactly-once pipeline, while one runs.
    effects: super::effects::Effects,
    /// The effects of the running call, while they are recorded (shadow runs).
    recording: Mutex<Option<super::record::Recording>>,
    /// The running call's transcript, recorded or played back.
    script: Mutex<Option<Script>>,
    unavailable: AtomicU32,
    calls: [AtomicU64; 4],
    errors: [[AtomicU64; 5]; 4],
}

/// Error kinds as metric labels, in [`error_index`] order.
pub const ERROR_KINDS: [&str; 5] = [
    "access-denied",
    "not-found",
    "unavailable",
    "invalid",
    "other",
];

fn error_index(e: &CapabilityError) -> usize {
    match e {
        CapabilityError::AccessDenied(_) => 0,
        CapabilityError::NotFound => 1,
        CapabilityError::Unavailable(_) => 2,
        CapabilityError::Invalid(_) => 3,
        CapabilityError::Other(_) => 4,
    }
}

/// Capability calls of one batch: calls and errors (by [`ERROR_KINDS`]) per
/// capability, in [`Capability::ALL`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub calls: [u64; 4],
    pub errors: [[u64; 5]; 4],
}

impl CallPath {
    /// The running plugin call's trace (set by the instance around each call).
    pub fn trace(&self) -> &CallTrace {
        &self.0.trace
    }

    /// Where this instance's effects go while an exactly-once batch runs.
    pub fn effects(&self) -> &super::effects::Effects {
        &self.0.effects
    }

    /// Starts one capability call `op` on `target` (a database, bucket or
    /// subject): its span, a child of the plugin call's span.
    pub fn call(&self, cap: Capability, op: &'static str, target: &str) -> Call {
        Call {
            span: self.0.trace.capability(cap.name(), op, target),
            path: self.clone(),
            cap,
            op,
            target: target.to_owned(),
            effect: None,
            scripted: self.script().is_some(),
            args: None,
        }
    }

    /// Records the capability calls that follow into a transcript, or
    /// answers them from one (until [`take_script`](Self::take_script)).
    pub fn set_script(&self, script: Script) {
        *self.script() = Some(script);
    }

    /// The script installed by [`set_script`](Self::set_script), filled.
    pub fn take_script(&self) -> Option<Script> {
        self.script().take()
    }

    /// True while calls are answered from a transcript, not run.
    pub fn replaying(&self) -> bool {
        matches!(*self.script(), Some(Script::Replay(_)))
    }

    /// A log line, into the running transcript (log calls take no other path).
    pub fn note_log(&self, level: &str, message: &str) {
        let mut script = self.script();
        let Some(script) = script.as_mut() else {
            return;
        };
        let args = serde_json::json!({ "level": level, "message": message });
        match script {
            Script::Record(r) => {
                r.push("log.log".into(), "", Some(Arc::new(args)), Ok(Arc::new(())))
            }
            Script::Replay(r) => r.log(Entry {
                call: "log.log".into(),
                target: String::new(),
                args,
                ok: Some(serde_json::Value::Null),
                error: None,
            }),
        }
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Option<Script>> {
        self.0.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the effects of the calls that follow into `recording`
    /// (until [`take_recording`](Self::take_recording)).
    pub fn record(&self, recording: super::record::Recording) {
        *self.recording() = Some(recording);
    }

    /// The recording of the calls since [`record`](Self::record).
    pub fn take_recording(&self) -> Option<super::record::Recording> {
        self.recording().take()
    }

    /// True while a recording holds effects back (a shadow run).
    pub fn holding(&self) -> bool {
        self.recording().as_ref().is_some_and(|r| r.hold)
    }

    fn recording(&self) -> std::sync::MutexGuard<'_, Option<super::record::Recording>> {
        self.0.recording.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Passes `r` through, counting the call and its error, if any.
    fn count<T>(
        &self,
        cap: Capability,
        r: Result<T, CapabilityError>,
    ) -> Result<T, CapabilityError> {
        let c = cap as usize;
        self.0.calls[c].fetch_add(1, Relaxed);
        if let Err(e) = &r {
            self.0.errors[c][error_index(e)].fetch_add(1, Relaxed);
            if let CapabilityError::Unavailable(_) = e {
                self.0.unavailable.fetch_add(1, Relaxed);
            }
        }
        r
    }

    /// `unavailable` answers since the last call, resetting the count.
    pub fn take_unavailable(&self) -> u32 {
        self.0.unavailable.swap(0, Relaxed)
    }

    /// Calls and errors since the last call, resetting them.
    pub fn take_usage(&self) -> Usage {
        let mut u = Usage::default();
        for c in 0..4 {
            u.calls[c] = self.0.calls[c].swap(0, Relaxed);
            for k in 0..5 {
                u.errors[c][k] = self.0.errors[c][k].swap(0, Relaxed);
            }
        }
        u
    }
}

/// One capability call, started by [`CallPath::call`].
#[derive(Debug)]
#[must_use = "a call does nothing until it is run"]
pub struct Call {
    path: CallPath,
    span: tracing::Span,
    cap: Capability,
    op: &'static str,
    target: String,
    /// What the call does to the world, for a recording (`detail`).
    effect: Option<String>,
    /// A transcript was being recorded or played back when the call started.
    scripted: bool,
    /// The call's arguments, for the transcript (only kept while scripted).
    args: Option<Arc<dyn Answer>>,
}

impl Call {
    /// Describes the call's effect (statement and parameters, payload, key
    /// and value) for a recording; only computed when one is running.
    pub fn effect(mut self, detail: impl FnOnce() -> String) -> Self {
        if self.path.recording().is_some() {
            self.effect = Some(detail());
        }
        self
    }

    /// The call's arguments, for a transcript; only computed while one is
    /// recorded or played back. (Share large values, e.g. through an `Arc`,
    /// rather than copying them.)
    pub fn args<A: Serialize + Send + Sync + 'static>(mut self, args: impl FnOnce() -> A) -> Self {
        if self.scripted {
            self.args = Some(Arc::new(args()));
        }
        self
    }

    fn name(&self) -> String {
        format!("{}.{}", self.cap.name(), self.op)
    }

    /// The answer from the transcript being played back, if one is.
    fn replayed<T: DeserializeOwned>(&self) -> Option<Result<T, CapabilityError>> {
        if !self.scripted {
            return None;
        }
        let mut script = self.path.script();
        let Some(Script::Replay(r)) = script.as_mut() else {
            return None;
        };
        let now = Entry {
            call: self.name(),
            target: self.target.clone(),
            args: self.args.as_ref().map(|a| a.to_json()).unwrap_or_default(),
            ok: None,
            error: None,
        };
        Some(match r.answer(now) {
            Ok(Ok(v)) => serde_json::from_value(v).map_err(|e| {
                CapabilityError::Invalid(format!(
                    "replay: the recorded answer of {} does not fit this call: {e}",
                    self.name()
                ))
            }),
            Ok(Err(e)) => Err(e),
            Err(why) => Err(CapabilityError::Unavailable(why.0)),
        })
    }

    /// Writes the call and its answer into the transcript being recorded.
    fn transcribe<T: Serialize + Clone + Send + Sync + 'static>(
        &self,
        r: &Result<T, CapabilityError>,
    ) {
        if !self.scripted {
            return;
        }
        if let Some(Script::Record(rec)) = self.path.script().as_mut() {
            let result = match r {
                Ok(v) => Ok(Arc::new(v.clone()) as Arc<dyn Answer>),
                Err(e) => Err(e.clone()),
            };
            rec.push(self.name(), &self.target, self.args.clone(), result);
        }
    }

    /// [`run`](Self::run), except that while a recording *holds* effects
    /// back (a shadow run) the body does not run: the call is recorded and
    /// answered with `held()`.
    pub async fn run_or_hold<T, F, Fut>(
        self,
        grant: Result<(), CapabilityError>,
        held: impl FnOnce() -> T,
        body: F,
    ) -> Result<T, CapabilityError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce(tracing::Span) -> Fut,
        Fut: Future<Output = Result<T, CapabilityError>>,
    {
        let holding = self.path.recording().as_ref().is_some_and(|r| r.hold);
        if holding && grant.is_ok() {
            self.note();
            return self.path.count(self.cap, Ok(held()));
        }
        self.run(grant, body).await
    }

    /// Adds this call to the running recording, if any.
    fn note(&self) {
        if let (Some(r), Some(detail)) = (self.path.recording().as_mut(), &self.effect) {
            r.push(self.cap.name(), self.op, &self.target, detail);
        }
    }

    /// Runs the call: `grant` (the capability's check of this call against
    /// the plugin's grants) first — a refused call never runs its body —
    /// then `body` inside the call's span (`body` gets the span, e.g. to
    /// pass trace context on), then counts the outcome and marks the span
    /// failed on error.
    pub async fn run<T, F, Fut>(
        self,
        grant: Result<(), CapabilityError>,
        body: F,
    ) -> Result<T, CapabilityError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
        F: FnOnce(tracing::Span) -> Fut,
        Fut: Future<Output = Result<T, CapabilityError>>,
    {
        // A refused call is not transcribed: its answer follows from the grants.
        let r = match grant {
            Ok(()) => {
                self.note();
                let r = match self.replayed() {
                    Some(answer) => answer,
                    None => body(self.span.clone()).instrument(self.span.clone()).await,
                };
                self.transcribe(&r);
                r
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &r {
            crate::telemetry::context::fail(&self.span, &format_args!("{e:?}"));
        }
        self.path.count(self.cap, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_call_never_runs_and_is_counted() {
        let path = CallPath::default();
        let mut ran = false;
        let r: Result<(), _> = path
            .call(Capability::Kv, "get", "b")
            .run(Err(CapabilityError::AccessDenied("no".into())), |_| async {
                ran = true;
                Ok(())
            })
            .await;
        assert!(matches!(r, Err(CapabilityError::AccessDenied(_))));
        assert!(!ran);
        let r: Result<u8, _> = path
            .call(Capability::Sql, "query", "db")
            .run(Ok(()), |_| async {
                Err(CapabilityError::Unavailable("down".into()))
            })
            .await;
        assert!(r.is_err());
        let u = path.take_usage();
        assert_eq!(u.calls[Capability::Kv as usize], 1);
        assert_eq!(u.errors[Capability::Kv as usize][0], 1);
        assert_eq!(u.errors[Capability::Sql as usize][2], 1);
        assert_eq!(path.take_unavailable(), 1);
        assert_eq!(path.take_unavailable(), 0);
    }
}
