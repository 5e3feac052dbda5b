//! The ledger: which origins a pipeline has handled, and how.
//!
//! Why runs, not one row per message: a batch of a bulk sink holds
//! thousands of consecutive stream sequences, and a row (and index entry)
//! for each one cost the indexer as much as its own rows. A ledger row
//! holds a run `first_seq..=last_seq` of consecutive sequences of one
//! stream that were all acked in the same commit (a dead letter's row is
//! its own, so a redrive updates it alone). Runs never overlap: commits
//! of one pipeline's stream take turns at the ledger (an advisory lock
//! held to the commit) and each first checks that none of its origins is
//! there already — that check is what stops two hosts that both hold a
//! message (after an `ack_wait`) from both committing its effects.

use std::collections::{BTreeMap, HashMap, HashSet};

use deadpool_postgres::Object;

use super::{Entry, Outcome, StoreError, Tables};

/// Longest run one ledger row holds (the table checks it): a lookup
/// scans back this far for a run that starts before what it asks.
pub(super) const MAX_RUN: i64 = 65_536;

/// Widest gap inside one span of a lookup: the range scan reads at most
/// this many foreign sequences between two that were asked.
const SPAN_GAP: i64 = 64;

impl Tables {
    /// Statements that bring a ledger of an earlier layout (a row per
    /// message, column `seq`) to runs, in place; nothing when it has runs.
    pub(super) fn upgrade(&self) -> String {
        let ledger = self.ledger();
        format!(
            "DO $$ BEGIN
               IF EXISTS (SELECT 1 FROM information_schema.columns
                          WHERE table_schema = '{schema}' AND table_name = '{name}'
                            AND column_name = 'seq') THEN
                 ALTER TABLE {ledger} RENAME COLUMN seq TO first_seq;
                 ALTER TABLE {ledger} ADD COLUMN last_seq int8;
                 UPDATE {ledger} SET last_seq = first_seq;
                 ALTER TABLE {ledger} ALTER COLUMN last_seq SET NOT NULL;
                 ALTER TABLE {ledger} ADD CHECK (first_seq <= last_seq AND last_seq - first_seq < {MAX_RUN});
               END IF;
             END $$;",
            schema = self.schema,
            name = self.ledger,
        )
    }

    /// Which of `origins` `pipeline` has handled already, and how.
    pub async fn handled(
        &self,
        client: &Object,
        database: &str,
        pipeline: &str,
        origins: &[Entry],
    ) -> Result<Vec<(Entry, Outcome)>, StoreError> {
        lookup(client, &self.ledger(), pipeline, origins.iter())
            .await
            .map_err(|e| StoreError::from_pg(database, &e))
    }

    /// Messages in `pipeline`'s ledger now (its runs summed; counted
    /// rarely).
    pub async fn ledger_count(
        &self,
        client: &Object,
        database: &str,
        pipeline: &str,
    ) -> Result<i64, StoreError> {
        Ok(client
            .query_one(
                &format!(
                    "SELECT coalesce(sum(last_seq - first_seq + 1), 0)::int8 FROM {}
                     WHERE pipeline = $1",
                    self.ledger()
                ),
                &[&pipeline],
            )
            .await
            .map_err(|e| StoreError::from_pg(database, &e))?
            .get(0))
    }

