//! `jetplug-bench`: the numbers behind the README's Performance table, kept
//! out of the product binary (`make bench` runs it).
//!
//! `jetplug-bench` (= `jetplug-bench all`) runs everything against one local
//! nats-server (and PostgreSQL, if `--postgres` is given) and prints one
//! table with the goals; `dispatch`, `throughput` and `indexer` run a part.

use std::path::PathBuf;

use anyhow::Context as _;
use std::process::ExitCode;

use jetplug_bench::{
    aivo, cluster, dispatch, env::Env, indexer, languages, latency, record, tenants, throughput,
};

/// Measures jetplug against native consumers; see docs/performance.md.
#[derive(Debug, clap::Parser)]
#[command(name = "jetplug-bench", version)]
pub struct Args {
    #[command(subcommand)]
    what: Option<What>,
    #[command(flatten)]
    common: Common,
}

/// `max_messages_per_second` of the flooding tenant in `bench tenants`.
const TENANT_QUOTA: u32 = 200;

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Everything below, one table (the default).
    All,
    /// Per-message dispatch overhead (reuse vs fresh instance); no servers needed.
    Dispatch,
    /// Native async-nats consumer vs jetplug + no-op plugin; cold start; host RSS.
    Throughput,
    /// Publish → plugin → republish latency (p50/p90/p99) with default batch
    /// settings, at a low and a high rate.
    Latency,
    /// Postgres indexer rows/s vs COPY, alone and beside hostile plugins.
    Indexer,
    /// The AIVO topology end to end: events/s from publish to indexed and
    /// counted, with the example's pipeline settings.
    Aivo,
    /// The same no-op and parse-JSON handlers in Rust, Python and JavaScript:
    /// msg/s through the host, cold start compiling / cached.
    Languages,
    /// On a 3-node cluster (--cluster): native vs jetplug on an R3 stream,
    /// one host vs two.
    Cluster,
    /// Tenant isolation: a tenant's msg/s alone and beside a tenant flooding
    /// at 10× its quota with a CPU-heavy plugin.
    Tenants,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// nats-server to run against (JetStream enabled; streams BENCH* are re-created).
    #[arg(long, global = true, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// A 3-node JetStream cluster for the cluster figures (its URLs,
    /// comma-separated; streams BENCH_R3 are re-created). Without it they are
    /// skipped.
    #[arg(long, global = true)]
    cluster: Option<String>,
    /// PostgreSQL for the indexer figures, e.g. postgres://postgres@127.0.0.1:54321/postgres
    /// (table jetplug_bench_events is dropped and re-created). Without it they are skipped.
    #[arg(long, global = true, env = "JETPLUG_BENCH_POSTGRES")]
    postgres: Option<String>,
    /// Messages per run.
    #[arg(long, global = true, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    count: u64,
    /// Payload size in bytes (throughput and dispatch).
    #[arg(long, global = true, default_value_t = 256)]
    size: usize,
    /// Messages per batch (throughput and dispatch).
    #[arg(long, global = true, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// Workers of the jetplug no-op pipeline (its `concurrency`).
    #[arg(long, global = true, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    concurrency: u32,
    /// Runs of each throughput and indexer measurement (taken in turn); medians are shown.
    #[arg(long, global = true, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    repeat: u32,
    /// Events per indexer run: long enough that the rate is the sustained
    /// one, past the hostile pipelines' first second (when their breakers
    /// have not opened yet).
    #[arg(long, global = true, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    index_count: u64,
    /// Hostile plugins beside the indexer: all, none (a second run alone:
    /// the machine's noise), or a list of loop, membomb, panic, flood.
    #[arg(long, global = true, default_value = "all", value_parser = hostiles)]
    hostile: Hostiles,
    /// Messages per rate in the latency benchmark.
    #[arg(long, global = true, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    latency_count: u64,
    /// Messages per batch for the indexer (a bulk sink: large batches make
    /// fewer, larger transactions).
    #[arg(long, global = true, default_value_t = 8000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    index_batch: u32,
    /// Workers of the indexer pipeline (its `concurrency`); its
    /// `max_ack_pending` is batch × workers × 2.
    #[arg(long, global = true, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
    index_concurrency: u32,
    /// Batches timed by the dispatch benchmark.
    #[arg(long, global = true, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    batches: u64,
    /// Directory of the plugin components.
    #[arg(
        long,
        global = true,
        default_value = "target/plugins/wasm32-wasip2/release"
    )]
    plugins: PathBuf,
    /// Directory of the Python and JavaScript plugin components.
    #[arg(long, global = true, default_value = "target/plugins/guest")]
    guest_plugins: PathBuf,
    /// Also write the results as JSON to this file, and print each figure's
    /// change against the run recorded there before (`make bench` uses
    /// target/bench/latest.json). Default: not written.
    #[arg(long, global = true)]
    record: Option<PathBuf>,
}

/// The value of `--hostile` (a newtype: clap would take a `Vec` for a
/// repeated option).
#[derive(Debug, Clone)]
struct Hostiles(Vec<indexer::Hostile>);

