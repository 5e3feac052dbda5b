//! `jetplug plugin deploy … --canary`, `plugin promote|abort|canary`, and
//! the canary events in `plugin history`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;

use crate::hotswap::fleet::Fleet;
use crate::hotswap::rollout::{Ended, Outcome, Rollout, Rules, ShadowRules};
use crate::hotswap::short;
use crate::units;

/// How a canary is run and judged (`plugin deploy --canary`).
#[derive(Debug, Clone, clap::Args)]
pub struct CanaryArgs {
    /// Send PERCENT of the messages (by ordering key, else by message) to
    /// the new version, with real effects, and promote or roll it back
    /// automatically on how it does against the running version.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=99))]
    pub canary: Option<u32>,
    /// Judge once the new version handled this many messages.
    #[arg(long, default_value_t = 1000, requires = "canary")]
    pub decide_after_messages: u64,
    /// … or this long after the start, on what was seen by then.
    #[arg(long, default_value = "10m", value_parser = units::parse_duration, requires = "canary")]
    pub decide_after: Duration,
    /// How much higher its term, retry or trap/timeout rate may be than
    /// the running version's (absolute: 0.02 = 2 points).
    #[arg(long, default_value_t = 0.02, requires = "canary")]
    pub max_rate_increase: f64,
    /// How much slower its p99 handling time per message may be (a ratio;
    /// differences under 2 ms pass).
    #[arg(long, default_value_t = 1.5, requires = "canary")]
    pub max_p99_ratio: f64,
}

/// How a shadow runs (`plugin deploy --shadow`).
#[derive(Debug, Clone, clap::Args)]
pub struct ShadowArgs {
    /// Run the new version beside the running one on the same messages,
    /// its effects held back (SQL rolled back, publishes and KV writes
    /// recorded, not made), and compare the two.
    #[arg(long, conflicts_with = "canary")]
    pub shadow: bool,
    /// Share of the batches shadowed, in percent.
    #[arg(long, value_name = "PERCENT", default_value_t = 100, requires = "shadow",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub sample: u32,
    /// How long the shadow runs.
    #[arg(long = "for", value_name = "DURATION", default_value = "10m",
          value_parser = units::parse_duration, requires = "shadow")]
    pub for_: Duration,
    /// Promote the new version when the window ends with at least this
    /// agreement, in percent (e.g. 99.5); without, it only reports.
    #[arg(long, value_name = "AGREE%", value_parser = percent, requires = "shadow")]
    pub promote_if: Option<f64>,
}

fn percent(text: &str) -> Result<f64, String> {
    let n: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("`{text}` is not a percentage (e.g. 99.5)"))?;
    if (0.0..=100.0).contains(&n) {
        Ok(n / 100.0)
    } else {
        Err(format!("{n} is not between 0 and 100"))
    }
}

/// Starts a shadow of `bytes` beside `name`'s running version.
pub async fn start_shadow(
    fleet: &Fleet,
    name: &str,
    bytes: &[u8],
    signature: Option<crate::hotswap::signing::Signature>,
    args: &ShadowArgs,
) -> anyhow::Result<ExitCode> {
    let rules = ShadowRules {
        sample: args.sample,
        for_secs: args.for_.as_secs().max(1),
        promote_if: args.promote_if,
    };
    let r = fleet.start_shadow(name, bytes, signature, rules).await?;
    println!(
        "shadow {} of plugin `{name}` started: version {} runs beside the running one on {} % of the batches, its effects held back",
        r.id,
        short(r.candidate.version()),
        args.sample
    );
    let end = match args.promote_if {
        Some(p) => format!("then promoted if at least {:.2} % agree", p * 100.0),
        None => "then it ends (promote by hand with `jetplug plugin promote`)".to_owned(),
    };
    println!(
        "runs for {}, {end}; its report: `jetplug plugin shadow {name}`",
        humantime::format_duration(args.for_)
    );
    Ok(ExitCode::SUCCESS)
}