    /// Writes `fresh` (origins new to the ledger) and `again` (redriven
    /// dead letters handled once more) into the open transaction on
    /// `client`, after taking the pipeline's turn at the ledger. A
    /// conflict — another commit holds one of them now — is
    /// [`Recorded::Conflict`]: the transaction must not commit.
    pub(super) async fn record(
        &self,
        client: &Object,
        pipeline: &str,
        fresh: &[(Entry, Outcome)],
        again: &[(Entry, Outcome)],
    ) -> Result<Recorded, tokio_postgres::Error> {
        let mut streams: Vec<&str> = fresh
            .iter()
            .chain(again)
            .map(|(e, _)| e.stream.as_str())
            .collect();
        streams.sort_unstable();
        streams.dedup();
        let ledger = self.ledger();
        for stream in &streams {
            client
                .execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2 || E'\\n' || $3))",
                    &[&ledger, &pipeline, stream],
                )
                .await?;
        }
        if !lookup(client, &ledger, pipeline, fresh.iter().map(|(e, _)| e))
            .await?
            .is_empty()
        {
            return Ok(Recorded::Conflict);
        }
        let rows = rows(fresh);
        if !rows.is_empty() {
            let mut text = String::with_capacity(rows.len() * 48);
            for (stream, first, last, outcome) in &rows {
                text.push_str(&copy_text(pipeline));
                text.push('\t');
                text.push_str(&copy_text(stream));
                text.push_str(&format!("\t{first}\t{last}\t{}\n", outcome.as_str()));
            }
            let sink = client
                .copy_in::<_, bytes::Bytes>(&format!(
                    "COPY {ledger} (pipeline, stream, first_seq, last_seq, outcome) FROM STDIN"
                ))
                .await?;
            futures::pin_mut!(sink);
            futures::SinkExt::send(&mut sink, bytes::Bytes::from(text)).await?;
            sink.finish().await?;
        }
        if !again.is_empty() {
            // Only a dead letter's own row, and only while it is one: a
            // redrive another host committed meanwhile updates nothing.
            let streams: Vec<&str> = again.iter().map(|(o, _)| o.stream.as_str()).collect();
            let seqs: Vec<i64> = again.iter().map(|(o, _)| seq(o.sequence)).collect();
            let outcomes: Vec<&str> = again.iter().map(|(_, d)| d.as_str()).collect();
            let updated = client
                .execute(
                    &format!(
                        "UPDATE {ledger} l SET outcome = o.d, handled_at = now()
                         FROM unnest($2::text[], $3::int8[], $4::text[]) AS o(s, q, d)
                         WHERE l.pipeline = $1 AND l.stream = o.s AND l.first_seq = o.q
                           AND l.last_seq = o.q AND l.outcome = 'dead_letter'"
                    ),
                    &[&pipeline, &streams, &seqs, &outcomes],
                )
                .await?;
            if updated != again.len() as u64 {
                return Ok(Recorded::Conflict);
            }
        }
        Ok(Recorded::Written)
    }
}

/// What [`Tables::record`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recorded {
    Written,
    Conflict,
}

/// The runs of `pipeline` in `ledger` that hold any of `origins`, as the
/// origins they hold.
async fn lookup<'a>(
    client: &Object,
    ledger: &str,
    pipeline: &str,
    origins: impl Iterator<Item = &'a Entry> + Clone,
) -> Result<Vec<(Entry, Outcome)>, tokio_postgres::Error> {
    // One index range scan per span of nearby sequences (a batch is
    // mostly consecutive), not a probe per message.
    let spans = spans(origins.clone());
    if spans.is_empty() {
        return Ok(Vec::new());
    }
    let streams: Vec<&str> = spans.iter().map(|r| r.0).collect();
    let lows: Vec<i64> = spans.iter().map(|r| r.1).collect();
    let highs: Vec<i64> = spans.iter().map(|r| r.2).collect();
    let found = client
        .query(
            &format!(
                "SELECT DISTINCT l.stream, l.first_seq, l.last_seq, l.outcome FROM {ledger} l
                 JOIN unnest($2::text[], $3::int8[], $4::int8[]) AS r(stream, lo, hi)
                   ON l.stream = r.stream AND l.first_seq BETWEEN r.lo - {back} AND r.hi
                  AND l.last_seq >= r.lo
                 WHERE l.pipeline = $1",
                back = MAX_RUN - 1
            ),
            &[&pipeline, &streams, &lows, &highs],
        )
        .await?;
    let mut runs: HashMap<String, BTreeMap<i64, (i64, Outcome)>> = HashMap::new();
    for row in &found {
        let outcome = match row.get::<_, &str>(3) {
            "dead_letter" => Outcome::DeadLetter,
            _ => Outcome::Ack,
        };
        runs.entry(row.get(0))
            .or_default()
            .insert(row.get(1), (row.get(2), outcome));
    }
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let mut seen = HashSet::new();
    Ok(origins
        .filter(|o| seen.insert(*o))
        .filter_map(|o| {
            let s = seq(o.sequence);
            let (_, (last, outcome)) = runs.get(&o.stream)?.range(..=s).next_back()?;
            (*last >= s).then(|| (o.clone(), *outcome))
        })
        .collect())
}

