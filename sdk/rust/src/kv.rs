//! NATS KV buckets granted to the plugin: get, put, delete and
//! compare-and-set (optimistic concurrency on a key's revision).

use crate::Error;
use crate::bindings::jetplug::plugin::kv as raw;
pub use crate::bindings::jetplug::plugin::kv::Entry;

/// Reads `key`; `None` when it does not exist (or was deleted).
pub fn get(bucket: &str, key: &str) -> Result<Option<Entry>, Error> {
    raw::get(bucket, key).map_err(Error::from)
}

/// Writes `key` unconditionally; returns the new revision.
pub fn put(bucket: &str, key: &str, value: &[u8]) -> Result<u64, Error> {
    raw::put(bucket, key, value).map_err(Error::from)
}

/// Deletes `key`.
pub fn delete(bucket: &str, key: &str) -> Result<(), Error> {
    raw::delete(bucket, key).map_err(Error::from)
}

/// Writes `key` only if its revision is `expected` (`None`: only if it does
/// not exist); `Error::Invalid` when the revision did not match.
pub fn compare_and_set(
    bucket: &str,
    key: &str,
    value: &[u8],
    expected: Option<u64>,
) -> Result<u64, Error> {
    raw::compare_and_set(bucket, key, value, expected).map_err(Error::from)
}
