//! The wasm runtime against real components from plugins/: hostile plugins
//! are stopped and reported precisely, the host keeps going on a fresh
//! instance, loading refuses bad components with clear errors, grants are
//! enforced, and the compile cache spares a restart from recompiling.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetplug::capability::Grants;
use jetplug::engine::cache::CacheOutcome;
use jetplug::engine::{EngineSettings, Runtime};
use jetplug::plugin::{self, BatchError, Limits, LoadError, PluginInstance, PluginSpec};
use jetplug::{Decision, Message};
use jetplug_tests::plugins;

pub(crate) type TestResult = Result<(), Box<dyn std::error::Error>>;

pub(crate) fn runtime(
    cache_dir: Option<PathBuf>,
) -> Result<Arc<Runtime>, Box<dyn std::error::Error>> {
    Ok(Arc::new(Runtime::new(EngineSettings {
        max_instances: 16,
        cache_dir,
        ..EngineSettings::default()
    })?))
}

pub(crate) fn spec(path: &str) -> PluginSpec {
    let name = std::path::Path::new(path)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    PluginSpec::new(name, path)
}

pub(crate) fn msg(payload: &str) -> Message {
    Message {
        stream: "TEST".into(),
        consumer: "c".into(),
        subject: "test.subject".into(),
        headers: vec![],
        payload: payload.as_bytes().to_vec().into(),
        stream_seq: 1,
        delivered: 1,
        published_at_ms: 0,
        tenant: "default".into(),
    }
}

pub(crate) fn instance(rt: &Arc<Runtime>, spec: PluginSpec) -> Result<PluginInstance, LoadError> {
    Ok(PluginInstance::new(Arc::new(plugin::load(rt, spec)?)))
}

/// A hostile batch fails with `check`, and the next (benign) batch succeeds on
/// a second, fresh instance.
pub(crate) async fn fails_then_recovers(
    inst: &mut PluginInstance,
    check: impl FnOnce(&BatchError),
) -> TestResult {
    let err = inst
        .handle([msg("boom"), msg("ok")])
        .await
        .err()
        .ok_or("hostile batch succeeded")?;
    check(&err);
    let decisions = inst.handle([msg("ok"), msg("ok")]).await?;
    assert!(matches!(decisions[..], [Decision::Ack, Decision::Ack]));
    assert_eq!(
        inst.instances_created(),
        2,
        "next batch ran on a fresh instance"
    );
    Ok(())
}

mod hostile;
mod languages;
mod loading;
mod pacing;
