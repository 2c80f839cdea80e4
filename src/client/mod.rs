//! klink's own Kafka client: what `klink perf` drives load with, and what
//! the mirror will copy records with.
//!
//! - [`Client`]: bootstrap, Metadata (partitions and leaders, refreshed on
//!   leader errors), one pipelined [`UpstreamConn`](crate::upstream::UpstreamConn)
//!   per broker, and API versions chosen from the broker's ApiVersions.
//! - [`Producer`]: records gathered per partition into record batches, sent
//!   when `batch_size` is reached or `linger` has passed, several requests
//!   in flight per broker, a future per record that resolves on the ack.
//! - [`Fetcher`]: all partitions of one topic from the earliest offset, no
//!   consumer group; hands out whole record batches as `Bytes` slices of the
//!   response and reads only batch headers, never record bodies.
//!
//! What this module must never do: panic on broker bytes. Fetch responses,
//! nearly all the bytes a broker sends, are scanned with
//! [`crate::wire::Cursor`], which never sizes an allocation from the wire.
//! The small answers (ApiVersions, Metadata, ListOffsets, Produce) are
//! decoded by kafka-protocol, which reserves arrays by the count the broker
//! announces: a broker klink is configured to trust is assumed not to lie.

mod accumulator;
mod brokers;
mod fetch_response;
mod fetcher;
mod partitioner;
mod produce_request;
mod producer;
mod sender;
mod shared;
mod versions;

pub use crate::batch::{BatchHeader, BatchScan, scan_batches};
pub use brokers::{Client, ClientConfig, Metadata, PartitionMeta, TopicMeta};
pub(crate) use fetch_response::scan as scan_fetch_response;
pub use fetch_response::{AbortedTransaction, PartitionResponse};
pub use fetcher::{FetchConfig, Fetched, Fetcher};
pub use partitioner::{murmur2, partition_for_key};
pub use produce_request::{produce_answers, produce_request};
pub use producer::{
    Acks, DeliveryFuture, Producer, ProducerConfig, ProducerMetrics, ProducerRecord, RecordMetadata,
};
pub use versions::Versions;

use std::sync::Arc;

use kafka_protocol::ResponseError;

use crate::error::{Error, Kind};

/// A Kafka error code from a broker as klink's error, retriable when the
/// protocol says a client may retry it.
pub fn broker_error(cluster: &Arc<str>, code: i16, what: &str) -> Error {
    let (name, retriable) = match ResponseError::try_from_code(code) {
        Some(e) => (e.to_string(), e.is_retriable()),
        None => ("NONE".to_string(), false),
    };
    let mut error = Error::upstream(cluster, Kind::Protocol, format!("{what}: {name} ({code})"));
    error.retriable = retriable;
    error
}

/// Errors after which the partition's leader may have moved: the client
/// refreshes metadata before it tries again.
pub fn is_stale_metadata(code: i16) -> bool {
    matches!(
        ResponseError::try_from_code(code),
        Some(
            ResponseError::NotLeaderOrFollower
                | ResponseError::UnknownTopicOrPartition
                | ResponseError::LeaderNotAvailable
                | ResponseError::FencedLeaderEpoch
                | ResponseError::UnknownLeaderEpoch
                | ResponseError::KafkaStorageError
                | ResponseError::ReplicaNotAvailable
        )
    )
}

#[cfg(test)]
mod tests;
