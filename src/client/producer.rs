//! The producer: `send` puts a record into its partition's open batch and
//! returns a future for the ack; one sender task per producer drains ready
//! batches into Produce requests, several in flight per broker.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use super::Client;
use super::accumulator::{Accumulator, BatchAck, Outcome};
use super::partitioner::partition_for_key;
use super::sender::Sender;
pub use super::shared::{Acks, ProducerConfig};
use super::shared::{Counters, Shared, State};
use crate::error::{Error, Kind, Result};

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
