//! The scenarios of `jetplug-bench`, one function each: run it, add its
//! rows to the table (part of the binary, not the library).

use jetplug_bench::{
    aivo, capture, cluster, dispatch, env::Env, indexer, languages, latency, payloads, pipelines,
    record, tenants, throughput,
};

use super::{Common, TENANT_QUOTA, mib, row};

/// The `dispatch` rows.
pub(crate) async fn dispatch(
    c: &Common,
    all: bool,
    rows: &mut Vec<record::Line>,
) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new_spinner();
    let r = dispatch::run(
        &c.plugins.join("test_noop.wasm"),
        c.batches as usize,
        c.batch as usize,
        c.size,
        |step| {
            bar.set_message(format!("dispatch: {step}"));
            bar.tick();
        },
    )
    .await?;
    bar.finish_and_clear();
    rows.push(row(
        "dispatch overhead per message, instance reuse (median / p99)",
        format!("{:.2} / {:.2} µs", r.reuse.median_us, r.reuse.p99_us),
        "≤ 2 µs",
        Some(r.reuse.median_us <= 2.0),
    ));
    rows.push(row(
        "dispatch overhead per message, fresh instance per batch",
        format!("{:.2} / {:.2} µs", r.fresh.median_us, r.fresh.p99_us),
        "",
        None,
    ));
    if !all {
        rows.push(row(
            "cold start to first batch (offline), compile / cached",
            format!(
                "{:.0} / {:.0} ms",
                r.cold_start_compile.as_secs_f64() * 1e3,
                r.cold_start_cached.as_secs_f64() * 1e3
            ),
            "",
            None,
        ));
    }
    Ok(())
}

/// The throughput benchmark's settings (also the capture benchmark's).
fn throughput_settings(c: &Common) -> throughput::Settings {
    throughput::Settings {
        count: c.count,
        size: c.size,
        batch: c.batch,
        concurrency: c.concurrency,
        repeat: c.repeat,
    }
}

/// The `throughput` rows.
pub(crate) async fn throughput(
    env: &Env,
    c: &Common,
    rows: &mut Vec<record::Line>,
) -> anyhow::Result<()> {
    let r = throughput::run(env, throughput_settings(c)).await?;
    let ratio = r.jetplug_per_sec / r.native_per_sec;
    rows.push(row(
        "native async-nats consumer (baseline)",
        format!("{:.0} msg/s", r.native_per_sec),
        "",
        None,
    ));
    rows.push(row(
        "jetplug + no-op wasm plugin",
        format!("{:.0} msg/s", r.jetplug_per_sec),
        "",
        None,
    ));
    rows.push(row(
        "ratio jetplug / native",
        format!("{ratio:.2}"),
        "≥ 1.0",
        Some(ratio >= 1.0),
    ));
    rows.push(row(
        "nats-py consumer (fetch, ack each; Python without jetplug)",
        match &r.natspy_per_sec {
            Ok(rate) => format!(
                "{rate:.0} msg/s (jetplug: {:.1}×)",
                r.jetplug_per_sec / rate.max(1e-9)
            ),
            Err(why) => why.clone(),
        },
        "",
        None,
    ));
    rows.push(row(
        "cold start to first message, compiling",
        format!("{:.0} ms", r.cold_start_compile.as_secs_f64() * 1e3),
        "",
        None,
    ));
    rows.push(row(
        "cold start to first message, compiled-component cache",
        format!("{:.0} ms", r.cold_start_cached.as_secs_f64() * 1e3),
        "",
        None,
    ));
    rows.push(row(
        "host peak RSS (throughput run: backlog, max_ack_pending 1000 full)",
        r.host_peak_rss.map(mib).unwrap_or_else(|| "n/a".into()),
        "",
        None,
    ));
    Ok(())
}

