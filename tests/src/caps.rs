//! Shared by the capability tests: the test-capabilities plugin loaded
//! with given grants and backends, messages for it, and its answers.

use std::sync::Arc;

use crate::plugins;
use jetplug::capability::{Backends, Grants};
use jetplug::engine::{EngineSettings, Runtime};
use jetplug::plugin::{self, PluginInstance, PluginSpec};
use jetplug::{Decision, Message};

/// A message with `payload` (a command for the plugin).
pub fn msg(payload: &str) -> Message {
    Message {
        stream: "T".into(),
        consumer: "c".into(),
        subject: "t.x".into(),
        headers: vec![],
        payload: payload.as_bytes().to_vec().into(),
        stream_seq: 1,
        delivered: 1,
        published_at_ms: 0,
        tenant: "default".into(),
    }
}

/// A small engine without a compile cache.
pub fn runtime() -> anyhow::Result<Arc<Runtime>> {
    Ok(Arc::new(Runtime::new(EngineSettings {
        max_instances: 8,
        cache_dir: None,
        ..EngineSettings::default()
    })?))
}

/// The test-capabilities plugin with `grants`, reaching `backends`.
pub fn caps(
    runtime: &Arc<Runtime>,
    grants: Grants,
    backends: Arc<Backends>,
) -> anyhow::Result<PluginInstance> {
    let spec = PluginSpec {
        grants,
        ..PluginSpec::new("caps", plugins::TEST_CAPABILITIES)
    };
    Ok(PluginInstance::new(Arc::new(plugin::load_with(
        runtime, spec, backends,
    )?)))
}

/// Runs one command; the plugin's report (`term` reason, or `ack`).
pub async fn ask(instance: &mut PluginInstance, payload: &str) -> anyhow::Result<String> {
    match instance.handle([msg(payload)]).await?.pop() {
        Some(Decision::Term(r)) => Ok(r),
        Some(Decision::Ack) => Ok("ack".into()),
        other => anyhow::bail!("unexpected decision {other:?}"),
    }
}
