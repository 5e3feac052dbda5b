//! `jetplug doctor --config FILE`: checks every pipeline's consumers for
//! what could leave a message neither handled nor dead-lettered, and finds
//! messages that were (see `deadletter::doctor`): consumers made before the
//! spare delivery, advisories still waiting for a host, and — given the
//! plugin's ledger — passed messages with neither a ledger entry nor a dead
//! letter. `--repair` dead-letters those (through the built-in route, to
//! `dlq.<stream>.<pipeline>`), so `dlq redrive` runs them again.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::config::{PipelineConfig, StreamConfig};
use crate::deadletter::doctor::{self, Examination};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file.
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
    /// Only this pipeline.
    #[arg(long)]
    pipeline: Option<String>,
    /// A pipeline's ledger: `PIPELINE=DATABASE:SQL`, a query on a database
    /// of the config returning the origin sequences (int8) the plugin has
    /// handled in the stream named by `$1` (repeatable).
    #[arg(long, value_name = "PIPELINE=DATABASE:SQL", value_parser = ledger)]
    ledger: Vec<Ledger>,
    /// Dead-letter the stranded messages found (reason `stranded: …`), so
    /// that `jetplug dlq redrive --pipeline PIPELINE` runs them again.
    #[arg(long)]
    repair: bool,
}

#[derive(Debug, Clone)]
struct Ledger {
    pipeline: String,
    database: String,
    sql: String,
}

fn ledger(text: &str) -> Result<Ledger, String> {
    let bad = || format!("`{text}` is not PIPELINE=DATABASE:SQL");
    let (pipeline, rest) = text.split_once('=').ok_or_else(bad)?;
    let (database, sql) = rest.split_once(':').ok_or_else(bad)?;
    if pipeline.trim().is_empty() || database.trim().is_empty() || sql.trim().is_empty() {
        return Err(bad());
    }
    Ok(Ledger {
        pipeline: pipeline.trim().to_owned(),
        database: database.trim().to_owned(),
        sql: sql.to_owned(),
    })
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = crate::host::resolve::load(&args.config)?;
    let file = args.config.display();
    for l in &args.ledger {
        anyhow::ensure!(
            config.pipeline(&l.pipeline).is_some(),
            "--ledger {}=…: no pipeline `{}` in {file}",
            l.pipeline,
            l.pipeline
        );
        anyhow::ensure!(
            config.databases.contains_key(&l.database),
            "--ledger {}={}:…: no [database.{}] in {file}",
            l.pipeline,
            l.database,
            l.database
        );
    }
    if let Some(p) = &args.pipeline {
        anyhow::ensure!(
            config.pipeline(p).is_some(),
            "--pipeline {p}: not in {file}"
        );
    }
    let js = super::connect_once(&config.nats).await?;
    let backends = crate::capability::Backends::with_databases(&config.databases)?;
    let mut problems = 0usize;
    for p in &config.pipelines {
        if args.pipeline.as_ref().is_some_and(|n| n != &p.name) {
            continue;
        }
        // An exactly-once pipeline's ledger is the host's own, unless given.
        let own = p
            .effects_database(&config.plugins[&p.plugin])
            .filter(|_| p.effects == crate::config::Effects::ExactlyOnce)
            .map(|db| Ledger {
                pipeline: p.name.clone(),
                database: db.to_owned(),
                sql: format!(
                    "select generate_series(first_seq, last_seq) from \"{}\".\"{}\" where pipeline = '{}' and stream = $1",
                    p.effects_schema,
                    p.effects_ledger_table,
                    p.name.replace('\'', "''")
                ),
            });
        let ledger = args
            .ledger
            .iter()
            .find(|l| l.pipeline == p.name)
            .or(own.as_ref());
        for s in p.streams.iter().filter_map(|s| config.stream(s)) {
            let handled = match ledger {
                Some(l) => Some(handled(l, &backends, &s.name).await?),
                None => None,
            };
            let e = doctor::examine(&js, &config, p, s, handled)
                .await
                .with_context(|| format!("pipeline {}, stream {}", p.name, s.name))?;
            let stranded = report(p, s, &e, &mut problems);
            if !stranded.is_empty() {
                if args.repair {
                    doctor::repair(&js, &config, p, s, stranded).await?;
                    println!(
                        "  repaired: {} dead-lettered; run them again with jetplug dlq redrive --pipeline {}",
                        stranded.len(),
                        p.name
                    );
                } else {
                    problems += 1;
                    println!(
                        "  recover: jetplug doctor --config FILE --pipeline {} --ledger … --repair \
                         (dead-letters them), then jetplug dlq redrive --pipeline {}",
                        p.name, p.name
                    );
                }
            }
        }
    }
    if problems == 0 {
        println!("no problems found");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{problems} problem(s) found");
        Ok(ExitCode::FAILURE)
    }
}

