//! Distributing plugin versions to a fleet of hosts over NATS.
//!
//! `jetplug plugin deploy` stores the component in a JetStream Object Store
//! bucket (content-addressed: `NAME/SHA256`) and announces it under the
//! plugin's name in a KV bucket of the same name. Every host watches that
//! KV bucket (`follow`): on a new announcement it fetches the object, checks its
//! hash and offers it to its [`Swapper`]. A host that starts later reads the
//! current announcements before its pipelines run, so the fleet converges
//! on one version whether hosts were running at deploy time or not.
//!
//! The KV keeps a history per plugin, which is what `plugin rollback` walks
//! back through. The `file` announcement means "the file the configuration
//! names", which is where a rollback past the first deploy lands.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::Swapper;
use super::artifacts::Artifacts;
use super::signing::{self, Signature, TrustedKey};
use crate::engine::Runtime;
use crate::engine::cache::{self, FleetKey};

/// Default name of the Object Store and KV buckets.
pub const DEFAULT_BUCKET: &str = crate::config::DEFAULT_DEPLOY_BUCKET;
/// Versions of each plugin the KV remembers (for rollback).
const HISTORY: i64 = 64;

/// What a host should run for one plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum Announcement {
    /// The component stored as `object` in the Object Store.
    Store {
        hash: String,
        object: String,
        size: u64,
        deployed_at: String,
        /// Who signed it (see [`super::signing`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<Signature>,
    },
    /// The file the host's configuration names.
    File { deployed_at: String },
}

impl Announcement {
    /// The version this names: a hash, or `file`.
    pub fn version(&self) -> &str {
        match self {
            Announcement::Store { hash, .. } => hash,
            Announcement::File { .. } => "file",
        }
    }

    pub(super) fn stamped(mut self) -> Self {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        match &mut self {
            Announcement::Store { deployed_at, .. } | Announcement::File { deployed_at } => {
                *deployed_at = now
            }
        }
        self
    }
}

/// Why a deploy, rollback or fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot open the plugin store `{bucket}`: {reason}")]
    Open { bucket: String, reason: String },
    #[error(
        "plugin name `{0}` cannot be used as a KV key: use ASCII letters, digits, `-`, `_` and `=`"
    )]
    Name(String),
    #[error("cannot store plugin `{plugin}` in `{bucket}`: {reason}")]
    Store {
        plugin: String,
        bucket: String,
        reason: String,
    },
    #[error("cannot read the versions of plugin `{plugin}` from `{bucket}`: {reason}")]
    Read {
        plugin: String,
        bucket: String,
        reason: String,
    },
    #[error(
        "the announcement of plugin `{plugin}` (revision {revision}) is not readable: {reason}"
    )]
    BadAnnouncement {
        plugin: String,
        revision: u64,
        reason: String,
    },
    #[error("object `{object}` has SHA-256 {actual}, not the announced {expected}; refusing it")]
    Integrity {
        object: String,
        expected: String,
        actual: String,
    },
    #[error("plugin `{0}` has no earlier version to roll back to")]
    NothingToRollBack(String),
    #[error(
        "a canary of plugin `{plugin}` is running ({id}): promote or abort it first (`jetplug plugin promote|abort {plugin}`)"
    )]
    CanaryRunning { plugin: String, id: String },
    #[error("no canary or shadow of plugin `{0}` is running")]
    NoCanary(String),
    #[error("the canary of plugin `{0}` ended meanwhile (see `jetplug plugin canary {0}`)")]
    CanaryEnded(String),
}

