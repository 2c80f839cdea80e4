//! Bypass detection (DESIGN trap 13): records written to a mirroring
//! topic's source partition by someone who does not go through klink.
//!
//! While a topic mirrors, its writes go through klink to the source, and a
//! cutover later moves them to the target. A producer that writes to the
//! source directly would be left behind by the cutover, so the operator
//! must hear of it before. klink learns from each Produce answer where its
//! forwarded batches landed (offset ranges); the mirror, which reads every
//! batch of the source partition anyway, asks for each new batch whether
//! klink wrote it. Records klink sent without learning where they landed
//! (a lost answer, acks=0) excuse as many unexplained records. A batch is
//! judged only once every Produce klink sent before the mirror saw it has
//! been answered, since its answer may be the one that explains it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, RequestHeader};
use kafka_protocol::protocol::Decodable;

use crate::batch;
use crate::numbering::{Numbering, Position};
use crate::route::{RouteTable, Routes, TopicState};

/// Ranges remembered per partition at most: a mirror far behind a source
/// written by klink and others in turn would otherwise grow them without
/// bound. Beyond it the oldest knowledge goes, and batches below it are no
/// longer judged.
const MAX_RANGES: usize = 100_000;
/// A batch whose explaining answers never settle (it should not happen:
/// every send is answered, lost or dropped) is judged after this long.
const MAX_WAIT: Duration = Duration::from_secs(120);

type PartitionKey = (Arc<str>, String, i32);

#[derive(Default)]
struct Written {
    /// Where klink's batches landed: start -> end (exclusive), disjoint,
    /// adjacent ranges merged.
    ranges: BTreeMap<i64, i64>,
    /// Batches below this are no longer judged (their ranges were dropped).
    judged_from: i64,
    /// Records klink sent without learning where they landed.
    unplaced: i64,
    /// Sends not answered yet, by number.
    unanswered: BTreeSet<u64>,
    next_send: u64,
    /// The end of the highest batch an answer placed (kept when ranges
    /// are dropped): a flip's drain must copy at least this far even
    /// where the cluster's high watermark is still below it (acks=1 on a
    /// replicated cluster answers before the records are replicated).
    answered_end: i64,
}

impl Written {
    fn add_range(&mut self, start: i64, end: i64) {
        self.answered_end = self.answered_end.max(end);
        let (mut start, mut end) = (start, end);
        // Merge with a range ending where this one starts (or overlapping).
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
            self.ranges.remove(&s);
        }
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
        while self.ranges.len() > MAX_RANGES {
            if let Some((_, e)) = self.ranges.pop_first() {
                self.judged_from = self.judged_from.max(e);
            }
        }
    }

    /// Offsets of `first..=last` no range covers.
    fn uncovered(&self, first: i64, last: i64) -> i64 {
        let end = last + 1;
        let mut covered = 0;
        let from = self
            .ranges
            .range(..=first)
            .next_back()
            .map_or(first, |(s, _)| *s);
        for (&s, &e) in self.ranges.range(from..end) {
            covered += (e.min(end) - s.max(first)).max(0);
        }
        (end - first) - covered
    }

    fn forget_below(&mut self, offset: i64) {
        while let Some((&s, &e)) = self.ranges.first_key_value() {
            if e > offset {
                break;
            }
            self.ranges.remove(&s);
        }
    }
}

/// What klink wrote to each watched partition, shared by the sessions
/// (which record) and the mirror (which asks).
#[derive(Default)]
pub struct ForwardedWrites {
    /// A std mutex: map edits only, never held across an await.
    partitions: Mutex<HashMap<PartitionKey, Written>>,
}

/// One watched partition of a Produce request on its way.
struct SentPart {
    key: PartitionKey,
    /// How the client named the topic: its name, or its id (v13+).
    client_topic: String,
    records: i64,
    send: u64,
}

/// A Produce request's watched partitions, until its answer is seen. If it
/// never is (the client went away first), its records count as sent
/// without a known place.
pub struct SentWrites {
    forwarded: Arc<ForwardedWrites>,
    version: i16,
    parts: Vec<SentPart>,
}

