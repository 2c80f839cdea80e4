//! Reading a whole topic without a consumer group: every partition from the
//! earliest offset, one Fetch per leader at a time, positions advanced to the
//! batch boundary after the last complete batch.
//!
//! Advancing by batch boundaries matters beyond tidiness: tansu 0.6 answers
//! a fetch that starts inside a batch with the batches after it, so a
//! position inside a batch would lose records.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::fetch_response::{self, PartitionResponse};
use super::{Client, TopicMeta, broker_error, is_stale_metadata};
use crate::batch::scan_batches;
use crate::error::{Error, Kind, Result};

/// Fetch settings, named after the Java consumer's.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// `fetch.max.wait.ms`. Short by default: tansu holds a fetch for the
    /// whole wait whenever it cannot fill `max_bytes`, which caps a consumer
    /// at one response per wait.
    pub max_wait: Duration,
    /// `fetch.min.bytes`.
    pub min_bytes: i32,
    /// `fetch.max.bytes`.
    pub max_bytes: i32,
    /// `max.partition.fetch.bytes`.
    pub partition_max_bytes: i32,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            max_wait: Duration::from_millis(10),
            min_bytes: 1,
            max_bytes: 50 * 1024 * 1024,
            partition_max_bytes: 1024 * 1024,
        }
    }
}

/// Whole record batches read from one partition in one fetch.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub partition: i32,
    /// Complete batches as the broker sent them (a slice of the response).
    pub records: bytes::Bytes,
    pub batches: u32,
    /// Records a consumer sees (control batches excluded).
    pub record_count: u64,
    pub high_watermark: i64,
    /// Where the next fetch of this partition starts.
    pub next_offset: i64,
}

pub struct Fetcher {
    client: Client,
    topic: Arc<TopicMeta>,
    config: FetchConfig,
    positions: BTreeMap<i32, i64>,
    high_watermarks: BTreeMap<i32, i64>,
}

impl Fetcher {
    /// Assigns every partition of `topic`, each at its earliest offset.
    pub async fn assign_all(client: Client, topic: &str, config: FetchConfig) -> Result<Fetcher> {
        let meta = client.topic(topic).await?;
        let partitions: Vec<i32> = meta.partitions.iter().map(|p| p.partition).collect();
        let earliest = client.list_offsets(&meta, &partitions, -2).await?;
        let mut positions = BTreeMap::new();
        for p in partitions {
            let offset = earliest.get(&p).copied().ok_or_else(|| {
                Error::upstream(
                    client.cluster_name(),
                    Kind::Protocol,
                    format!("ListOffsets gave no offset for {topic}/{p}"),
                )
            })?;
            positions.insert(p, offset);
        }
        Ok(Fetcher {
            client,
            topic: meta,
            config,
            positions,
            high_watermarks: BTreeMap::new(),
        })
    }

    pub fn positions(&self) -> &BTreeMap<i32, i64> {
        &self.positions
    }

    /// The high watermarks the last fetches reported (the log end to
    /// consume up to; more reliable on tansu than ListOffsets "latest").
    pub fn high_watermarks(&self) -> &BTreeMap<i32, i64> {
        &self.high_watermarks
    }

