//! `jetplug doctor --config FILE`: checks every pipeline's consumers for
//! what could leave a message neither handled nor dead-lettered, and finds
//! messages that were (see `deadletter::doctor`): consumers made before the
//! spare delivery, advisories still waiting for a host, and — given the
//! plugin's ledger — passed messages with neither a ledger entry nor a dead
//! letter. `--repair` dead-letters those (through the built-in route, to
//! `dlq.<stream>.<pipeline>`), so `dlq redrive` runs them again.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use crate::config::{Config, PipelineConfig, StreamConfig};
use crate::deadletter::doctor::{self, Accounted, Passed};
use crate::deadletter::redrive::Facts;
use crate::deadletter::{DeadLetter, Route};
use crate::jetstream::consumer::{filters_for, server_max_deliver};

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

/// How long a reader waits for the next message before taking the stream as read.
const READ_IDLE: Duration = Duration::from_secs(2);

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
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
        for s in p.streams.iter().filter_map(|s| config.stream(s)) {
            let ledger = args.ledger.iter().find(|l| l.pipeline == p.name);
            let check = Check {
                js: &js,
                config: &config,
                p,
                s,
            };
            problems += check
                .run(ledger, &backends, args.repair)
                .await
                .with_context(|| format!("pipeline {}, stream {}", p.name, s.name))?;
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

struct Check<'a> {
    js: &'a jetstream::Context,
    config: &'a Config,
    p: &'a PipelineConfig,
    s: &'a StreamConfig,
}