/// The `capture` rows.
pub(crate) async fn capture(
    env: &Env,
    c: &Common,
    rows: &mut Vec<record::Line>,
) -> anyhow::Result<()> {
    let r = capture::run(env, throughput_settings(c)).await?;
    let failures = r.failures / r.off;
    rows.push(row(
        "capture = \"failures\" (default) / \"off\", no-op plugin",
        format!("{failures:.2} ({:.0} / {:.0} msg/s)", r.failures, r.off),
        "≥ 0.95 (within noise)",
        Some(failures >= 0.95),
    ));
    rows.push(row(
        "capture = \"all\" / \"off\", no-op plugin (every batch stored)",
        format!("{:.2} ({:.0} msg/s)", r.all / r.off, r.all),
        "",
        None,
    ));
    Ok(())
}

/// The `payloads` rows: one line per size, and the ratio's goal.
pub(crate) async fn payloads(
    env: &Env,
    c: &Common,
    rows: &mut Vec<record::Line>,
) -> anyhow::Result<()> {
    let points = payloads::run(env, throughput_settings(c), c.nats_pid).await?;
    for p in points {
        let mb = |per_sec: f64| per_sec * p.size as f64 / 1e6;
        let ratio = p.jetplug_per_sec / p.native_per_sec;
        let label = match p.size {
            n if n >= 1 << 20 => format!("{} MiB", n >> 20),
            n if n >= 1 << 10 => format!("{} KiB", n >> 10),
            n => format!("{n} B"),
        };
        rows.push(row(
            &format!("payload {label}: jetplug / native ({} messages)", p.count),
            format!(
                "{ratio:.2} ({:.0} / {:.0} msg/s, {:.1} / {:.1} MB/s)",
                p.jetplug_per_sec,
                p.native_per_sec,
                mb(p.jetplug_per_sec),
                mb(p.native_per_sec)
            ),
            "≥ 0.9",
            Some(ratio >= 0.9),
        ));
        rows.push(row(
            &format!("payload {label}: host peak RSS (bound: messages held)"),
            format!(
                "{} ({} held at most)",
                p.host_peak_rss.map(mib).unwrap_or_else(|| "n/a".into()),
                mib(p.held_bound)
            ),
            "",
            None,
        ));
        let us = |s: f64| format!("{:.1}", s * 1e6);
        let server = |s: Option<f64>| s.map(us).unwrap_or_else(|| "n/a".into());
        rows.push(row(
            &format!("payload {label}: CPU per message, consumer / nats-server"),
            format!(
                "jetplug {} / {} µs; native {} / {} µs; nats-server storing it {} µs",
                us(p.cpu.host),
                server(p.cpu.host_nats),
                us(p.cpu.native),
                server(p.cpu.native_nats),
                server(p.cpu.store_nats)
            ),
            "",
            None,
        ));
    }
    Ok(())
}

/// The `pipelines` rows.
pub(crate) async fn pipelines(c: &Common, rows: &mut Vec<record::Line>) -> anyhow::Result<()> {
    let s = pipelines::Settings {
        pipelines: c.many_pipelines,
        streams: c.many_streams,
        busy: 10.min(c.many_streams / 3),
        count: 20_000,
        idle_seconds: 20,
    };
    let r = pipelines::run(&c.plugins, &c.guest_plugins, s).await?;
    let what = format!(
        "{} pipelines, {} streams/tenants/entries",
        s.pipelines, s.streams
    );
    rows.push(row(
        &format!("{what}: start to every consumer ready"),
        format!("{:.1} s", r.ready.as_secs_f64()),
        "≤ 10 s",
        Some(r.ready <= std::time::Duration::from_secs(10)),
    ));
    let per = r.per_idle_pipeline();
    rows.push(row(
        &format!("{what}: host RSS per idle pipeline"),
        format!("{:.1} KiB ({} in all)", per as f64 / 1024.0, mib(r.rss_all)),
        "≤ 32 KiB",
        Some(per <= 32 << 10),
    ));
    let cpu = r.host_cpu + r.nats_cpu;
    rows.push(row(
        &format!("{what}: idle CPU, host + nats-server"),
        format!(
            "{:.1} % of a core ({:.1} % + {:.1} %; nats-server RSS {})",
            cpu * 100.0,
            r.host_cpu * 100.0,
            r.nats_cpu * 100.0,
            mib(r.nats_rss)
        ),
        "≤ 5 %",
        Some(cpu <= 0.05),
    ));
    let ratio = r.beside_per_sec / r.alone_per_sec;
    rows.push(row(
        &format!("{what}: {} busy beside the idle / alone", s.busy),
        format!(
            "{ratio:.2} ({:.0} / {:.0} msg/s)",
            r.beside_per_sec, r.alone_per_sec
        ),
        "≥ 0.95",
        Some(ratio >= 0.95),
    ));
    let host_share = r.beside_per_sec / r.alone_same_server_per_sec.max(1e-9);
    rows.push(row(
        &format!(
            "{what}: {} busy beside the idle / alone, idle consumers on the server",
            s.busy
        ),
        format!(
            "{host_share:.2} ({:.0} / {:.0} msg/s)",
            r.beside_per_sec, r.alone_same_server_per_sec
        ),
        "≥ 0.95",
        Some(host_share >= 0.95),
    ));
    for (lang, took) in &r.cold {
        let ms = took.as_secs_f64() * 1e3;
        rows.push(row(
            &format!("{what}: an idle pipeline's first message, {lang}"),
            format!("{ms:.1} ms"),
            "≤ 50 ms",
            Some(ms <= 50.0),
        ));
    }
    Ok(())
}

