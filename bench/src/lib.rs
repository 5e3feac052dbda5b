//! Benchmarks behind `jetplug-bench`. Timing goals live here, not in tests.
//!
//! `dispatch` needs no servers; `throughput`, `indexer` and `languages` run against a
//! local nats-server (and PostgreSQL), with the host as a child process.

pub mod aivo;
pub mod capture;
pub mod cluster;
pub mod dispatch;
pub mod effects;
pub mod env;
pub mod indexer;
pub mod languages;
pub mod latency;
pub mod memory;
pub mod payloads;
pub mod pipelines;
pub mod record;
pub mod tenants;
pub mod throughput;

/// The median of `values` (0 when empty).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(super::median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(super::median(Vec::new()), 0.0);
    }
}