/// `plugin shadow NAME`: the current (or last) shadow's report, merged
/// over every host.
pub async fn show_shadow(fleet: &Fleet, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let Some((r, _)) = fleet.rollout(name).await? else {
        println!("plugin `{name}` has had no shadow");
        return Ok(ExitCode::SUCCESS);
    };
    let Some(rules) = &r.shadow else {
        println!("plugin `{name}`'s last rollout was a canary: `jetplug plugin canary {name}`");
        return Ok(ExitCode::SUCCESS);
    };
    let m = crate::hotswap::shadow::merged(fleet, name, &r.id).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"rollout": r, "report": m}))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "shadow {} of plugin `{name}`: version {} on {} % of the batches, started {}",
        r.id,
        short(r.candidate.version()),
        rules.sample,
        r.started_at
    );
    match &r.ended {
        None => println!(
            "  running for {}",
            humantime::format_duration(Duration::from_secs(rules.for_secs))
        ),
        Some(e) => println!(
            "  {} at {} by {}: {}",
            e.outcome.as_str(),
            e.at,
            e.by,
            e.reason
        ),
    }
    println!(
        "  {} messages compared in {} batches on {} host(s); agreement {:.2} %",
        m.messages,
        m.batches,
        m.hosts.len(),
        m.agreement() * 100.0
    );
    for (kind, n) in &m.disagreements {
        println!("  disagreements, {kind}: {n}");
    }
    for ex in &m.examples {
        println!("  example ({}, at {}):", ex.kind, ex.at);
        println!("    live:   {}", ex.live);
        println!("    shadow: {}", ex.shadow);
    }
    for h in &m.versions {
        for (who, v) in [("live", &h.summary.live), ("shadow", &h.summary.shadow)] {
            println!(
                "  {} {who:<6} traps/timeouts {:.3}, p99 {:.1} ms, peak memory {} KiB",
                h.host,
                v.figures.failure_rate,
                f64::from(v.figures.p99_us) / 1000.0,
                v.peak_memory / 1024
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

impl CanaryArgs {
    fn rules(&self) -> anyhow::Result<Rules> {
        if !(0.0..=1.0).contains(&self.max_rate_increase) {
            bail!(
                "--max-rate-increase {} is not a share between 0 and 1",
                self.max_rate_increase
            );
        }
        if self.max_p99_ratio < 1.0 || !self.max_p99_ratio.is_finite() {
            bail!("--max-p99-ratio {} must be 1 or more", self.max_p99_ratio);
        }
        Ok(Rules {
            decide_after_messages: self.decide_after_messages.max(1),
            decide_after_secs: self.decide_after.as_secs().max(1),
            max_rate_increase: self.max_rate_increase,
            max_p99_ratio: self.max_p99_ratio,
        })
    }
}

/// Starts a canary of `bytes` as `name`'s candidate.
pub async fn start(
    fleet: &Fleet,
    name: &str,
    bytes: &[u8],
    signature: Option<crate::hotswap::signing::Signature>,
    args: &CanaryArgs,
    percent: u32,
) -> anyhow::Result<ExitCode> {
    let r = fleet
        .start_canary(name, bytes, signature, percent, args.rules()?)
        .await?;
    println!(
        "canary {} of plugin `{name}` started: version {} takes {} % of the messages",
        r.id,
        short(r.candidate.version()),
        r.percent
    );
    println!(
        "judged after {} of its messages or {} ({}); follow it with `jetplug plugin canary {name}`",
        r.rules.decide_after_messages,
        humantime::format_duration(Duration::from_secs(r.rules.decide_after_secs)),
        describe_rules(&r.rules)
    );
    Ok(ExitCode::SUCCESS)
}

fn describe_rules(r: &Rules) -> String {
    format!(
        "rates may rise by {}, p99 by ×{}",
        r.max_rate_increase, r.max_p99_ratio
    )
}

/// `plugin promote` / `plugin abort`: ends the running canary by hand.
pub async fn end(fleet: &Fleet, name: &str, outcome: Outcome) -> anyhow::Result<ExitCode> {
    let ended = Ended {
        outcome,
        at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        reason: format!("{} by hand", outcome.as_str()),
        by: "cli".into(),
        live: None,
        candidate: None,
    };
    let r = fleet.end_canary(name, None, ended).await?;
    match outcome {
        Outcome::Promoted => println!(
            "canary {} promoted: plugin `{name}` runs version {} on every host within seconds",
            r.id,
            short(r.candidate.version())
        ),
        _ => println!(
            "canary {} aborted: every message of plugin `{name}` goes to the running version again",
            r.id
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugin canary NAME`: the current (or last) canary's record.
pub async fn show(fleet: &Fleet, name: &str) -> anyhow::Result<ExitCode> {
    let Some((r, _)) = fleet.rollout(name).await? else {
        println!("plugin `{name}` has had no canary");
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "canary {} of plugin `{name}`: version {} on {} % of the messages, started {}",
        r.id,
        short(r.candidate.version()),
        r.percent,
        r.started_at
    );
    println!(
        "  judged after {} messages or {}; {}",
        r.rules.decide_after_messages,
        humantime::format_duration(Duration::from_secs(r.rules.decide_after_secs)),
        describe_rules(&r.rules)
    );
    match &r.ended {
        None => println!(
            "  running (each host's figures: `jetplug plugin list`, the admin API, metrics jetplug_canary_*)"
        ),
        Some(e) => {
            println!(
                "  {} at {} by {}: {}",
                e.outcome.as_str(),
                e.at,
                e.by,
                e.reason
            );
            for (who, f) in [("live", &e.live), ("candidate", &e.candidate)] {
                if let Some(f) = f {
                    println!(
                        "  {who:<9} {} messages, term {:.3}, retry {:.3}, traps/timeouts {:.3}, p99 {:.1} ms",
                        f.messages,
                        f.term_rate,
                        f.retry_rate,
                        f.failure_rate,
                        f64::from(f.p99_us) / 1000.0
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The canary events of `name`, as `(time, line)` for `plugin history`.
pub async fn events(fleet: &Fleet, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    Ok(fleet
        .rollout_history(name)
        .await?
        .iter()
        .map(event)
        .collect())
}

fn event(r: &Rollout) -> (String, String) {
    let what = match &r.shadow {
        Some(s) => format!(
            "shadow {} of version {} on {} % of the batches",
            r.id,
            short(r.candidate.version()),
            s.sample
        ),
        None => format!(
            "canary {} of version {} on {} %",
            r.id,
            short(r.candidate.version()),
            r.percent
        ),
    };
    match &r.ended {
        None => (r.started_at.clone(), format!("{what}: started")),
        Some(e) => (
            e.at.clone(),
            format!("{what}: {} by {}: {}", e.outcome.as_str(), e.by, e.reason),
        ),
    }
}
