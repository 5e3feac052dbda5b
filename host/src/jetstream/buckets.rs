//! KV buckets declared as `[kv.NAME]`: created when missing (an existing
//! bucket is used as it is).

use std::collections::BTreeMap;

use async_nats::jetstream::{self, kv, stream};

use super::streams::StreamError;
use crate::config::{BucketConfig, Storage};

/// Creates every declared bucket that does not exist yet.
pub async fn ensure(
    js: &jetstream::Context,
    buckets: &BTreeMap<String, BucketConfig>,
) -> Result<(), StreamError> {
    for (name, b) in buckets {
        if js.get_key_value(name).await.is_ok() {
            continue;
        }
        js.create_key_value(kv::Config {
            bucket: name.clone(),
            history: b.history,
            max_age: b.max_age.0,
            max_bytes: if b.max_bytes.0 == 0 {
                -1
            } else {
                i64::try_from(b.max_bytes.0).unwrap_or(i64::MAX)
            },
            storage: match b.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: b.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| StreamError {
            stream: format!("KV_{name}"),
            reason: e.to_string(),
        })?;
        tracing::info!(bucket = %name, "kv bucket created");
    }
    Ok(())
}
