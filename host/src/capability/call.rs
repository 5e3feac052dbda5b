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

use tracing::Instrument;

use super::Capability;
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
        }
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
        F: FnOnce(tracing::Span) -> Fut,
        Fut: Future<Output = Result<T, CapabilityError>>,
    {
        let r = match grant {
            Ok(()) => {
                self.note();
                body(self.span.clone()).instrument(self.span.clone()).await
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