/// `origins` as spans `(stream, first, last)` of nearby sequences.
fn spans<'a>(origins: impl Iterator<Item = &'a Entry>) -> Vec<(&'a str, i64, i64)> {
    let mut sorted: Vec<(&str, i64)> = origins
        .map(|o| (o.stream.as_str(), seq(o.sequence)))
        .collect();
    sorted.sort_unstable();
    let mut spans: Vec<(&str, i64, i64)> = Vec::new();
    for (stream, s) in sorted {
        match spans.last_mut() {
            Some(span) if span.0 == stream && s - span.2 <= SPAN_GAP => span.2 = s,
            _ => spans.push((stream, s, s)),
        }
    }
    spans
}

/// Ledger rows `(stream, first, last, outcome)` for `handled`: runs of
/// consecutive acked sequences, at most [`MAX_RUN`] long; a dead letter
/// alone.
fn rows(handled: &[(Entry, Outcome)]) -> Vec<(&str, i64, i64, Outcome)> {
    let mut sorted: Vec<(&str, i64, Outcome)> = handled
        .iter()
        .map(|(e, o)| (e.stream.as_str(), seq(e.sequence), *o))
        .collect();
    sorted.sort_unstable_by_key(|(stream, s, _)| (*stream, *s));
    sorted.dedup_by_key(|(stream, s, _)| (*stream, *s));
    let mut rows: Vec<(&str, i64, i64, Outcome)> = Vec::new();
    for (stream, s, outcome) in sorted {
        match rows.last_mut() {
            Some(run)
                if run.0 == stream
                    && outcome == Outcome::Ack
                    && run.3 == Outcome::Ack
                    && s == run.2 + 1
                    && s - run.1 < MAX_RUN =>
            {
                run.2 = s
            }
            _ => rows.push((stream, s, s, outcome)),
        }
    }
    rows
}

/// `text` as a value in COPY's text format.
fn copy_text(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn seq(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stream: &str, sequence: u64) -> Entry {
        Entry {
            stream: stream.into(),
            sequence,
        }
    }

    #[test]
    fn spans_join_nearby_sequences_of_one_stream() {
        let gap = SPAN_GAP as u64;
        let origins = [
            at("A", 10),
            at("B", 3),
            at("A", 12),
            at("A", 11),
            at("A", 12 + gap + 1),
            at("A", 12 + gap),
        ];
        assert_eq!(
            spans(origins.iter()),
            vec![("A", 10, 13 + SPAN_GAP), ("B", 3, 3)],
            "a gap of SPAN_GAP stays in the span"
        );
        let far = [at("A", 1), at("A", 2 + gap)];
        assert_eq!(
            spans(far.iter()),
            vec![("A", 1, 1), ("A", 2 + SPAN_GAP, 2 + SPAN_GAP)]
        );
        assert!(spans([].iter()).is_empty());
    }

    #[test]
    fn rows_are_runs_of_consecutive_acks_and_dead_letters_alone() {
        let ack = Outcome::Ack;
        let dead = Outcome::DeadLetter;
        let handled = [
            (at("A", 3), ack),
            (at("A", 1), ack),
            (at("A", 2), ack),
            (at("A", 2), ack),
            (at("A", 5), ack),
            (at("A", 6), dead),
            (at("A", 7), dead),
            (at("A", 8), ack),
            (at("B", 9), ack),
        ];
        assert_eq!(
            rows(&handled),
            vec![
                ("A", 1, 3, ack),
                ("A", 5, 5, ack),
                ("A", 6, 6, dead),
                ("A", 7, 7, dead),
                ("A", 8, 8, ack),
                ("B", 9, 9, ack),
            ]
        );
        let long: Vec<(Entry, Outcome)> = (1..=MAX_RUN as u64 + 2)
            .map(|s| (at("A", s), ack))
            .collect();
        assert_eq!(
            rows(&long),
            vec![("A", 1, MAX_RUN, ack), ("A", MAX_RUN + 1, MAX_RUN + 2, ack)]
        );
    }
}
