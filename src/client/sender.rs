//! The producer's sender task: drains ready batches into one Produce request
//! per broker, keeps up to `max_in_flight` requests per broker outstanding,
//! and settles, retries or fails batches as the answers come back.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use kafka_protocol::messages::ProduceRequest;

use super::accumulator::{BatchAck, ProducerBatch};
use super::shared::{Acks, Shared};
use super::{broker_error, is_stale_metadata, produce_answers, produce_request};
use crate::error::{Error, Kind, Result};
use crate::wire::Frame;

/// How often the sender looks at batches that wait for a leader, to expire
/// them after `delivery.timeout.ms`.
const IDLE_TICK: Duration = Duration::from_secs(1);

struct Done {
    node: i32,
    batches: Vec<ProducerBatch>,
    sent_at: Instant,
    result: Result<Frame>,
}

pub(crate) struct Sender {
    shared: Arc<Shared>,
    in_flight: FuturesUnordered<BoxFuture<'static, Done>>,
    per_node: HashMap<i32, usize>,
    refreshing: Arc<AtomicBool>,
}

impl Sender {
    pub fn new(shared: Arc<Shared>) -> Sender {
        Sender {
            shared,
            in_flight: FuturesUnordered::new(),
            per_node: HashMap::new(),
            refreshing: Arc::new(AtomicBool::new(false)),
        }
    }

