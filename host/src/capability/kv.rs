//! `jetplug:plugin/kv`: NATS KV buckets, checked against the plugin's `kv`
//! grant on every call.
//!
//! This host does not yet hold a NATS connection for plugins, so a granted
//! call reports `unavailable`.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use super::{Grants, denied};
use crate::bindings::CapabilityError;
use crate::bindings::jetplug::plugin::kv::{self, Entry};
use crate::plugin::PluginState;

/// Per-instance state of the kv capability.
#[derive(Debug)]
pub struct KvState {
    grants: Arc<Grants>,
}

impl KvState {
    pub fn new(grants: Arc<Grants>) -> Self {
        KvState { grants }
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

    fn gate(&self, bucket: &str) -> CapabilityError {
        match self.check(bucket) {
            Err(e) => e,
            Ok(()) => CapabilityError::Unavailable(format!(
                "kv: bucket `{bucket}` is not reachable: no NATS connection is available to plugins in this host"
            )),
        }
    }
}

struct KvCap;

impl HasData for KvCap {
    type Data<'a> = &'a mut KvState;
}

/// Adds the `kv` interface to `linker`.
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    kv::add_to_linker::<PluginState, KvCap>(linker, |s| &mut s.kv)
}

impl kv::Host for KvState {
    async fn get(
        &mut self,
        bucket: String,
        _key: String,
    ) -> Result<Option<Entry>, CapabilityError> {
        Err(self.gate(&bucket))
    }

    async fn put(
        &mut self,
        bucket: String,
        _key: String,
        _value: Vec<u8>,
    ) -> Result<u64, CapabilityError> {
        Err(self.gate(&bucket))
    }

    async fn delete(&mut self, bucket: String, _key: String) -> Result<(), CapabilityError> {
        Err(self.gate(&bucket))
    }

    async fn compare_and_set(
        &mut self,
        bucket: String,
        _key: String,
        _value: Vec<u8>,
        _expected: Option<u64>,
    ) -> Result<u64, CapabilityError> {
        Err(self.gate(&bucket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_outside_grant_is_denied() {
        let state = KvState::new(Arc::new(Grants {
            kv: vec!["sessions".into()],
            ..Grants::default()
        }));
        assert!(matches!(
            state.gate("sessions"),
            CapabilityError::Unavailable(_)
        ));
        assert!(matches!(
            state.gate("billing"),
            CapabilityError::AccessDenied(m) if m.contains("billing")
        ));
    }
}
