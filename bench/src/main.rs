//! `jetplug-bench`: the numbers behind the README's Performance table, kept
//! out of the product binary (`make bench` runs it).
//!
//! `jetplug-bench` (= `jetplug-bench all`) runs everything against one local
//! nats-server (and PostgreSQL, if `--postgres` is given) and prints one
//! table with the goals; `dispatch`, `throughput` and `indexer` run a part.

use std::path::PathBuf;

use anyhow::Context as _;
use std::process::ExitCode;

use jetplug_bench::{env::Env, indexer, record};

mod rows;

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
    /// The naive plugin (INSERT, UPDATE, publish per message) with
    /// `effects = "exactly-once"` against `"at-least-once"`.
    Effects,
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
    /// What capture costs: the no-op pipeline with `capture` off, failures
    /// (the default) and all.
    Capture,
    /// Payload size sweep (100 B … 1 MiB): native vs jetplug + no-op plugin,
    /// msg/s and MB/s, and the host's peak memory against its bound.
    Payloads,
    /// Many tenants' pipelines on one host (its own nats-server): ready
    /// time, memory per idle pipeline, idle CPU, busy pipelines beside the
    /// idle ones, an idle pipeline's first message.
    Pipelines,
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
    /// The process id of the nats-server at --nats, for the CPU it spends
    /// per message in the payload sweep (`make bench` passes it).
    #[arg(long, global = true, env = "JETPLUG_BENCH_NATS_PID")]
    nats_pid: Option<u32>,
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
    /// Messages per run of the exactly-once effects benchmark.
    #[arg(long, global = true, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    effects_count: u64,
    /// Messages per rate in the latency benchmark.
    #[arg(long, global = true, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=10_000_000))]
    latency_count: u64,
    /// Messages per batch for the indexer (a bulk sink: large batches make
    /// fewer, larger transactions).
    #[arg(long, global = true, default_value_t = 8000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    index_batch: u32,
    /// Workers of the indexer pipeline (its `concurrency`); its
    /// `max_ack_pending` is batch × workers × 2.
    #[arg(long, global = true, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    index_concurrency: u32,
    /// Batches timed by the dispatch benchmark.
    #[arg(long, global = true, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    batches: u64,
    /// Pipelines of the `pipelines` scenario (over `--many-streams`
    /// streams, one tenant and plugin entry each).
    #[arg(long, global = true, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(6..=1_000_000))]
    many_pipelines: u32,
    /// Streams (and tenants, and plugin entries) of the `pipelines` scenario.
    #[arg(long, global = true, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(3..=100_000))]
    many_streams: u32,
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
    // The native consumer runs in this process: it keeps freed memory as
    // the host does, so large payloads are compared alike.
    jetplug::cli::malloc::keep_freed_memory();
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
        rows::dispatch(&c, all, &mut rows).await?;
    }

    let needs_nats = all
        || matches!(
            what,
            What::Throughput
                | What::Latency
                | What::Indexer
                | What::Effects
                | What::Aivo
                | What::Languages
                | What::Tenants
                | What::Capture
                | What::Payloads
        );
    let env = if needs_nats {
        Some(Env::new(&c.nats, &c.plugins).await?)
    } else {
        None
    };
    if let Some(env) = &env
        && (all || matches!(what, What::Throughput))
    {
        rows::throughput(env, &c, &mut rows).await?;
    }

    if let Some(env) = &env
        && (all || matches!(what, What::Latency))
    {
        rows::latency(env, &c, &mut rows).await?;
    }

    if let Some(env) = &env
        && (all || matches!(what, What::Indexer))
    {
        rows::indexer(env, &c, &mut rows).await?;
    }

    if let Some(env) = &env
        && (all || matches!(what, What::Effects))
    {
        rows::effects(env, &c, &mut rows).await?;
    }

    if let Some(env) = &env
        && (all || matches!(what, What::Aivo))
    {
        rows::aivo(env, &c, &mut rows).await?;
    }

    if let Some(env) = &env
        && (all || matches!(what, What::Languages))
    {
        rows::languages(env, &c, &mut rows).await?;
    }

    if let Some(env) = &env
        && (all || matches!(what, What::Tenants))
    {
        rows::tenants(env, &c, &mut rows).await?;
    }

    if let Some(env) = &env
        && (all || matches!(what, What::Capture))
    {
        rows::capture(env, &c, &mut rows).await?;
    }

    if let Some(env) = &env
        && (all || matches!(what, What::Payloads))
    {
        rows::payloads(env, &c, &mut rows).await?;
    }

    if all || matches!(what, What::Cluster) {
        rows::cluster(&c, &mut rows).await?;
    }

    if all || matches!(what, What::Pipelines) {
        rows::pipelines(&c, &mut rows).await?;
    }

    let settings = format!(
        "{} messages of {} B, batch {}, concurrency {} (indexer: {} events, batch {}, concurrency {}; effects: {} messages); medians of {} runs; {} build",
        c.count,
        c.size,
        c.batch,
        c.concurrency,
        c.index_count,
        c.index_batch,
        c.index_concurrency,
        c.effects_count,
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
