//! The few requests the mirror makes itself, besides its Produce stream:
//! one partition's fetch (read_committed or not), a partition's log bounds,
//! and klink's own producer id on the target.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, InitProducerIdRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::copier::CopyConfig;
use crate::client::{Client, PartitionResponse, broker_error, scan_fetch_response};
use crate::error::{Error, Kind, Result};
use crate::route::Identity;
use crate::upstream::UpstreamConn;

/// A partition's log start and high watermark, from a Fetch (tansu's
/// ListOffsets "latest" is not the high watermark; a Fetch's is).
pub async fn log_bounds(client: &Client, topic: &str, partition: i32) -> Result<(i64, i64)> {
    let meta = client.topic(topic).await?;
    let earliest = client.list_offsets(&meta, &[partition], -2).await?;
    let mut start = earliest.get(&partition).copied().unwrap_or(0);
    let config = CopyConfig {
        fetch_max_bytes: 1,
        fetch_wait: Duration::ZERO,
        ..Default::default()
    };
    if start > 0 {
        // tansu answers "earliest" with the batch stored first by the
        // clock, which under concurrent producers need not be the lowest
        // offset (README quirks). A log that really starts there answers a
        // fetch from 0 with OFFSET_OUT_OF_RANGE; one that does not hands
        // back its first batch.
        if let Ok(answer) = fetch(client, topic, partition, 0, 0, &config).await
            && let Ok(Some(first)) = crate::batch::BatchHeader::parse(&answer.records)
            && first.base_offset < start
        {
            tracing::info!(
                topic,
                partition,
                listed = start,
                first = first.base_offset,
                "the source's earliest offset is below what ListOffsets said; starting there"
            );
            start = first.base_offset;
        }
    }
    let answer = fetch(client, topic, partition, start, 0, &config).await?;
    Ok((start, answer.high_watermark))
}

/// Partitions' high watermarks, each from an offset its log holds (such
/// as where its mirror stands), in one Fetch per leader of at most a byte
/// per partition: a flip reads them while clients' writes wait, and a
/// broker answers one connection's requests one after another.
pub async fn high_watermarks(
    client: &Client,
    topic: &str,
    from: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, i64>> {
    let meta = client.topic(topic).await?;
    let mut by_leader: BTreeMap<i32, Vec<FetchPartition>> = BTreeMap::new();
    for (&partition, &offset) in from {
        let leader = leader_of(client, &meta, topic, partition)?;
        by_leader.entry(leader).or_default().push(
            FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(1),
        );
    }
    let version = client.versions().fetch;
    let asks = by_leader
        .into_iter()
        .map(|(leader, partitions)| async move {
            let count = i32::try_from(partitions.len()).unwrap_or(i32::MAX);
            let request = FetchRequest::default()
                .with_max_wait_ms(0)
                .with_min_bytes(1)
                .with_max_bytes(count)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partitions(partitions),
                ]);
            let frame = client.encode(&request, version)?;
            let conn = client.broker_conn(leader).await?;
            let answer = client
                .round_trip(&conn, frame, Duration::ZERO)
                .await
                .inspect_err(|_| client.drop_conn(leader))?;
            scan_fetch_response(&answer.payload(), version).map_err(|e| {
                Error::upstream(
                    client.cluster_name(),
                    Kind::Protocol,
                    format!("Fetch response: {e}"),
                )
            })
        });
    let mut ends = BTreeMap::new();
    for response in futures::future::try_join_all(asks).await? {
        if response.error_code != 0 {
            return Err(broker_error(
                client.cluster_name(),
                response.error_code,
                "Fetch",
            ));
        }
        for p in response.partitions.iter().filter(|p| p.topic == topic) {
            if p.error_code != 0 {
                return Err(broker_error(
                    client.cluster_name(),
                    p.error_code,
                    &format!("Fetch {topic}/{}", p.partition),
                ));
            }
            ends.insert(p.partition, p.high_watermark);
        }
    }
    if let Some(missing) = from.keys().find(|p| !ends.contains_key(p)) {
        return Err(Error::upstream(
            client.cluster_name(),
            Kind::Protocol,
            format!("Fetch answer without {topic}/{missing}"),
        ));
    }
    Ok(ends)
}

