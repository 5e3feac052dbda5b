//! Benchmarks behind `jetplug bench`. Timing goals live here, not in tests.

pub mod dispatch;
