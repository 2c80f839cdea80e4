use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::*;
use crate::split::Destination;
use crate::split::test_support::*;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::fetch_response::FetchableTopicResponse;

fn request(epoch: i32, topics: &[(&'static str, &[i32])]) -> Bytes {
    let body = FetchRequest::default()
        .with_session_id(if epoch > 0 { 9 } else { 0 })
        .with_session_epoch(epoch)
        .with_topics(
            topics
                .iter()
                .map(|(t, ps)| {
                    FetchTopic::default()
                        .with_topic(TopicName(StrBytes::from_static_str(t)))
                        .with_partitions(
                            ps.iter()
                                .map(|p| {
                                    FetchPartition::default()
                                        .with_partition(*p)
                                        .with_current_leader_epoch(7)
                                        .with_last_fetched_epoch(6)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let mut buf = bytes::BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(1)
        .with_request_api_version(12)
        .with_correlation_id(3)
        .encode(&mut buf, ApiKey::Fetch.request_header_version(12))
        .expect("header");
    body.encode(&mut buf, 12).expect("body");
    buf.freeze()
}

struct Setup {
    _dir: tempfile::TempDir,
    table: crate::route::RouteTable,
    catalog: Arc<crate::route::Catalog>,
    leaders: FixedLeaders,
    home: Destination,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = routes(dir.path());
    let catalog = Arc::new(crate::route::Catalog::load(Arc::new(
        crate::state::StateStore::open(dir.path()).expect("state"),
    )));
    Setup {
        _dir: dir,
        table,
        catalog,
        leaders: FixedLeaders(HashMap::from([("orders".to_string(), 3)])),
        home: Destination::Broker {
            cluster: Arc::from("source"),
            upstream_id: 1,
        },
    }
}

async fn plan(s: &Setup, payload: &Bytes, sessions: &mut FetchSessions) -> Plan {
    let routes = s.table.snapshot();
    let cx = Context {
        cluster: &s.leaders,
        routes: &routes,
        catalog: &s.catalog,
        home: &s.home,
        api: ApiKey::Fetch,
        version: 12,
        payload,
    };
    plan_fetch(&cx, sessions).await.expect("plan")
}

#[tokio::test]
async fn sessions_pass_through_until_routes_change() {
    let s = setup();
    let mut sessions = FetchSessions::default();
    assert!(matches!(
        plan(&s, &request(0, &[("orders", &[0])]), &mut sessions).await,
        Plan::Forward(_)
    ));
    assert!(matches!(
        plan(&s, &request(1, &[]), &mut sessions).await,
        Plan::Forward(_)
    ));
    s.table
        .route_topic("payments", None, Some("target"))
        .expect("route");
    // Routes changed under the session: the client must start over.
    let Plan::Answer(bytes) = plan(&s, &request(2, &[]), &mut sessions).await else {
        panic!("incremental fetch after a route change is answered by klink");
    };
    let response: FetchResponse =
        decode_response(ApiKey::Fetch, 12, &frame_of(bytes)).expect("decode");
    assert_eq!(
        response.error_code,
        ResponseError::FetchSessionIdNotFound.code()
    );
    assert!(matches!(
        plan(&s, &request(0, &[("orders", &[0])]), &mut sessions).await,
        Plan::Forward(_)
    ));
}

#[tokio::test]
async fn moved_partitions_are_fetched_sessionless_from_the_new_leader() {
    let s = setup();
    s.table
        .route_topic("orders", None, Some("target"))
        .expect("route");
    let mut sessions = FetchSessions::default();
    let Plan::Split { parts, merge } = plan(
        &s,
        &request(0, &[("orders", &[2]), ("other", &[0])]),
        &mut sessions,
    )
    .await
    else {
        panic!("split");
    };
    assert_eq!(
        parts[0].destination,
        Destination::Broker {
            cluster: Arc::from("target"),
            upstream_id: 12
        }
    );
    assert_eq!(parts[1].destination, s.home);
    let mut payload = parts[0].frame.slice(4..);
    RequestHeader::decode(&mut payload, ApiKey::Fetch.request_header_version(12)).expect("header");
    let sub = FetchRequest::decode(&mut payload, 12).expect("sub");
    assert_eq!((sub.session_id, sub.session_epoch), (0, -1));
    let moved = &sub.topics[0].partitions[0];
    assert_eq!(
        (moved.current_leader_epoch, moved.last_fetched_epoch),
        (-1, -1),
        "the source's epochs never reach the target"
    );
    let mut payload = parts[1].frame.slice(4..);
    RequestHeader::decode(&mut payload, ApiKey::Fetch.request_header_version(12)).expect("header");
    let stayed = FetchRequest::decode(&mut payload, 12).expect("sub");
    assert_eq!(
        stayed.topics[0].partitions[0].current_leader_epoch, 7,
        "epochs stay where they came from"
    );
    let answer = |topic: &'static str, p: i32| {
        let response = FetchResponse::default()
            .with_session_id(5)
            .with_responses(vec![
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str(topic)))
                    .with_partitions(vec![
                        PartitionData::default()
                            .with_partition_index(p)
                            .with_high_watermark(42)
                            .with_records(Some(Bytes::from_static(b"rec"))),
                    ]),
            ]);
        frame_of(encode_response(ApiKey::Fetch, 12, 3, &response).expect("encode"))
    };
    let merged = (merge.expect("merge"))(vec![
        PartAnswer::Answered(answer("orders", 2)),
        PartAnswer::Answered(answer("other", 0)),
    ])
    .expect("merge");
    let response: FetchResponse =
        decode_response(ApiKey::Fetch, 12, &frame_of(merged)).expect("decode");
    assert_eq!(response.session_id, 0);
    let got: Vec<(String, i32, i64)> = response
        .responses
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.topic.to_string(), p.partition_index, p.high_watermark))
        })
        .collect();
    assert_eq!(got, vec![("orders".into(), 2, 42), ("other".into(), 0, 42)]);
}

#[tokio::test]
async fn a_failed_part_leaves_the_others_answered() {
    let s = setup();
    s.table
        .route_topic("orders", None, Some("target"))
        .expect("route");
    let mut sessions = FetchSessions::default();
    let Plan::Split { parts, merge } = plan(
        &s,
        &request(0, &[("orders", &[0]), ("other", &[0])]),
        &mut sessions,
    )
    .await
    else {
        panic!("split");
    };
    assert_eq!(parts.len(), 2);
    let other = FetchResponse::default().with_responses(vec![
        FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("other")))
            .with_partitions(vec![
                PartitionData::default()
                    .with_partition_index(0)
                    .with_high_watermark(9),
            ]),
    ]);
    let other = frame_of(encode_response(ApiKey::Fetch, 12, 3, &other).expect("encode"));
    let merged = (merge.expect("merge"))(vec![
        PartAnswer::Failed(PartFailure::Lost),
        PartAnswer::Answered(other),
    ])
    .expect("merge");
    let response: FetchResponse =
        decode_response(ApiKey::Fetch, 12, &frame_of(merged)).expect("decode");
    let got: Vec<(String, i16, i64)> = response
        .responses
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(move |p| (t.topic.to_string(), p.error_code, p.high_watermark))
        })
        .collect();
    assert_eq!(
        got,
        vec![("orders".into(), NOT_LEADER, -1), ("other".into(), 0, 9)]
    );
}