/// klink's own producer identity on the target, for the mirror's writes.
pub(super) async fn init_producer_id(
    target: &Client,
    topic: &str,
    partition: i32,
) -> Result<Identity> {
    let meta = target.topic(topic).await?;
    let leader = leader_of(target, &meta, topic, partition)?;
    let conn = target.broker_conn(leader).await?;
    // v3+: tansu issues ids only from v3 on.
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000);
    let response = target.call(&conn, request, 4).await?;
    if response.error_code != 0 {
        return Err(broker_error(
            target.cluster_name(),
            response.error_code,
            "InitProducerId",
        ));
    }
    Ok(Identity {
        producer_id: response.producer_id.0,
        epoch: response.producer_epoch,
    })
}

/// One fetch of one partition from `offset` (isolation 1: read_committed).
/// An offset out of range is an error, never a silent skip: for a mirror it
/// means records it was to copy are gone.
pub(super) async fn fetch(
    client: &Client,
    topic: &str,
    partition: i32,
    offset: i64,
    isolation: i8,
    config: &CopyConfig,
) -> Result<PartitionResponse> {
    fetch_on(client, None, topic, partition, offset, isolation, config).await
}

/// [`fetch`] on `own`, a connection of the caller's (else the client's
/// shared one to the leader).
pub(super) async fn fetch_on(
    client: &Client,
    own: Option<&UpstreamConn>,
    topic: &str,
    partition: i32,
    offset: i64,
    isolation: i8,
    config: &CopyConfig,
) -> Result<PartitionResponse> {
    let meta = client.topic(topic).await?;
    let leader = leader_of(client, &meta, topic, partition)?;
    let version = client.versions().fetch;
    let request = FetchRequest::default()
        .with_max_wait_ms(i32::try_from(config.fetch_wait.as_millis()).unwrap_or(i32::MAX))
        .with_min_bytes(1)
        .with_max_bytes(config.fetch_max_bytes)
        .with_isolation_level(isolation)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(config.fetch_max_bytes),
                ]),
        ]);
    let frame = client.encode(&request, version)?;
    let conn = match own {
        Some(conn) => conn.clone(),
        None => client.broker_conn(leader).await?,
    };
    let answer = match client.round_trip(&conn, frame, config.fetch_wait).await {
        Ok(answer) => answer,
        Err(e) => {
            if own.is_none() {
                client.drop_conn(leader);
            }
            return Err(e);
        }
    };
    let response = scan_fetch_response(&answer.payload(), version).map_err(|e| {
        Error::upstream(
            client.cluster_name(),
            Kind::Protocol,
            format!("Fetch response: {e}"),
        )
    })?;
    if response.error_code != 0 {
        return Err(broker_error(
            client.cluster_name(),
            response.error_code,
            "Fetch",
        ));
    }
    let found = response
        .partitions
        .into_iter()
        .find(|p| p.topic == topic && p.partition == partition)
        .ok_or_else(|| {
            Error::upstream(
                client.cluster_name(),
                Kind::Protocol,
                "Fetch answer without the partition",
            )
        })?;
    match found.error_code {
        0 => Ok(found),
        code if code == ResponseError::OffsetOutOfRange.code() => Err(Error::upstream(
            client.cluster_name(),
            Kind::Protocol,
            format!(
                "{topic}/{partition}: offset {offset} is out of range (log start {}): records the \
                 mirror was to copy are gone",
                found.log_start_offset
            ),
        )),
        code => {
            if crate::client::is_stale_metadata(code) {
                let _ = client.refresh_metadata().await;
            }
            Err(broker_error(
                client.cluster_name(),
                code,
                &format!("Fetch {topic}/{partition}"),
            ))
        }
    }
}

/// The partition's leader as `client` last learnt it.
pub(super) fn leader_of(
    client: &Client,
    meta: &crate::client::TopicMeta,
    topic: &str,
    partition: i32,
) -> Result<i32> {
    meta.leader(partition).ok_or_else(|| {
        Error::upstream(
            client.cluster_name(),
            Kind::Protocol,
            format!("{topic}/{partition} has no leader"),
        )
    })
}
