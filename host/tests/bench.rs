//! `jetplug bench` end to end with small counts against a real nats-server
//! and PostgreSQL: every figure is produced and is a number (the figures
//! themselves are for the README, not for assertions).

use std::path::Path;
use std::process::Command;

use jetplug_tests::{NatsCluster, NatsServer, Postgres, plugins};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_prints_every_figure() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let cluster = NatsCluster::start().await?;
    let dir = Path::new(plugins::TEST_NOOP)
        .parent()
        .ok_or_else(|| anyhow::anyhow!("plugin dir"))?;
    let guest = Path::new(plugins::BENCH_PY)
        .parent()
        .ok_or_else(|| anyhow::anyhow!("guest plugin dir"))?;
    let out = tokio::task::spawn_blocking({
        let (nats, pg, dir, guest) = (nats.url(), pg.url(), dir.to_path_buf(), guest.to_path_buf());
        let urls = cluster.urls();
        move || {
            Command::new(env!("CARGO_BIN_EXE_jetplug"))
                .args([
                    "bench",
                    "--count",
                    "400",
                    "--index-count",
                    "400",
                    "--batches",
                    "20",
                    "--latency-count",
                    "50",
                    "--nats",
                    &nats,
                ])
                .args(["--postgres", &pg, "--plugins"])
                .arg(dir)
                .arg("--guest-plugins")
                .arg(guest)
                .args(["--cluster", &urls])
                .output()
        }
    })
    .await??;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (row, unit) in [
        (
            "dispatch overhead per message, instance reuse (median / p99)",
            "µs",
        ),
        ("native async-nats consumer (baseline)", "msg/s"),
        ("jetplug + no-op wasm plugin", "msg/s"),
        ("ratio jetplug / native", ""),
        ("cold start to first message, compiling", "ms"),
        (
            "cold start to first message, compiled-component cache",
            "ms",
        ),
        ("host peak RSS (throughput run)", "MiB"),
        (
            "latency publish → plugin → republish at 100 msg/s (default batching)",
            "ms",
        ),
        (
            "latency publish → plugin → republish at 5000 msg/s (default batching)",
            "ms",
        ),
        ("postgres-indexer, sustained", "rows/s"),
        ("plain COPY of the same rows (reference)", "rows/s"),
        ("postgres-indexer beside hostile plugins", "rows/s"),
        ("Rust plugin, no-op", "msg/s"),
        ("Rust plugin, parse JSON", "msg/s"),
        ("Python plugin, no-op", "msg/s"),
        ("Python plugin, parse JSON", "msg/s"),
        ("JavaScript plugin, no-op", "msg/s"),
        ("JavaScript plugin, parse JSON", "msg/s"),
        ("R3 stream: native async-nats consumer", "msg/s"),
        ("R3 stream: jetplug + no-op plugin, one host", "msg/s"),
        ("R3 stream: jetplug + no-op plugin, two hosts", "msg/s"),
        ("tenant alone (no-op plugin)", "msg/s"),
        (
            "tenant beside one flooding at 10× its quota, CPU-heavy",
            "msg/s",
        ),
        ("flooding tenant held to its quota (sustained)", "msg/s"),
    ] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(row))
            .unwrap_or_else(|| panic!("no `{row}` in\n{text}"));
        let value: f64 = line[line.find(row).unwrap_or(0) + row.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number in `{line}`"));
        assert!(value > 0.0, "{line}");
        assert!(line.contains(unit), "{line}");
    }
    Ok(())
}
