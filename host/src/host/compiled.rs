//! A starting host takes its plugins' compiled code from the fleet before
//! it compiles them, and shares what it had to compile.
//!
//! Plugins are loaded before the host connects (a broken plugin fails the
//! start clearly), so the pull uses a short-lived connection of its own: a
//! NATS that does not answer within seconds costs a local compile, never
//! the start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::engine::Runtime;
use crate::engine::cache::{self, FleetKey};
use crate::hotswap::artifacts::Artifacts;
pub(super) use crate::hotswap::artifacts::fleet_key;
use crate::hotswap::fleet::Fleet;
use crate::jetstream::{self, Health};
use crate::plugin::Plugin;

/// How long the start waits for NATS to pull compiled code.
const PULL_CONNECT: Duration = Duration::from_secs(5);

/// Every plugin a pipeline uses (as handler or dead-letter route), once.
pub(super) fn used_plugins(config: &Config) -> Vec<&String> {
    let mut used: Vec<&String> = Vec::new();
    let names = config
        .pipelines
        .iter()
        .flat_map(|p| std::iter::once(&p.plugin).chain(p.dead_letter.as_ref()));
    for name in names {
        if !used.contains(&name) {
            used.push(name);
        }
    }
    used
}

/// Pulls the used plugins' compiled code into this host's cache (each
/// outcome is logged).
pub(super) async fn pull(config: &Config, runtime: &Arc<Runtime>, key: &FleetKey) {
    let Some(artifacts) = connect(config, runtime, key).await else {
        return;
    };
    // Entries often share a file (tenants on one handler): once per file.
    let mut seen = std::collections::HashSet::new();
    for name in used_plugins(config) {
        let path = &config.plugins[name].path;
        if !seen.insert(path) {
            continue;
        }
        // A file that cannot be read is reported by the load itself.
        let Ok(bytes) = tokio::fs::read(path).await else {
            continue;
        };
        let hash = cache::content_hash(&bytes);
        artifacts.pull_logged(name, &hash).await;
    }
}

async fn connect(config: &Config, runtime: &Arc<Runtime>, key: &FleetKey) -> Option<Artifacts> {
    let mut nats = config.nats.clone();
    nats.connect_attempts = 1;
    let client = match tokio::time::timeout(PULL_CONNECT, jetstream::connect(&nats, &Health::new()))
        .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot reach NATS for the fleet's compiled components; compiling locally");
            return None;
        }
        Err(_) => {
            tracing::warn!(after = ?PULL_CONNECT,
                "NATS did not answer for the fleet's compiled components; compiling locally");
            return None;
        }
    };
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(config.nats.request_timeout.0);
    match Fleet::open(&js, &config.host.deploy_bucket).await {
        Ok(fleet) => Some(fleet.artifacts(key.clone(), runtime.clone())),
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the fleet's compiled components; compiling locally");
            None
        }
    }
}

/// Shares the loaded plugins' compiled code with the fleet, in the
/// background.
pub(super) fn push(artifacts: Artifacts, loaded: &BTreeMap<String, Arc<Plugin>>) {
    let plugins: Vec<Arc<Plugin>> = loaded.values().cloned().collect();
    tokio::spawn(async move {
        let mut shared = std::collections::BTreeSet::new();
        for p in plugins {
            if shared.insert(p.hash().to_owned()) {
                artifacts.push_plugin(&p).await;
            }
        }
    });
}
