//! Transactional producers across a promotion (DESIGN trap 9), with raw
//! requests against two real brokers: a transaction open on a topic holds
//! its promotion off; after the promotion the producer's next transaction
//! runs on the target, under an identity the target's transaction
//! coordinator issued klink, and its batches land there under it.
//!
//! tansu 0.6 has no EndTxn, so no transaction here ever commits or aborts:
//! a producer ends one by starting over (InitProducerId), which is what
//! Kafka's producers do after a fatal error.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, FetchRequest, FindCoordinatorRequest, InitProducerIdRequest,
    ProduceRequest, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::cutover::migration;
use crate::raw::RawConn;

const TX: &str = "orders-writer";

fn tx() -> TransactionalId {
    TransactionalId(StrBytes::from_static_str(TX))
}

/// InitProducerId for `TX` through `conn`: (producer id, epoch).
fn init(conn: &mut RawConn) -> (i64, i16) {
    let answer = conn.call(
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(tx()))
            .with_transaction_timeout_ms(60_000),
        4,
    );
    assert_eq!(answer.error_code, 0, "InitProducerId");
    (answer.producer_id.0, answer.producer_epoch)
}

/// AddPartitionsToTxn of orders/0; the partition's error code.
fn add_orders(conn: &mut RawConn, (producer_id, epoch): (i64, i16)) -> i16 {
    let answer = conn.call(
        &AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(tx())
            .with_v3_and_below_producer_id(ProducerId(producer_id))
            .with_v3_and_below_producer_epoch(epoch)
            .with_v3_and_below_topics(vec![
                AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(vec![0]),
            ]),
        3,
    );
    answer.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code
}

fn transactional_batch((producer_id, epoch): (i64, i16), sequence: i32, values: &[&str]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, value)| Record {
            transactional: true,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: sequence + i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(value.to_string())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
    buf.freeze()
}

/// Every record of orders/0 on `conn`'s broker (read uncommitted):
/// (producer id, transactional, value).
fn orders_0(conn: &mut RawConn) -> Vec<(i64, bool, String)> {
    let answer = conn.call(
        &FetchRequest::default()
            .with_max_wait_ms(10)
            .with_max_bytes(1 << 20)
            .with_isolation_level(0)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ]),
        4,
    );
    let partition = &answer.responses[0].partitions[0];
    assert_eq!(partition.error_code, 0, "fetch orders/0");
    let mut records = partition.records.clone().unwrap_or_default();
    let mut out = Vec::new();
    while !records.is_empty() {
        let Ok(batch) = RecordBatchDecoder::decode(&mut records) else {
            break;
        };
        for r in batch.records {
            let value = r
                .value
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            out.push((r.producer_id, r.transactional, value));
        }
    }
    out
}

