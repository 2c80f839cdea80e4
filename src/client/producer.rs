//! The producer: `send` puts a record into its partition's open batch and
//! returns a future for the ack; one sender task per producer drains ready
//! batches into Produce requests, several in flight per broker.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kafka_protocol::records::Compression;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use super::Client;
use super::accumulator::{Accumulator, BatchAck, Outcome};
use super::partitioner::{Sticky, partition_for_key};
use super::sender::Sender;
use crate::error::{Error, Kind, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: nothing is awaited; a record counts as delivered once written.
    None,
    /// acks=1: the leader wrote it.
    Leader,
    /// acks=all (-1): every in-sync replica has it.
    All,
}

impl Acks {
    pub fn code(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// The producer settings, named after the Java client's.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// `linger.ms`: how long a batch that is not full waits for more records.
    pub linger: Duration,
    /// `batch.size`: bytes at which a batch is sent without waiting.
    pub batch_size: usize,
    pub compression: Compression,
    /// `max.in.flight.requests.per.connection`.
    pub max_in_flight: usize,
    /// `buffer.memory`: record bytes waiting or in flight before `send` waits.
    pub buffer_memory: usize,
    /// `retries`: attempts after the first for a retriable error.
    pub retries: u32,
    pub retry_backoff: Duration,
    /// `delivery.timeout.ms`: a batch older than this fails.
    pub delivery_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            // Kafka 4.0's default; 0 before.
            linger: Duration::from_millis(5),
            batch_size: 16 * 1024,
            compression: Compression::None,
            max_in_flight: 5,
            buffer_memory: 32 * 1024 * 1024,
            retries: 10,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProducerRecord {
    pub topic: Arc<str>,
    /// Chosen by key (murmur2) or the sticky partitioner when `None`.
    pub partition: Option<i32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// Create time in ms since the epoch; now when `None`.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    pub fn new(topic: Arc<str>, value: Bytes) -> ProducerRecord {
        ProducerRecord {
            topic,
            partition: None,
            key: None,
            value: Some(value),
            timestamp: None,
        }
    }

    pub fn with_key(mut self, key: Bytes) -> ProducerRecord {
        self.key = Some(key);
        self
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: Arc<str>,
    pub partition: i32,
    /// -1 with acks=0.
    pub offset: i64,
}

/// Resolves when the record's batch is acknowledged (or failed for good).
pub struct DeliveryFuture {
    outcome: Outcome,
    topic: Arc<str>,
    partition: i32,
    index: i32,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.outcome).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Ok(BatchAck { base_offset }))) => Poll::Ready(Ok(RecordMetadata {
                topic: this.topic.clone(),
                partition: this.partition,
                offset: if base_offset < 0 {
                    -1
                } else {
                    base_offset + i64::from(this.index)
                },
            })),
            Poll::Ready(Ok(Err(e))) => Poll::Ready(Err(e)),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Error::klink(
                Kind::Closed,
                "the producer stopped before the record was sent",
            ))),
        }
    }
}

/// Counters for `--print-metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProducerMetrics {
    pub requests: u64,
    pub batches: u64,
    pub records: u64,
    /// Encoded batch bytes sent (after compression).
    pub batch_bytes: u64,
    pub retries: u64,
    pub failed_batches: u64,
    pub request_latency_total_us: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub batch_bytes: AtomicU64,
    pub retries: AtomicU64,
    pub failed_batches: AtomicU64,
    pub request_latency_total_us: AtomicU64,
}

pub(crate) struct State {
    pub acc: Accumulator,
    sticky: HashMap<Arc<str>, Sticky>,
}

/// What the producer handle and its sender task share.
pub(crate) struct Shared {
    pub client: Client,
    pub config: ProducerConfig,
    pub state: Mutex<State>,
    /// Wakes the sender: a batch opened or filled, a flush, metadata arrived.
    pub wake: Notify,
    /// Signalled when the last outstanding batch completed.
    pub idle: Notify,
    pub buffer: Semaphore,
    pub closing: AtomicBool,
    pub counters: Counters,
}

impl Shared {
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere mid-update of plain
        // bookkeeping; carrying on beats losing every record in it.
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Bookkeeping once a batch is done for good.
    pub fn finished(&self, reserved: usize) {
        self.buffer.add_permits(reserved);
        let mut state = self.state();
        state.acc.outstanding = state.acc.outstanding.saturating_sub(1);
        if state.acc.outstanding == 0 {
            self.idle.notify_waiters();
        }
    }
}

