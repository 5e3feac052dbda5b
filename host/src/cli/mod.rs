//! The command-line interface. Each subcommand lives in its own module; this
//! one parses arguments, sets up logging and maps errors to exit codes.

mod canary;
mod capture;
mod check;
mod dlq;
mod doctor;
pub mod malloc;
mod new;
mod offline;
mod plugin;
mod publish;
mod replay;
mod run;
mod run_plugin;
mod streams;
mod test;
mod wit;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for a bad invocation, an unloadable plugin or unreadable input.
pub const EXIT_ERROR: u8 = 1;
/// Exit code when the plugin loaded but at least one batch failed.
pub const EXIT_BATCH_FAILED: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "jetplug",
    version,
    about = "Run sandboxed WebAssembly plugins on NATS JetStream streams"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `jetplug=debug,plugin=trace`
    /// [default: `info` for `run`, `warn` otherwise].
    #[arg(long, global = true, env = "JETPLUG_LOG")]
    log: Option<String>,
    /// Log format: `text` (colours only on a terminal) or `json` (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Same as `--log-format json`.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume every configured pipeline until SIGINT/SIGTERM.
    Run(run::Args),
    /// Validate a configuration and load its plugins, without connecting.
    Check(check::Args),
    /// Look at the captures of failing plugin calls, pull one, or make it a fixture.
    Capture(capture::Args),
    /// Find messages a pipeline's consumer passed without handling or dead-lettering them.
    Doctor(doctor::Args),
    /// Show or apply the stream plan (create missing, reconcile drifted); purge or delete a stream.
    Streams(streams::Args),
    /// Look at dead letters, or send them back to their original subjects.
    Dlq(dlq::Args),
    /// Create a plugin project (Rust, Python or JavaScript) that builds on its own.
    New(new::Args),
    /// Ask a running host about its plugins.
    Plugin(plugin::Args),
    /// Publish sample events (AIVO subjects by default, some malformed).
    Publish(publish::Args),
    /// Run a plugin over a pipeline's stream history (ephemeral consumer).
    Replay(replay::Args),
    /// Run a plugin offline over messages from a JSONL file and print its decisions.
    RunPlugin(run_plugin::Args),
    /// Check a plugin's answers against the expectations in fixture files (for CI).
    Test(test::Args),
    /// Print (or write with --out) the WIT package plugins are built against.
    Wit(wit::Args),
}

/// The command-line definition (every subcommand and flag), e.g. for
/// documentation checks.
pub fn definition() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Parses the command line, runs the command and returns the exit code.
pub fn main() -> ExitCode {
    // Panic messages are masked like everything else the host prints.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{}", crate::redact::text(&info.to_string()));
    }));
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    };
    let json = cli.log_json || cli.log_format == LogFormat::Json;
    // `run` reads its configuration first: its [telemetry] section decides
    // whether spans are exported.
    let mut config = None;
    if let Command::Run(args) = &cli.command {
        match run::load(args) {
            Ok(c) => config = Some(c),
            Err(e) => {
                eprintln!("error: {}", error_text(&e));
                return ExitCode::from(EXIT_ERROR);
            }
        }
    }
    let telemetry = match init_tracing(
        cli.log.as_deref().unwrap_or(default_level),
        json,
        config.as_ref().map(|c| &c.telemetry),
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => match config {
                Some(config) => run::run(args, config).await,
                None => Ok(ExitCode::from(EXIT_ERROR)),
            },
            Command::Check(args) => check::run(args).await,
            Command::Doctor(args) => doctor::run(args).await,
            Command::Streams(args) => streams::run(args).await,
            Command::Dlq(args) => dlq::run(args).await,
            Command::Capture(args) => capture::run(args).await,
            Command::New(args) => new::run(args).await,
            Command::Plugin(args) => plugin::run(args).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Replay(args) => replay::run(args).await,
            Command::RunPlugin(args) => run_plugin::run(args).await,
            Command::Test(args) => test::run(args).await,
            Command::Wit(args) => wit::run(args).await,
        }
    });
    drop(runtime);
    if let Some(t) = telemetry {
        t.shutdown(std::time::Duration::from_secs(5));
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// An error and its causes on one line, redacted. A cause whose text its
/// parent already shows (errors that print their source in their own
/// message) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    crate::redact::text(&out).into_owned()
}

/// Connects for a one-shot command: a few attempts (not forever, unless the
/// config sets a number), and a JetStream context with the request timeout.
pub(crate) async fn connect_once(
    nats: &crate::config::NatsConfig,
) -> anyhow::Result<async_nats::jetstream::Context> {
    let mut nats = nats.clone();
    if nats.connect_attempts == 0 {
        nats.connect_attempts = 3;
    }
    let client = crate::jetstream::connect(&nats, &crate::jetstream::Health::new()).await?;
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(nats.request_timeout.0);
    Ok(js)
}

/// Logs to stderr (filtered by `filter`), and spans to an OTLP collector
/// when `telemetry` has an endpoint.
fn init_tracing(
    filter: &str,
    json: bool,
    telemetry: Option<&crate::config::TelemetryConfig>,
) -> Result<Option<crate::telemetry::Telemetry>, crate::telemetry::TelemetryError> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("warning: invalid --log filter `{filter}` ({e}); using `warn`");
        tracing_subscriber::EnvFilter::new("warn")
    });
    // The spans made for trace export stay out of the log lines.
    let filter = match format!("{}=off", crate::telemetry::TARGET).parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    // Colour codes only for a person at a terminal, not in files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Secrets are masked in every line, whoever logged it.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(|| crate::redact::Writer(std::io::stderr()));
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    let (otel, telemetry) = match telemetry {
        Some(config) => match crate::telemetry::layer(config)? {
            Some((layer, t)) => (Some(layer), Some(t)),
            None => (None, None),
        },
        None => (None, None),
    };
    registry.with(otel).init();
    Ok(telemetry)
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(crate) fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{pos}}/{{len}} msgs {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on {addr}: {source}")]
    struct Listen {
        addr: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let e = anyhow::Error::new(Listen {
            addr: "127.0.0.1:9090",
            source: io,
        })
        .context("cannot run jetplug.toml");
        assert_eq!(
            super::error_text(&e),
            "cannot run jetplug.toml: cannot listen on 127.0.0.1:9090: Address already in use"
        );
    }
}