/// `orders` promoted at offset 100 (an `earliest` link: offsets the same)
/// from a source at epoch 5 to a target at epoch 0.
fn promoted_with_epochs(s: &Setup) {
    promoted_from_epoch_5(&s.catalog.numbering);
    s.table
        .route_topic("orders", None, Some("target"))
        .expect("route");
}

#[tokio::test]
async fn epochs_read_from_a_promoted_partition_never_go_below_the_sources() {
    let s = setup();
    promoted_with_epochs(&s);
    let mut sessions = FetchSessions::default();
    // The client saw epoch 7 (the target's 2) and fetched a batch of 6.
    let Plan::Split { parts, merge } =
        plan(&s, &request(0, &[("orders", &[2])]), &mut sessions).await
    else {
        panic!("split");
    };
    let mut payload = parts[0].frame.slice(4..);
    RequestHeader::decode(&mut payload, ApiKey::Fetch.request_header_version(12)).expect("header");
    let sub = FetchRequest::decode(&mut payload, 12).expect("sub");
    let asked = &sub.topics[0].partitions[0];
    assert_eq!(
        (asked.current_leader_epoch, asked.last_fetched_epoch),
        (2, -1),
        "the target's own epoch; no divergence check across numberings"
    );
    let batch = crate::mirror::committed::tests::batch(100, 3, -1, false, false);
    let response = FetchResponse::default().with_responses(vec![
        FetchableTopicResponse::default()
            .with_topic(TopicName(StrBytes::from_static_str("orders")))
            .with_partitions(vec![
                PartitionData::default()
                    .with_partition_index(2)
                    .with_high_watermark(103)
                    .with_current_leader(
                        kafka_protocol::messages::fetch_response::LeaderIdAndEpoch::default()
                            .with_leader_id(kafka_protocol::messages::BrokerId(12))
                            .with_leader_epoch(1),
                    )
                    .with_records(Some(batch.clone())),
            ]),
    ]);
    let frame = frame_of(encode_response(ApiKey::Fetch, 12, 3, &response).expect("encode"));
    let merged = (merge.expect("merge"))(vec![PartAnswer::Answered(frame)]).expect("merge");
    let response: FetchResponse =
        decode_response(ApiKey::Fetch, 12, &frame_of(merged)).expect("decode");
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.current_leader.leader_epoch, 6);
    assert_eq!(p.high_watermark, 103);
    let records = p.records.as_ref().expect("records");
    let header = crate::batch::header(records).expect("batch");
    let epoch = i32::from_be_bytes(records[12..16].try_into().expect("4 bytes"));
    assert_eq!(
        (header.base_offset, epoch),
        (100, 5),
        "written at the target's epoch 0: the client's 5"
    );
    assert!(crate::batch::crc_ok(records));

    // A client still on the source's epoch 4 is not checked against the
    // target's own epochs (-1): it learns the new one from metadata.
    let stale = FetchRequest::default().with_topics(vec![
        FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("orders")))
            .with_partitions(vec![
                FetchPartition::default()
                    .with_partition(2)
                    .with_current_leader_epoch(4)
                    .with_fetch_offset(50),
            ]),
    ]);
    let mut buf = bytes::BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(1)
        .with_request_api_version(12)
        .encode(&mut buf, ApiKey::Fetch.request_header_version(12))
        .expect("header");
    stale.encode(&mut buf, 12).expect("body");
    let Plan::Split { parts, .. } = plan(&s, &buf.freeze(), &mut sessions).await else {
        panic!("split");
    };
    let mut payload = parts[0].frame.slice(4..);
    RequestHeader::decode(&mut payload, ApiKey::Fetch.request_header_version(12)).expect("header");
    let sub = FetchRequest::decode(&mut payload, 12).expect("sub");
    assert_eq!(sub.topics[0].partitions[0].current_leader_epoch, -1);
    assert_eq!(sub.topics[0].partitions[0].fetch_offset, 50);
}
