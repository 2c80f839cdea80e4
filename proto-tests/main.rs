//! Protocol tests: real tansu brokers, a real klink process, real clients.
//!
//! Run them with `scripts/test.sh` (which installs what they need first).

mod harness;
mod raw;

mod admin;
mod bad_input;
mod client_logins;
mod clients;
mod crashes;
mod cutover;
mod cutover_clients;
mod faults;
mod flips;
mod hung;
mod lifecycle;
mod mirror;
mod numbering;
mod perf;
mod producer_ids;
mod rewrites;
mod routing;
mod security;
mod slow_reader;
mod state_dir;
mod transactions;

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{
    ApiVersionsRequest, CreateTopicsRequest, MetadataRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use harness::{Broker, Klink};
use raw::RawConn;

/// A broker and a klink in front of it.
pub fn proxied(cluster_id: &str) -> (Broker, Klink) {
    let broker = Broker::start(cluster_id);
    let klink = Klink::start(&broker);
    (broker, klink)
}

/// The versions klink advertises, by API key.
pub fn advertised(klink: &Klink) -> BTreeMap<i16, (i16, i16)> {
    let mut conn = RawConn::connect(klink.bootstrap);
    let response = conn.call(&ApiVersionsRequest::default(), 3);
    assert_eq!(response.error_code, 0);
    response
        .api_keys
        .iter()
        .map(|k| (k.api_key, (k.min_version, k.max_version)))
        .collect()
}

pub fn create_topic(klink: &Klink, name: &str, partitions: i32) {
    let mut conn = RawConn::connect(klink.bootstrap);
    let topic = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name.to_string())))
        .with_num_partitions(partitions)
        .with_replication_factor(1);
    let response = conn.call(
        &CreateTopicsRequest::default()
            .with_topics(vec![topic])
            .with_timeout_ms(10_000),
        5,
    );
    assert_eq!(
        response.topics[0].error_code, 0,
        "create topic {name}: {response:?}"
    );
}

/// Brokers (id, host, port) in a Metadata response through klink.
pub fn metadata_brokers(klink: &Klink, version: i16) -> Vec<(i32, String, i32)> {
    let mut conn = RawConn::connect(klink.bootstrap);
    let response = conn.call(&MetadataRequest::default().with_topics(None), version);
    let mut brokers: Vec<_> = response
        .brokers
        .iter()
        .map(|b| (b.node_id.0, b.host.to_string(), b.port))
        .collect();
    brokers.sort();
    brokers
}

/// Asserts an address a client was given is a klink virtual broker, never
/// the upstream broker's.
pub fn assert_virtual(klink: &Klink, broker: &Broker, host: &str, port: i32) {
    assert_eq!(host, "127.0.0.1");
    assert_ne!(
        port,
        i32::from(broker.addr.port()),
        "upstream address reached the client"
    );
    let start = i32::from(klink.broker_ports_start);
    assert!(
        (start..start + 8).contains(&port),
        "port {port} is not a virtual broker port (from {start})"
    );
}

/// One record batch (magic v2, uncompressed) holding one record.
pub fn one_record_batch(value: &str) -> bytes::Bytes {
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 1_700_000_000_000,
        key: Some(bytes::Bytes::from_static(b"k")),
        value: Some(bytes::Bytes::from(value.to_string())),
        headers: Default::default(),
    };
    let mut buf = bytes::BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &[record], &options).expect("encode batch");
    buf.freeze()
}
