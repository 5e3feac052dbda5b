//! A batch during a shadow: the shadow version runs it first with its
//! effects held back — its SQL in a transaction rolled back at once (so its
//! reads see the data as the live version will), its publishes and KV
//! writes recorded, not made — then the live version runs it as always,
//! its effects recorded as they happen, and the two are compared.
//!
//! The shadow never settles anything: the live version's decisions alone
//! do. A shadow that traps or times out costs its batch that time only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bindings::{Decision, Message};
use crate::capability::effects::{EffectsTx, Tables};
use crate::capability::record::Recording;
use crate::plugin::shadow::Run;
use crate::plugin::{BatchError, Plugin, PluginInstance, Shadow};

/// The shadow's run of a batch, waiting for the live one.
pub(super) struct Ran {
    shadow: Arc<Shadow>,
    result: Result<Vec<Decision>, BatchError>,
    recording: Option<Recording>,
    took: Duration,
    memory: u64,
}

/// Runs `msgs` on `p`'s shadow, if one runs and samples this batch.
pub(super) async fn run(
    p: &super::Pipeline,
    slot: &mut Option<PluginInstance>,
    msgs: &Arc<[Message]>,
) -> Option<Ran> {
    let shadow = p.plugin.shadow()?;
    if !shadow.samples(msgs.first()?) {
        return None;
    }
    let stale = slot
        .as_ref()
        .is_none_or(|i| !Arc::ptr_eq(i.plugin(), &shadow.plugin));
    if stale {
        *slot = Some(PluginInstance::new(shadow.plugin.clone()));
    }
    let instance = slot.as_mut()?;
    let tx = held_tx(&p.cfg.name, &shadow.plugin).await;
    let started = Instant::now();
    let (result, tx, recording) = instance
        .handle_recorded(msgs.clone(), None, tx, Some(Recording::hold()))
        .await;
    if let Some(tx) = tx {
        tx.rollback().await;
    }
    Some(Ran {
        shadow,
        result,
        recording,
        took: started.elapsed(),
        memory: instance.last_call_usage().memory,
    })
}

/// Compares the shadow's run with the live one's (on `instance`, just
/// called) and reports it.
pub(super) fn compare(
    ran: Ran,
    msgs: &[Message],
    live: &Result<Vec<Decision>, BatchError>,
    live_recording: Option<&Recording>,
    took: Duration,
    instance: &PluginInstance,
) {
    let live = Run {
        result: live,
        recording: live_recording,
        took,
        memory: instance.last_call_usage().memory,
    };
    let shadow = Run {
        result: &ran.result,
        recording: ran.recording.as_ref(),
        took: ran.took,
        memory: ran.memory,
    };
    ran.shadow.compare(msgs, &live, &shadow);
}

/// The transaction the shadow's SQL runs in: on its plugin's one granted
/// database (with several, or none, its SQL is refused, which the report
/// shows).
async fn held_tx(pipeline: &str, plugin: &Plugin) -> Option<EffectsTx> {
    let grants = &plugin.spec().grants;
    let [database] = grants.sql.as_slice() else {
        return None;
    };
    let pool = plugin.backends.database(database).ok()?;
    // The tables are never touched: nothing of this transaction commits.
    let tables = Tables::new("jetplug", "ledger", "outbox");
    match EffectsTx::begin(
        pool,
        database,
        grants.sql_role.as_deref(),
        &tables,
        pipeline,
        "shadow".into(),
    )
    .await
    {
        Ok(tx) => Some(tx),
        Err(e) => {
            tracing::warn!(pipeline, plugin = %plugin.name(), error = %e,
                "the shadow's held transaction could not begin; its SQL is refused this batch");
            None
        }
    }
}
