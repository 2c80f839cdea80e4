use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::ListOffsetsTopicResponse;
use kafka_protocol::messages::metadata_response::{
    MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::OffsetForLeaderTopicResult;
use kafka_protocol::messages::{BrokerId, MetadataResponse, RequestHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::*;
use crate::route::Catalog;
use crate::split::Destination;
use crate::split::test_support::*;

/// ListOffsets "latest" of `orders`' `partition` with the client's
/// current leader `epoch`.
fn request(partition: i32, epoch: i32) -> Bytes {
    let body = ListOffsetsRequest::default().with_topics(vec![
        ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("orders")))
            .with_partitions(vec![
                ListOffsetsPartition::default()
                    .with_partition_index(partition)
                    .with_current_leader_epoch(epoch)
                    .with_timestamp(-1),
            ]),
    ]);
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::ListOffsets as i16)
        .with_request_api_version(7)
        .with_correlation_id(5)
        .encode(&mut buf, ApiKey::ListOffsets.request_header_version(7))
        .expect("header");
    body.encode(&mut buf, 7).expect("body");
    buf.freeze()
}

#[tokio::test]
async fn another_clusters_offsets_are_asked_without_the_clients_epoch_and_leader_errors_refresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = routes(dir.path());
    table
        .route_topic("orders", None, Some("target"))
        .expect("route");
    let catalog = Arc::new(crate::route::Catalog::load(Arc::new(
        crate::state::StateStore::open(dir.path()).expect("state"),
    )));
    let target: Arc<str> = Arc::from("target");
    let layout = MetadataResponse::default().with_topics(vec![
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))
            .with_partitions(vec![
                MetadataResponsePartition::default().with_leader_id(BrokerId(10)),
            ]),
    ]);
    catalog.learn(&target, &layout).await.expect("learn");
    let max_age = std::time::Duration::from_secs(60);
    assert!(catalog.is_fresh("target", "orders", max_age));
    let Plan::Split { parts, merge } = plan(&table, &catalog, &request(0, 12)).await else {
        panic!("routed to the target");
    };
    let mut sent = parts[0].frame.slice(4..);
    RequestHeader::decode(&mut sent, ApiKey::ListOffsets.request_header_version(7))
        .expect("header");
    let sub = ListOffsetsRequest::decode(&mut sent, 7).expect("sub");
    assert_eq!(sub.topics[0].partitions[0].current_leader_epoch, -1);

    let answer = ListOffsetsResponse::default().with_topics(vec![
        ListOffsetsTopicResponse::default()
            .with_name(TopicName(StrBytes::from_static_str("orders")))
            .with_partitions(vec![
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(0)
                    .with_error_code(ResponseError::NotLeaderOrFollower.code()),
            ]),
    ]);
    let frame = frame_of(encode_response(ApiKey::ListOffsets, 7, 5, &answer).expect("encode"));
    (merge.expect("merge"))(vec![PartAnswer::Answered(frame)]).expect("merge");
    assert!(
        !catalog.is_fresh("target", "orders", max_age),
        "the leader moved: klink asks the target again"
    );
}

/// Routes with `orders` on the target, promoted at offset 100 (offsets
/// the same on both clusters) from a source at epoch 5 to a target at
/// epoch 0: the target's epochs read 5 higher.
fn promoted_with_epochs(dir: &std::path::Path) -> (crate::route::RouteTable, Arc<Catalog>) {
    let table = routes(dir);
    table
        .route_topic("orders", None, Some("target"))
        .expect("route");
    let catalog = Arc::new(Catalog::load(Arc::new(
        crate::state::StateStore::open(dir).expect("state"),
    )));
    promoted_from_epoch_5(&catalog.numbering);
    (table, catalog)
}

fn epochs_request(partitions: &[(i32, i32, i32)]) -> Bytes {
    let body = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            OffsetForLeaderTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(
                    partitions
                        .iter()
                        .map(|&(partition, current, epoch)| {
                            OffsetForLeaderPartition::default()
                                .with_partition(partition)
                                .with_current_leader_epoch(current)
                                .with_leader_epoch(epoch)
                        })
                        .collect(),
                ),
        ]);
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::OffsetForLeaderEpoch as i16)
        .with_request_api_version(4)
        .with_correlation_id(8)
        .encode(
            &mut buf,
            ApiKey::OffsetForLeaderEpoch.request_header_version(4),
        )
        .expect("header");
    body.encode(&mut buf, 4).expect("body");
    buf.freeze()
}

