//! Produce planning and merging, against routes, leaders and producer
//! identities made up for each test.
//!
//! A little over 600 lines: the cases share one set of made-up clusters
//! and batch helpers, and splitting them would mean sharing those across
//! files for no reader's gain.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::*;
use crate::split::test_support::*;
use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::produce_response::TopicProduceResponse;

fn request(topics: &[(&'static str, &[i32])]) -> Bytes {
    let body = ProduceRequest::default().with_acks(-1).with_topic_data(
        topics
            .iter()
            .map(|(t, ps)| {
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str(t)))
                    .with_partition_data(
                        ps.iter()
                            .map(|p| {
                                PartitionProduceData::default()
                                    .with_index(*p)
                                    .with_records(Some(Bytes::from(format!("{t}-{p}"))))
                            })
                            .collect(),
                    )
            })
            .collect(),
    );
    let mut buf = bytes::BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(9)
        .with_correlation_id(77)
        .encode(&mut buf, ApiKey::Produce.request_header_version(9))
        .expect("header");
    body.encode(&mut buf, 9).expect("body");
    buf.freeze()
}

fn answer(part: &Part, offset: i64) -> crate::wire::Frame {
    let mut payload = part.frame.slice(4..);
    let _ = RequestHeader::decode(&mut payload, ApiKey::Produce.request_header_version(9))
        .expect("header");
    let sub = ProduceRequest::decode(&mut payload, 9).expect("sub-request");
    let response = ProduceResponse::default().with_responses(
        sub.topic_data
            .iter()
            .map(|t| {
                TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(
                        t.partition_data
                            .iter()
                            .map(|p| {
                                PartitionProduceResponse::default()
                                    .with_index(p.index)
                                    .with_base_offset(offset)
                            })
                            .collect(),
                    )
            })
            .collect(),
    );
    frame_of(encode_response(ApiKey::Produce, 9, 77, &response).expect("encode"))
}

#[tokio::test]
async fn mixed_routes_split_and_merge_in_request_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = routes(dir.path());
    table
        .route_topic("payments", Some("target"), None)
        .expect("route");
    let routes = table.snapshot();
    let catalog = Arc::new(crate::route::Catalog::load(Arc::new(
        crate::state::StateStore::open(dir.path()).expect("state"),
    )));
    let leaders = FixedLeaders(HashMap::from([("payments".to_string(), 2)]));
    let home = Destination::Broker {
        cluster: Arc::from("source"),
        upstream_id: 1,
    };
    let payload = request(&[
        ("payments", &[1]),
        ("orders", &[0, 1]),
        ("payments", &[0]),
        ("nowhere", &[0]),
    ]);
    let cx = Context {
        cluster: &leaders,
        routes: &routes,
        catalog: &catalog,
        home: &home,
        api: ApiKey::Produce,
        version: 9,
        payload: &payload,
    };
    let Plan::Split { parts, merge } = plan_produce(&cx, -1).await.expect("plan") else {
        panic!("mixed routes split");
    };
    // payments p1 -> target leader 11, orders + nowhere -> the client's broker, payments p0 -> leader 10.
    let destinations: Vec<_> = parts.iter().map(|p| p.destination.clone()).collect();
    assert_eq!(destinations.len(), 3, "{destinations:?}");
    assert_eq!(destinations[1], home);
    let frames = parts
        .iter()
        .enumerate()
        .map(|(i, p)| PartAnswer::Answered(answer(p, 100 * i as i64)))
        .collect();
    let merged = (merge.expect("acks=all merges"))(frames).expect("merge");
    let response: ProduceResponse =
        decode_response(ApiKey::Produce, 9, &frame_of(merged)).expect("decode");
    let got: Vec<(String, i32, i64)> = response
        .responses
        .iter()
        .flat_map(|t| {
            t.partition_responses
                .iter()
                .map(move |p| (t.name.to_string(), p.index, p.base_offset))
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("payments".into(), 1, 0),
            ("orders".into(), 0, 100),
            ("orders".into(), 1, 100),
            ("payments".into(), 0, 200),
            ("nowhere".into(), 0, 100),
        ]
    );
}

