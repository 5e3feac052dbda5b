//! What `run-plugin` and `test` share: the flags that shape the offline
//! runner (plugin config, batch size, limits, cache) and loading one plugin
//! instance the way the host does.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::capability::{Backends, Grants};
use crate::engine::{EngineSettings, Runtime};
use crate::plugin::{self, Limits, PluginInstance, PluginSpec};
use crate::units;

#[derive(Debug, Clone, clap::Args)]
pub struct RunnerArgs {
    /// A `KEY=VALUE` pair for the plugin's `init` (repeatable).
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub config: Vec<(String, String)>,
    /// Messages per batch (at least 1).
    #[arg(long, short, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
    /// Time limit for each batch, e.g. `500ms`, `5s`.
    #[arg(long, default_value = "5s", value_parser = units::parse_duration)]
    pub deadline: Duration,
    /// Memory limit for the plugin instance, e.g. `64MiB`.
    #[arg(long, default_value = "64MiB", value_parser = units::parse_size)]
    pub memory: u64,
    /// Tenant name given to the plugin in each message.
    #[arg(long, default_value = "default")]
    pub tenant: String,
    /// Directory of the compiled-component cache (default: ~/.cache/jetplug/components).
    #[arg(long, env = "JETPLUG_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Compile the plugin without reading or writing the cache.
    #[arg(long)]
    pub no_cache: bool,
}

pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

impl RunnerArgs {
    /// Loads `path` with these limits, `grants` and `backends`, and starts an
    /// instance (`init` included).
    pub async fn start(
        &self,
        path: &Path,
        grants: Grants,
        backends: Arc<Backends>,
    ) -> anyhow::Result<PluginInstance> {
        self.start_as(path, grants, backends, &[], None).await
    }

    /// [`start`](Self::start) with `base` as the plugin's config (the
    /// `--config` pairs override it) and, for a replay, a fixed world
    /// (insecure seed, and the time `init` runs at).
    pub async fn start_as(
        &self,
        path: &Path,
        grants: Grants,
        backends: Arc<Backends>,
        base: &[(String, String)],
        fixed: Option<(u128, u64)>,
    ) -> anyhow::Result<PluginInstance> {
        let mut settings = EngineSettings {
            max_instances: 8,
            ..EngineSettings::default()
        };
        if self.no_cache {
            settings.cache_dir = None;
        } else if let Some(dir) = &self.cache_dir {
            settings.cache_dir = Some(dir.clone());
        }
        settings.max_memory_bytes = settings.max_memory_bytes.max(self.memory);
        let runtime = Arc::new(Runtime::new(settings)?);

        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "plugin".into());
        let spec = PluginSpec {
            tenant: self.tenant.clone(),
            grants,
            limits: Limits {
                memory_bytes: self.memory,
                deadline: self.deadline,
                ..Limits::default()
            },
            config: merged(base, &self.config),
            ..PluginSpec::new(name, path)
        };
        let plugin = plugin::load_with(&runtime, spec, backends)?;
        tracing::info!(plugin = plugin.name(), hash = plugin.hash(), cache = ?plugin.cache_outcome(), "loaded");
        let mut instance = PluginInstance::new(Arc::new(plugin));
        if let Some((seed, wall)) = fixed {
            instance.fix_world(seed, wall);
        }
        instance
            .ready()
            .await
            .with_context(|| format!("plugin {} failed to start", path.display()))?;
        Ok(instance)
    }
}

/// `base` with `over`'s keys replaced or added (in `base`'s order, then the new ones).
fn merged(base: &[(String, String)], over: &[(String, String)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = base
        .iter()
        .map(|(k, v)| {
            let v = over
                .iter()
                .rev()
                .find(|(o, _)| o == k)
                .map_or(v, |(_, v)| v);
            (k.clone(), v.clone())
        })
        .collect();
    for (k, v) in over {
        if !out.iter().any(|(o, _)| o == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_pairs_override_the_base_and_add_to_it() {
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let got = super::merged(
            &[pair("a", "1"), pair("b", "2")],
            &[pair("b", "3"), pair("c", "4")],
        );
        assert_eq!(got, [pair("a", "1"), pair("b", "3"), pair("c", "4")]);
    }
}
