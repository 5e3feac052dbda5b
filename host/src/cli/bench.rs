//! `jetplug bench dispatch`: host-side dispatch overhead and cold start,
//! no servers needed. (The end-to-end comparison with a native consumer and
//! the indexer figures are still to come.)

use std::path::PathBuf;
use std::process::ExitCode;

use crate::bench::dispatch;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Per-message dispatch overhead (reuse vs fresh instance) and cold start.
    Dispatch(DispatchArgs),
}

#[derive(Debug, clap::Args)]
struct DispatchArgs {
    /// A no-op plugin component (default: the test-noop build).
    #[arg(
        long,
        default_value = "target/plugins/wasm32-wasip2/release/test_noop.wasm"
    )]
    plugin: PathBuf,
    /// Batches to time.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    batches: u64,
    /// Messages per batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 256)]
    size: usize,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let What::Dispatch(a) = args.what;
    let bar = indicatif::ProgressBar::new_spinner();
    let r = dispatch::run(
        &a.plugin,
        a.batches as usize,
        a.batch as usize,
        a.size,
        |step| {
            bar.set_message(step.to_owned());
            bar.tick();
        },
    )
    .await?;
    bar.finish_and_clear();
    println!(
        "dispatch overhead, {} batches of {} messages ({} B payload), per message:",
        r.batches, r.batch_size, r.payload_bytes
    );
    println!("  {:<28} {:>10} {:>10}", "", "median µs", "p99 µs");
    println!(
        "  {:<28} {:>10.2} {:>10.2}",
        "instance reuse", r.reuse.median_us, r.reuse.p99_us
    );
    println!(
        "  {:<28} {:>10.2} {:>10.2}",
        "fresh instance per batch", r.fresh.median_us, r.fresh.p99_us
    );
    println!("cold start to first batch:");
    println!(
        "  {:<28} {:>10.1} ms",
        "compile",
        r.cold_start_compile.as_secs_f64() * 1000.0
    );
    println!(
        "  {:<28} {:>10.1} ms",
        "compiled-component cache",
        r.cold_start_cached.as_secs_f64() * 1000.0
    );
    Ok(ExitCode::SUCCESS)
}
