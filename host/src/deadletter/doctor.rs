//! Finding stranded messages: ones a pipeline's consumer has passed (below
//! its ack floor) that were neither handled nor dead-lettered. JetStream
//! does not say how a message left: an ack, a terminate and a give-up at
//! `max_deliver` all move the ack floor. What the pipeline left behind
//! does: the plugin's ledger (the origins it recorded, e.g. the indexer's
//! rows) and the dead letters it stored. A passed message whose origin is
//! in neither was stranded — by a host of a version before the spare
//! delivery, an advisory no host kept, or someone acking by hand.
//!
//! [`examine`] reads a consumer, its stream and its dead letters (the
//! caller reads the ledger, a query on the plugin's database); [`stranded`]
//! is the pure decision; [`repair`] dead-letters what was found.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use super::redrive::Facts;
use super::{DeadLetter, Origin, Route, addressed_to};
use crate::config::{Config, PipelineConfig, StreamConfig};
use crate::jetstream::consumer::server_max_deliver;

/// Reading JetStream failed.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("{what}: {reason}")]
    Nats { what: String, reason: String },
    #[error("dead-lettering {stream} #{seq}: {reason}")]
    Repair {
        stream: String,
        seq: u64,
        reason: String,
    },
}

fn nats(what: impl Into<String>) -> impl FnOnce(String) -> DoctorError {
    let what = what.into();
    move |reason| DoctorError::Nats { what, reason }
}

/// What [`examine`] found for one pipeline consumer.
#[derive(Debug, Default)]
pub struct Examination {
    pub consumer: String,
    /// False: no host has made the consumer yet (nothing else is filled in).
    pub exists: bool,
    /// The last sequence it surely passed: everything it delivered when
    /// nothing is in flight (a message given up at `max_deliver` does not
    /// move the ack floor), else its ack floor.
    pub passed_up_to: u64,
    pub in_flight: bool,
    pub waiting: u64,
    pub unacknowledged: u64,
    /// `(has, should have)` when the consumer lacks the spare delivery.
    pub max_deliver: Option<(i64, i64)>,
    /// MAX_DELIVERIES advisories kept and not yet handled by a host.
    pub advisories_waiting: u64,
    /// With a ledger: how many passed messages were checked, and the
    /// stranded ones among them.
    pub checked: Option<(usize, Vec<u64>)>,
}