/// The `latency` rows.
pub(crate) async fn latency(
    env: &Env,
    c: &Common,
    rows: &mut Vec<record::Line>,
) -> anyhow::Result<()> {
    let points = latency::run(
        env,
        latency::Settings {
            count: c.latency_count,
            rates: vec![100, 1000, 5000],
        },
    )
    .await?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    for p in points {
        // A low rate (a batch never fills) and the default settings at
        // 1,000 msg/s; the high rate is reported without a goal.
        let (goal, met) = match p.rate {
            100 => (
                "p50 ≤ 5 ms, p99 ≤ 15 ms",
                Some(ms(p.p50) <= 5.0 && ms(p.p99) <= 15.0),
            ),
            1000 => ("p99 ≤ 2 ms", Some(ms(p.p99) <= 2.0)),
            _ => ("", None),
        };
        rows.push(row(
            &format!(
                "latency publish → plugin → republish at {} msg/s (default batching)",
                p.rate
            ),
            format!(
                "{:.1} ms p50, {:.1} ms p90, {:.1} ms p99",
                ms(p.p50),
                ms(p.p90),
                ms(p.p99)
            ),
            goal,
            met,
        ));
    }
    Ok(())
}

/// The `indexer` rows.
pub(crate) async fn effects(
    env: &Env,
    c: &Common,
    rows: &mut Vec<record::Line>,
) -> anyhow::Result<()> {
    let Some(url) = &c.postgres else {
        rows.push(row(
            "exactly-once effects",
            "skipped (give --postgres URL)".into(),
            "exactly-once ≥ 0.7 of at-least-once",
            None,
        ));
        return Ok(());
    };
    let r = jetplug_bench::effects::run(
        env,
        jetplug_bench::effects::Settings {
            count: c.effects_count,
            batch: c.batch,
            postgres_url: url.clone(),
            repeat: c.repeat,
        },
    )
    .await?;
    rows.push(row(
        "naive plugin (INSERT + UPDATE + publish), at-least-once",
        format!("{:.0} msg/s", r.at_least_once),
        "",
        None,
    ));
    let ratio = r.exactly_once / r.at_least_once.max(1e-9);
    rows.push(row(
        "the same plugin, effects = \"exactly-once\"",
        format!("{:.0} msg/s ({ratio:.2} of at-least-once)", r.exactly_once),
        "≥ 0.7 of at-least-once",
        Some(ratio >= 0.7),
    ));
    Ok(())
}

