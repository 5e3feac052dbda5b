//! Running one batch of fixture lines as `jetplug test` does: on declared
//! answers (no servers) when the file or a line declares any, else against
//! what the command line connects; recorded either way, so the calls behind
//! each answer — and their errors — can be shown. A failed batch is split as
//! the host splits it: each line alone, so the culprit is named and the
//! others are still judged.

use super::input::{Declared, InputMessage};
use crate::bindings::Decision;
use crate::capability::transcript::{Entry, fits};
use crate::plugin::{BatchError, PluginInstance, Witness};

/// One run of a batch: its outcome and the calls it made.
#[derive(Debug)]
pub struct Ran {
    pub outcome: Result<Vec<Decision>, BatchError>,
    /// Every capability call (log lines included), with its answer.
    pub calls: Vec<Entry>,
}

/// A batch of lines as judged: per line, its outcome and its batch's calls.
#[derive(Debug)]
pub struct Judged {
    pub lines: Vec<(Result<Decision, BatchError>, Vec<Entry>)>,
    /// The batch failed as a whole and its lines were run alone: the line
    /// numbers that failed on their own, with the batch's failure.
    pub isolated: Option<(BatchError, Vec<usize>)>,
}

/// Runs `chunk` (see the module docs). `instance` records its calls.
pub async fn judge(
    instance: &mut PluginInstance,
    chunk: &[InputMessage],
    declared: &Declared,
) -> Judged {
    // Run alone, a line keeps its batch's answers.
    let answered = on_answers(chunk, declared).then(|| Answered {
        answers: chunk
            .iter()
            .flat_map(|m| m.answers.iter().cloned())
            .chain(declared.answers.iter().cloned())
            .collect(),
        wall: declared
            .time_ms
            .map(|ms| u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)),
    });
    let ran = run(instance, chunk, answered.as_ref()).await;
    match ran.outcome {
        Ok(decisions) => Judged {
            lines: decisions
                .into_iter()
                .map(|d| (Ok(d), ran.calls.clone()))
                .collect(),
            isolated: None,
        },
        Err(e) if chunk.len() > 1 => {
            let mut lines = Vec::with_capacity(chunk.len());
            let mut culprits = Vec::new();
            for m in chunk {
                let alone = run(instance, std::slice::from_ref(m), answered.as_ref()).await;
                let outcome = match alone.outcome {
                    Ok(mut d) if d.len() == 1 => Ok(d.remove(0)),
                    Ok(_) => Err(e.clone()),
                    Err(e) => {
                        culprits.push(m.line);
                        Err(e)
                    }
                };
                lines.push((outcome, alone.calls));
            }
            Judged {
                lines,
                isolated: Some((e, culprits)),
            }
        }
        Err(e) => Judged {
            lines: vec![(Err(e), ran.calls)],
            isolated: None,
        },
    }
}

/// Whether the batch runs on declared answers.
fn on_answers(chunk: &[InputMessage], declared: &Declared) -> bool {
    declared.any()
        || chunk
            .iter()
            .any(|m| !m.answers.is_empty() || !m.effects.is_empty())
}

/// A batch's declared answers and clock (ns since the epoch).
struct Answered {
    answers: Vec<Entry>,
    wall: Option<u64>,
}

async fn run(
    instance: &mut PluginInstance,
    chunk: &[InputMessage],
    answered: Option<&Answered>,
) -> Ran {
    let batch: Vec<_> = chunk.iter().map(|m| m.message.clone()).collect();
    let outcome = match answered {
        Some(a) => {
            instance
                .handle_fixture(batch, a.answers.clone(), a.wall)
                .await
        }
        None => instance.handle(batch).await,
    };
    let calls = match instance.take_witness() {
        Some(Witness::Seen(seen)) => seen.calls.entries(),
        Some(Witness::Replayed(r)) => r.calls.made,
        None => Vec::new(),
    };
    Ran { outcome, calls }
}

/// The expected effects of `line` its batch's `calls` did not make.
pub fn missing_effects<'a>(line: &'a InputMessage, calls: &[Entry]) -> Vec<&'a Entry> {
    line.effects
        .iter()
        .filter(|want| !calls.iter().any(|c| c.error.is_none() && fits(want, c)))
        .collect()
}

/// The failed capability calls among `calls`, in words (what a `retry`
/// usually answers).
pub fn errors(calls: &[Entry]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| {
            let e = c.error.as_ref()?;
            Some(format!(
                "{} on `{}`: {}",
                c.call,
                c.target,
                describe_error(e)
            ))
        })
        .collect()
}

fn describe_error(e: &crate::bindings::CapabilityError) -> String {
    use crate::bindings::CapabilityError as E;
    match e {
        E::AccessDenied(m) => format!("access-denied: {m}"),
        E::NotFound => "not-found".into(),
        E::Unavailable(m) => format!("unavailable: {m}"),
        E::Invalid(m) => format!("invalid: {m}"),
        E::Other(m) => format!("other: {m}"),
    }
}
