//! The slow lane: where long and misbehaving plugin calls run.
//!
//! A plugin call runs on the pipeline's own task, on the host's async
//! threads, and yields at every epoch tick. That is enough to keep other
//! tasks *progressing*, but not to keep them *fast*: a looping plugin still
//! holds a thread for a whole tick at a time and takes its share of the CPU,
//! which on a small machine is felt by every healthy pipeline (and by
//! PostgreSQL and nats-server beside it). So *long* calls (computing for
//! more than `throttle_after`, see [`crate::plugin::pace`]), and every call
//! of a plugin whose last call failed, are moved here: a separate small
//! runtime whose threads run at a lower OS priority (`nice`). The healthy
//! pipelines keep their threads to themselves, and where the kernel can
//! honour priorities they get the CPU first. (On a small VM it often cannot:
//! its vCPUs share physical cores, which is why long calls are also paced.)
//!
//! The lane is started on first use, so a host whose plugins behave never
//! has its threads.

use std::future::Future;
use std::sync::OnceLock;

/// Settings of the slow lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneSettings {
    /// Threads of the slow lane (default: half the cores, at least 1).
    pub threads: usize,
    /// How much lower its threads' priority is, in `nice` steps (0–19;
    /// default 10: about a tenth of a normal thread's share when the CPU is
    /// contended). Linux only; elsewhere the lane runs at normal priority.
    pub nice: u8,
}

impl Default for LaneSettings {
    fn default() -> Self {
        super::EngineSettings::default().slow_lane
    }
}

/// A call sent to the slow lane ended without a result (it panicked, or
/// the lane was shut down under it).
#[derive(Debug, thiserror::Error)]
#[error("the call was lost on the slow lane: {0}")]
pub struct LaneError(String);

/// A lazily started, lower-priority runtime for long plugin calls.
#[derive(Debug)]
pub struct SlowLane {
    settings: LaneSettings,
    /// `None` if its threads could not be started (calls then run where
    /// they are, as without a lane).
    runtime: OnceLock<Option<tokio::runtime::Runtime>>,
}

impl SlowLane {
    pub fn new(settings: LaneSettings) -> Self {
        SlowLane {
            settings,
            runtime: OnceLock::new(),
        }
    }

    pub fn settings(&self) -> &LaneSettings {
        &self.settings
    }

    /// Whether the lane's threads have been started.
    pub fn started(&self) -> bool {
        matches!(self.runtime.get(), Some(Some(_)))
    }

    /// Runs `fut` to completion on the lane and returns its output. If the
    /// caller stops waiting, `fut` still runs to its end there (it owns
    /// everything it touches).
    pub async fn run<F>(&self, fut: F) -> Result<F::Output, LaneError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match self.runtime.get_or_init(|| self.start()) {
            Some(runtime) => runtime
                .spawn(fut)
                .await
                .map_err(|e| LaneError(e.to_string())),
            None => Ok(fut.await),
        }
    }

    fn start(&self) -> Option<tokio::runtime::Runtime> {
        let nice = self.settings.nice.min(19);
        let built = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.settings.threads.max(1))
            .max_blocking_threads(1)
            .thread_name("jetplug-slow-lane")
            .on_thread_start(move || {
                ON_LANE.with(|f| f.set(true));
                lower_priority(nice);
            })
            .enable_all()
            .build();
        match built {
            Ok(runtime) => Some(runtime),
            Err(e) => {
                tracing::warn!(error = %e,
                    "cannot start the slow lane's threads; long plugin calls run beside the others");
                None
            }
        }
    }
}

impl Drop for SlowLane {
    fn drop(&mut self) {
        // Never blocks, so the lane may be dropped from async code (or from
        // one of its own tasks, holding the last reference).
        if let Some(Some(runtime)) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

thread_local! {
    static ON_LANE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is one of a slow lane's.
pub fn on_lane() -> bool {
    ON_LANE.with(|f| f.get())
}

/// Lowers the calling thread's priority by `nice` steps.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_priority(nice: u8) {
    if nice == 0 {
        return;
    }
    // On Linux, PRIO_PROCESS with who = 0 names the calling thread only.
    // Relative to the thread's current niceness: a host that is itself
    // niced must not get a slow lane above its own priority.
    // SAFETY: plain syscalls with no pointers.
    let base = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let target = (base + libc::c_int::from(nice)).min(19);
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(),
            "cannot lower the slow lane's priority; it runs at normal priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn own_nice() -> i32 {
        // SAFETY: a plain syscall with no pointers.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[tokio::test]
    async fn runs_on_lower_priority_threads_started_on_first_use() -> Result<(), LaneError> {
        let lane = SlowLane::new(LaneSettings {
            threads: 1,
            nice: 7,
        });
        assert!(!lane.started());
        let name = lane
            .run(async { std::thread::current().name().map(str::to_owned) })
            .await?;
        assert_eq!(name.as_deref(), Some("jetplug-slow-lane"));
        assert!(lane.run(async { on_lane() }).await?);
        assert!(!on_lane());
        assert!(lane.started());
        #[cfg(target_os = "linux")]
        {
            let base = own_nice();
            let lane_nice = lane.run(async { own_nice() }).await?;
            assert_eq!(lane_nice, (base + 7).min(19));
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_panicking_call_is_an_error_not_a_crash() {
        let lane = SlowLane::new(LaneSettings::default());
        fn boom() -> u8 {
            panic!("boom")
        }
        let r = lane.run(async { boom() }).await;
        assert!(r.is_err(), "{r:?}");
        // And the lane keeps working.
        assert!(matches!(lane.run(async { 1 }).await, Ok(1)));
    }
}