#[tokio::test]
async fn same_cluster_routes_forward_the_original_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routes = routes(dir.path()).snapshot();
    let catalog = Arc::new(crate::route::Catalog::load(Arc::new(
        crate::state::StateStore::open(dir.path()).expect("state"),
    )));
    let leaders = FixedLeaders(HashMap::new());
    let home = Destination::Any(Arc::from("source"));
    let payload = request(&[("orders", &[0]), ("unlinked", &[3])]);
    let cx = Context {
        cluster: &leaders,
        routes: &routes,
        catalog: &catalog,
        home: &home,
        api: ApiKey::Produce,
        version: 9,
        payload: &payload,
    };
    assert!(matches!(plan_produce(&cx, 1).await.expect("plan"), Plan::Forward(d) if d == home));
}

fn produced(response: ProduceResponse) -> Vec<(String, i32, i16)> {
    response
        .responses
        .iter()
        .flat_map(|t| {
            t.partition_responses
                .iter()
                .map(move |p| (t.name.to_string(), p.index, p.error_code))
        })
        .collect()
}

#[tokio::test]
async fn a_failed_part_answers_its_own_partitions_and_no_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = routes(dir.path());
    table
        .route_topic("payments", Some("target"), None)
        .expect("route");
    let routes = table.snapshot();
    let catalog = Arc::new(crate::route::Catalog::load(Arc::new(
        crate::state::StateStore::open(dir.path()).expect("state"),
    )));
    let leaders = FixedLeaders(HashMap::from([("payments".to_string(), 2)]));
    let home = Destination::Any(Arc::from("source"));
    let payload = request(&[("payments", &[1]), ("orders", &[0]), ("payments", &[0])]);
    let cx = Context {
        cluster: &leaders,
        routes: &routes,
        catalog: &catalog,
        home: &home,
        api: ApiKey::Produce,
        version: 9,
        payload: &payload,
    };
    let Plan::Split { parts, merge } = plan_produce(&cx, -1).await.expect("plan") else {
        panic!("split");
    };
    assert_eq!(parts.len(), 3);
    // The first part never left klink, the second was answered, the
    // third was sent and its answer lost.
    let answers = vec![
        PartAnswer::Failed(PartFailure::NotSent),
        PartAnswer::Answered(answer(&parts[1], 5)),
        PartAnswer::Failed(PartFailure::Lost),
    ];
    let merged = (merge.expect("merge"))(answers).expect("merge");
    let response: ProduceResponse =
        decode_response(ApiKey::Produce, 9, &frame_of(merged)).expect("decode");
    assert_eq!(
        produced(response),
        vec![
            ("payments".into(), 1, NOT_LEADER),
            ("orders".into(), 0, 0),
            ("payments".into(), 0, ResponseError::RequestTimedOut.code()),
        ]
    );
}

/// Leaders as [`FixedLeaders`]; the target issues klink id 900.
struct Remapping {
    leaders: FixedLeaders,
    producers: Arc<ProducerIds>,
}

impl Cluster for Remapping {
    async fn leader(&self, cluster: &Arc<str>, topic: &str, partition: i32) -> Option<i32> {
        self.leaders.leader(cluster, topic, partition).await
    }

    fn producers(&self) -> Option<&Arc<ProducerIds>> {
        Some(&self.producers)
    }

    async fn producer_on(&self, cluster: &Arc<str>, client: &ClientProducer) -> Option<Identity> {
        let issued = Identity {
            producer_id: 900,
            epoch: 0,
        };
        Some(self.producers.set_mapped(client, cluster, issued))
    }
}

fn idempotent_request(sequence: i32) -> Bytes {
    let mut batch =
        crate::batch::tests::idempotent_batch(4, kafka_protocol::records::Compression::None);
    crate::batch::rewrite_producer(&mut batch, 4242, 3, sequence).expect("rewrite");
    let body = ProduceRequest::default()
        .with_acks(-1)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("payments")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch.freeze())),
                ]),
        ]);
    let mut buf = bytes::BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(0)
        .with_request_api_version(9)
        .with_correlation_id(77)
        .encode(&mut buf, ApiKey::Produce.request_header_version(9))
        .expect("header");
    body.encode(&mut buf, 9).expect("body");
    buf.freeze()
}