fn hostiles(text: &str) -> Result<Hostiles, String> {
    indexer::Hostile::parse_list(text).map(Hostiles)
}

/// One line of the result table.
fn row(what: &str, result: String, goal: &str, met: Option<bool>) -> record::Line {
    let mark = match met {
        Some(true) => " (met)",
        Some(false) => " (not met)",
        None => "",
    };
    record::Line::new(what.to_owned(), result, format!("{goal}{mark}"))
}

fn main() -> ExitCode {
    use clap::Parser as _;
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("JETPLUG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let what = args.what.unwrap_or(What::All);
    let c = args.common;
    let all = matches!(what, What::All);
    let mut rows = Vec::new();

    if all || matches!(what, What::Dispatch) {
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
    }

    let needs_nats = all
        || matches!(
            what,
            What::Throughput
                | What::Latency
                | What::Indexer
                | What::Aivo
                | What::Languages
                | What::Tenants
        );
    let env = if needs_nats {
        Some(Env::new(&c.nats, &c.plugins).await?)
    } else {
        None
    };
    if let Some(env) = &env
        && (all || matches!(what, What::Throughput))
    {
        let r = throughput::run(
            env,
            throughput::Settings {
                count: c.count,
                size: c.size,
                batch: c.batch,
                concurrency: c.concurrency,
                repeat: c.repeat,
            },
        )
        .await?;
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
            "≥ 0.95",
            Some(ratio >= 0.95),
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
    }
    if let Some(env) = &env
        && (all || matches!(what, What::Latency))
    {
        let points = latency::run(
            env,
            latency::Settings {
                count: c.latency_count,
                rates: [100, 5000],
            },
        )
        .await?;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        for p in points {
            let low = p.rate <= 100;
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
                if low {
                    "p50 ≤ 5 ms, p99 ≤ 15 ms"
                } else {
                    ""
                },
                low.then(|| ms(p.p50) <= 5.0 && ms(p.p99) <= 15.0),
            ));
        }
    }
    if let Some(env) = &env
        && (all || matches!(what, What::Indexer))
    {
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
                    "indexer ≥ 0.6 of it",
                    Some(of_copy >= 0.6),
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
    }

    if let Some(env) = &env
        && (all || matches!(what, What::Aivo))
    {
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
    }

    if let Some(env) = &env
        && (all || matches!(what, What::Languages))
    {
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
                ],
            },
        )
        .await?;
        for l in r {
            rows.push(row(
                &format!("{} plugin, {}", l.language, l.handler),
                format!(
                    "{:.0} msg/s; cold start {:.0} ms compiling / {:.0} ms cached; {} per instance",
                    l.per_sec,
                    l.compile.as_secs_f64() * 1e3,
                    l.cached.as_secs_f64() * 1e3,
                    l.instance_rss.map(mib).unwrap_or_else(|| "n/a".into()),
                ),
                "",
                None,
            ));
        }
    }

    if let Some(env) = &env
        && (all || matches!(what, What::Tenants))
    {
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
    }

    if all || matches!(what, What::Cluster) {
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
    }

    let settings = format!(
        "{} messages of {} B, batch {}, concurrency {} (indexer: {} events, batch {}, concurrency {}); medians of {} runs; {} build",
        c.count,
        c.size,
        c.batch,
        c.concurrency,
        c.index_count,
        c.index_batch,
        c.index_concurrency,
        c.repeat,
        if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        },
    );
    let run = record::Run {
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        machine: machine(),
        settings,
        lines: rows,
    };
    println!("jetplug-bench: {}; {}", run.settings, run.machine);
    print_table(&run.lines);
    if let Some(path) = &c.record {
        let before = record::load(path).context("--record")?;
        record::save(path, &run).context("--record")?;
        println!("recorded in {}", path.display());
        if let Some(before) = before {
            print_changes(&before, &run);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(lines: &[record::Line]) {
    let w = lines
        .iter()
        .map(|r| r.what.chars().count())
        .max()
        .unwrap_or(0);
    let rw = lines
        .iter()
        .map(|r| r.result.chars().count())
        .max()
        .unwrap_or(0);
    for r in lines {
        println!("  {:<w$}  {:<rw$}  {}", r.what, r.result, r.goal);
    }
}

/// The change of every figure against the previous recorded run.
fn print_changes(before: &record::Run, now: &record::Run) {
    let changes = record::changes(before, now);
    if changes.is_empty() {
        println!(
            "no figure in common with the previous run ({})",
            before.date
        );
        return;
    }
    println!(
        "change against the previous run ({}, {}):",
        before.date, before.machine
    );
    let w = changes
        .iter()
        .map(|c| c.what.chars().count())
        .max()
        .unwrap_or(0);
    for c in changes {
        let pct = c
            .percent
            .map(|p| format!(" ({p:+.1} %)"))
            .unwrap_or_default();
        println!("  {:<w$}  {} → {}{pct}", c.what, c.before, c.now);
    }
}

/// Bytes in MiB, one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Cores and CPU model, for the record.
fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}
