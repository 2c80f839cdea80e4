//! Records gathered per partition into batches, and the decision which
//! batches are ready to send. Pure bookkeeping: no I/O, no clock of its own,
//! so the rules are tested with made-up instants.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::Shared;
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, Record,
    RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::sync::oneshot;

use crate::batch::V2_HEADER_LEN;
use crate::error::{Error, Kind, Result};

/// What the broker said about a whole batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAck {
    /// -1 when the producer did not wait for an answer (acks=0).
    pub base_offset: i64,
}

pub(crate) type Outcome = Shared<oneshot::Receiver<Result<BatchAck>>>;

/// Records for one partition on their way into one Produce request.
pub(crate) struct ProducerBatch {
    pub topic: Arc<str>,
    pub partition: i32,
    pub records: Vec<Record>,
    /// Estimated encoded size, header included.
    pub bytes: usize,
    /// Bytes reserved from the producer's buffer for these records.
    pub reserved: usize,
    pub created: Instant,
    pub retry_at: Option<Instant>,
    pub attempts: u32,
    done: oneshot::Sender<Result<BatchAck>>,
    outcome: Outcome,
}

impl ProducerBatch {
    fn new(topic: Arc<str>, partition: i32, now: Instant) -> ProducerBatch {
        let (done, rx) = oneshot::channel();
        ProducerBatch {
            topic,
            partition,
            records: Vec::new(),
            bytes: V2_HEADER_LEN,
            reserved: 0,
            created: now,
            retry_at: None,
            attempts: 0,
            done,
            outcome: rx.shared(),
        }
    }

    pub fn complete(self, result: Result<BatchAck>) -> usize {
        let _ = self.done.send(result);
        self.reserved
    }