impl ForwardedWrites {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PartitionKey, Written>> {
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the records of a Produce request that go to a mirroring
    /// topic's source. `None` when the request writes no watched topic, or
    /// will get no answer (acks=0: its records are counted as placed
    /// nowhere known at once).
    pub fn sent(
        self: &Arc<Self>,
        routes: &Routes,
        version: i16,
        payload: &Bytes,
        acks: i16,
        name_of_id: impl Fn(&uuid::Uuid) -> Option<String>,
    ) -> Option<SentWrites> {
        let mut body = payload.clone();
        RequestHeader::decode(&mut body, ApiKey::Produce.request_header_version(version)).ok()?;
        let request = ProduceRequest::decode(&mut body, version).ok()?;
        let mut parts = Vec::new();
        let mut partitions = self.lock();
        for topic in &request.topic_data {
            let (name, client_topic) = if version >= 13 {
                let Some(name) = name_of_id(&topic.topic_id) else {
                    continue;
                };
                (name, topic.topic_id.to_string())
            } else {
                (topic.name.to_string(), topic.name.to_string())
            };
            let Some(route) = routes.topic(&name) else {
                continue;
            };
            if !watched_state(route.state) {
                continue;
            }
            for p in &topic.partition_data {
                let records = record_count(p.records.as_ref());
                if records == 0 {
                    continue;
                }
                let key = (route.writes.clone(), name.clone(), p.index);
                let written = partitions.entry(key.clone()).or_default();
                if acks == 0 {
                    written.unplaced += records;
                    continue;
                }
                let send = written.next_send;
                written.next_send += 1;
                written.unanswered.insert(send);
                parts.push(SentPart {
                    key,
                    client_topic: client_topic.clone(),
                    records,
                    send,
                });
            }
        }
        drop(partitions);
        (!parts.is_empty()).then(|| SentWrites {
            forwarded: self.clone(),
            version,
            parts,
        })
    }

    /// Records of the source batch `first..=last` klink cannot explain
    /// yet by its answers. `None` while an answer that may explain it is
    /// still due: the batch must be asked about again.
    fn judge(&self, key: &PartitionKey, batch: &SeenBatch) -> Option<i64> {
        let mut partitions = self.lock();
        let Some(written) = partitions.get_mut(key) else {
            return Some(batch.records);
        };
        if batch.last < written.judged_from {
            return Some(0);
        }
        let uncovered = written
            .uncovered(batch.first, batch.last)
            .min(batch.records);
        if uncovered == 0 {
            return Some(0);
        }
        let answers_due = written
            .unanswered
            .first()
            .is_some_and(|oldest| *oldest < batch.sends_before);
        if answers_due && batch.seen.elapsed() < MAX_WAIT {
            return None;
        }
        let excused = uncovered.min(written.unplaced);
        written.unplaced -= excused;
        Some(uncovered - excused)
    }

    /// Produce requests klink sent to `cluster` for `topic` that have no
    /// answer yet (a promotion waits for none to be left).
    pub fn unanswered(&self, cluster: &str, topic: &str) -> usize {
        self.lock()
            .iter()
            .filter(|((c, t, _), _)| &**c == cluster && t == topic)
            .map(|(_, w)| w.unanswered.len())
            .sum()
    }

    /// Where the last record klink's answered writes placed on `cluster`
    /// ends, per partition of `topic`.
    pub fn answered_ends(&self, cluster: &str, topic: &str) -> HashMap<i32, i64> {
        self.lock()
            .iter()
            .filter(|((c, t, _), w)| &**c == cluster && t == topic && w.answered_end > 0)
            .map(|((_, _, p), w)| (*p, w.answered_end))
            .collect()
    }

    fn next_send(&self, key: &PartitionKey) -> u64 {
        self.lock().get(key).map_or(0, |w| w.next_send)
    }

