//! Bypass detection against Produce requests and answers built here and a
//! route table with `orders` mirroring.

use std::collections::HashMap;

use bytes::BytesMut;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ResponseHeader, TopicName};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::*;

const VERSION: i16 = 9;

fn batch_of(records: i32) -> Bytes {
    crate::mirror::committed::tests::batch(0, records, -1, false, false)
}

/// A Produce request writing `records` records to each of `partitions`.
fn produce(topic: &'static str, partitions: &[(i32, i32)]) -> Bytes {
    let body = ProduceRequest::default()
        .with_acks(-1)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str(topic)))
                .with_partition_data(
                    partitions
                        .iter()
                        .map(|(p, n)| {
                            PartitionProduceData::default()
                                .with_index(*p)
                                .with_records(Some(batch_of(*n)))
                        })
                        .collect(),
                ),
        ]);
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(VERSION)
        .with_correlation_id(5)
        .encode(&mut buf, ApiKey::Produce.request_header_version(VERSION))
        .expect("header");
    body.encode(&mut buf, VERSION).expect("body");
    buf.freeze()
}

/// The answer the client gets: per partition an error code and base offset.
fn answer(topic: &'static str, partitions: &[(i32, i16, i64)]) -> Bytes {
    let body = ProduceResponse::default().with_responses(vec![
        TopicProduceResponse::default()
            .with_name(TopicName(StrBytes::from_static_str(topic)))
            .with_partition_responses(
                partitions
                    .iter()
                    .map(|(p, code, base)| {
                        PartitionProduceResponse::default()
                            .with_index(*p)
                            .with_error_code(*code)
                            .with_base_offset(*base)
                    })
                    .collect(),
            ),
    ]);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    ResponseHeader::default()
        .with_correlation_id(5)
        .encode(&mut buf, ApiKey::Produce.response_header_version(VERSION))
        .expect("header");
    body.encode(&mut buf, VERSION).expect("body");
    let len = u32::try_from(buf.len() - 4).expect("small");
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

struct Setup {
    _dir: tempfile::TempDir,
    routes: Arc<RouteTable>,
    forwarded: Arc<ForwardedWrites>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = Arc::new(crate::split::test_support::routes(dir.path()));
    routes
        .set_state("orders", TopicState::Mirroring)
        .expect("state");
    Setup {
        _dir: dir,
        routes,
        forwarded: Arc::default(),
    }
}

impl Setup {
    fn send(&self, partitions: &[(i32, i32)]) -> Option<SentWrites> {
        self.forwarded.sent(
            &self.routes.snapshot(),
            VERSION,
            &produce("orders", partitions),
            -1,
            |_| None,
        )
    }

    fn watch(&self, partition: i32) -> BypassWatch {
        BypassWatch::new(
            self.forwarded.clone(),
            self.routes.clone(),
            Arc::from("source"),
            "orders",
            partition,
        )
    }
}

#[test]
fn ranges_merge_and_count_what_they_cover() {
    let mut written = Written::default();
    written.add_range(10, 20);
    written.add_range(20, 25);
    written.add_range(30, 40);
    assert_eq!(written.ranges.len(), 2, "adjacent ranges merged");
    assert_eq!(written.uncovered(10, 24), 0);
    assert_eq!(written.uncovered(22, 31), 5, "25..30 uncovered");
    assert_eq!(written.uncovered(0, 9), 10);
    written.add_range(24, 30);
    assert_eq!(written.ranges.len(), 1);
    written.forget_below(41);
    assert!(written.ranges.is_empty());
}

#[test]
fn batches_klink_wrote_are_not_a_bypass_and_others_are() {
    let s = setup();
    let mut watch = s.watch(0);
    // Watching begins at the source's end, 100.
    assert_eq!(watch.saw(&[], 100), 0);
    let sent = s.send(&[(0, 10), (1, 5)]).expect("watched");
    sent.answered(
        &answer("orders", &[(0, 0, 100), (1, 0, 7)]),
        &Numbering::default(),
    );
    // The mirror sees klink's batch, then 3 records someone else wrote.
    assert_eq!(watch.saw(&[(100, 109, 10)], 110), 0);
    assert_eq!(watch.saw(&[(110, 112, 3)], 113), 3, "a bypass");
    // Seen again (a failed copy fetches again): not counted twice.
    assert_eq!(watch.saw(&[(100, 109, 10), (110, 112, 3)], 113), 0);
    // Batches from before watching began are not judged.
    let mut late = s.watch(1);
    assert_eq!(late.saw(&[(0, 6, 7)], 12), 0);
    // A flip's drain copies at least to where the answers placed records.
    let ends = s.forwarded.answered_ends("source", "orders");
    assert_eq!(ends, HashMap::from([(0, 110), (1, 12)]));
    assert!(s.forwarded.answered_ends("target", "orders").is_empty());
}

#[test]
fn a_batch_waits_for_the_answers_that_may_explain_it() {
    let s = setup();
    let mut watch = s.watch(0);
    watch.saw(&[], 0);
    let sent = s.send(&[(0, 10)]).expect("watched");
    // The broker appended it and the mirror read it before klink had the
    // answer: not judged yet.
    assert_eq!(watch.saw(&[(0, 9, 10)], 10), 0);
    assert_eq!(watch.waiting.len(), 1);
    sent.answered(&answer("orders", &[(0, 0, 0)]), &Numbering::default());
    assert_eq!(watch.saw(&[], 10), 0);
    assert!(watch.waiting.is_empty(), "explained by the answer");
    // A send made after the mirror saw a batch cannot explain it.
    assert_eq!(watch.saw(&[(10, 14, 5)], 15), 5);
    let _later = s.send(&[(0, 5)]).expect("watched");
}

#[test]
fn records_sent_without_a_known_place_excuse_as_many() {
    let s = setup();
    let mut watch = s.watch(0);
    watch.saw(&[], 0);
    // One answer lost (klink answers REQUEST_TIMED_OUT), one connection
    // gone before any answer (dropped).
    s.send(&[(0, 4)])
        .expect("watched")
        .answered(&answer("orders", &[(0, 7, -1)]), &Numbering::default());
    drop(s.send(&[(0, 6)]).expect("watched"));
    // A refused send excuses nothing.
    s.send(&[(0, 50)])
        .expect("watched")
        .answered(&answer("orders", &[(0, 6, -1)]), &Numbering::default());
    assert_eq!(watch.saw(&[(0, 3, 4), (4, 9, 6), (10, 11, 2)], 12), 2);
}

#[test]
fn only_mirroring_topics_are_watched() {
    let s = setup();
    assert!(
        s.forwarded
            .sent(
                &s.routes.snapshot(),
                VERSION,
                &produce("payments", &[(0, 3)]),
                -1,
                |_| None
            )
            .is_none()
    );
    let mut payments = BypassWatch::new(
        s.forwarded.clone(),
        s.routes.clone(),
        Arc::from("source"),
        "payments",
        0,
    );
    payments.saw(&[], 0);
    assert_eq!(payments.saw(&[(0, 2, 3)], 3), 0, "not mirroring");
    // Writes routed to the target: the source is not klink's to watch.
    s.routes
        .route_topic("orders", Some("target"), None)
        .expect("route");
    let mut orders = s.watch(0);
    orders.saw(&[], 0);
    assert_eq!(orders.saw(&[(0, 2, 3)], 3), 0);
}

#[test]
fn acks_zero_records_are_placed_nowhere_known() {
    let s = setup();
    let mut watch = s.watch(0);
    watch.saw(&[], 0);
    let none = s.forwarded.sent(
        &s.routes.snapshot(),
        VERSION,
        &produce("orders", &[(0, 8)]),
        0,
        |_| None,
    );
    assert!(none.is_none(), "no answer to wait for");
    assert_eq!(watch.saw(&[(0, 7, 8), (8, 9, 2)], 10), 2);
}

#[test]
fn answers_in_the_clients_numbering_are_placed_in_the_clusters() {
    let s = setup();
    // Promoted over a `latest` link: the source's 100.. are the target's
    // 0.., and the promotion's era starts at the target's 50 (client 150).
    s.routes
        .route_topic("orders", Some("target"), Some("target"))
        .expect("route");
    s.routes
        .set_state("orders", TopicState::Promoted)
        .expect("state");
    let numbering = Numbering::default();
    numbering.with_era(
        "orders",
        0,
        &[(100, 149, 0)],
        crate::numbering::Era {
            side: crate::numbering::Side::Target,
            upstream_from: 50,
            client_from: 150,
            epoch_shift: 0,
            epoch_from: 0,
        },
    );
    let sent = s.send(&[(0, 10)]).expect("watched");
    // The client is told 150; the records are at the target's 50.
    sent.answered(&answer("orders", &[(0, 0, 150)]), &numbering);
    assert_eq!(
        s.forwarded.answered_ends("target", "orders"),
        HashMap::from([(0, 60)])
    );
    let mut watch = BypassWatch::new(
        s.forwarded.clone(),
        s.routes.clone(),
        Arc::from("target"),
        "orders",
        0,
    );
    assert_eq!(watch.saw(&[], 50), 0);
    assert_eq!(watch.saw(&[(50, 59, 10)], 60), 0, "klink's own: no bypass");
}
