//! Copying one partition source -> target, exactly once.
//!
//! The copier fetches from the source leader with read_committed, keeps the
//! batches a read_committed consumer would see ([`super::committed`]), and
//! produces each as the bytes it is (codec, keys, values, headers and
//! timestamps untouched) under klink's own idempotent producer id on the
//! target, rewriting only the producer id, epoch, base sequence and CRC
//! (DESIGN trap 12). Several batches are in flight on the pipelined target
//! connection; Kafka takes one batch per partition per request.
//!
//! The mirror is the only writer of a mirror topic while it is mirroring
//! (clients' writes still go to the source), so each batch's target offset
//! is known before it is sent: the target's log end plus what went before
//! it. An answer with another offset means someone else writes the target,
//! and the copier stops rather than guess. A duplicate answer (a retried
//! batch that had landed) lands where it was predicted.
//!
//! After a crash the offset map may lag the target (batches landed, entries
//! not yet written). On start the copier pairs the target's batches beyond
//! the map, in order, with the source batches the map has not seen, so no
//! batch is copied twice and none is skipped.
//!
//! The same copier runs the other way while a topic is promoted (the
//! reverse mirror, target -> source): `source` and `target` below name the
//! cluster it reads and the cluster it writes, and its map entries are
//! written in source -> target terms whichever way it copies.
//!
//! About 680 lines: the copy path (fetch, cut, window of sends, the
//! drain's fetches) in either direction shares the copier's position,
//! sequence and target end, and is read and checked together. The
//! reconciliation after a crash is in `copier_reconcile.rs`.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;

use super::bypass::BypassWatch;
use super::committed::{Walked, walk};
use super::compacted::cut_at_holes;
use super::gate::CopyGate;
use super::holes::up_to_a_hole;
use super::offset_map::{Direction, OffsetLog};
use super::requests::{fetch, fetch_on, init_producer_id, leader_of};
use super::sender::SenderPool;
use crate::batch;
use crate::client::{Client, PartitionResponse, broker_error};
use crate::error::{Error, Kind, Result};
use crate::route::Identity;
use crate::upstream::UpstreamConn;

/// Kafka sequences wrap at 2^31.
const SEQUENCE_MODULUS: i64 = 1 << 31;

#[derive(Debug, Clone)]
pub struct CopyConfig {
    /// Produce requests in flight on the target per partition.
    pub window: usize,
    /// Bytes one source fetch may return for the partition.
    pub fetch_max_bytes: i32,
    /// How long a source fetch waits for records.
    pub fetch_wait: Duration,
    /// Retries of a refused batch before the step fails.
    pub retries: u32,
}

impl Default for CopyConfig {
    fn default() -> Self {
        CopyConfig {
            window: 16,
            fetch_max_bytes: 8 * 1024 * 1024,
            fetch_wait: Duration::from_millis(100),
            retries: 5,
        }
    }
}

/// Where a copier starts when its offset map does not reach further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub direction: Direction,
    /// Offset on the cluster read where copying starts.
    pub from: i64,
    /// Where the first batch lands on the cluster written; `None`: at
    /// that partition's log start (a new mirror topic).
    pub to: Option<i64>,
}