/// The Object Store and KV bucket that carry plugin versions.
#[derive(Clone)]
pub struct Fleet {
    pub(super) bucket: String,
    pub(super) kv: kv::Store,
    objects: object_store::ObjectStore,
    /// With keys, only versions one of them signed are run.
    pub(super) trusted: Vec<TrustedKey>,
    /// Compiled components shared with the fleet (`engine.fleet_cache_key`).
    artifacts: Option<Artifacts>,
    /// The server's largest message: compiled code is stored in chunks
    /// just under it.
    max_payload: usize,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl Fleet {
    /// Opens the buckets, creating them when missing.
    pub async fn open(js: &jetstream::Context, bucket: &str) -> Result<Fleet, FleetError> {
        let open = |e: &dyn std::fmt::Display| FleetError::Open {
            bucket: bucket.to_owned(),
            reason: e.to_string(),
        };
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_owned(),
                    description: "jetplug plugin versions".into(),
                    history: HISTORY,
                    ..Default::default()
                })
                .await
                .map_err(|e| open(&e))?,
        };
        let objects = match js.get_object_store(bucket).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: bucket.to_owned(),
                    description: Some("jetplug plugin components".into()),
                    ..Default::default()
                })
                .await
                .map_err(|e| open(&e))?,
        };
        Ok(Fleet {
            bucket: bucket.to_owned(),
            kv,
            objects,
            trusted: Vec::new(),
            artifacts: None,
            max_payload: js.client().server_info().max_payload,
        })
    }

    /// Runs only versions signed by one of `keys` (none: any version).
    pub fn trusting(mut self, keys: Vec<TrustedKey>) -> Self {
        self.trusted = keys;
        self
    }

    /// The fleet's compiled components, trusted under `key`, loaded into
    /// `runtime`'s cache.
    pub fn artifacts(&self, key: FleetKey, runtime: Arc<Runtime>) -> Artifacts {
        Artifacts::new(self.objects.clone(), key, runtime, self.max_payload)
    }

    /// Takes new versions' compiled code from the fleet, and shares it
    /// after compiling one no host had shared.
    pub fn sharing(mut self, artifacts: Option<Artifacts>) -> Self {
        self.artifacts = artifacts;
        self
    }

    /// Stores `bytes` (if not stored yet) and announces them as `plugin`'s
    /// version, with `signature` when the deployer signed it.
    pub async fn deploy(
        &self,
        plugin: &str,
        bytes: &[u8],
        signature: Option<Signature>,
    ) -> Result<Announcement, FleetError> {
        let ann = self.store(plugin, bytes, signature).await?;
        self.announce(plugin, &ann).await?;
        Ok(ann)
    }

    /// Stores `bytes` (if not stored yet); the announcement that would
    /// name them, not made.
    pub async fn store(
        &self,
        plugin: &str,
        bytes: &[u8],
        signature: Option<Signature>,
    ) -> Result<Announcement, FleetError> {
        check_name(plugin)?;
        let hash = cache::content_hash(bytes);
        let object = format!("{plugin}/{hash}");
        let store_err = |e: &dyn std::fmt::Display| FleetError::Store {
            plugin: plugin.to_owned(),
            bucket: self.bucket.clone(),
            reason: e.to_string(),
        };
        if self.objects.info(&object).await.is_err() {
            let mut reader = bytes;
            self.objects
                .put(object.as_str(), &mut reader)
                .await
                .map_err(|e| store_err(&e))?;
        }
        let ann = Announcement::Store {
            hash,
            object,
            size: bytes.len() as u64,
            deployed_at: String::new(),
            signature,
        }
        .stamped();
        Ok(ann)
    }

    /// Announces the newest earlier version of `plugin` that differs from
    /// the current one (or its configured file, past the first deploy).
    pub async fn rollback(&self, plugin: &str) -> Result<Announcement, FleetError> {
        check_name(plugin)?;
        let history = self.history(plugin).await?;
        let Some(current) = history.last() else {
            return Err(FleetError::NothingToRollBack(plugin.to_owned()));
        };
        let target = history
            .iter()
            .rev()
            .find(|a| a.version() != current.version())
            .cloned()
            .or_else(|| {
                matches!(current, Announcement::Store { .. }).then(|| Announcement::File {
                    deployed_at: String::new(),
                })
            })
            .ok_or_else(|| FleetError::NothingToRollBack(plugin.to_owned()))?
            .stamped();
        self.announce(plugin, &target).await?;
        Ok(target)
    }

    /// The current announcement for `plugin`, if any.
    pub async fn current(&self, plugin: &str) -> Result<Option<Announcement>, FleetError> {
        check_name(plugin)?;
        let entry = self.kv.entry(plugin).await.map_err(|e| FleetError::Read {
            plugin: plugin.to_owned(),
            bucket: self.bucket.clone(),
            reason: e.to_string(),
        })?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => parse(&e).map(Some),
            _ => Ok(None),
        }
    }

    /// Every announcement of `plugin` the KV still holds, oldest first.
    pub async fn history(&self, plugin: &str) -> Result<Vec<Announcement>, FleetError> {
        let read = |e: &dyn std::fmt::Display| FleetError::Read {
            plugin: plugin.to_owned(),
            bucket: self.bucket.clone(),
            reason: e.to_string(),
        };
        let mut out = Vec::new();
        // A key never written has no history (the server says "no messages").
        let Ok(mut entries) = self.kv.history(plugin).await else {
            return Ok(out);
        };
        while let Some(e) = entries.next().await {
            let e = e.map_err(|e| read(&e))?;
            if e.operation == kv::Operation::Put {
                out.push(parse(&e)?);
            }
        }
        Ok(out)
    }

    /// The component bytes of a stored version, checked against its hash.
    pub async fn fetch(&self, object: &str, hash: &str) -> Result<Vec<u8>, FleetError> {
        let read = |e: &dyn std::fmt::Display| FleetError::Read {
            plugin: object.split('/').next().unwrap_or(object).to_owned(),
            bucket: self.bucket.clone(),
            reason: e.to_string(),
        };
        let mut obj = self.objects.get(object).await.map_err(|e| read(&e))?;
        let mut bytes = Vec::new();
        obj.read_to_end(&mut bytes).await.map_err(|e| read(&e))?;
        let actual = cache::content_hash(&bytes);
        if actual != hash {
            return Err(FleetError::Integrity {
                object: object.to_owned(),
                expected: hash.to_owned(),
                actual,
            });
        }
        Ok(bytes)
    }

    pub(super) async fn announce(
        &self,
        plugin: &str,
        ann: &Announcement,
    ) -> Result<(), FleetError> {
        let json = serde_json::to_vec(ann).map_err(|e| FleetError::Store {
            plugin: plugin.to_owned(),
            bucket: self.bucket.clone(),
            reason: e.to_string(),
        })?;
        self.kv
            .put(plugin, json.into())
            .await
            .map_err(|e| FleetError::Store {
                plugin: plugin.to_owned(),
                bucket: self.bucket.clone(),
                reason: e.to_string(),
            })?;
        Ok(())
    }

    pub(super) async fn apply(
        &self,
        swapper: &Swapper,
        files: &BTreeMap<String, PathBuf>,
        name: &str,
        ann: &Announcement,
    ) {
        let (bytes, origin) = match ann {
            Announcement::Store {
                hash,
                object,
                signature,
                ..
            } => {
                let running = swapper.slots().get(name).map(|s| s.current());
                if running.is_some_and(|p| p.hash() == hash) {
                    return;
                }
                let origin = PathBuf::from(format!("nats:{}/{object}", self.bucket));
                if !self.trusted.is_empty()
                    && let Err(refusal) = signing::verify(&self.trusted, hash, signature.as_ref())
                {
                    swapper.refuse(name, &origin, &refusal);
                    return;
                }
                // `fetch` checks the bytes against `hash`, the signed value.
                match self.fetch(object, hash).await {
                    Ok(b) => (b, origin),
                    Err(e) => {
                        tracing::error!(plugin = %name, error = %e,
                            "cannot fetch the announced plugin version; the running version stays");
                        return;
                    }
                }
            }
            Announcement::File { .. } => {
                let Some(path) = files.get(name) else { return };
                match tokio::fs::read(path).await {
                    Ok(b) => (b, path.clone()),
                    Err(e) => {
                        tracing::error!(plugin = %name, file = %path.display(), error = %e,
                            "cannot read the configured plugin file; the running version stays");
                        return;
                    }
                }
            }
        };
        let hash = cache::content_hash(&bytes);
        if let Some(a) = &self.artifacts {
            a.pull_logged(name, &hash).await;
        }
        let swapped = swapper.offer(name, bytes, origin).await;
        if let (Some(a), Ok(super::Swapped::Yes { .. })) = (&self.artifacts, swapped)
            && let Some(slot) = swapper.slots().get(name)
        {
            let (a, plugin) = (a.clone(), slot.current());
            tokio::spawn(async move { a.push_plugin(&plugin).await });
        }
    }
}

