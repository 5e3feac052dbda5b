//! Memory per plugin instance: how much a host's memory grows for each
//! further live instance of a plugin (one per pipeline worker, per version
//! during a swap), measured in this process.
//!
//! Why in process: the compiled code of a plugin version is loaded once and
//! shared by every instance (one `InstancePre`), and each instance's linear
//! memory starts as a copy-on-write mapping of the component's initial
//! image, so an instance costs only the pages it writes plus its store.
//!
//! Why PSS and not RSS: every instance maps the same image, and a page of it
//! that an instance only reads is one page of memory however many instances
//! map it — but `VmRSS` counts it once per mapping. For a Python component
//! (a 12 MiB image) RSS grew by 5.8 MiB per instance where the memory
//! really taken (its private pages, what `MemAvailable` lost) was about
//! 1.3 MiB. The proportional set size shares each page among its mappings,
//! so its growth is what the instances add.

use std::sync::Arc;

use jetplug::Message;
use jetplug::plugin::{Plugin, PluginInstance};

/// Proportional set size of this process in bytes (`Pss` of
/// `/proc/self/smaps_rollup`); `None` off Linux.
pub fn pss() -> Option<u64> {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let kib: u64 = rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// PSS growth per further live instance of `plugin`, each started (`init`)
/// and having handled `batch`: the mean over `extra` instances beside a
/// first one. `None` when PSS cannot be read.
pub async fn per_instance(
    plugin: &Arc<Plugin>,
    batch: &Arc<[Message]>,
    extra: usize,
) -> anyhow::Result<Option<u64>> {
    let extra = extra.max(1);
    let mut live = Vec::with_capacity(extra + 1);
    let mut first = PluginInstance::new(plugin.clone());
    first.handle(batch.clone()).await?;
    live.push(first);
    let Some(before) = pss() else {
        return Ok(None);
    };
    for _ in 0..extra {
        let mut inst = PluginInstance::new(plugin.clone());
        inst.handle(batch.clone()).await?;
        live.push(inst);
    }
    let after = pss().unwrap_or(before);
    drop(live);
    Ok(Some(after.saturating_sub(before) / extra as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_has_a_proportional_set_size() {
        let pss = super::pss().expect("Linux has /proc/self/smaps_rollup");
        assert!(pss > 1 << 20, "{pss}");
    }
}