    /// One fetch from every leader, concurrently. Partitions with nothing
    /// new are left out of the result.
    pub async fn fetch(&mut self) -> Result<Vec<Fetched>> {
        if let Some(fresh) = self.client.metadata().topics.get(self.topic.name.as_ref()) {
            self.topic = fresh.clone();
        }
        let mut by_leader: HashMap<i32, Vec<i32>> = HashMap::new();
        let mut leaderless = false;
        for &p in self.positions.keys() {
            match self.topic.leader(p) {
                Some(leader) => by_leader.entry(leader).or_default().push(p),
                None => leaderless = true,
            }
        }
        let version = self.client.versions().fetch;
        let rounds = by_leader.into_iter().map(|(leader, partitions)| {
            let request = self.request(&partitions);
            let client = self.client.clone();
            let wait = self.config.max_wait;
            async move {
                let result = async {
                    let frame = client.encode(&request, version)?;
                    let conn = client.broker_conn(leader).await?;
                    client.round_trip(&conn, frame, wait).await
                }
                .await;
                (leader, result)
            }
        });
        let answers = futures::future::join_all(rounds).await;
        let mut fetched = Vec::new();
        let mut stale = leaderless;
        for (leader, answer) in answers {
            let frame = match answer {
                Ok(frame) => frame,
                Err(e) if e.retriable => {
                    tracing::debug!(error = %e, leader, "fetch failed; will retry");
                    self.client.drop_conn(leader);
                    stale = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let response = fetch_response::scan(&frame.payload(), version).map_err(|e| {
                Error::upstream(
                    self.client.cluster_name(),
                    Kind::Protocol,
                    format!("Fetch response: {e}"),
                )
            })?;
            if response.error_code != 0 {
                return Err(broker_error(
                    self.client.cluster_name(),
                    response.error_code,
                    "Fetch",
                ));
            }
            for partition in response.partitions {
                match self.absorb(partition).await? {
                    Absorbed::Records(f) => fetched.push(f),
                    Absorbed::Nothing => {}
                    Absorbed::Stale => stale = true,
                }
            }
        }
        if stale {
            // Errors here only delay the next round; the next fetch retries.
            if let Err(e) = self.client.refresh_metadata().await {
                tracing::debug!(error = %e, "metadata refresh failed");
            }
        }
        Ok(fetched)
    }

    fn request(&self, partitions: &[i32]) -> FetchRequest {
        let config = &self.config;
        let partitions = partitions
            .iter()
            .map(|&p| {
                FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(self.positions.get(&p).copied().unwrap_or(0))
                    .with_partition_max_bytes(config.partition_max_bytes)
            })
            .collect();
        FetchRequest::default()
            .with_max_wait_ms(i32::try_from(config.max_wait.as_millis()).unwrap_or(i32::MAX))
            .with_min_bytes(config.min_bytes)
            .with_max_bytes(config.max_bytes)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(
                        self.topic.name.to_string(),
                    )))
                    .with_partitions(partitions),
            ])
    }

    async fn absorb(&mut self, answer: PartitionResponse) -> Result<Absorbed> {
        let p = answer.partition;
        let Some(&position) = self.positions.get(&p) else {
            return Ok(Absorbed::Nothing); // not ours (another topic or partition)
        };
        if answer.topic != self.topic.name.as_ref() {
            return Ok(Absorbed::Nothing);
        }
        match answer.error_code {
            0 => {}
            code if code == ResponseError::OffsetOutOfRange.code() => {
                let earliest = if answer.log_start_offset >= 0 {
                    answer.log_start_offset
                } else {
                    let offsets = self.client.list_offsets(&self.topic, &[p], -2).await?;
                    offsets.get(&p).copied().unwrap_or(position)
                };
                tracing::info!(
                    partition = p,
                    position,
                    earliest,
                    "offset out of range; restarting at the earliest"
                );
                self.positions.insert(p, earliest);
                return Ok(Absorbed::Nothing);
            }
            code if is_stale_metadata(code) => return Ok(Absorbed::Stale),
            code => {
                return Err(broker_error(
                    self.client.cluster_name(),
                    code,
                    &format!("Fetch {}/{p}", self.topic.name),
                ));
            }
        }
        self.high_watermarks.insert(p, answer.high_watermark);
        let scan = scan_batches(&answer.records).map_err(|e| {
            Error::upstream(
                self.client.cluster_name(),
                Kind::Protocol,
                format!("records of {}/{p}: {e}", self.topic.name),
            )
        })?;
        let Some(next_offset) = scan.next_offset.filter(|&n| n > position) else {
            return Ok(Absorbed::Nothing);
        };
        self.positions.insert(p, next_offset);
        Ok(Absorbed::Records(Fetched {
            partition: p,
            records: answer.records.slice(..scan.complete_len),
            batches: scan.batches,
            record_count: scan.records,
            high_watermark: answer.high_watermark,
            next_offset,
        }))
    }
}

enum Absorbed {
    Records(Fetched),
    Nothing,
    Stale,
}