/// The producer fields of the batch a part carries.
fn sent_identity(part: &Part) -> (i64, i16, i32) {
    let mut payload = part.frame.slice(4..);
    RequestHeader::decode(&mut payload, ApiKey::Produce.request_header_version(9)).expect("header");
    let sub = ProduceRequest::decode(&mut payload, 9).expect("sub");
    let records = sub.topic_data[0].partition_data[0]
        .records
        .clone()
        .expect("records");
    assert!(crate::batch::crc_ok(&records), "CRC recomputed");
    let header = crate::batch::header(&records).expect("header");
    (
        header.producer_id,
        header.producer_epoch,
        header.base_sequence,
    )
}

/// The answer `part`'s cluster gives its one partition.
fn answer_with(part: &Part, error_code: i16) -> crate::wire::Frame {
    let mut payload = part.frame.slice(4..);
    RequestHeader::decode(&mut payload, ApiKey::Produce.request_header_version(9)).expect("header");
    let sub = ProduceRequest::decode(&mut payload, 9).expect("sub");
    let response = ProduceResponse::default().with_responses(vec![
        TopicProduceResponse::default()
            .with_name(sub.topic_data[0].name.clone())
            .with_partition_responses(vec![
                PartitionProduceResponse::default()
                    .with_index(0)
                    .with_error_code(error_code),
            ]),
    ]);
    frame_of(encode_response(ApiKey::Produce, 9, 77, &response).expect("encode"))
}

/// A route table, a catalog and a cluster where the target issues klink
/// id 900, planning the idempotent batch of client producer 4242 at a
/// given base sequence.
struct Flipping {
    _dir: tempfile::TempDir,
    table: crate::route::RouteTable,
    catalog: Arc<crate::route::Catalog>,
    cluster: Remapping,
    home: Destination,
}

impl Flipping {
    fn new() -> Flipping {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = routes(dir.path());
        let catalog = Arc::new(crate::route::Catalog::load(Arc::new(
            crate::state::StateStore::open(dir.path()).expect("state"),
        )));
        Flipping {
            _dir: dir,
            table,
            catalog,
            cluster: Remapping {
                leaders: FixedLeaders(HashMap::from([("payments".to_string(), 1)])),
                producers: Arc::default(),
            },
            home: Destination::Any(Arc::from("source")),
        }
    }

    fn writes_to(&self, cluster: &str) {
        self.table
            .route_topic("payments", Some(cluster), None)
            .expect("route");
    }

    async fn plan(&self, sequence: i32) -> Plan {
        let payload = idempotent_request(sequence);
        let routes = self.table.snapshot();
        let cx = Context {
            cluster: &self.cluster,
            routes: &routes,
            catalog: &self.catalog,
            home: &self.home,
            api: ApiKey::Produce,
            version: 9,
            payload: &payload,
        };
        plan_produce(&cx, -1).await.expect("plan")
    }

    /// The one part a split plan sends, and its merge.
    async fn split(&self, sequence: i32) -> (Part, crate::split::Merge) {
        let Plan::Split { mut parts, merge } = self.plan(sequence).await else {
            panic!("split");
        };
        assert_eq!(parts.len(), 1);
        (parts.remove(0), merge.expect("merge"))
    }
}

#[tokio::test]
async fn idempotent_batches_follow_their_partition_back_and_forth() {
    let f = Flipping::new();
    // On its own cluster the batch goes as it is.
    assert!(matches!(f.plan(100).await, Plan::Forward(_)));

    f.writes_to("target");
    let (part, merge) = f.split(104).await;
    assert_eq!(sent_identity(&part), (900, 0, 0), "target's id, from 0");
    // Refused (leader moved): the place is given back...
    merge(vec![PartAnswer::Answered(answer_with(&part, NOT_LEADER))]).expect("merge");
    // ... so the retry takes it again, and the next batch follows.
    let (part, _) = f.split(104).await;
    assert_eq!(sent_identity(&part), (900, 0, 0));
    let (part, _) = f.split(108).await;
    assert_eq!(sent_identity(&part), (900, 0, 4));

    // Back on the source: the client's own id, continuing where the
    // source left off (it last saw 100..103).
    f.writes_to("source");
    let (part, _) = f.split(112).await;
    assert_eq!(
        sent_identity(&part),
        (4242, 3, 104),
        "rewritten, not forwarded: the sequence moves"
    );
    // And to the target again: it continues after 0..7.
    f.writes_to("target");
    let (part, _) = f.split(116).await;
    assert_eq!(sent_identity(&part), (900, 0, 8));
}