pub(super) fn parse(e: &kv::Entry) -> Result<Announcement, FleetError> {
    serde_json::from_slice(&e.value).map_err(|err| FleetError::BadAnnouncement {
        plugin: e.key.clone(),
        revision: e.revision,
        reason: err.to_string(),
    })
}

pub(super) fn check_name(plugin: &str) -> Result<(), FleetError> {
    let ok = !plugin.is_empty()
        && plugin
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '='));
    if ok {
        Ok(())
    } else {
        Err(FleetError::Name(plugin.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_round_trip_as_tagged_json() {
        let a = Announcement::Store {
            hash: "ab".into(),
            object: "p/ab".into(),
            size: 3,
            deployed_at: "t".into(),
            signature: None,
        };
        let json = serde_json::to_string(&a).expect("serialize");
        assert!(json.contains(r#""source":"store""#), "{json}");
        assert_eq!(
            serde_json::from_str::<Announcement>(&json).expect("parse"),
            a
        );
        let f: Announcement =
            serde_json::from_str(r#"{"source":"file","deployed_at":"t"}"#).expect("parse");
        assert_eq!(f.version(), "file");
    }

    #[test]
    fn plugin_names_must_be_kv_keys() {
        assert!(check_name("postgres-indexer").is_ok());
        assert!(check_name("a.b").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("naïve").is_err());
    }
}