/// Examines pipeline `p`'s consumer on stream `s`; `handled` is what the
/// plugin's ledger holds (origins in `s`), if known.
pub async fn examine(
    js: &jetstream::Context,
    config: &Config,
    p: &PipelineConfig,
    s: &StreamConfig,
    handled: Option<BTreeSet<u64>>,
) -> Result<Examination, DoctorError> {
    let name = p.consumer_name(&s.name);
    let mut out = Examination {
        consumer: name.clone(),
        ..Examination::default()
    };
    let stream = js
        .get_stream(&s.name)
        .await
        .map_err(|e| nats(format!("stream {}", s.name))(e.to_string()))?;
    let Ok(info) = stream.consumer_info(&name).await else {
        return Ok(out);
    };
    out.exists = true;
    out.in_flight = info.num_ack_pending > 0;
    out.passed_up_to = if out.in_flight {
        info.ack_floor.stream_sequence
    } else {
        info.delivered.stream_sequence
    };
    out.waiting = info.num_pending;
    out.unacknowledged = info.num_ack_pending as u64;
    let want = server_max_deliver(p.max_deliver);
    if info.config.max_deliver != want {
        out.max_deliver = Some((info.config.max_deliver, want));
    }
    if let Some(kept) = config.advisory_stream()
        && let Ok(k) = js.get_stream(&kept.name).await
    {
        // Its advisory durable is made when the first advisory is read:
        // without one, every kept advisory of the consumer is waiting.
        out.advisories_waiting = match k.consumer_info(p.advisory_consumer_name(&s.name)).await {
            Ok(a) => a.num_pending + a.num_ack_pending as u64,
            Err(_) => {
                let subject = super::advisory::subject(&s.name, &p.consumer_name(&s.name));
                match k.info_with_subjects(&subject).await {
                    Ok(mut subjects) => {
                        let mut n = 0;
                        while let Some(Ok((_, count))) =
                            futures::StreamExt::next(&mut subjects).await
                        {
                            n += count as u64;
                        }
                        n
                    }
                    Err(_) => 0,
                }
            }
        };
    }
    let Some(handled) = handled else {
        return Ok(out);
    };
    let first = stream.cached_info().state.first_sequence.max(1);
    if out.passed_up_to < first {
        out.checked = Some((0, Vec::new()));
        return Ok(out);
    }
    let mut accounted = Accounted {
        handled,
        dead_lettered: BTreeSet::new(),
    };
    for (dlq, filters) in dead_letter_streams(config, p, s) {
        for m in read(js, &dlq, filters, 1, u64::MAX).await? {
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
    let passed = read(js, &s.name, p.filters_for(s), first, out.passed_up_to).await?;
    let n = passed.len();
    out.checked = Some((n, stranded(&s.name, &p.name, passed, &accounted)));
    Ok(out)
}

/// Dead-letters `seqs` of `s` for pipeline `p` through the built-in route
/// (reason `stranded: …`), so that a redrive runs them again.
pub async fn repair(
    js: &jetstream::Context,
    config: &Config,
    p: &PipelineConfig,
    s: &StreamConfig,
    seqs: &[u64],
) -> Result<(), DoctorError> {
    let client = js.client();
    let route = Route::Builtin {
        js: Box::new(js.clone()),
        policy: config.nats.publish,
        refusals: None,
    };
    let tenant = config
        .plugins
        .get(&p.plugin)
        .map(|pl| pl.tenant.clone())
        .unwrap_or_default();
    for &seq in seqs {
        let failed = |reason: String| DoctorError::Repair {
            stream: s.name.clone(),
            seq,
            reason,
        };
        let raw = crate::jetstream::raw_get::get(&client, &s.name, seq)
            .await
            .map_err(|e| failed(e.to_string()))?;
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
        route.send(&dl).await.map_err(|e| failed(e.to_string()))?;
    }
    Ok(())
}

/// Where pipeline `p`'s dead letters can be, with the subjects to read: the
/// stream capturing the built-in route's subject, or those its dead-letter
/// plugin's publish grants reach.
fn dead_letter_streams(
    config: &Config,
    p: &PipelineConfig,
    s: &StreamConfig,
) -> Vec<(String, Vec<String>)> {
    match &p.dead_letter {
        None => {
            let subject = p.dead_letter_subject(&s.name);
            config
                .streams
                .iter()
                .filter(|d| d.captures(&subject))
                .map(|d| (d.name.clone(), vec![subject.clone()]))
                .collect()
        }
        Some(plugin) => {
            let grants = config
                .plugins
                .get(plugin)
                .map(|pl| pl.grants.publish.clone())
                .unwrap_or_default();
            config
                .streams
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

/// How long a reader waits for the next message before taking the stream as read.
const READ_IDLE: Duration = Duration::from_secs(2);

/// The headers of `stream`'s messages from `from` to `to` (inclusive)
/// under `filters`, read by a light ephemeral consumer.
async fn read(
    js: &jetstream::Context,
    stream: &str,
    filters: Vec<String>,
    from: u64,
    to: u64,
) -> Result<Vec<Passed>, DoctorError> {
    let err = |e: String| DoctorError::Nats {
        what: format!("reading stream {stream}"),
        reason: e,
    };
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
    let c = js
        .get_stream(stream)
        .await
        .map_err(|e| err(e.to_string()))?
        .create_consumer(reader)
        .await
        .map_err(|e| err(e.to_string()))?;
    if c.cached_info().num_pending == 0 {
        return Ok(Vec::new());
    }
    let mut messages = c.messages().await.map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(READ_IDLE, messages.next()).await {
        let m = m.map_err(|e| err(e.to_string()))?;
        let info = m.info().map_err(|e| err(e.to_string()))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        if seq > to {
            break;
        }
        out.push(Passed {
            sequence: seq,
            headers: crate::jetstream::convert::header_pairs(m.headers.as_ref()),
        });
        if pending == 0 || seq == to {
            break;
        }
    }
    Ok(out)
}

/// One message a consumer has passed, as read back from its stream.
#[derive(Debug, Clone)]
pub struct Passed {
    pub sequence: u64,
    pub headers: Vec<(String, String)>,
}

/// What is known to have become of origins (sequences in the stream).
#[derive(Debug, Default)]
pub struct Accounted {
    /// Origins the plugin's ledger holds.
    pub handled: BTreeSet<u64>,
    /// Origins (and own sequences) of the pipeline's dead letters.
    pub dead_lettered: BTreeSet<u64>,
}

/// The sequences of `passed` messages (of `stream`, consumed by
/// `pipeline`) that were neither handled nor dead-lettered. Redrives
/// addressed to other pipelines are acked unrun by design and are skipped.
pub fn stranded(
    stream: &str,
    pipeline: &str,
    passed: impl IntoIterator<Item = Passed>,
    accounted: &Accounted,
) -> Vec<u64> {
    passed
        .into_iter()
        .filter(|m| addressed_to(&m.headers, pipeline))
        .filter(|m| {
            let origin = Origin::of(&m.headers, stream, m.sequence, 0);
            let key = if origin.stream == stream {
                origin.sequence
            } else {
                m.sequence
            };
            let known = |set: &BTreeSet<u64>| set.contains(&key) || set.contains(&m.sequence);
            !(known(&accounted.handled) || known(&accounted.dead_lettered))
        })
        .map(|m| m.sequence)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadletter::headers;

    fn passed(sequence: u64, hs: &[(&str, &str)]) -> Passed {
        Passed {
            sequence,
            headers: hs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn a_passed_message_neither_handled_nor_dead_lettered_is_stranded() {
        let accounted = Accounted {
            handled: [1, 3].into(),
            dead_lettered: [4].into(),
        };
        let msgs = vec![
            passed(1, &[]),
            passed(2, &[]),
            passed(3, &[]),
            passed(4, &[]),
            // A redrive of origin 2 addressed to another pipeline: skipped.
            passed(
                5,
                &[
                    (headers::ORIGIN, "EVENTS:2"),
                    (headers::REDRIVE_TO, "other"),
                ],
            ),
            // A redrive of origin 4 to this pipeline, handled under its origin.
            passed(
                6,
                &[(headers::ORIGIN, "EVENTS:4"), (headers::REDRIVE_TO, "main")],
            ),
        ];
        assert_eq!(stranded("EVENTS", "main", msgs, &accounted), vec![2]);
    }
}