    fn forget_below(&self, key: &PartitionKey, offset: i64) {
        if let Some(written) = self.lock().get_mut(key) {
            written.forget_below(offset);
        }
    }
}

impl SentWrites {
    /// Learns from the Produce answer the client gets (klink's own error
    /// answers included) where each watched partition's records went; its
    /// offsets are the client's, and go back into the cluster's own
    /// through `numbering` (they are compared with the cluster's batches).
    pub fn answered(mut self, response: &[u8], numbering: &Numbering) {
        let version = self.version;
        let mut body = Bytes::copy_from_slice(response.get(4..).unwrap_or_default());
        let header_version = ApiKey::Produce.response_header_version(version);
        let decoded = kafka_protocol::messages::ResponseHeader::decode(&mut body, header_version)
            .and_then(|_| ProduceResponse::decode(&mut body, version));
        let Ok(answer) = decoded else {
            return; // dropped below: counted as placed nowhere known
        };
        let mut results: HashMap<(String, i32), (i16, i64)> = HashMap::new();
        for topic in answer.responses {
            let client_topic = if version >= 13 {
                topic.topic_id.to_string()
            } else {
                topic.name.to_string()
            };
            for p in topic.partition_responses {
                results.insert(
                    (client_topic.clone(), p.index),
                    (p.error_code, p.base_offset),
                );
            }
        }
        let parts = std::mem::take(&mut self.parts);
        let mut partitions = self.forwarded.lock();
        for part in parts {
            let Some(written) = partitions.get_mut(&part.key) else {
                continue;
            };
            written.unanswered.remove(&part.send);
            match results.get(&(part.client_topic, part.key.2)) {
                Some((0, base)) if *base >= 0 => {
                    let (cluster, topic, partition) = &part.key;
                    let base = match numbering.view(topic, *partition, cluster) {
                        Some(view) => match view.from_client(*base) {
                            Position::At(upstream) => upstream,
                            Position::Below => continue,
                        },
                        None => *base,
                    };
                    written.add_range(base, base + part.records);
                }
                Some((code, _)) if maybe_written(*code) => written.unplaced += part.records,
                // Refused, or a duplicate of a batch that landed before.
                _ => {}
            }
        }
    }
}

impl SentWrites {
    /// Takes the request back: it was not sent after all (held by a fence;
    /// it is noted again when it goes).
    pub fn cancel(mut self) {
        let mut partitions = self.forwarded.lock();
        for part in self.parts.drain(..) {
            if let Some(written) = partitions.get_mut(&part.key) {
                written.unanswered.remove(&part.send);
            }
        }
    }
}

/// Whether a topic in this state has its writes go through klink to the
/// cluster a mirror copies from (the source, or the target while
/// promoted: the reverse mirror).
fn watched_state(state: TopicState) -> bool {
    state.copied()
}

impl Drop for SentWrites {
    fn drop(&mut self) {
        if self.parts.is_empty() {
            return;
        }
        let mut partitions = self.forwarded.lock();
        for part in self.parts.drain(..) {
            if let Some(written) = partitions.get_mut(&part.key) {
                written.unanswered.remove(&part.send);
                written.unplaced += part.records;
            }
        }
    }
}

/// Whether an error answer leaves the records possibly written (success
/// without an offset counts too).
fn maybe_written(code: i16) -> bool {
    code == 0
        || code == ResponseError::RequestTimedOut.code()
        || code == ResponseError::NotEnoughReplicasAfterAppend.code()
}

fn record_count(records: Option<&Bytes>) -> i64 {
    let Some(records) = records else {
        return 0;
    };
    let Ok(ranges) = batch::batches(records) else {
        return 0;
    };
    ranges
        .into_iter()
        .filter_map(|r| batch::header(&records[r]).ok())
        .map(|h| i64::from(h.record_count.max(0)))
        .sum()
}

/// A source batch the mirror saw, waiting to be judged.
#[derive(Debug, Clone)]
struct SeenBatch {
    first: i64,
    last: i64,
    records: i64,
    /// Sends numbered below this may explain it.
    sends_before: u64,
    seen: Instant,
}

/// One partition's watch, kept by its copier.
pub struct BypassWatch {
    forwarded: Arc<ForwardedWrites>,
    routes: Arc<RouteTable>,
    key: PartitionKey,
    /// Batches from here on are judged: the source's end when watching
    /// began (what came before was written before klink could know).
    from: Option<i64>,
    /// Batches below this were taken note of already (a fetch may bring
    /// them again after a failed copy).
    noted_to: i64,
    waiting: Vec<SeenBatch>,
}

impl BypassWatch {
    pub fn new(
        forwarded: Arc<ForwardedWrites>,
        routes: Arc<RouteTable>,
        source: Arc<str>,
        topic: &str,
        partition: i32,
    ) -> BypassWatch {
        BypassWatch {
            forwarded,
            routes,
            key: (source, topic.to_string(), partition),
            from: None,
            noted_to: 0,
            waiting: Vec::new(),
        }
    }

    /// Whether the topic's writes go through klink to this source now.
    fn watching(&self) -> bool {
        let routes = self.routes.snapshot();
        routes
            .topic(&self.key.1)
            .is_some_and(|r| watched_state(r.state) && r.writes == self.key.0)
    }

    /// Takes note of the data batches (not transaction markers) of one
    /// source fetch, and returns how many records of earlier and these
    /// batches are now known to have bypassed klink. `source_end` is the
    /// high watermark the fetch reported.
    pub fn saw(&mut self, batches: &[(i64, i64, i64)], source_end: i64) -> i64 {
        if !self.watching() {
            self.from = None;
            self.waiting.clear();
            return 0;
        }
        if self.from.is_none() {
            self.from = Some(source_end);
            self.noted_to = source_end;
        }
        let sends_before = self.forwarded.next_send(&self.key);
        for &(first, last, records) in batches {
            if first < self.noted_to {
                continue;
            }
            self.noted_to = last + 1;
            self.waiting.push(SeenBatch {
                first,
                last,
                records,
                sends_before,
                seen: Instant::now(),
            });
        }
        let mut bypassed = 0;
        let forwarded = &self.forwarded;
        let key = &self.key;
        self.waiting
            .retain(|batch| match forwarded.judge(key, batch) {
                Some(n) => {
                    bypassed += n;
                    false
                }
                None => true,
            });
        // Ranges below every batch still to judge are no longer needed.
        let judged_to = self
            .waiting
            .iter()
            .map(|w| w.first)
            .min()
            .or_else(|| batches.last().map(|b| b.1 + 1));
        if let Some(offset) = judged_to {
            self.forwarded.forget_below(&self.key, offset);
        }
        bypassed
    }
}

#[cfg(test)]
mod tests;
