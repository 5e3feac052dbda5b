//! `jetplug-bench` end to end (it runs the `jetplug` binary `cargo test`
//! builds beside it) with small counts against a real nats-server
//! and PostgreSQL: every figure is produced and is a number (the figures
//! themselves are for the README, not for assertions), and `--record`
//! writes a run and compares the next one with it.

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
    let tmp = tempfile::tempdir()?;
    let record = tmp.path().join("bench/latest.json");
    let out = tokio::task::spawn_blocking({
        let (nats, pg, dir, guest) = (nats.url(), pg.url(), dir.to_path_buf(), guest.to_path_buf());
        let record = record.clone();
        let urls = cluster.urls();
        move || {
            Command::new(env!("CARGO_BIN_EXE_jetplug-bench"))
                .args([
                    "--count",
                    "400",
                    "--index-count",
                    "400",
                    "--index-batch",
                    "100",
                    "--batches",
                    "20",
                    "--latency-count",
                    "50",
                    "--many-pipelines",
                    "60",
                    "--many-streams",
                    "30",
                    "--nats",
                    &nats,
                ])
                .args(["--postgres", &pg, "--plugins"])
                .arg(dir)
                .arg("--guest-plugins")
                .arg(guest)
                .args(["--cluster", &urls])
                .arg("--record")
                .arg(&record)
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
        (
            "host peak RSS (throughput run: backlog, max_ack_pending 1000 full)",
            "MiB",
        ),
        (
            "latency publish → plugin → republish at 100 msg/s (default batching)",
            "ms",
        ),
        (
            "latency publish → plugin → republish at 5000 msg/s (default batching)",
            "ms",
        ),
        ("postgres-indexer, sustained", "rows/s"),
        (
            "plain COPY of the same rows, one transaction (reference)",
            "rows/s",
        ),
        (
            "COPY in the indexer's batches, a transaction each (100)",
            "rows/s",
        ),
        (
            "AIVO end to end: published → indexed and counted",
            "events/s",
        ),
        ("postgres-indexer beside hostile plugins", "rows/s"),
        ("Rust plugin, no-op", "MiB per instance"),
        ("Rust plugin, parse JSON", "MiB per instance"),
        ("Python plugin, no-op", "MiB per instance"),
        ("Python plugin, parse JSON", "MiB per instance"),
        ("JavaScript plugin, no-op", "MiB per instance"),
        ("JavaScript plugin, parse JSON", "MiB per instance"),
        ("JavaScript (QuickJS) plugin, no-op", "MiB per instance"),
        (
            "JavaScript (QuickJS) plugin, parse JSON",
            "MiB per instance",
        ),
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
    // nats-py is installed by `make bench`, not by `make test`: a number, or
    // why not.
    let natspy = text
        .lines()
        .find(|l| l.trim_start().starts_with("nats-py consumer"))
        .unwrap_or_else(|| panic!("no nats-py line in\n{text}"));
    assert!(
        natspy.contains(" msg/s (jetplug: ") || natspy.contains("skipped: "),
        "{natspy}"
    );

    // The record holds every line; a second run is compared with it.
    let first: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&record)?)?;
    let lines = first["lines"].as_array().map(Vec::len).unwrap_or(0);
    assert!(lines >= 25, "{first}");
    let again = Command::new(env!("CARGO_BIN_EXE_jetplug-bench"))
        .args(["dispatch", "--batches", "20", "--plugins"])
        .arg(dir)
        .arg("--record")
        .arg(&record)
        .output()?;
    let again_text = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{again_text}");
    assert!(
        again_text.contains("change against the previous run") && again_text.contains(" µs → "),
        "{again_text}"
    );
    Ok(())
}

/// The dispatch figures, in process (no servers).
#[tokio::test]
async fn dispatch_reports_every_figure() -> anyhow::Result<()> {
    let r = jetplug_bench::dispatch::run(Path::new(plugins::TEST_NOOP), 20, 10, 64, |_| {}).await?;
    assert_eq!((r.batches, r.batch_size, r.payload_bytes), (20, 10, 64));
    for v in [
        r.reuse.median_us,
        r.reuse.p99_us,
        r.fresh.median_us,
        r.fresh.p99_us,
    ] {
        assert!(v > 0.0 && v.is_finite(), "{r:?}");
    }
    assert!(r.reuse.p99_us >= r.reuse.median_us);
    assert!(!r.cold_start_compile.is_zero() && !r.cold_start_cached.is_zero());
    Ok(())
}