#[tokio::test]
async fn a_retry_of_a_batch_whose_answer_was_lost_goes_where_its_first_try_went() {
    let f = Flipping::new();
    f.writes_to("target");
    let (part, merge) = f.split(104).await;
    assert_eq!(sent_identity(&part), (900, 0, 0));
    // The target's answer is lost, and the writes flip back meanwhile.
    merge(vec![PartAnswer::Failed(PartFailure::Lost)]).expect("merge");
    f.writes_to("source");
    // The retry goes to the target, in its old place: the target either
    // has it (and answers it as a duplicate) or takes it now. Following
    // the route would write it twice, and leave the target's sequence
    // space with a hole the next batch there would be refused at.
    let (part, merge) = f.split(104).await;
    assert_eq!(part.destination.cluster().as_ref(), "target");
    assert_eq!(sent_identity(&part), (900, 0, 0));
    // Lost again: still held there.
    merge(vec![PartAnswer::Failed(PartFailure::Lost)]).expect("merge");
    let (part, merge) = f.split(104).await;
    assert_eq!(part.destination.cluster().as_ref(), "target");
    // The target answers: the doubt is over and writes follow the route.
    merge(vec![PartAnswer::Answered(answer_with(&part, 0))]).expect("merge");
    let (part, _) = f.split(108).await;
    assert_eq!(part.destination.cluster().as_ref(), "source");
    assert_eq!(sent_identity(&part), (4242, 3, 104));
    // And the target's space continues after the batch it holds.
    f.writes_to("target");
    let (part, _) = f.split(112).await;
    assert_eq!(sent_identity(&part), (900, 0, 4));
}

#[tokio::test]
async fn a_request_forwarded_whole_whose_answer_was_lost_pins_its_retry() {
    let f = Flipping::new();
    // Forwarded to the source as it is (the fast path), and lost.
    assert!(matches!(f.plan(100).await, Plan::Forward(_)));
    note_lost(
        &f.cluster.producers,
        &f.catalog,
        &Arc::from("source"),
        &Arc::from("source"),
        9,
        &idempotent_request(100),
    );
    f.writes_to("target");
    let (part, merge) = f.split(100).await;
    assert_eq!(part.destination.cluster().as_ref(), "source");
    assert_eq!(
        sent_identity(&part),
        (4242, 3, 100),
        "as it was: the source deduplicates it"
    );
    // A refusal ends the doubt too: the broker certainly did not take it.
    merge(vec![PartAnswer::Answered(answer_with(&part, NOT_LEADER))]).expect("merge");
    let (part, _) = f.split(100).await;
    assert_eq!(part.destination.cluster().as_ref(), "target");
    assert_eq!(sent_identity(&part), (900, 0, 0));
}

/// Counts the Metadata lookups planning asks for.
struct Counting {
    leaders: FixedLeaders,
    asked: std::sync::Mutex<Vec<(String, Vec<String>)>>,
}

impl Cluster for Counting {
    async fn leader(&self, cluster: &Arc<str>, topic: &str, partition: i32) -> Option<i32> {
        self.leaders.leader(cluster, topic, partition).await
    }

    async fn refresh_leaders(&self, cluster: &Arc<str>, topics: Vec<String>) {
        if let Ok(mut asked) = self.asked.lock() {
            asked.push((cluster.to_string(), topics));
        }
    }
}