/// The plan for `payload` (ListOffsets v7 or OffsetForLeaderEpoch v4)
/// from a client of the source, `orders` led by broker 10 + p.
async fn plan(table: &crate::route::RouteTable, catalog: &Arc<Catalog>, payload: &Bytes) -> Plan {
    let routes = table.snapshot();
    let leaders = FixedLeaders(HashMap::from([("orders".to_string(), 3)]));
    let home = Destination::Any(Arc::from("source"));
    let api = match crate::wire::RequestHeader::parse(payload).map(|h| h.api_key) {
        Ok(key) if key == ApiKey::ListOffsets as i16 => ApiKey::ListOffsets,
        _ => ApiKey::OffsetForLeaderEpoch,
    };
    let cx = Context {
        cluster: &leaders,
        routes: &routes,
        catalog,
        home: &home,
        api,
        version: if api == ApiKey::ListOffsets { 7 } else { 4 },
        payload,
    };
    match api {
        ApiKey::ListOffsets => plan_list_offsets(&cx).await,
        _ => plan_read_side(&cx).await,
    }
    .expect("plan")
}

/// (partition, leader epoch, end offset) of every answered partition.
fn ends(bytes: Bytes) -> Vec<(i32, i32, i64)> {
    let response: OffsetForLeaderEpochResponse =
        decode_response(ApiKey::OffsetForLeaderEpoch, 4, &frame_of(bytes)).expect("decode");
    let mut ends: Vec<_> = response
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .map(|p| (p.partition, p.leader_epoch, p.end_offset))
        .collect();
    ends.sort();
    ends
}

#[tokio::test]
async fn an_epoch_from_before_the_promotion_ends_where_the_promotion_began() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, catalog) = promoted_with_epochs(dir.path());
    // The consumer last fetched at the source's epoch 4 and now sees 5.
    let Plan::Answer(answer) = plan(&table, &catalog, &epochs_request(&[(2, 5, 4)])).await else {
        panic!("answered by klink: the target never had the source's epochs");
    };
    assert_eq!(ends(answer), vec![(2, 4, 100)]);
}

#[tokio::test]
async fn an_epoch_of_the_promoted_era_is_asked_in_the_targets_own_and_answered_in_the_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, catalog) = promoted_with_epochs(dir.path());
    // Partition 2: epoch 6 is the target's 1. Partition 0 has no era (not
    // mirrored there): the client's current epoch does not cross; and
    // partition 2's epoch 3 is answered by klink beside the target's.
    let payload = epochs_request(&[(2, 7, 6), (0, 7, 3)]);
    let Plan::Split { parts, merge } = plan(&table, &catalog, &payload).await else {
        panic!("sent to the target");
    };
    let mut sent = parts[0].frame.slice(4..);
    RequestHeader::decode(
        &mut sent,
        ApiKey::OffsetForLeaderEpoch.request_header_version(4),
    )
    .expect("header");
    let sub = OffsetForLeaderEpochRequest::decode(&mut sent, 4).expect("sub");
    let asked: Vec<(i32, i32, i32)> = sub.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition, p.current_leader_epoch, p.leader_epoch))
        .collect();
    assert_eq!(asked, vec![(2, 2, 1), (0, -1, 3)]);
    let answer = OffsetForLeaderEpochResponse::default().with_topics(vec![
        OffsetForLeaderTopicResult::default()
            .with_topic(TopicName(StrBytes::from_static_str("orders")))
            .with_partitions(vec![
                EpochEndOffset::default()
                    .with_partition(2)
                    .with_leader_epoch(1)
                    .with_end_offset(150),
                EpochEndOffset::default()
                    .with_partition(0)
                    .with_leader_epoch(3)
                    .with_end_offset(40),
            ]),
    ]);
    let frame =
        frame_of(encode_response(ApiKey::OffsetForLeaderEpoch, 4, 8, &answer).expect("encode"));
    let merged = (merge.expect("merge"))(vec![PartAnswer::Answered(frame)]).expect("merge");
    assert_eq!(ends(merged), vec![(0, 3, 40), (2, 6, 150)]);
}

#[tokio::test]
async fn list_offsets_of_a_promoted_partition_carries_epochs_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (table, catalog) = promoted_with_epochs(dir.path());
    let Plan::Split { parts, merge } = plan(&table, &catalog, &request(2, 6)).await else {
        panic!("routed to the target");
    };
    let mut sent = parts[0].frame.slice(4..);
    RequestHeader::decode(&mut sent, ApiKey::ListOffsets.request_header_version(7))
        .expect("header");
    let sub = ListOffsetsRequest::decode(&mut sent, 7).expect("sub");
    assert_eq!(sub.topics[0].partitions[0].current_leader_epoch, 1);
    let answer = ListOffsetsResponse::default().with_topics(vec![
        ListOffsetsTopicResponse::default()
            .with_name(TopicName(StrBytes::from_static_str("orders")))
            .with_partitions(vec![
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(2)
                    .with_offset(120)
                    .with_leader_epoch(1),
            ]),
    ]);
    let frame = frame_of(encode_response(ApiKey::ListOffsets, 7, 5, &answer).expect("encode"));
    let merged = (merge.expect("merge"))(vec![PartAnswer::Answered(frame)]).expect("merge");
    let response: ListOffsetsResponse =
        decode_response(ApiKey::ListOffsets, 7, &frame_of(merged)).expect("decode");
    let p = &response.topics[0].partitions[0];
    assert_eq!((p.offset, p.leader_epoch), (120, 6));
}
