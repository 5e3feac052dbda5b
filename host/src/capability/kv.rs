//! `jetplug:plugin/kv`: NATS KV buckets, checked against the plugin's `kv`
//! grant on every call.
//!
//! A missing bucket is `not-found`; NATS trouble is `unavailable`; a
//! compare-and-set whose revision does not match is `invalid`.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use async_nats::jetstream::kv::{Operation, UpdateErrorKind};

use serde_json::json;

use super::transcript::text_or_bytes;
use super::{Backends, CallPath, Capability, Grants, denied};
use crate::bindings::CapabilityError;
use crate::bindings::jetplug::plugin::kv::{self, Entry};

/// Per-instance state of the kv capability.
#[derive(Debug)]
pub struct KvState {
    grants: Arc<Grants>,
    backends: Arc<Backends>,
    calls: CallPath,
}

fn unavailable(e: impl std::fmt::Display) -> CapabilityError {
    CapabilityError::Unavailable(format!("kv: {e}"))
}

impl KvState {
    pub fn new(grants: Arc<Grants>, backends: Arc<Backends>, calls: CallPath) -> Self {
        KvState {
            grants,
            backends,
            calls,
        }
    }

    /// Checks that `bucket` is granted; the error is what the plugin sees.
    pub fn check(&self, bucket: &str) -> Result<(), CapabilityError> {
        if self.grants.allows_bucket(bucket) {
            Ok(())
        } else {
            Err(denied(format_args!(
                "bucket `{bucket}` is outside the grant {:?}",
                self.grants.kv
            )))
        }
    }
}

struct KvCap;

impl HasData for KvCap {
    type Data<'a> = &'a mut KvState;
}

/// Adds the `kv` interface to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut KvState,
) -> wasmtime::Result<()> {
    kv::add_to_linker::<T, KvCap>(linker, get)
}

impl kv::Host for KvState {
    async fn get(&mut self, bucket: String, key: String) -> Result<Option<Entry>, CapabilityError> {
        let grant = self.check(&bucket);
        self.calls
            .call(Capability::Kv, "get", &bucket)
            .args(|| json!({ "key": key }))
            .run(grant, |_| async move {
                let store = self.backends.bucket(&bucket).await?;
                match store.entry(key).await.map_err(unavailable)? {
                    Some(e) if e.operation == Operation::Put => Ok(Some(Entry {
                        value: e.value.to_vec(),
                        revision: e.revision,
                    })),
                    _ => Ok(None),
                }
            })
            .await
    }

    async fn put(
        &mut self,
        bucket: String,
        key: String,
        value: Vec<u8>,
    ) -> Result<u64, CapabilityError> {
        let grant = self.check(&bucket);
        self.calls
            .call(Capability::Kv, "put", &bucket)
            .args(|| json!({ "key": key, "value": text_or_bytes(&value) }))
            .effect(|| format!("{key} = {}", String::from_utf8_lossy(&value)))
            .run_or_hold(
                grant,
                || 0,
                |_| async move {
                    let store = self.backends.bucket(&bucket).await?;
                    store.put(key, value.into()).await.map_err(unavailable)
                },
            )
            .await
    }

    async fn delete(&mut self, bucket: String, key: String) -> Result<(), CapabilityError> {
        let grant = self.check(&bucket);
        self.calls
            .call(Capability::Kv, "delete", &bucket)
            .args(|| json!({ "key": key }))
            .effect(|| key.clone())
            .run_or_hold(
                grant,
                || (),
                |_| async move {
                    let store = self.backends.bucket(&bucket).await?;
                    store.delete(key).await.map_err(unavailable)
                },
            )
            .await
    }

    async fn compare_and_set(
        &mut self,
        bucket: String,
        key: String,
        value: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<u64, CapabilityError> {
        let grant = self.check(&bucket);
        self.calls
            .call(Capability::Kv, "compare_and_set", &bucket)
            .args(|| json!({ "key": key, "value": text_or_bytes(&value), "expected": expected }))
            .effect(|| {
                format!(
                    "{key} = {} if revision {expected:?}",
                    String::from_utf8_lossy(&value)
                )
            })
            .run_or_hold(
                grant,
                || 0,
                |_| async move {
                    let store = self.backends.bucket(&bucket).await?;
                    let mismatch = || {
                        CapabilityError::Invalid(format!(
                            "revision of `{key}` did not match {expected:?}"
                        ))
                    };
                    match expected {
                        // Revision 0 means "must not exist".
                        None => {
                            store
                                .create(&key, value.into())
                                .await
                                .map_err(|e| match e.kind() {
                                    async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => {
                                        mismatch()
                                    }
                                    _ => unavailable(e),
                                })
                        }
                        Some(rev) => {
                            store.update(&key, value.into(), rev).await.map_err(|e| {
                                match e.kind() {
                                    UpdateErrorKind::WrongLastRevision => mismatch(),
                                    _ => unavailable(e),
                                }
                            })
                        }
                    }
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_outside_grant_is_denied() {
        let state = KvState::new(
            Arc::new(Grants {
                kv: vec!["sessions".into()],
                ..Grants::default()
            }),
            Backends::offline(),
            CallPath::default(),
        );
        assert!(state.check("sessions").is_ok());
        assert!(matches!(
            state.check("billing"),
            Err(CapabilityError::AccessDenied(m)) if m.contains("billing")
        ));
    }
}
