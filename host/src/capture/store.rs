//! The capture bucket: a JetStream Object Store, replicated like the
//! streams, with a retention and a size limit (the oldest captures make
//! room). A capture's name is its id; its summary travels as object
//! metadata, so listing reads no capture.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{Capture, CaptureError};

/// The bucket's settings.
#[derive(Debug, Clone)]
pub struct BucketSettings {
    pub bucket: String,
    pub retention: Duration,
    pub max_bytes: u64,
    pub replicas: usize,
}

/// A capture as listed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Listed {
    pub id: String,
    pub pipeline: String,
    pub plugin: String,
    pub why: String,
    pub summary: String,
    pub size: usize,
    /// RFC 3339, when stored.
    pub stored_at: String,
}

/// The capture bucket.
#[derive(Clone)]
pub struct Captures {
    bucket: String,
    objects: object_store::ObjectStore,
}

impl std::fmt::Debug for Captures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captures")
            .field("bucket", &self.bucket)
            .finish()
    }
}

impl Captures {
    /// Opens the bucket, creating it with `settings` when missing.
    pub async fn open(
        js: &jetstream::Context,
        settings: &BucketSettings,
    ) -> Result<Self, CaptureError> {
        let objects = match js.get_object_store(&settings.bucket).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: settings.bucket.clone(),
                    description: Some("jetplug captures (docs/capture.md)".into()),
                    max_age: settings.retention,
                    max_bytes: i64::try_from(settings.max_bytes).unwrap_or(i64::MAX),
                    num_replicas: settings.replicas.max(1),
                    ..Default::default()
                })
                .await
                .map_err(|e| store_error(&settings.bucket, e))?,
        };
        Ok(Captures {
            bucket: settings.bucket.clone(),
            objects,
        })
    }

    /// Opens an existing bucket (for the CLI: it never creates one).
    pub async fn existing(js: &jetstream::Context, bucket: &str) -> Result<Self, CaptureError> {
        let objects = js.get_object_store(bucket).await.map_err(|e| {
            store_error(
                bucket,
                format!("{e} (no host has stored a capture yet, or another `host.capture_bucket` is configured)"),
            )
        })?;
        Ok(Captures {
            bucket: bucket.to_owned(),
            objects,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Stores `doc` (the redacted bytes of `capture`).
    pub async fn put(&self, capture: &Capture, doc: &[u8]) -> Result<(), CaptureError> {
        let metadata = HashMap::from([
            ("pipeline".to_owned(), capture.pipeline.clone()),
            ("plugin".to_owned(), capture.plugin.name.clone()),
            ("why".to_owned(), short(&capture.why)),
            ("summary".to_owned(), short(&capture.summary())),
        ]);
        let meta = object_store::ObjectMetadata {
            name: capture.id.clone(),
            description: Some(format!("capture of pipeline {}", capture.pipeline)),
            metadata,
            ..Default::default()
        };
        let mut reader = doc;
        self.objects
            .put(meta, &mut reader)
            .await
            .map(|_| ())
            .map_err(|e| store_error(&self.bucket, e))
    }

    /// Every capture, newest first; `pipeline` keeps one pipeline's.
    pub async fn list(&self, pipeline: Option<&str>) -> Result<Vec<Listed>, CaptureError> {
        let mut list = self
            .objects
            .list()
            .await
            .map_err(|e| store_error(&self.bucket, e))?;
        let mut out = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| store_error(&self.bucket, e))?;
            if info.deleted {
                continue;
            }
            let get = |k: &str| info.metadata.get(k).cloned().unwrap_or_default();
            let listed = Listed {
                id: info.name.clone(),
                pipeline: get("pipeline"),
                plugin: get("plugin"),
                why: get("why"),
                summary: get("summary"),
                size: info.size,
                stored_at: info
                    .modified
                    .and_then(|t| {
                        t.format(&time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .unwrap_or_default(),
            };
            if pipeline.is_none_or(|p| p == listed.pipeline) {
                out.push(listed);
            }
        }
        out.sort_by(|a, b| b.stored_at.cmp(&a.stored_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// The stored document of capture `id`.
    pub async fn get(&self, id: &str) -> Result<Vec<u8>, CaptureError> {
        let mut object = self.objects.get(id).await.map_err(|e| {
            if matches!(e.kind(), object_store::GetErrorKind::NotFound) {
                CaptureError::NotFound(id.to_owned())
            } else {
                store_error(&self.bucket, e)
            }
        })?;
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| store_error(&self.bucket, e))?;
        Ok(bytes)
    }
}

fn short(text: &str) -> String {
    let mut s: String = text.chars().take(200).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

fn store_error(bucket: &str, e: impl std::fmt::Display) -> CaptureError {
    CaptureError::Store {
        bucket: bucket.to_owned(),
        reason: e.to_string(),
    }
}