pub(crate) async fn indexer(
    env: &Env,
    c: &Common,
    rows: &mut Vec<record::Line>,
) -> anyhow::Result<()> {
    match &c.postgres {
        None => rows.push(row(
            "indexer rows/s",
            "skipped (give --postgres URL)".into(),
            "≥ 50000 rows/s",
            None,
        )),
        Some(url) => {
            let r = indexer::run(
                env,
                &indexer::Settings {
                    count: c.index_count,
                    batch: c.index_batch,
                    concurrency: c.index_concurrency,
                    postgres_url: url.clone(),
                    repeat: c.repeat,
                    hostile: c.hostile.0.clone(),
                },
            )
            .await?;
            rows.push(row(
                "postgres-indexer, sustained",
                format!("{:.0} rows/s", r.indexer_rows_per_sec),
                "≥ 50000 rows/s",
                Some(r.indexer_rows_per_sec >= 50_000.0),
            ));
            let of_copy = r.indexer_rows_per_sec / r.copy_rows_per_sec.max(1e-9);
            rows.push(row(
                "plain COPY of the same rows, one transaction (reference)",
                format!(
                    "{:.0} rows/s (indexer: {of_copy:.2} of it)",
                    r.copy_rows_per_sec
                ),
                "indexer ≥ 0.8 of it",
                Some(of_copy >= 0.8),
            ));
            let once = r.exactly_once_rows_per_sec / r.copy_rows_per_sec.max(1e-9);
            let of_plain = r.exactly_once_rows_per_sec / r.indexer_rows_per_sec.max(1e-9);
            rows.push(row(
                "postgres-indexer, effects = \"exactly-once\"",
                format!(
                    "{:.0} rows/s ({once:.2} of the plain COPY, {of_plain:.2} of at-least-once)",
                    r.exactly_once_rows_per_sec
                ),
                "≥ 0.8 of the plain COPY",
                Some(once >= 0.8),
            ));
            let of_batched = r.indexer_rows_per_sec / r.copy_batched_rows_per_sec.max(1e-9);
            rows.push(row(
                &format!(
                    "COPY in the indexer's batches, a transaction each ({})",
                    c.index_batch
                ),
                format!(
                    "{:.0} rows/s (indexer: {of_batched:.2} of it)",
                    r.copy_batched_rows_per_sec
                ),
                "",
                None,
            ));
            let ratio = jetplug_bench::median(r.hostile_ratios.clone());
            let ratios = &r.hostile_ratios;
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let range = if ratios.len() > 1 {
                format!(", rounds {lo:.2}–{hi:.2}")
            } else {
                String::new()
            };
            let what = if c.hostile.0.is_empty() {
                "postgres-indexer, second run alone (noise)".to_owned()
            } else if c.hostile.0.len() < indexer::Hostile::ALL.len() {
                let names: Vec<&str> = c.hostile.0.iter().map(|h| h.name()).collect();
                format!("postgres-indexer beside {}", names.join(", "))
            } else {
                "postgres-indexer beside hostile plugins".to_owned()
            };
            rows.push(row(
                &what,
                format!(
                    "{:.0} rows/s ({ratio:.2} of alone{range}; hostile batches failed: {})",
                    r.beside_hostile_rows_per_sec, r.hostile_failed_batches
                ),
                "≥ 0.90 of alone",
                Some(ratio >= 0.9),
            ));
        }
    }
    Ok(())
}

/// The `aivo` rows.
pub(crate) async fn aivo(
    env: &Env,
    c: &Common,
    rows: &mut Vec<record::Line>,
) -> anyhow::Result<()> {
    let what = "AIVO end to end: published → indexed and counted";
    match &c.postgres {
        None => rows.push(row(what, "skipped (give --postgres URL)".into(), "", None)),
        Some(url) => {
            let r = aivo::run(
                env,
                &aivo::Settings {
                    count: c.count,
                    postgres_url: url.clone(),
                },
            )
            .await?;
            rows.push(row(
                what,
                format!(
                    "{:.0} events/s ({} indexed, {} counted)",
                    r.events_per_sec, r.indexed, r.counted
                ),
                "",
                None,
            ));
        }
    }
    Ok(())
}