    /// The records as one magic v2 batch, without producer id (not idempotent).
    pub fn encode(&self, compression: Compression) -> Result<Bytes> {
        let mut buf = BytesMut::with_capacity(self.bytes);
        RecordBatchEncoder::encode(
            &mut buf,
            &self.records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .map_err(|e| Error::klink(Kind::Protocol, format!("encoding a record batch: {e}")))?;
        Ok(buf.freeze())
    }
}

/// Where a record went: its batch's outcome and its place in that batch.
pub(crate) struct Appended {
    pub outcome: Outcome,
    pub index: i32,
    /// A batch was opened or filled up: the sender has something new to time.
    pub wake_sender: bool,
}

pub(crate) struct Accumulator {
    batch_size: usize,
    linger: Duration,
    queues: HashMap<(Arc<str>, i32), VecDeque<ProducerBatch>>,
    /// Flushes in progress: while any is, linger is ignored.
    pub flushing: usize,
    /// Batches created and not completed yet (queued or in flight).
    pub outstanding: usize,
}

impl Accumulator {
    pub fn new(batch_size: usize, linger: Duration) -> Accumulator {
        Accumulator {
            batch_size: batch_size.max(1),
            linger,
            queues: HashMap::new(),
            flushing: 0,
            outstanding: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn append(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        key: Option<Bytes>,
        value: Option<Bytes>,
        timestamp: i64,
        reserved: usize,
        now: Instant,
    ) -> Appended {
        let batch_size = self.batch_size;
        let queue = self.queues.entry((topic.clone(), partition)).or_default();
        let mut wake_sender = false;
        let size =
            |batch: &ProducerBatch| record_size(batch.records.len(), key.as_ref(), value.as_ref());
        let fits = queue
            .back()
            .is_some_and(|b| b.retry_at.is_none() && b.bytes + size(b) <= batch_size);
        let mut batch = match queue.pop_back() {
            Some(open) if fits => open,
            other => {
                queue.extend(other);
                // A record larger than batch.size still goes, alone in its batch.
                self.outstanding += 1;
                wake_sender = true;
                ProducerBatch::new(topic.clone(), partition, now)
            }
        };
        let index = batch.records.len();
        batch.bytes += size(&batch);
        batch.reserved += reserved;
        // The encoder splits batches where `offset - sequence` changes; a
        // constant difference keeps one batch, and starting at -1 gives the
        // base sequence -1 a producer without an id must send.
        let delta = index as i64;
        batch.records.push(Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            timestamp_type: TimestampType::Creation,
            offset: delta,
            sequence: (delta as i32).wrapping_sub(1),
            timestamp,
            key,
            value,
            headers: Default::default(),
        });
        if batch.bytes >= batch_size {
            wake_sender = true;
        }
        let outcome = batch.outcome.clone();
        queue.push_back(batch);
        Appended {
            outcome,
            index: index as i32,
            wake_sender,
        }
    }

    /// Takes the ready batches (at most one per partition) whose partition
    /// `route` gives a broker for, and says when the next one will be ready.
    pub fn drain(
        &mut self,
        now: Instant,
        mut route: impl FnMut(&str, i32) -> Option<i32>,
    ) -> (Vec<(i32, ProducerBatch)>, Option<Instant>) {
        let mut ready = Vec::new();
        let mut next: Option<Instant> = None;
        let mut earliest = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        for ((topic, partition), queue) in self.queues.iter_mut() {
            let Some(front) = queue.front() else { continue };
            if let Some(at) = front.retry_at
                && at > now
            {
                earliest(at);
                continue;
            }
            let due = front.created + self.linger;
            let is_ready = queue.len() > 1
                || front.bytes >= self.batch_size
                || self.flushing > 0
                || front.retry_at.is_some()
                || due <= now;
            if !is_ready {
                earliest(due);
                continue;
            }
            if let Some(node) = route(topic, *partition)
                && let Some(batch) = queue.pop_front()
            {
                ready.push((node, batch));
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
        (ready, next)
    }

    /// Puts a batch that failed retriably back at the head of its partition.
    pub fn requeue(&mut self, mut batch: ProducerBatch, retry_at: Instant) {
        batch.retry_at = Some(retry_at);
        batch.attempts += 1;
        self.queues
            .entry((batch.topic.clone(), batch.partition))
            .or_default()
            .push_front(batch);
    }

    /// Queued batches older than `timeout`, oldest first per partition.
    pub fn take_expired(&mut self, now: Instant, timeout: Duration) -> Vec<ProducerBatch> {
        let mut expired = Vec::new();
        for queue in self.queues.values_mut() {
            while queue
                .front()
                .is_some_and(|b| now.saturating_duration_since(b.created) >= timeout)
            {
                expired.extend(queue.pop_front());
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
        expired
    }
}

/// A record's size in a v2 batch (timestamp delta assumed under 3 bytes).
fn record_size(offset_delta: usize, key: Option<&Bytes>, value: Option<&Bytes>) -> usize {
    let field = |b: Option<&Bytes>| match b {
        Some(b) => varint_len(b.len() as i64) + b.len(),
        None => 1,
    };
    let body = 1 + 3 + varint_len(offset_delta as i64) + field(key) + field(value) + 1;
    varint_len(body as i64) + body
}

fn varint_len(value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut n = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::scan_batches;

    fn topic() -> Arc<str> {
        Arc::from("t")
    }

    fn value(n: usize) -> Option<Bytes> {
        Some(Bytes::from(vec![b'v'; n]))
    }

    fn everywhere(_: &str, _: i32) -> Option<i32> {
        Some(1)
    }

    #[test]
    fn a_batch_is_ready_when_full() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(1000, Duration::from_secs(60));
        let mut wakes = 0;
        // 61 header bytes + 8 records of 109 bytes fit in 1000; a 9th does not
        for _ in 0..8 {
            wakes += acc
                .append(&topic(), 0, None, value(100), 0, 100, t0)
                .wake_sender as usize;
        }
        assert_eq!(wakes, 1, "only opening the batch wakes the sender");
        let (ready, next) = acc.drain(t0, everywhere);
        assert!(ready.is_empty(), "not full, linger not over");
        assert_eq!(next, Some(t0 + Duration::from_secs(60)));
        let appended = acc.append(&topic(), 0, None, value(100), 0, 100, t0);
        assert!(
            appended.wake_sender,
            "the record that does not fit opens a batch"
        );
        assert_eq!(appended.index, 0);
        let (ready, _) = acc.drain(t0, everywhere);
        assert_eq!(ready.len(), 1);
        let batch = &ready[0].1;
        assert_eq!(batch.records.len(), 8);
        assert!(batch.bytes <= 1000);
        assert_eq!(batch.reserved, 800);
        assert_eq!(acc.outstanding, 2);
    }

    #[test]
    fn a_batch_is_ready_when_linger_is_over() {
        let t0 = Instant::now();
        let linger = Duration::from_millis(5);
        let mut acc = Accumulator::new(16384, linger);
        acc.append(&topic(), 0, None, value(10), 0, 10, t0);
        acc.append(
            &topic(),
            1,
            None,
            value(10),
            0,
            10,
            t0 + Duration::from_millis(2),
        );
        let (ready, next) = acc.drain(t0 + Duration::from_millis(4), everywhere);
        assert!(ready.is_empty());
        assert_eq!(next, Some(t0 + linger));
        let (ready, next) = acc.drain(t0 + linger, everywhere);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.partition, 0);
        assert_eq!(next, Some(t0 + Duration::from_millis(2) + linger));
    }

    #[test]
    fn flush_ignores_linger_and_unroutable_partitions_wait() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(16384, Duration::from_secs(60));
        acc.append(&topic(), 0, None, value(10), 0, 10, t0);
        acc.append(&topic(), 1, None, value(10), 0, 10, t0);
        acc.flushing = 1;
        let (ready, _) = acc.drain(t0, |_, p| (p == 1).then_some(7));
        assert_eq!(ready.len(), 1);
        assert_eq!((ready[0].0, ready[0].1.partition), (7, 1));
        let (ready, _) = acc.drain(t0, everywhere);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.partition, 0);
    }

    #[test]
    fn a_requeued_batch_waits_for_its_backoff_and_goes_first() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(16384, Duration::ZERO);
        acc.append(&topic(), 0, None, value(10), 0, 10, t0);
        let (mut ready, _) = acc.drain(t0, everywhere);
        let Some((_, batch)) = ready.pop() else {
            panic!("one batch")
        };
        acc.append(&topic(), 0, None, value(10), 0, 10, t0);
        let backoff = t0 + Duration::from_millis(100);
        acc.requeue(batch, backoff);
        let (ready, next) = acc.drain(t0, everywhere);
        assert!(ready.is_empty());
        assert_eq!(next, Some(backoff));
        let (ready, _) = acc.drain(backoff, everywhere);
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].1.attempts, 1);
    }

    #[test]
    fn batches_encode_as_one_v2_batch_with_every_record() {
        let t0 = Instant::now();
        let mut acc = Accumulator::new(1 << 20, Duration::ZERO);
        for i in 0..300 {
            acc.append(
                &topic(),
                0,
                Some(Bytes::from(format!("k{i}"))),
                value(50),
                1000 + i,
                0,
                t0,
            );
        }
        let (mut ready, _) = acc.drain(t0, everywhere);
        let Some((_, batch)) = ready.pop() else {
            panic!("one batch")
        };
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let bytes = batch.encode(compression).expect("encode");
            let scan = scan_batches(&bytes).expect("scan");
            assert_eq!((scan.batches, scan.records), (1, 300), "{compression:?}");
            assert_eq!(scan.next_offset, Some(300));
            // base sequence -1: no producer id, no sequence
            assert_eq!(&bytes[53..57], &(-1i32).to_be_bytes());
        }
        let uncompressed = batch.encode(Compression::None).expect("encode");
        assert!(
            uncompressed.len() <= batch.bytes && batch.bytes - uncompressed.len() < 300 * 3,
            "estimate {} vs {}",
            batch.bytes,
            uncompressed.len()
        );
    }
}