/// The origins the ledger holds for `stream`.
async fn handled(
    l: &Ledger,
    backends: &crate::capability::Backends,
    stream: &str,
) -> anyhow::Result<BTreeSet<u64>> {
    let pool = backends
        .database(&l.database)
        .map_err(|e| anyhow::anyhow!("database `{}`: {e:?}", l.database))?;
    let db = pool
        .get()
        .await
        .with_context(|| format!("connecting to database `{}` for the ledger", l.database))?;
    let rows = db
        .query(l.sql.as_str(), &[&stream])
        .await
        .with_context(|| format!("the ledger query of pipeline `{}`", l.pipeline))?;
    rows.iter()
        .map(|row| {
            let seq: i64 = row
                .try_get(0)
                .context("the ledger query must return int8 sequences")?;
            Ok(u64::try_from(seq).unwrap_or(0))
        })
        .collect()
}

/// Prints what was found; counts the problems other than stranded
/// messages, and returns those.
fn report<'a>(
    p: &PipelineConfig,
    s: &StreamConfig,
    e: &'a Examination,
    problems: &mut usize,
) -> &'a [u64] {
    let head = format!("pipeline {}, stream {} ({})", p.name, s.name, e.consumer);
    if !e.exists {
        println!("{head}: no consumer yet (no host has run this pipeline)");
        return &[];
    }
    println!(
        "{head}: passed up to #{}{}, {} waiting, {} unacknowledged",
        e.passed_up_to,
        if e.in_flight {
            " (its ack floor: messages are in flight)"
        } else {
            ""
        },
        e.waiting,
        e.unacknowledged
    );
    if let Some((has, want)) = e.max_deliver {
        *problems += 1;
        println!(
            "  PROBLEM: the consumer's max_deliver is {has}, not {want} (max_deliver + the spare \
             delivery): it was made by an older jetplug, and a last delivery that ends without \
             a decision leaves it; start a host of this version to update it"
        );
    }
    if e.advisories_waiting > 0 {
        println!(
            "  {} MAX_DELIVERIES advisories wait for a host to dead-letter their messages",
            e.advisories_waiting
        );
    }
    match &e.checked {
        None => {
            println!(
                "  passed messages not checked: give its ledger with --ledger {}=DATABASE:SQL",
                p.name
            );
            &[]
        }
        Some((n, stranded)) if stranded.is_empty() => {
            println!("  {n} passed messages checked: each handled or dead-lettered");
            &[]
        }
        Some((n, stranded)) => {
            println!(
                "  PROBLEM: {} of {n} passed messages were neither handled nor dead-lettered (stranded): {}",
                stranded.len(),
                list(stranded)
            );
            stranded
        }
    }
}

/// `#1, #2, … and N more`.
fn list(seqs: &[u64]) -> String {
    let shown: Vec<String> = seqs.iter().take(20).map(|s| format!("#{s}")).collect();
    let more = seqs.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ledgers_parse_or_say_the_form() {
        let l = super::ledger("indexer=events:select stream_seq from events where stream = $1");
        assert!(
            matches!(&l, Ok(l) if l.pipeline == "indexer" && l.database == "events"
            && l.sql == "select stream_seq from events where stream = $1")
        );
        assert!(super::ledger("indexer:events").is_err());
        assert!(super::ledger("=events:select 1").is_err());
    }
}
