//! The producer against a scripted in-process broker: what tansu never does
//! (NOT_LEADER_OR_FOLLOWER) and what the client must do about it (refresh
//! metadata, retry the batch, keep every record's ack).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::wire::response_frame;

/// A one-broker cluster with topic `t` (2 partitions) whose first Produce
/// to partition 0 is refused with NOT_LEADER_OR_FOLLOWER.
#[derive(Default)]
struct Script {
    metadata_requests: AtomicUsize,
    refusals_left: AtomicUsize,
    next_offset: [AtomicI64; 2],
}

async fn serve(listener: TcpListener, script: Arc<Script>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(connection(stream, port, script.clone()));
    }
}

async fn connection(mut stream: TcpStream, port: u16, script: Arc<Script>) -> anyhow::Result<()> {
    loop {
        let len = stream.read_i32().await? as usize;
        let mut payload = BytesMut::zeroed(len);
        stream.read_exact(&mut payload).await?;
        let mut payload = payload.freeze();
        let api = ApiKey::try_from(i16::from_be_bytes([payload[0], payload[1]]))
            .map_err(|_| anyhow::anyhow!("unknown api"))?;
        let version = i16::from_be_bytes([payload[2], payload[3]]);
        let header = RequestHeader::decode(&mut payload, api.request_header_version(version))?;
        let mut body = BytesMut::new();
        match api {
            ApiKey::ApiVersions => {
                let range = |k: ApiKey, max: i16| {
                    ApiVersion::default()
                        .with_api_key(k as i16)
                        .with_min_version(0)
                        .with_max_version(max)
                };
                ApiVersionsResponse::default()
                    .with_api_keys(vec![
                        range(ApiKey::Produce, 9),
                        range(ApiKey::Fetch, 12),
                        range(ApiKey::Metadata, 12),
                        range(ApiKey::ListOffsets, 7),
                        range(ApiKey::ApiVersions, 3),
                    ])
                    .encode(&mut body, version)?;
            }
            ApiKey::Metadata => {
                script.metadata_requests.fetch_add(1, Ordering::SeqCst);
                let partition = |i: i32| {
                    MetadataResponsePartition::default()
                        .with_partition_index(i)
                        .with_leader_id(1.into())
                };
                MetadataResponse::default()
                    .with_brokers(vec![
                        MetadataResponseBroker::default()
                            .with_node_id(1.into())
                            .with_host(StrBytes::from_static_str("127.0.0.1"))
                            .with_port(i32::from(port)),
                    ])
                    .with_topics(vec![
                        MetadataResponseTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_static_str("t"))))
                            .with_partitions(vec![partition(0), partition(1)]),
                    ])
                    .encode(&mut body, version)?;
            }
            ApiKey::Produce => {
                let request = ProduceRequest::decode(&mut payload, version)?;
                let mut topics = Vec::new();
                for topic in request.topic_data {
                    let mut partitions = Vec::new();
                    for data in topic.partition_data {
                        let p = data.index;
                        let refuse = p == 0
                            && script
                                .refusals_left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                        let mut answer = PartitionProduceResponse::default().with_index(p);
                        if refuse {
                            answer = answer.with_error_code(6); // NOT_LEADER_OR_FOLLOWER
                        } else {
                            let records = data.records.unwrap_or_default();
                            let count = scan_batches(&records)?.records as i64;
                            let base =
                                script.next_offset[p as usize].fetch_add(count, Ordering::SeqCst);
                            answer = answer.with_base_offset(base);
                        }
                        partitions.push(answer);
                    }
                    topics.push(
                        TopicProduceResponse::default()
                            .with_name(topic.name)
                            .with_partition_responses(partitions),
                    );
                }
                ProduceResponse::default()
                    .with_responses(topics)
                    .encode(&mut body, version)?;
            }
            other => anyhow::bail!("the script has no answer for {other:?}"),
        }
        let header_version = if api == ApiKey::ApiVersions {
            0
        } else {
            api.response_header_version(version)
        };
        let frame: Bytes = response_frame(header.correlation_id, header_version, &body);
        stream.write_all(&frame).await?;
    }
}

#[tokio::test]
async fn not_leader_refreshes_metadata_and_the_batch_is_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let script = Arc::new(Script::default());
    script.refusals_left.store(1, Ordering::SeqCst);
    tokio::spawn(serve(listener, script.clone()));

    let client = Client::connect(ClientConfig {
        bootstrap: vec![addr],
        ..ClientConfig::default()
    })
    .await
    .expect("connect");
    assert_eq!(client.versions().produce, 9);
    let producer = Producer::new(
        client,
        ProducerConfig {
            linger: Duration::from_millis(1),
            retry_backoff: Duration::from_millis(10),
            ..ProducerConfig::default()
        },
    );
    let topic: Arc<str> = Arc::from("t");
    let mut deliveries = Vec::new();
    for i in 0..20u32 {
        let mut record = ProducerRecord::new(topic.clone(), Bytes::from(format!("v{i}")));
        record.partition = Some((i % 2) as i32);
        deliveries.push(producer.send(record).await.expect("send"));
    }
    let mut offsets = [Vec::new(), Vec::new()];
    for delivery in deliveries {
        let done = tokio::time::timeout(Duration::from_secs(10), delivery)
            .await
            .expect("acked in time")
            .expect("acked");
        offsets[done.partition as usize].push(done.offset);
    }
    assert_eq!(offsets[0], (0..10).collect::<Vec<_>>());
    assert_eq!(offsets[1], (0..10).collect::<Vec<_>>());
    let metrics = producer.metrics();
    assert!(metrics.retries >= 1, "{metrics:?}");
    assert_eq!(metrics.failed_batches, 0);
    assert!(
        script.metadata_requests.load(Ordering::SeqCst) >= 2,
        "NOT_LEADER_OR_FOLLOWER made the client ask for metadata again"
    );
    producer.close().await;
}

#[tokio::test]
async fn a_partition_the_topic_lacks_is_refused_at_send() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(serve(listener, Arc::new(Script::default())));
    let client = Client::connect(ClientConfig {
        bootstrap: vec![addr],
        ..ClientConfig::default()
    })
    .await
    .expect("connect");
    let producer = Producer::new(client, ProducerConfig::default());
    let mut record = ProducerRecord::new(Arc::from("t"), Bytes::from_static(b"v"));
    record.partition = Some(2);
    assert!(producer.send(record).await.is_err());
    // keyed records land where the Java partitioner puts them
    let record = ProducerRecord::new(Arc::from("t"), Bytes::from_static(b"v"))
        .with_key(Bytes::from_static(b"21"));
    let done = producer
        .send(record)
        .await
        .expect("send")
        .await
        .expect("ack");
    assert_eq!(done.partition as usize, partition_for_key(b"21", 2));
    producer.close().await;
}