#[tokio::test]
async fn many_partitions_routed_elsewhere_cost_one_lookup_per_cluster() {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = routes(dir.path());
    table
        .route_topic("payments", Some("target"), None)
        .expect("route");
    table
        .route_topic("orders", Some("target"), None)
        .expect("route");
    let routes = table.snapshot();
    let catalog = Arc::new(crate::route::Catalog::load(Arc::new(
        crate::state::StateStore::open(dir.path()).expect("state"),
    )));
    let cluster = Counting {
        leaders: FixedLeaders(HashMap::from([
            ("payments".to_string(), 64),
            ("orders".to_string(), 64),
        ])),
        asked: Default::default(),
    };
    let home = Destination::Any(Arc::from("source"));
    let partitions: Vec<i32> = (0..64).collect();
    let payload = request(&[
        ("payments", &partitions),
        ("orders", &partitions),
        ("unlinked", &[0]),
    ]);
    let cx = Context {
        cluster: &cluster,
        routes: &routes,
        catalog: &catalog,
        home: &home,
        api: ApiKey::Produce,
        version: 9,
        payload: &payload,
    };
    let Plan::Split { parts, .. } = plan_produce(&cx, -1).await.expect("plan") else {
        panic!("split");
    };
    assert_eq!(parts.len(), 65, "64 target leaders and the client's broker");
    let asked = cluster.asked.lock().expect("lock").clone();
    assert_eq!(
        asked,
        vec![(
            "target".to_string(),
            vec!["payments".to_string(), "orders".to_string()]
        )],
        "one lookup for the target, none for the client's own cluster"
    );
}

/// `idempotent_request`'s batch marked transactional.
fn transactional_request(sequence: i32) -> Bytes {
    let payload = idempotent_request(sequence);
    let mut payload = bytes::BytesMut::from(&payload[..]);
    let mut body = payload.clone().freeze();
    RequestHeader::decode(&mut body, ApiKey::Produce.request_header_version(9)).expect("header");
    let request = ProduceRequest::decode(&mut body, 9).expect("body");
    let records = request.topic_data[0].partition_data[0]
        .records
        .clone()
        .expect("records");
    let at = payload
        .windows(records.len())
        .position(|w| w == &records[..])
        .expect("records in the payload");
    // The attributes' transactional bit (offset 21 of the batch), then
    // the CRC made again.
    payload[at + 22] |= 1 << 4;
    crate::batch::rewrite_producer(&mut payload[at..], 4242, 3, sequence).expect("crc");
    let rewritten = payload.freeze();
    assert!(
        crate::batch::header(&rewritten[at..])
            .expect("header")
            .is_transactional()
    );
    rewritten
}

#[tokio::test]
async fn transactional_batches_go_only_under_their_transactions_identity() {
    let f = Flipping::new();
    f.writes_to("target");
    let payload = transactional_request(0);
    let routes = f.table.snapshot();
    let cx = Context {
        cluster: &f.cluster,
        routes: &routes,
        catalog: &f.catalog,
        home: &f.home,
        api: ApiKey::Produce,
        version: 9,
        payload: &payload,
    };
    // No identity from the target's transaction coordinator yet: nothing
    // goes there under a plain id, the client is told to retry.
    match plan_produce(&cx, -1).await.expect("plan") {
        Plan::Answer(frame) => {
            let response: ProduceResponse =
                decode_response(ApiKey::Produce, 9, &frame_of(frame)).expect("decode");
            assert_eq!(produced(response), vec![("payments".into(), 0, NOT_LEADER)]);
        }
        Plan::Split { parts, .. } => assert!(parts.is_empty(), "sent under a plain id"),
        Plan::Forward(_) => panic!("forwarded as it is"),
    }
    // AddPartitionsToTxn moved the transaction: it maps the client.
    let client = ClientProducer {
        issuer: Arc::from("source"),
        identity: Identity {
            producer_id: 4242,
            epoch: 3,
        },
    };
    let ours = Identity {
        producer_id: 7000,
        epoch: 2,
    };
    f.cluster
        .producers
        .set_mapped(&client, &Arc::from("target"), ours);
    let Plan::Split { parts, .. } = plan_produce(&cx, -1).await.expect("plan") else {
        panic!("split");
    };
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].destination.cluster().as_ref(), "target");
    assert_eq!(sent_identity(&parts[0]), (7000, 2, 0));
}