/// The `languages` rows.
pub(crate) async fn languages(
    env: &Env,
    c: &Common,
    rows: &mut Vec<record::Line>,
) -> anyhow::Result<()> {
    let r = languages::run(
        env,
        &languages::Settings {
            count: c.count,
            batch: c.batch,
            concurrency: c.concurrency,
            plugins: vec![
                ("Rust", env.plugin("bench_rust.wasm")),
                (
                    "Python",
                    std::path::absolute(c.guest_plugins.join("bench-py.wasm"))?,
                ),
                (
                    "JavaScript",
                    std::path::absolute(c.guest_plugins.join("bench-js.wasm"))?,
                ),
                (
                    "JavaScript (QuickJS)",
                    std::path::absolute(c.guest_plugins.join("bench-js-quickjs.wasm"))?,
                ),
            ],
        },
    )
    .await?;
    for l in r {
        rows.push(row(
            &format!("{} plugin, {}", l.language, l.handler),
            format!(
                "{:.0} msg/s; cold start {:.0} ms compiling / {:.0} ms from the fleet / {:.0} ms cached; {} per instance",
                l.per_sec,
                l.compile.as_secs_f64() * 1e3,
                l.fleet.as_secs_f64() * 1e3,
                l.cached.as_secs_f64() * 1e3,
                l.instance_memory.map(mib).unwrap_or_else(|| "n/a".into()),
            ),
            "",
            None,
        ));
    }
    Ok(())
}

/// The `tenants` rows.
pub(crate) async fn tenants(
    env: &Env,
    c: &Common,
    rows: &mut Vec<record::Line>,
) -> anyhow::Result<()> {
    let r = tenants::run(
        env,
        tenants::Settings {
            count: c.count,
            batch: c.batch,
            concurrency: c.concurrency,
            quota: TENANT_QUOTA,
            repeat: c.repeat,
        },
    )
    .await?;
    rows.push(row(
        "tenant alone (no-op plugin)",
        format!("{:.0} msg/s", r.alone_per_sec),
        "",
        None,
    ));
    let ratio = r.beside_per_sec / r.alone_per_sec.max(1e-9);
    rows.push(row(
        "tenant beside one flooding at 10× its quota, CPU-heavy",
        format!("{:.0} msg/s = {ratio:.2} of alone", r.beside_per_sec),
        "≥ 0.90 of alone",
        Some(ratio >= 0.9),
    ));
    rows.push(row(
        "flooding tenant held to its quota (sustained)",
        format!("{:.0} msg/s (quota {})", r.flood_per_sec, r.quota),
        "≤ quota",
        Some(r.flood_per_sec <= f64::from(r.quota) * 1.1),
    ));
    Ok(())
}

/// The `cluster` rows.
pub(crate) async fn cluster(c: &Common, rows: &mut Vec<record::Line>) -> anyhow::Result<()> {
    match &c.cluster {
        None => rows.push(row(
            "R3 stream on a 3-node cluster",
            "skipped (give --cluster URLS)".into(),
            "",
            None,
        )),
        Some(urls) => {
            let cluster_env = Env::new(urls, &c.plugins).await?;
            let r = cluster::run(
                &cluster_env,
                throughput::Settings {
                    count: c.count,
                    size: c.size,
                    batch: c.batch,
                    concurrency: c.concurrency,
                    repeat: 1,
                },
            )
            .await?;
            rows.push(row(
                "R3 stream: native async-nats consumer",
                format!("{:.0} msg/s", r.native_per_sec),
                "",
                None,
            ));
            rows.push(row(
                "R3 stream: jetplug + no-op plugin, one host",
                format!(
                    "{:.0} msg/s ({:.2} of native)",
                    r.one_host_per_sec,
                    r.one_host_per_sec / r.native_per_sec
                ),
                "",
                None,
            ));
            rows.push(row(
                "R3 stream: jetplug + no-op plugin, two hosts",
                format!(
                    "{:.0} msg/s ({:.2} of one host)",
                    r.two_hosts_per_sec,
                    r.two_hosts_per_sec / r.one_host_per_sec
                ),
                "",
                None,
            ));
        }
    }
    Ok(())
}
