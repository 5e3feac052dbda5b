//! Host-side dispatch overhead: the time to hand a batch to a no-op plugin
//! and get its decisions back, per message, excluding NATS. Measured with
//! instance reuse (the normal path) and with a fresh instance per batch
//! (the path after a failure), plus cold start with and without the
//! compiled-component cache.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetplug::bindings::Message;
use jetplug::engine::{EngineSettings, Runtime};
use jetplug::plugin::{self, PluginInstance, PluginSpec};

/// Latency figures in microseconds per message.
#[derive(Debug, Clone, Copy)]
pub struct PerMessage {
    pub median_us: f64,
    pub p99_us: f64,
}

/// The results of one dispatch benchmark.
#[derive(Debug, Clone)]
pub struct DispatchReport {
    pub batches: usize,
    pub batch_size: usize,
    pub payload_bytes: usize,
    pub reuse: PerMessage,
    pub fresh: PerMessage,
    pub cold_start_compile: Duration,
    pub cold_start_cached: Duration,
}

/// A benchmark message (`traceparent` header, `payload`).
pub(crate) fn message(i: usize, payload: &[u8]) -> Message {
    Message {
        stream: "BENCH".into(),
        consumer: "bench".into(),
        subject: "bench.event.created".into(),
        headers: vec![("traceparent".into(), "00-1-2-01".into())],
        payload: payload.to_vec().into(),
        stream_seq: i as u64 + 1,
        delivered: 1,
        published_at_ms: 0,
        tenant: "default".into(),
    }
}

fn stats(mut per_message_us: Vec<f64>) -> PerMessage {
    per_message_us.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let idx = ((per_message_us.len() as f64 - 1.0) * q).round() as usize;
        per_message_us.get(idx).copied().unwrap_or(0.0)
    };
    PerMessage {
        median_us: at(0.5),
        p99_us: at(0.99),
    }
}

async fn measure(
    instance: &mut PluginInstance,
    batch: &Arc<[Message]>,
    batches: usize,
) -> anyhow::Result<PerMessage> {
    let mut samples = Vec::with_capacity(batches);
    for _ in 0..batches {
        let t = Instant::now();
        let d = instance.handle(batch.clone()).await?;
        let elapsed = t.elapsed();
        anyhow::ensure!(
            d.len() == batch.len(),
            "the plugin returned {} decisions",
            d.len()
        );
        samples.push(elapsed.as_secs_f64() * 1e6 / batch.len() as f64);
    }
    Ok(stats(samples))
}

/// Loads `spec` and starts an instance (`init`) twice, in fresh runtimes
/// sharing a new compile cache: the first compiles, the second loads the
/// cached code. Returns both times and the cached plugin.
pub async fn cold_start(
    spec: PluginSpec,
) -> anyhow::Result<(Duration, Duration, Arc<plugin::Plugin>)> {
    let cache = tempfile::tempdir()?;
    let settings = EngineSettings {
        // Room for the memory benchmark's instances: a Python or JS
        // component holds a dozen core instances each.
        max_instances: 32,
        cache_dir: Some(cache.path().to_path_buf()),
        ..EngineSettings::default()
    };
    let t = Instant::now();
    let runtime = Arc::new(Runtime::new(settings.clone())?);
    let compiled = Arc::new(plugin::load(&runtime, spec.clone())?);
    PluginInstance::new(compiled).ready().await?;
    let compile = t.elapsed();

    let t = Instant::now();
    let runtime = Arc::new(Runtime::new(settings)?);
    let cached = Arc::new(plugin::load(&runtime, spec)?);
    PluginInstance::new(cached.clone()).ready().await?;
    Ok((compile, t.elapsed(), cached))
}

/// Runs the dispatch benchmark on `plugin_path` (a no-op plugin).
pub async fn run(
    plugin_path: &Path,
    batches: usize,
    batch_size: usize,
    payload_bytes: usize,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<DispatchReport> {
    progress("cold start");
    let (cold_start_compile, cold_start_cached, cached) =
        cold_start(PluginSpec::new("bench", plugin_path)).await?;

    let payload = vec![b'x'; payload_bytes];
    let batch: Arc<[Message]> = (0..batch_size).map(|i| message(i, &payload)).collect();

    progress("dispatch with instance reuse");
    let mut reuse = PluginInstance::new(cached.clone());
    measure(&mut reuse, &batch, batches.min(20)).await?; // warm-up
    let reuse = measure(&mut reuse, &batch, batches).await?;

    progress("dispatch with a fresh instance per batch");
    let mut fresh = PluginInstance::new(cached);
    fresh.set_reuse(false);
    let fresh = measure(&mut fresh, &batch, batches).await?;

    Ok(DispatchReport {
        batches,
        batch_size,
        payload_bytes,
        reuse,
        fresh,
        cold_start_compile,
        cold_start_cached,
    })
}