impl Origin {
    /// A link's first copy source -> target, from `start` on the source.
    pub fn forward(start: i64) -> Origin {
        Origin {
            direction: Direction::Forward,
            from: start,
            to: None,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
    /// The source's high watermark as the fetch reported it.
    pub source_end: i64,
    /// Where copying continues on the source.
    pub position: i64,
    /// Where this step's fetch started.
    pub fetched_from: i64,
    /// Records found on the source that klink did not write there.
    pub bypassed: i64,
}

impl Progress {
    /// Records the source held beyond what was copied when this step's
    /// fetch was answered (transaction markers count). 0 only when a fetch
    /// found nothing new: the mirror has caught up, not merely copied
    /// what one fetch brought while more arrived.
    pub fn lag(&self) -> i64 {
        (self.source_end - self.fetched_from).max(0)
    }
}

pub struct PartitionCopier {
    source: Client,
    target: Client,
    topic: Arc<str>,
    partition: i32,
    config: CopyConfig,
    direction: Direction,
    log: OffsetLog,
    /// Next source offset to copy.
    position: i64,
    /// Where the next batch lands on the target.
    target_end: i64,
    producer: Identity,
    /// Unwrapped; written modulo 2^31.
    next_sequence: i64,
    last_sync: std::time::Instant,
    /// The next source fetch, already under way, and where it starts.
    prefetched: Option<(i64, tokio::task::JoinHandle<Result<PartitionResponse>>)>,
    /// The target's Produce streams, shared with the topic's other copiers.
    pool: Arc<SenderPool>,
    /// Whether the last fetch brought records: a busy copier fetches with a
    /// short wait (tansu holds a fetch for its whole wait whenever it cannot
    /// fill it), an idle one with the configured wait.
    busy: bool,
    /// When a fetch last brought records: a partition written to lately
    /// waits less, so that a promotion's drain (which needs the last
    /// records copied) does not wait out a long fetch.
    last_records: Instant,
    bypass: Option<BypassWatch>,
    /// A hole seen in the source's offsets: where, and since when.
    hole: Option<(i64, std::time::Instant)>,
    /// Where a promotion stops this copier, and what it reports to it.
    gate: Arc<CopyGate>,
    /// The connection of this copier's own that its fetches take while a
    /// flip drains it (`drain_fetch`).
    drain_conn: Option<UpstreamConn>,
    /// Where sessions read the map to translate clients' offsets.
    numbering: Option<Arc<crate::numbering::Numbering>>,
}

impl Drop for PartitionCopier {
    fn drop(&mut self) {
        if let Some((_, pending)) = self.prefetched.take() {
            pending.abort();
        }
        // Nobody copies in this direction until the next copier opens: a
        // flip waits for that rather than for a position that went away.
        self.gate.note_position(-1);
    }
}

/// A busy copier's fetch wait (see `busy`).
const BUSY_FETCH_WAIT: Duration = Duration::from_millis(5);
/// The fetch wait while a flip drains the copy: short, not 0, so that a
/// copier with nothing left to copy before the end does not spin.
const DRAIN_FETCH_WAIT: Duration = Duration::from_millis(2);
/// The fetch wait of a copier whose partition got records lately.
const RECENT_FETCH_WAIT: Duration = Duration::from_millis(20);
/// How long "lately" is.
const RECENTLY: Duration = Duration::from_secs(2);
/// How often a busy copier fsyncs its offset map.
const SYNC_EVERY: Duration = Duration::from_millis(500);

impl PartitionCopier {
    /// Opens the partition's map at `map_path`, starts at `origin` unless
    /// the map reaches further (a crash, or copies since the last flip),
    /// asks the cluster written for klink's producer id, and reconciles
    /// the map with what that cluster already holds.
    pub async fn open(
        source: Client,
        target: Client,
        topic: &str,
        partition: i32,
        map_path: &Path,
        origin: Origin,
        config: CopyConfig,
    ) -> Result<PartitionCopier> {
        let log = OffsetLog::open(map_path)?;
        let topic: Arc<str> = Arc::from(topic);
        let producer = init_producer_id(&target, &topic, partition).await?;
        // The map and the origin only grow together (an origin is where
        // both clusters held the same records at a flip; entries after it
        // lie beyond it on both sides), so the further of the two is
        // where this copy stands.
        let ends = log.map().ends(origin.direction);
        let mut copier = PartitionCopier {
            position: ends.map_or(origin.from, |(from, _)| from.max(origin.from)),
            target_end: 0,
            source,
            target,
            topic,
            partition,
            config,
            direction: origin.direction,
            log,
            producer,
            next_sequence: 0,
            last_sync: std::time::Instant::now(),
            prefetched: None,
            busy: false,
            last_records: Instant::now(),
            pool: Arc::default(),
            bypass: None,
            hole: None,
            gate: Arc::default(),
            drain_conn: None,
            numbering: None,
        };
        copier.target_end = match (ends, origin.to) {
            (Some((_, mapped)), Some(to)) => mapped.max(to),
            (Some((_, mapped)), None) => mapped,
            (None, Some(to)) => to,
            (None, None) => copier.target_log_start().await?,
        };
        copier.reconcile().await?;
        Ok(copier)
    }

    /// Shares the target's Produce streams with other copiers (the
    /// partitions of one topic): their batches go out in the same requests.
    pub fn with_pool(mut self, pool: Arc<SenderPool>) -> PartitionCopier {
        self.pool = pool;
        self
    }

    /// Shares where it stands, and takes where to stop, with a promotion.
    pub fn with_gate(mut self, gate: Arc<CopyGate>) -> PartitionCopier {
        gate.note_position(self.position);
        self.gate = gate;
        self
    }

    /// Checks the source's new batches for writes that did not go through
    /// klink (DESIGN trap 13).
    pub fn with_bypass_watch(mut self, watch: BypassWatch) -> PartitionCopier {
        self.bypass = Some(watch);
        self
    }

    /// Publishes the map to the sessions that translate offsets, now and
    /// after every batch copied.
    pub fn with_numbering(
        mut self,
        numbering: Arc<crate::numbering::Numbering>,
    ) -> PartitionCopier {
        numbering.publish_map(&self.topic, self.partition, self.log.map());
        self.numbering = Some(numbering);
        self
    }

    fn publish_map(&self) {
        if let Some(numbering) = &self.numbering {
            numbering.publish_map(&self.topic, self.partition, self.log.map());
        }
    }

    fn set_position(&mut self, position: i64) {
        self.position = position;
        self.gate.note_position(position);
    }

    pub fn position(&self) -> i64 {
        self.position
    }

    /// Where the next batch lands on the cluster written.
    pub fn target_end(&self) -> i64 {
        self.target_end
    }

    pub fn map(&self) -> &super::OffsetMap {
        self.log.map()
    }

    /// Fetches once from the source and copies what came back.
    pub async fn step(&mut self) -> Result<Progress> {
        let began = std::time::Instant::now();
        let gate = self.gate.clone();
        let drain_started = gate.drain_started();
        tokio::pin!(drain_started);
        drain_started.as_mut().enable();
        let usual = if gate.draining() {
            None
        } else {
            self.drain_conn = None;
            let prefetched = self.prefetched.take();
            let config = self.fetch_config();
            let (source, topic, partition, position) =
                (&self.source, &self.topic, self.partition, self.position);
            let usual = async move {
                match prefetched {
                    Some((at, pending)) if at == position => pending
                        .await
                        .map_err(|e| Error::klink(Kind::Io, format!("mirror fetch task: {e}")))?,
                    stale => {
                        if let Some((_, pending)) = stale {
                            pending.abort();
                        }
                        fetch(source, topic, partition, position, 1, &config).await
                    }
                }
            };
            // A drain starting while this waits on a long fetch: the
            // fetch is dropped (its answer goes nowhere) for one at once.
            tokio::select! {
                fetched = usual => Some(fetched),
                () = &mut drain_started => None,
            }
        };
        let fetched = match usual {
            Some(fetched) => fetched?,
            None => self.drain_fetch().await?,
        };
        self.busy = !fetched.records.is_empty();
        if self.busy {
            self.last_records = Instant::now();
        }
        let walked = walk(&fetched.records, &fetched.aborted).map_err(|e| {
            Error::upstream(
                self.source.cluster_name(),
                Kind::Protocol,
                format!("records of {}/{}: {e}", self.topic, self.partition),
            )
        })?;
        let mut progress = Progress {
            source_end: fetched.high_watermark,
            fetched_from: self.position,
            ..Default::default()
        };
        // Only what a read_committed consumer may read yet.
        let stable = if fetched.last_stable_offset >= 0 {
            fetched.last_stable_offset
        } else {
            fetched.high_watermark
        };
        let limit = self.gate.limit();
        let walked: Vec<Walked> = walked
            .into_iter()
            .filter(|w| w.last_offset < stable.min(limit) && w.last_offset >= self.position)
            .collect();
        let walked = self.up_to_a_hole(walked);
        let (records, walked) = self.cut_at_holes(&fetched.records, walked)?;
        if let Some(watch) = &mut self.bypass {
            let written: Vec<(i64, i64, i64)> = walked
                .iter()
                .filter(|w| !w.control)
                .map(|w| (w.base_offset, w.last_offset, i64::from(w.records)))
                .collect();
            progress.bypassed = watch.saw(&written, fetched.high_watermark);
        }
        let fetched_in = began.elapsed();
        // Fetch the next run while this one is copied: where it starts is
        // known (after the last batch walked), and a copy that falls short
        // simply drops the prefetch.
        // Only when the source is known to hold more: a prefetch answered
        // at the log end would report a stale high watermark (a lag of 0)
        // after new records arrived.
        if let Some(next) = walked
            .last()
            .map(|w| w.last_offset + 1)
            .filter(|next| *next < fetched.high_watermark && !gate.draining())
        {
            let (source, topic, partition) =
                (self.source.clone(), self.topic.clone(), self.partition);
            let config = self.fetch_config();
            let pending =
                tokio::spawn(
                    async move { fetch(&source, &topic, partition, next, 1, &config).await },
                );
            self.prefetched = Some((next, pending));
        }
        self.copy(&records, &walked, &mut progress).await?;
        tracing::trace!(topic = %self.topic, partition = self.partition, bytes = fetched.records.len(), batches = progress.batches, fetch_ms = fetched_in.as_millis() as u64, copy_ms = (began.elapsed() - fetched_in).as_millis() as u64, "mirror step");
        // The map need not be durable batch by batch: after a crash the
        // target's batches beyond it are paired up again (`reconcile`).
        // Synced when idle or every so often, it costs nothing per batch.
        if progress.batches == 0 || self.last_sync.elapsed() >= SYNC_EVERY {
            self.log.sync()?;
            self.last_sync = std::time::Instant::now();
        }
        progress.position = self.position;
        Ok(progress)
    }

    async fn copy(
        &mut self,
        records: &Bytes,
        walked: &[Walked],
        progress: &mut Progress,
    ) -> Result<()> {
        let mut attempts = 0;
        let mut next = 0;
        while next < walked.len() {
            match self.send_window(records, &walked[next..], progress).await {
                Ok(done) => {
                    next += done;
                    attempts = 0;
                    if done == 0 {
                        // Stopped at the gate's limit: the rest waits.
                        break;
                    }
                }
                Err(e) if e.retriable && attempts < self.config.retries => {
                    attempts += 1;
                    tracing::debug!(topic = %self.topic, partition = self.partition, error = %e, attempts, "mirror produce failed; retrying");
                    let _ = self.target.refresh_metadata().await;
                    tokio::time::sleep(Duration::from_millis(100 << attempts.min(5))).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends batches with up to `window` in flight, in order, until one is
    /// refused or all are copied; returns how many of `walked` are done
    /// (copied or dropped).
    async fn send_window(
        &mut self,
        records: &Bytes,
        walked: &[Walked],
        progress: &mut Progress,
    ) -> Result<usize> {
        let leader = self.target_leader().await?;
        let sender = self.pool.get(&self.target, leader).await?;
        let mut in_flight = VecDeque::new();
        let mut sent = 0;
        // Planned ahead: where each batch goes and under which sequence.
        let mut planned_end = self.target_end;
        let mut planned_sequence = self.next_sequence;
        let mut done = 0;
        let mut limited = false;
        loop {
            while in_flight.len() < self.config.window.max(1) && sent < walked.len() && !limited {
                let batch = &walked[sent];
                // Counted before the limit is looked at (see `gate`).
                let Some(ticket) = self.gate.admit(batch.last_offset) else {
                    limited = true;
                    break;
                };
                sent += 1;
                if !batch.copy {
                    in_flight.push_back((
                        batch.clone(),
                        None,
                        planned_end,
                        planned_sequence,
                        ticket,
                    ));
                    continue;
                }
                let bytes = self.reidentify(&records[batch.bytes.clone()], planned_sequence)?;
                let answer = sender.send(&self.topic, self.partition, bytes)?;
                in_flight.push_back((
                    batch.clone(),
                    Some(answer),
                    planned_end,
                    planned_sequence,
                    ticket,
                ));
                planned_end += i64::from(batch.records);
                planned_sequence += i64::from(batch.records);
            }
            let Some((batch, answer, expected, sequence, _ticket)) = in_flight.pop_front() else {
                return Ok(done);
            };
            let Some(answer) = answer else {
                // Dropped (marker or aborted): a gap, nothing to wait for.
                self.set_position(batch.last_offset + 1);
                done += 1;
                continue;
            };
            let answer = answer.await.map_err(|_| {
                Error::upstream(
                    self.target.cluster_name(),
                    Kind::Closed,
                    "mirror sender stopped",
                )
            })?;
            let answer = match answer {
                Ok(answer) => answer,
                Err(e) => {
                    self.pool.drop_broker(leader);
                    self.target.drop_conn(leader);
                    return Err(e);
                }
            };
            let landed_at = match answer.error_code {
                0 => answer.base_offset,
                code if code == ResponseError::DuplicateSequenceNumber.code() => expected,
                code => {
                    return Err(broker_error(
                        self.target.cluster_name(),
                        code,
                        &format!("mirror Produce {}/{}", self.topic, self.partition),
                    ));
                }
            };
            if landed_at != expected {
                let mut error = Error::upstream(
                    self.target.cluster_name(),
                    Kind::Protocol,
                    format!(
                        "{}/{}: a mirrored batch landed at {landed_at}, expected {expected}: \
                         something else writes the mirror topic; mirroring stops here",
                        self.topic, self.partition
                    ),
                );
                // Sending again would only write the batches twice.
                error.retriable = false;
                return Err(error);
            }
            self.log.append_copied(
                self.direction,
                batch.base_offset,
                batch.last_offset,
                landed_at,
            )?;
            self.publish_map();
            self.set_position(batch.last_offset + 1);
            self.target_end = landed_at + i64::from(batch.records);
            self.next_sequence = sequence + i64::from(batch.records);
            progress.batches += 1;
            progress.records += u64::try_from(batch.records).unwrap_or(0);
            progress.bytes += (batch.bytes.end - batch.bytes.start) as u64;
            done += 1;
        }
    }

    /// Batches a compaction left holes in, cut into batches of consecutive
    /// records (`compacted`), and what was copied of them already left out.
    fn cut_at_holes(&self, records: &Bytes, walked: Vec<Walked>) -> Result<(Bytes, Vec<Walked>)> {
        let (records, walked) = cut_at_holes(records, walked).map_err(|e| {
            Error::upstream(
                self.source.cluster_name(),
                Kind::Protocol,
                format!("records of {}/{}: {e}", self.topic, self.partition),
            )
        })?;
        let from = self.position;
        let walked = walked
            .into_iter()
            .filter(|w| w.last_offset >= from)
            .collect();
        Ok((records, walked))
    }

    fn up_to_a_hole(&mut self, walked: Vec<Walked>) -> Vec<Walked> {
        let (kept, hole) = up_to_a_hole(walked, self.position, self.hole, Instant::now());
        if let Some((at, _)) = hole
            && self.hole.is_none_or(|(seen, _)| seen != at)
        {
            tracing::debug!(topic = %self.topic, partition = self.partition, at, "mirror: a hole in the source's offsets; fetching it again");
        }
        if self.hole.is_some() && hole.is_none() {
            tracing::info!(topic = %self.topic, partition = self.partition, "mirror: a hole in the source's offsets stayed: a gap in the offset map");
        }
        self.hole = hole;
        kept
    }

    /// A fetch while a flip drains this copy: it holds clients' writes
    /// until the copy reaches the drain end, so no long wait, and on a
    /// connection of its own (brokers answer a connection's requests in
    /// order, and the shared one may be behind the other partitions' long
    /// fetches).
    async fn drain_fetch(&mut self) -> Result<PartitionResponse> {
        let conn = match &self.drain_conn {
            Some(conn) if !conn.is_closed() => conn.clone(),
            _ => {
                let meta = self.source.topic(&self.topic).await?;
                let leader = leader_of(&self.source, &meta, &self.topic, self.partition)?;
                let conn = self.source.new_broker_conn(leader).await?;
                self.drain_conn = Some(conn.clone());
                conn
            }
        };
        let mut config = self.config.clone();
        config.fetch_wait = DRAIN_FETCH_WAIT;
        let fetched = fetch_on(
            &self.source,
            Some(&conn),
            &self.topic,
            self.partition,
            self.position,
            1,
            &config,
        )
        .await;
        if fetched.is_err() {
            self.drain_conn = None;
        }
        fetched
    }

    fn fetch_config(&self) -> CopyConfig {
        let mut config = self.config.clone();
        if self.busy {
            config.fetch_wait = BUSY_FETCH_WAIT;
        } else if self.last_records.elapsed() < RECENTLY {
            config.fetch_wait = config.fetch_wait.min(RECENT_FETCH_WAIT);
        }
        config
    }

    fn reidentify(&self, batch: &[u8], sequence: i64) -> Result<Bytes> {
        let mut bytes = BytesMut::from(batch);
        batch::rewrite_producer(
            &mut bytes,
            self.producer.producer_id,
            self.producer.epoch,
            // rem_euclid by 2^31 fits an i32.
            sequence.rem_euclid(SEQUENCE_MODULUS) as i32,
        )
        .map_err(|e| Error::klink(Kind::Protocol, format!("rewriting a mirrored batch: {e}")))?;
        Ok(bytes.freeze())
    }

    async fn target_leader(&self) -> Result<i32> {
        let meta = self.target.topic(&self.topic).await?;
        meta.leader(self.partition).ok_or_else(|| {
            Error::upstream(
                self.target.cluster_name(),
                Kind::Protocol,
                format!(
                    "{}/{} has no leader on the target",
                    self.topic, self.partition
                ),
            )
        })
    }

    async fn target_log_start(&self) -> Result<i64> {
        let meta = self.target.topic(&self.topic).await?;
        let earliest = self
            .target
            .list_offsets(&meta, &[self.partition], -2)
            .await?;
        Ok(earliest.get(&self.partition).copied().unwrap_or(0))
    }
}

#[path = "copier_reconcile.rs"]
mod reconcile;