#[test]
fn a_producers_next_transaction_after_a_promotion_runs_on_the_target() {
    let (_source, target, mut klink) =
        migration("transactions", "\n[cutover]\nfence_timeout_ms = 1500\n");
    let mut conn = RawConn::connect(klink.bootstrap);
    let identity = init(&mut conn);
    assert_eq!(
        add_orders(&mut conn, identity),
        0,
        "a transaction on the source"
    );

    // Open on `orders`: the promotion waits for it, then refuses, naming it.
    let (status, stdout, stderr) = klink.ctl(&["promote", "orders"]);
    assert!(!status.success(), "promoted under an open transaction");
    assert!(
        format!("{stdout}{stderr}").contains(TX),
        "the refusal names the transaction: {stdout}{stderr}"
    );

    // Asked again, the promotion waits; the producer starts over meanwhile
    // (which ends what it had open), and the promotion goes through.
    let identity = std::thread::scope(|scope| {
        let promotion = scope.spawn(|| klink.ctl(&["promote", "orders"]));
        std::thread::sleep(Duration::from_millis(400));
        let identity = init(&mut conn);
        let (status, stdout, stderr) = promotion.join().expect("promote");
        assert!(
            status.success(),
            "promote after the transaction ended: {stdout}{stderr}"
        );
        identity
    });

    // Its next transaction follows `orders` to the target: the
    // coordinator a client finds is the target's, and the transaction is
    // opened there under the target's identity.
    let found = conn.call(
        &FindCoordinatorRequest::default()
            .with_key(StrBytes::from_static_str(TX))
            .with_key_type(1),
        3,
    );
    assert_eq!(found.error_code, 0);
    assert_eq!(
        add_orders(&mut conn, identity),
        0,
        "a transaction on the target"
    );
    let found_after = conn.call(
        &FindCoordinatorRequest::default()
            .with_key(StrBytes::from_static_str(TX))
            .with_key_type(1),
        3,
    );
    assert_eq!(found_after.error_code, 0);
    assert_ne!(
        (found.node_id, found.port),
        (found_after.node_id, found_after.port),
        "the coordinator clients find moved with the transactions"
    );

    let produce = |conn: &mut RawConn, batch: Bytes| {
        let produced = conn.call(
            &ProduceRequest::default()
                .with_transactional_id(Some(tx()))
                .with_acks(-1)
                .with_timeout_ms(10_000)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_static_str("orders")))
                        .with_partition_data(vec![
                            PartitionProduceData::default()
                                .with_index(0)
                                .with_records(Some(batch)),
                        ]),
                ]),
            7,
        );
        produced.responses[0].partition_responses[0].error_code
    };
    let batch = transactional_batch(identity, 0, &["tx-a", "tx-b", "tx-c"]);
    assert_eq!(produce(&mut conn, batch), 0, "the transactional batch");

    let log = klink.process.log_text();
    let mapped = log
        .lines()
        .find(|l| l.contains("producer id mapped") && l.contains(TX))
        .unwrap_or_else(|| panic!("no mapping logged: {log}"));
    let ours: i64 = mapped
        .split_whitespace()
        .find_map(|field| field.strip_prefix("ours="))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id in {mapped}"));

    // klink killed and restarted mid-transaction: the transaction still
    // runs on the target (where it moved is journaled), under the same
    // identity, its sequence going on.
    drop(conn);
    klink.crash_and_restart(2);
    let mut conn = RawConn::connect(klink.bootstrap);
    let found_again = conn.call(
        &FindCoordinatorRequest::default()
            .with_key(StrBytes::from_static_str(TX))
            .with_key_type(1),
        3,
    );
    assert_eq!(
        (found_again.node_id, found_again.port),
        (found_after.node_id, found_after.port),
        "the coordinator after a restart"
    );
    let batch = transactional_batch(identity, 3, &["tx-d"]);
    assert_eq!(produce(&mut conn, batch), 0, "after the restart");

    // On the target, under an identity the target issued, transactional.
    let mut direct = RawConn::connect(target.addr);
    let mut on_target = Vec::new();
    for _ in 0..50 {
        on_target = orders_0(&mut direct)
            .into_iter()
            .filter(|(_, _, v)| v.starts_with("tx-"))
            .collect();
        if on_target.len() == 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let values: Vec<&str> = on_target.iter().map(|(_, _, v)| v.as_str()).collect();
    assert_eq!(values, ["tx-a", "tx-b", "tx-c", "tx-d"]);
    for (producer_id, transactional, _) in &on_target {
        assert!(*transactional);
        assert_eq!(
            *producer_id, ours,
            "the target's id for the client's ({mapped})"
        );
    }
}

#[test]
fn topics_written_in_one_transaction_move_together() {
    let (_source, _target, klink) = migration("transactions-together", "");
    let mut conn = RawConn::connect(klink.bootstrap);
    let identity = init(&mut conn);
    // One transaction writes `orders` (in the link) and `payments` (not).
    let answer = conn.call(
        &AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(tx())
            .with_v3_and_below_producer_id(ProducerId(identity.0))
            .with_v3_and_below_producer_epoch(identity.1)
            .with_v3_and_below_topics(
                ["orders", "payments"]
                    .into_iter()
                    .map(|t| {
                        AddPartitionsToTxnTopic::default()
                            .with_name(TopicName(StrBytes::from_static_str(t)))
                            .with_partitions(vec![0])
                    })
                    .collect(),
            ),
        3,
    );
    for topic in &answer.results_by_topic_v3_and_below {
        assert_eq!(topic.results_by_partition[0].partition_error_code, 0);
    }
    // Ended (the producer starts over); the promotion still refuses to
    // part the two, naming the transactional id and the topic left behind.
    init(&mut conn);
    let (status, stdout, stderr) = klink.ctl(&["promote", "orders"]);
    let said = format!("{stdout}{stderr}");
    assert!(
        !status.success(),
        "promoted one of two topics written together"
    );
    assert!(said.contains(TX) && said.contains("`payments`"), "{said}");
    let status = klink.ctl_ok(&["status", "--json"]);
    assert!(
        status.contains("mirroring"),
        "orders stays mirroring: {status}"
    );
}
