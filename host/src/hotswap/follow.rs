//! Following the fleet: every host watches the fleet's KV bucket and
//! brings its plugins to the announced versions, and its canaries and
//! shadows to their rollout records, judging the running ones once a
//! second.
//!
//! Why a module of its own: announcing (`fleet`), rollout records
//! (`rollout`) and shadow reports (`shadow`) are each written by the CLI
//! and read here; following is what ties them together on a host, so it
//! sits above all three and none of them needs another's loop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Swapper;
use super::fleet::{Announcement, Fleet, FleetError, parse};
use super::rollout::{Ended, Outcome, Rollout, Verdict, host_name, judge, now};
use super::{shadow, signing};
use crate::metrics::labels;
use crate::plugin::{Canary, Shadow};

impl Fleet {
    /// Brings every plugin of `swapper` to its announced version (and
    /// canary) now, then follows new announcements until `shutdown` (in a
    /// spawned task), judging running canaries once a second.
    /// `files` are the configured plugin files (for `file` announcements).
    pub async fn follow(
        self,
        swapper: Arc<Swapper>,
        files: BTreeMap<String, PathBuf>,
        shutdown: CancellationToken,
    ) {
        let watch = self.kv.watch_all().await.ok();
        let mut rollouts = BTreeMap::new();
        self.sync_all(&swapper, &files, &mut rollouts).await;
        tokio::spawn(async move {
            let mut watch = watch;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                if let Some(w) = watch.as_mut() {
                    loop {
                        let next = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tick.tick() => {
                                self.judge_all(&swapper, &rollouts).await;
                                continue;
                            }
                            n = w.next() => n,
                        };
                        match next {
                            Some(Ok(e)) if e.operation == kv::Operation::Put => {
                                self.on_entry(&swapper, &files, &mut rollouts, &e).await;
                            }
                            Some(Ok(_)) => {}
                            Some(Err(err)) => {
                                tracing::warn!(bucket = %self.bucket, error = %err,
                                    "plugin version watch failed; re-watching");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                watch = self.kv.watch_all().await.ok();
                if watch.is_some() {
                    // Announcements made while not watching.
                    self.sync_all(&swapper, &files, &mut rollouts).await;
                }
            }
        });
    }

    async fn on_entry(
        &self,
        swapper: &Swapper,
        files: &BTreeMap<String, PathBuf>,
        rollouts: &mut BTreeMap<String, Rollout>,
        e: &kv::Entry,
    ) {
        if files.contains_key(&e.key) {
            self.apply_entry(swapper, files, e).await;
        } else if let Some(name) = e.key.strip_suffix(".canary")
            && files.contains_key(name)
        {
            match self.rollout(name).await {
                Ok(Some((r, _))) => self.follow_rollout(swapper, rollouts, name, r).await,
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(plugin = %name, error = %err, "ignoring a canary record")
                }
            }
        }
    }

    async fn follow_rollout(
        &self,
        swapper: &Swapper,
        rollouts: &mut BTreeMap<String, Rollout>,
        name: &str,
        r: Rollout,
    ) {
        self.apply_rollout(swapper, name, &r).await;
        if r.ended.is_none() {
            rollouts.insert(name.to_owned(), r);
        } else {
            rollouts.remove(name);
        }
    }

    async fn sync_all(
        &self,
        swapper: &Swapper,
        files: &BTreeMap<String, PathBuf>,
        rollouts: &mut BTreeMap<String, Rollout>,
    ) {
        for name in files.keys() {
            match self.current(name).await {
                Ok(Some(ann)) => self.apply(swapper, files, name, &ann).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(plugin = %name, error = %e,
                    "cannot read the announced plugin version"),
            }
            match self.rollout(name).await {
                Ok(Some((r, _))) => self.follow_rollout(swapper, rollouts, name, r).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(plugin = %name, error = %e,
                    "cannot read the plugin's canary record"),
            }
        }
    }

    async fn apply_entry(
        &self,
        swapper: &Swapper,
        files: &BTreeMap<String, PathBuf>,
        e: &kv::Entry,
    ) {
        match parse(e) {
            Ok(ann) => self.apply(swapper, files, &e.key, &ann).await,
            Err(err) => tracing::error!(error = %err, "ignoring a plugin announcement"),
        }
    }

    /// Brings `name`'s canary on this host in line with record `r`.
    pub(super) async fn apply_rollout(&self, swapper: &Swapper, name: &str, r: &Rollout) {
        let Some(slot) = swapper.slots().get(name) else {
            return;
        };
        let running = slot
            .canary()
            .map(|c| c.id.clone())
            .or_else(|| slot.shadow().map(|s| s.id.clone()));
        let kind = if r.shadow.is_some() {
            "shadow"
        } else {
            "canary"
        };
        let metric = |p: u32| {
            swapper
                .metrics()
                .canary_percent
                .get_or_create(&labels(&[("plugin", name)]))
                .set(i64::from(p));
        };
        if let Some(ended) = &r.ended {
            if running.as_deref() == Some(r.id.as_str()) {
                slot.set_canary(None);
                if let Some(shadow) = slot.set_shadow(None) {
                    shadow::report(self, swapper, name, &shadow).await;
                }
                metric(0);
                swapper
                    .metrics()
                    .canary_decisions
                    .get_or_create(&labels(&[
                        ("plugin", name),
                        ("outcome", ended.outcome.as_str()),
                    ]))
                    .inc();
                match ended.outcome {
                    Outcome::Promoted => {
                        tracing::info!(plugin = %name, rollout = %r.id, kind, by = %ended.by,
                        reason = %ended.reason, "promoted; the new version becomes the running version")
                    }
                    Outcome::Finished => tracing::info!(plugin = %name, rollout = %r.id, kind,
                        reason = %ended.reason, "shadow finished; see `jetplug plugin shadow`"),
                    _ => tracing::warn!(plugin = %name, rollout = %r.id, kind, by = %ended.by,
                        outcome = ended.outcome.as_str(), reason = %ended.reason,
                        "ended; every message goes to the running version alone again"),
                }
            }
            return;
        }
        if running.as_deref() == Some(r.id.as_str()) {
            return;
        }
        let Announcement::Store {
            hash,
            object,
            signature,
            ..
        } = &r.candidate
        else {
            return;
        };
        let origin = PathBuf::from(format!("nats:{}/{object}", self.bucket));
        let refused = |why: String| Ended {
            outcome: Outcome::RolledBack,
            at: now(),
            reason: why,
            by: host_name(),
            live: None,
            candidate: None,
        };
        if !self.trusted.is_empty()
            && let Err(refusal) = signing::verify(&self.trusted, hash, signature.as_ref())
        {
            swapper.refuse(name, &origin, &refusal);
            let why = format!(
                "the candidate was refused on host {}: {refusal}",
                host_name()
            );
            let _ = self.end_canary(name, Some(&r.id), refused(why)).await;
            return;
        }
        let loaded = match self.fetch(object, hash).await {
            Ok(bytes) => swapper
                .candidate(name, bytes, origin)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match loaded {
            Ok(plugin) => match &r.shadow {
                Some(rules) => {
                    slot.set_shadow(Some(Arc::new(Shadow::new(&r.id, plugin, rules.sample))));
                    tracing::info!(plugin = %name, shadow = %r.id, sample = rules.sample,
                        version = %super::short(hash), "shadow started: the new version runs beside, its effects held back");
                }
                None => {
                    slot.set_canary(Some(Arc::new(Canary::new(&r.id, plugin, r.percent))));
                    metric(r.percent);
                    tracing::info!(plugin = %name, canary = %r.id, percent = r.percent,
                        candidate = %super::short(hash), "canary started: the candidate takes its share of the keys");
                }
            },
            Err(e) => {
                tracing::error!(plugin = %name, canary = %r.id, error = %e,
                    "canary candidate refused; rolling the canary back");
                let why = format!("the candidate failed to start on host {}: {e}", host_name());
                let _ = self.end_canary(name, Some(&r.id), refused(why)).await;
            }
        }
    }

    /// Judges this host's running canaries once; ends those with a verdict.
    pub(super) async fn judge_all(&self, swapper: &Swapper, rollouts: &BTreeMap<String, Rollout>) {
        for (name, r) in rollouts {
            if let Some(rules) = &r.shadow {
                shadow::tick(self, swapper, name, r, rules).await;
                continue;
            }
            let Some(canary) = swapper.slots().get(name).and_then(|s| s.canary()) else {
                continue;
            };
            if canary.id != r.id {
                continue;
            }
            let (live, cand) = (canary.live.read(), canary.candidate.read());
            for (version, f) in [("live", &live), ("candidate", &cand)] {
                swapper
                    .metrics()
                    .canary_messages
                    .get_or_create(&labels(&[("plugin", name), ("version", version)]))
                    .set(i64::try_from(f.messages).unwrap_or(i64::MAX));
            }
            let elapsed = humantime::parse_rfc3339(&r.started_at)
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .unwrap_or_default();
            let (outcome, reason) = match judge(&r.rules, elapsed, &live, &cand) {
                Verdict::Wait => continue,
                Verdict::Promote(why) => (Outcome::Promoted, why),
                Verdict::RollBack(why) => (Outcome::RolledBack, why),
            };
            let ended = Ended {
                outcome,
                at: now(),
                reason,
                by: host_name(),
                live: Some(live),
                candidate: Some(cand),
            };
            match self.end_canary(name, Some(&r.id), ended).await {
                Ok(_) | Err(FleetError::CanaryEnded(_)) | Err(FleetError::NoCanary(_)) => {}
                Err(e) => tracing::warn!(plugin = %name, canary = %r.id, error = %e,
                    "cannot record the canary's verdict; judging again in a second"),
            }
        }
    }
}
