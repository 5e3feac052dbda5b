//! Logging into the host's `tracing` output (rate-limited by the host;
//! lines past the limit are dropped and counted, never blocking).

pub use crate::bindings::jetplug::plugin::log::Level;
use crate::bindings::jetplug::plugin::log::log as host_log;

/// Logs `message` at `level`.
pub fn log(level: Level, message: impl AsRef<str>) {
    host_log(level, message.as_ref());
}

/// Logs at `trace`.
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message);
}

/// Logs at `debug`.
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message);
}

/// Logs at `info`.
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message);
}

/// Logs at `warn`.
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message);
}

/// Logs at `error`.
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message);
}