impl Check<'_> {
    /// Checks one consumer; the number of problems found (left unrepaired).
    async fn run(
        &self,
        ledger: Option<&Ledger>,
        backends: &crate::capability::Backends,
        repair: bool,
    ) -> anyhow::Result<usize> {
        let (p, s) = (self.p, self.s);
        let name = p.consumer_name(&s.name);
        let head = format!("pipeline {}, stream {} ({name})", p.name, s.name);
        let stream = self.js.get_stream(&s.name).await?;
        let info = match stream.consumer_info(&name).await {
            Ok(i) => i,
            Err(_) => {
                println!("{head}: no consumer yet (no host has run this pipeline)");
                return Ok(0);
            }
        };
        let mut problems = 0;
        // What it passed: up to its ack floor, or — with nothing in flight
        // (a message given up at max_deliver does not move the floor) —
        // everything it delivered.
        let quiet = info.num_ack_pending == 0;
        let floor = if quiet {
            info.delivered.stream_sequence
        } else {
            info.ack_floor.stream_sequence
        };
        println!(
            "{head}: passed up to #{floor}{}, {} waiting, {} unacknowledged",
            if quiet {
                ""
            } else {
                " (its ack floor: messages are in flight)"
            },
            info.num_pending,
            info.num_ack_pending
        );
        if info.config.max_deliver != server_max_deliver(p.max_deliver) {
            problems += 1;
            println!(
                "  PROBLEM: the consumer's max_deliver is {}, not {} (max_deliver + the spare \
                 delivery): it was made by an older jetplug, and a last delivery that ends without \
                 a decision leaves it; start a host of this version to update it",
                info.config.max_deliver,
                server_max_deliver(p.max_deliver)
            );
        }
        if let Some(kept) = self.config.advisory_stream()
            && let Ok(k) = self.js.get_stream(&kept.name).await
            && let Ok(a) = k.consumer_info(format!("{name}-advisories")).await
        {
            let waiting = a.num_pending + a.num_ack_pending as u64;
            if waiting > 0 {
                println!(
                    "  {waiting} MAX_DELIVERIES advisories wait for a host to dead-letter their messages"
                );
            }
        }
        let Some(ledger) = ledger else {
            println!(
                "  passed messages not checked: give its ledger with --ledger {}=DATABASE:SQL",
                p.name
            );
            return Ok(problems);
        };
        let first = stream.cached_info().state.first_sequence.max(1);
        if floor < first {
            println!("  nothing passed is still in the stream");
            return Ok(problems);
        }
        let mut accounted = Accounted::default();
        let pool = backends
            .database(&ledger.database)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let db = pool
            .get()
            .await
            .context("connecting to the ledger's database")?;
        for row in db
            .query(ledger.sql.as_str(), &[&s.name])
            .await
            .context("the ledger query")?
        {
            let seq: i64 = row
                .try_get(0)
                .context("the ledger query must return int8 sequences")?;
            accounted.handled.insert(u64::try_from(seq).unwrap_or(0));
        }
        for (dlq, filters) in self.dead_letter_streams() {
            for m in read(self.js, &dlq, filters, 1, u64::MAX).await? {
                let f = Facts::from_headers(&m.headers);
                if f.pipeline != p.name {
                    continue;
                }
                if f.stream == s.name {
                    accounted.dead_lettered.insert(f.sequence);
                }
                if let Some(o) = f.origin.filter(|o| o.stream == s.name) {
                    accounted.dead_lettered.insert(o.sequence);
                }
            }
        }
        let passed = read(self.js, &s.name, filters_for(p, s), first, floor).await?;
        let checked = passed.len();
        let stranded = doctor::stranded(&s.name, &p.name, passed, &accounted);
        if stranded.is_empty() {
            println!("  {checked} passed messages checked: each handled or dead-lettered");
            return Ok(problems);
        }
        println!(
            "  PROBLEM: {} of {checked} passed messages were neither handled nor dead-lettered (stranded): {}",
            stranded.len(),
            list(&stranded)
        );
        if !repair {
            println!(
                "  recover: jetplug doctor --config FILE --pipeline {} --ledger … --repair \
                 (dead-letters them), then jetplug dlq redrive --pipeline {}",
                p.name, p.name
            );
            return Ok(problems + 1);
        }
        self.repair(&stranded).await?;
        println!(
            "  repaired: {} dead-lettered; run them again with jetplug dlq redrive --pipeline {}",
            stranded.len(),
            p.name
        );
        Ok(problems)
    }

    /// Where the pipeline's dead letters can be, with the subjects to read:
    /// the stream capturing the built-in route's subject, or those a
    /// dead-letter plugin's publish grants reach.
    fn dead_letter_streams(&self) -> Vec<(String, Vec<String>)> {
        let streams = &self.config.streams;
        match &self.p.dead_letter {
            None => {
                let subject = self.p.dead_letter_subject(&self.s.name);
                streams
                    .iter()
                    .filter(|d| d.captures(&subject))
                    .map(|d| (d.name.clone(), vec![subject.clone()]))
                    .collect()
            }
            Some(plugin) => {
                let grants = self
                    .config
                    .plugins
                    .get(plugin)
                    .map(|pl| pl.grants.publish.clone())
                    .unwrap_or_default();
                streams
                    .iter()
                    .filter(|d| {
                        d.subjects
                            .iter()
                            .any(|ds| grants.iter().any(|g| crate::subject::overlaps(g, ds)))
                    })
                    .map(|d| (d.name.clone(), Vec::new()))
                    .collect()
            }
        }
    }

    /// Dead-letters `seqs` through the built-in route.
    async fn repair(&self, seqs: &[u64]) -> anyhow::Result<()> {
        let (p, s) = (self.p, self.s);
        let client = self.js.client();
        let route = Route::Builtin {
            js: self.js.clone(),
        };
        let tenant = self
            .config
            .plugins
            .get(&p.plugin)
            .map(|pl| pl.tenant.clone())
            .unwrap_or_default();
        for &seq in seqs {
            let raw = crate::jetstream::raw_get::get(&client, &s.name, seq).await?;
            let msg = crate::jetstream::convert::from_raw(
                &raw,
                &s.name,
                &tenant,
                &p.consumer_name(&s.name),
                0,
            );
            let dl = DeadLetter::from_message(
                &p.name,
                &msg,
                "stranded: passed by its consumer without a decision or a dead letter (found by jetplug doctor)"
                    .into(),
            );
            route
                .send(&dl)
                .await
                .with_context(|| format!("dead-lettering {} #{seq}", s.name))?;
        }
        Ok(())
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

/// The headers of `stream`'s messages from `from` to `to` (inclusive)
/// under `filters`, read by a light ephemeral consumer.
async fn read(
    js: &jetstream::Context,
    stream: &str,
    filters: Vec<String>,
    from: u64,
    to: u64,
) -> anyhow::Result<Vec<Passed>> {
    let reader = consumer::pull::Config {
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: from,
        },
        ack_policy: consumer::AckPolicy::None,
        headers_only: true,
        filter_subjects: filters,
        inactive_threshold: Duration::from_secs(30),
        num_replicas: 1,
        memory_storage: true,
        ..Default::default()
    };
    let c = js.get_stream(stream).await?.create_consumer(reader).await?;
    if c.cached_info().num_pending == 0 {
        return Ok(Vec::new());
    }
    let mut messages = c.messages().await?;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(READ_IDLE, messages.next()).await {
        let m = m.map_err(|e| anyhow::anyhow!("reading {stream}: {e}"))?;
        let info = m.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq > to {
            break;
        }
        let headers = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(k, vs)| {
                vs.iter()
                    .map(move |v| (k.to_string(), v.as_str().to_owned()))
            })
            .collect();
        out.push(Passed {
            sequence: seq,
            headers,
        });
        if pending == 0 || seq == to {
            break;
        }
    }
    Ok(out)
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