    pub async fn run(mut self) {
        loop {
            let now = Instant::now();
            let (sent, next) = self.send_ready(now).await;
            if sent {
                // More may have become ready while this round was written.
                continue;
            }
            self.expire(now);
            let outstanding = self.shared.state().acc.outstanding;
            if self.shared.closing.load(Ordering::Acquire)
                && outstanding == 0
                && self.in_flight.is_empty()
            {
                return;
            }
            let tick = (outstanding > 0).then(|| now + IDLE_TICK);
            let wake_at = match (next, tick) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                _ = self.shared.wake.notified() => {}
                _ = sleep_until(wake_at) => {}
                Some(done) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    self.settle(done);
                }
            }
        }
    }

    /// Sends every ready batch whose leader has room for another request.
    /// Returns whether anything went out, and when the next batch is due.
    async fn send_ready(&mut self, now: Instant) -> (bool, Option<Instant>) {
        let metadata = self.shared.client.metadata();
        let max = self.shared.config.max_in_flight.max(1);
        let mut leaderless = false;
        let (ready, next) = {
            let per_node = &self.per_node;
            let mut state = self.shared.state();
            state.acc.drain(now, |topic, partition| {
                let leader = metadata.topics.get(topic).and_then(|t| t.leader(partition));
                if leader.is_none() {
                    leaderless = true;
                }
                let node = leader?;
                (per_node.get(&node).copied().unwrap_or(0) < max).then_some(node)
            })
        };
        if leaderless {
            self.refresh_metadata();
        }
        if ready.is_empty() {
            return (false, next);
        }
        let mut by_node: HashMap<i32, Vec<ProducerBatch>> = HashMap::new();
        for (node, batch) in ready {
            by_node.entry(node).or_default().push(batch);
        }
        for (node, batches) in by_node {
            self.send_request(node, batches).await;
        }
        (true, next)
    }

    async fn send_request(&mut self, node: i32, batches: Vec<ProducerBatch>) {
        let shared = &self.shared;
        let config = &shared.config;
        let version = shared.client.versions().produce;
        let timeout = shared.client.config().request_timeout;
        let request = match encode_request(&batches, config.compression, config.acks, timeout) {
            Ok((request, bytes)) => {
                shared
                    .counters
                    .batch_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
                request
            }
            Err(e) => return self.fail_all(batches, e),
        };
        let frame = match shared.client.encode(&request, version) {
            Ok(f) => f,
            Err(e) => return self.fail_all(batches, e),
        };
        let conn = match shared.client.broker_conn(node).await {
            Ok(c) => c,
            Err(e) => return self.retry_all(batches, e),
        };
        let counters = &shared.counters;
        counters.requests.fetch_add(1, Ordering::Relaxed);
        counters
            .batches
            .fetch_add(batches.len() as u64, Ordering::Relaxed);
        let records: usize = batches.iter().map(|b| b.records.len()).sum();
        counters
            .records
            .fetch_add(records as u64, Ordering::Relaxed);
        let sent_at = Instant::now();
        if config.acks == Acks::None {
            match conn.send(frame, false).await {
                Ok(_) => {
                    for batch in batches {
                        let reserved = batch.complete(Ok(BatchAck { base_offset: -1 }));
                        shared.finished(reserved);
                    }
                }
                Err(e) => {
                    shared.client.drop_conn(node);
                    self.retry_all(batches, e);
                }
            }
            return;
        }
        *self.per_node.entry(node).or_default() += 1;
        let client = shared.client.clone();
        self.in_flight.push(Box::pin(async move {
            let result = client.round_trip(&conn, frame, Duration::ZERO).await;
            Done {
                node,
                batches,
                sent_at,
                result,
            }
        }));
    }

    /// Handles the answer to one Produce request.
    fn settle(&mut self, done: Done) {
        if let Some(n) = self.per_node.get_mut(&done.node) {
            *n = n.saturating_sub(1);
        }
        let elapsed = done.sent_at.elapsed().as_micros() as u64;
        let counters = &self.shared.counters;
        counters
            .request_latency_total_us
            .fetch_add(elapsed, Ordering::Relaxed);
        let version = self.shared.client.versions().produce;
        let response = done
            .result
            .and_then(|frame| self.shared.client.decode::<ProduceRequest>(&frame, version));
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                if matches!(e.kind, Kind::Closed | Kind::Io | Kind::Timeout) {
                    self.shared.client.drop_conn(done.node);
                }
                return self.retry_all(done.batches, e);
            }
        };
        let answers = produce_answers(&response);
        for batch in done.batches {
            match answers.get(&(batch.topic.as_ref(), batch.partition)) {
                Some(&(0, base_offset)) => {
                    let reserved = batch.complete(Ok(BatchAck { base_offset }));
                    self.shared.finished(reserved);
                }
                Some(&(code, _)) => {
                    let what = format!("Produce {}/{}", batch.topic, batch.partition);
                    let error = broker_error(self.shared.client.cluster_name(), code, &what);
                    if is_stale_metadata(code) {
                        self.refresh_metadata();
                    }
                    self.retry(batch, error);
                }
                None => {
                    let error = Error::upstream(
                        self.shared.client.cluster_name(),
                        Kind::Protocol,
                        format!("Produce answer lacks {}/{}", batch.topic, batch.partition),
                    );
                    self.retry(batch, error);
                }
            }
        }
    }

    fn retry_all(&mut self, batches: Vec<ProducerBatch>, error: Error) {
        self.refresh_metadata();
        for batch in batches {
            self.retry(batch, error.clone());
        }
    }

    fn retry(&mut self, batch: ProducerBatch, error: Error) {
        let config = &self.shared.config;
        let expired = batch.created.elapsed() >= config.delivery_timeout;
        if error.retriable && batch.attempts < config.retries && !expired {
            tracing::debug!(%error, topic = %batch.topic, partition = batch.partition, "retrying a batch");
            self.shared.counters.retries.fetch_add(1, Ordering::Relaxed);
            let at = Instant::now() + config.retry_backoff;
            self.shared.state().acc.requeue(batch, at);
            self.shared.wake.notify_one();
        } else {
            self.fail_all(vec![batch], error);
        }
    }

    fn fail_all(&mut self, batches: Vec<ProducerBatch>, error: Error) {
        for batch in batches {
            self.shared
                .counters
                .failed_batches
                .fetch_add(1, Ordering::Relaxed);
            let reserved = batch.complete(Err(error.clone()));
            self.shared.finished(reserved);
        }
    }

    /// Fails queued batches older than `delivery.timeout.ms` (those whose
    /// partition never found a leader).
    fn expire(&mut self, now: Instant) {
        let timeout = self.shared.config.delivery_timeout;
        let expired = self.shared.state().acc.take_expired(now, timeout);
        if !expired.is_empty() {
            let error = Error::klink(
                Kind::Timeout,
                format!("no leader to send to within delivery.timeout.ms ({timeout:?})"),
            );
            self.fail_all(expired, error);
        }
    }

    /// Refreshes metadata in the background (one refresh at a time) and
    /// wakes the sender when it is done.
    fn refresh_metadata(&self) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = self.shared.clone();
        let refreshing = self.refreshing.clone();
        tokio::spawn(async move {
            let backoff = shared.config.retry_backoff;
            if let Err(e) = shared.client.refresh_metadata().await {
                tracing::debug!(error = %e, "metadata refresh failed");
            }
            // Paces refreshes while a leader stays unknown.
            tokio::time::sleep(backoff).await;
            refreshing.store(false, Ordering::Release);
            shared.wake.notify_one();
        });
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn encode_request(
    batches: &[ProducerBatch],
    compression: kafka_protocol::records::Compression,
    acks: Acks,
    timeout: Duration,
) -> Result<(ProduceRequest, usize)> {
    let mut encoded = Vec::with_capacity(batches.len());
    let mut bytes = 0;
    for batch in batches {
        let records = batch.encode(compression)?;
        bytes += records.len();
        encoded.push((batch.topic.as_ref(), batch.partition, records));
    }
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    Ok((produce_request(encoded, acks.code(), timeout_ms), bytes))
}