pub struct Producer {
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
}

impl Producer {
    pub fn new(client: Client, config: ProducerConfig) -> Producer {
        let shared = Arc::new(Shared {
            client,
            state: Mutex::new(State {
                acc: Accumulator::new(config.batch_size, config.linger),
                sticky: HashMap::new(),
            }),
            wake: Notify::new(),
            idle: Notify::new(),
            buffer: Semaphore::new(config.buffer_memory.min(Semaphore::MAX_PERMITS)),
            closing: AtomicBool::new(false),
            counters: Counters::default(),
            config,
        });
        let sender = tokio::spawn(Sender::new(shared.clone()).run());
        Producer {
            shared,
            sender: Some(sender),
        }
    }

    pub fn client(&self) -> &Client {
        &self.shared.client
    }

    /// Queues a record. Waits only while `buffer.memory` is used up (or for
    /// the topic's metadata the first time); the returned future resolves
    /// when the broker acknowledged the record.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        let shared = &self.shared;
        let topic = shared.client.topic(&record.topic).await?;
        let key_len = record.key.as_ref().map_or(0, Bytes::len);
        let size = key_len + record.value.as_ref().map_or(0, Bytes::len) + 16;
        let permits = u32::try_from(size)
            .ok()
            .filter(|&p| (p as usize) <= shared.config.buffer_memory)
            .ok_or_else(|| {
                Error::klink(
                    Kind::Config,
                    format!("a record of {size} bytes is larger than buffer.memory"),
                )
            })?;
        let partitions = topic.partitions.len();
        let partition = match (record.partition, &record.key) {
            (Some(p), _) if usize::try_from(p).is_ok_and(|p| p < partitions) => p,
            (Some(p), _) => {
                return Err(Error::klink(
                    Kind::Config,
                    format!("{} has no partition {p}", topic.name),
                ));
            }
            (None, Some(key)) => partition_for_key(key, partitions) as i32,
            (None, None) => -1,
        };
        shared
            .buffer
            .acquire_many(permits)
            .await
            .map_err(|_| Error::klink(Kind::Closed, "the producer is closed"))?
            .forget();
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let now = Instant::now();
        let (appended, partition) = {
            let mut state = shared.state();
            let partition = if partition >= 0 {
                partition
            } else {
                let State { sticky, .. } = &mut *state;
                let sticky = sticky.entry(topic.name.clone()).or_default();
                sticky.next(partitions, size, shared.config.batch_size) as i32
            };
            let appended = state.acc.append(
                &topic.name,
                partition,
                record.key,
                record.value,
                timestamp,
                size,
                now,
            );
            (appended, partition)
        };
        if appended.wake_sender {
            shared.wake.notify_one();
        }
        Ok(DeliveryFuture {
            outcome: appended.outcome,
            topic: topic.name.clone(),
            partition,
            index: appended.index,
        })
    }

    /// Sends everything queued now, ignoring linger, and waits until every
    /// batch queued so far has its answer.
    pub async fn flush(&self) {
        self.shared.state().acc.flushing += 1;
        self.shared.wake.notify_one();
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.state().acc.outstanding == 0 {
                break;
            }
            idle.await;
        }
        {
            let mut state = self.shared.state();
            state.acc.flushing = state.acc.flushing.saturating_sub(1);
        }
        if self.shared.config.acks == Acks::None {
            // acks=0 batches count as done once queued on the connection;
            // flushed means on the wire and read by the broker.
            self.shared.client.sync_connections().await;
        }
    }

    /// Flushes and stops the sender.
    pub async fn close(mut self) {
        self.flush().await;
        self.stop();
        if let Some(sender) = self.sender.take() {
            let _ = sender.await;
        }
    }

    fn stop(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.state().acc.flushing += 1;
        self.shared.wake.notify_one();
    }

    pub fn metrics(&self) -> ProducerMetrics {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProducerMetrics {
            requests: get(&c.requests),
            batches: get(&c.batches),
            records: get(&c.records),
            batch_bytes: get(&c.batch_bytes),
            retries: get(&c.retries),
            failed_batches: get(&c.failed_batches),
            request_latency_total_us: get(&c.request_latency_total_us),
        }
    }
}

impl Drop for Producer {
    /// Queued records are still sent; the sender exits once they are done.
    fn drop(&mut self) {
        self.stop();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
