//! Fetch, routed per partition by each topic's read route.
//!
//! Fetch sessions (KIP-227) belong to one upstream broker. klink forwards
//! them untouched while every partition reads from where the client sent
//! the request; a fetch that crosses clusters is sent sessionless, and an
//! incremental fetch made under routes that changed since its session began
//! is answered FETCH_SESSION_ID_NOT_FOUND so the client starts over with a
//! full fetch klink can see whole.
//!
//! Where a cluster numbers a partition's offsets otherwise than clients
//! (`numbering`), the fetch position goes out translated and the answer
//! comes back renumbered: such fetches are always sessionless.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::{FetchRequest, FetchResponse};

use super::{
    Cluster, Context, Part, PartAnswer, PartFailure, Plan, TopicKey, UpstreamKeys, decode_response,
    encode_response, entry, group_by, last_entry, leader_moved,
};
use crate::error::Result;
use crate::numbering::{Position, View, renumber};

/// Fetch v13 names topics by id (KIP-516).
const TOPIC_IDS_SINCE: i16 = 13;

const NOT_LEADER: i16 = ResponseError::NotLeaderOrFollower.code();
const UNKNOWN_TOPIC_ID: i16 = ResponseError::UnknownTopicId.code();
const OFFSET_OUT_OF_RANGE: i16 = ResponseError::OffsetOutOfRange.code();

/// What one client connection's fetch sessions were set up under.
#[derive(Debug, Default)]
pub struct FetchSessions {
    /// Route generation at the last full fetch klink forwarded.
    generation: Option<u64>,
}

pub async fn plan_fetch<C: Cluster>(
    cx: &Context<'_, C>,
    sessions: &mut FetchSessions,
) -> Result<Plan> {
    let (header, request): (_, FetchRequest) = cx.decode()?;
    let by_id = cx.version >= TOPIC_IDS_SINCE;
    let named = request
        .topics
        .iter()
        .map(|t| (t.topic.as_str(), t.topic_id));
    let resolved = cx
        .resolve_topics(by_id, named, |routes, n| routes.reads(n).clone())
        .await;
    let mut assigned = Vec::new();
    let mut answered: HashMap<(TopicKey, i32), i16> = HashMap::new();
    let mut order: Vec<(TopicKey, i32)> = Vec::new();
    let mut needs_translation = false;
    // Partitions whose offsets the cluster numbers otherwise than clients.
    let mut views: HashMap<(TopicKey, i32), Arc<View>> = HashMap::new();
    for (topic, (client_key, name, cluster)) in request.topics.iter().zip(resolved) {
        let known = match (&name, &cluster) {
            (Some(name), Some(cluster)) if by_id => {
                let upstream = cx.catalog.upstream_id(cluster, name);
                needs_translation |= upstream.is_some_and(|id| id != topic.topic_id);
                upstream.is_some() || cluster == cx.home.cluster()
            }
            (Some(_), Some(_)) => true,
            _ => false,
        };
        let (Some(name), Some(cluster), true) = (name, cluster, known) else {
            for p in &topic.partitions {
                order.push((client_key.clone(), p.partition));
                answered.insert((client_key.clone(), p.partition), UNKNOWN_TOPIC_ID);
            }
            continue;
        };
        for p in &topic.partitions {
            order.push((client_key.clone(), p.partition));
            let Some(destination) = cx.partition_destination(&cluster, &name, p.partition).await
            else {
                answered.insert((client_key.clone(), p.partition), NOT_LEADER);
                continue;
            };
            let mut partition = p.clone();
            if let Some(view) = cx
                .catalog
                .numbering
                .view(&name, p.partition, destination.cluster())
            {
                needs_translation = true;
                match view.from_client(p.fetch_offset) {
                    Position::At(upstream) => partition.fetch_offset = upstream,
                    Position::Below => {
                        answered.insert((client_key.clone(), p.partition), OFFSET_OUT_OF_RANGE);
                        continue;
                    }
                }
                // A divergence check in another numbering would truncate
                // the consumer at the wrong place.
                partition.last_fetched_epoch = -1;
                views.insert((client_key.clone(), p.partition), view);
            }
            if destination.cluster() != cx.home.cluster() {
                // The client's epochs came from the cluster it talks to;
                // another cluster would fence them, or worse, take the last
                // fetched epoch for a divergence and truncate the client.
                partition.current_leader_epoch = -1;
                partition.last_fetched_epoch = -1;
            }
            let routed = (client_key.clone(), name.clone(), partition);
            assigned.push((destination, routed));
        }
    }
    let stays_home =
        answered.is_empty() && !needs_translation && assigned.iter().all(|(d, _)| d == cx.home);
    if request.session_epoch > 0 {
        // Incremental: the session may hold partitions this request does
        // not list, so it is only safe under the routes it began with.
        if stays_home && sessions.generation == Some(cx.routes.generation) {
            return Ok(Plan::Forward(cx.home.clone()));
        }
        let response = FetchResponse::default()
            .with_error_code(ResponseError::FetchSessionIdNotFound.code())
            .with_session_id(0);
        return Ok(Plan::Answer(
            cx.encode_response(header.correlation_id, &response)?,
        ));
    }
    if stays_home {
        sessions.generation = Some(cx.routes.generation);
        return Ok(Plan::Forward(cx.home.clone()));
    }
    sessions.generation = None;
    let mut parts = Vec::new();
    let mut part_partitions: Vec<Vec<(TopicKey, i32)>> = Vec::new();
    let mut part_topics: Vec<UpstreamKeys> = Vec::new();
    for (destination, partitions) in group_by(assigned) {
        let mut sub = request
            .clone()
            .with_session_id(0)
            .with_session_epoch(-1)
            .with_topics(Vec::new())
            .with_forgotten_topics_data(Vec::new());
        let mut keys = HashMap::new();
        let mut listed = Vec::new();
        for (client_key, name, partition) in partitions {
            let upstream_key = if by_id {
                // Known (checked above) or, at the client's own cluster,
                // the id the client sent.
                let id = cx.catalog.upstream_id(destination.cluster(), &name);
                TopicKey::Id(id.unwrap_or(match &client_key {
                    TopicKey::Id(id) => *id,
                    TopicKey::Name(_) => uuid::Uuid::nil(),
                }))
            } else {
                TopicKey::Name(name.clone())
            };
            keys.insert(upstream_key.clone(), (client_key.clone(), name));
            listed.push((client_key, partition.partition));
            entry(&mut sub.topics, &upstream_key)
                .partitions
                .push(partition);
        }
        parts.push(Part {
            frame: cx.encode_request(&header, &sub)?,
            expects_response: true,
            destination: destination.clone(),
        });
        part_partitions.push(listed);
        part_topics.push((destination.cluster().clone(), keys));
    }
    let catalog = cx.catalog.clone();
    let (api, version, correlation_id) = (cx.api, cx.version, header.correlation_id);
    let merge = Box::new(move |answers: Vec<PartAnswer>| {
        let mut results: HashMap<(TopicKey, i32), PartitionData> = HashMap::new();
        let mut merged = FetchResponse::default().with_session_id(0);
        for ((answer, listed), (cluster, keys)) in
            answers.into_iter().zip(part_partitions).zip(part_topics)
        {
            let frame = match answer {
                PartAnswer::Answered(frame) => frame,
                PartAnswer::Failed(failure) => {
                    // Consumers retry a partition whose leader moved; an
                    // error they do not expect would stop them.
                    let code = match failure {
                        PartFailure::Unsupported => ResponseError::UnsupportedVersion.code(),
                        PartFailure::NotSent | PartFailure::Lost => NOT_LEADER,
                    };
                    for (client_key, index) in listed {
                        results.insert((client_key, index), failed_partition(index, code));
                    }
                    continue;
                }
            };
            let response: FetchResponse = decode_response(api, version, &frame)?;
            merged.throttle_time_ms = merged.throttle_time_ms.max(response.throttle_time_ms);
            let failed = response.error_code;
            for endpoint in response.node_endpoints {
                if !merged
                    .node_endpoints
                    .iter()
                    .any(|e| e.node_id == endpoint.node_id)
                {
                    merged.node_endpoints.push(endpoint);
                }
            }
            for topic in response.responses {
                let upstream_key = TopicKey::new(by_id, topic.topic.as_str(), topic.topic_id);
                let Some((client_key, name)) = keys.get(&upstream_key) else {
                    tracing::error!(%cluster, topic = ?upstream_key, "Fetch answer names a topic klink did not ask there; dropped");
                    continue;
                };
                for mut p in topic.partitions {
                    if failed != 0 && p.error_code == 0 {
                        p.error_code = failed;
                    }
                    if leader_moved(p.error_code) {
                        catalog.mark_stale(&cluster, name);
                    }
                    if let Some(view) = views.get(&(client_key.clone(), p.partition_index)) {
                        in_client_numbering(view, &mut p);
                    }
                    results.insert((client_key.clone(), p.partition_index), p);
                }
            }
        }
        for (client_key, index) in order {
            let result = results
                .remove(&(client_key.clone(), index))
                .unwrap_or_else(|| {
                    let code = answered.get(&(client_key.clone(), index)).copied();
                    failed_partition(index, code.unwrap_or(NOT_LEADER))
                });
            last_entry(&mut merged.responses, &client_key)
                .partitions
                .push(result);
        }
        encode_response(api, version, correlation_id, &merged)
    });
    Ok(Plan::Split {
        parts,
        merge: Some(merge),
    })
}

/// A fetched partition's offsets and records as clients number them.
fn in_client_numbering(view: &View, p: &mut PartitionData) {
    if p.high_watermark >= 0 {
        p.high_watermark = view.end_to_client(p.high_watermark);
    }
    if p.last_stable_offset >= 0 {
        p.last_stable_offset = view.end_to_client(p.last_stable_offset);
    }
    if p.log_start_offset >= 0 {
        p.log_start_offset = view.start_to_client(p.log_start_offset);
    }
    for aborted in p.aborted_transactions.iter_mut().flatten() {
        aborted.first_offset = view.start_to_client(aborted.first_offset);
    }
    if let Some(records) = &p.records {
        p.records = Some(renumber(view, records));
    }
}

fn failed_partition(index: i32, code: i16) -> PartitionData {
    PartitionData::default()
        .with_partition_index(index)
        .with_error_code(code)
        .with_high_watermark(-1)
}

#[cfg(test)]
mod tests {
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
        RequestHeader::decode(&mut payload, ApiKey::Fetch.request_header_version(12))
            .expect("header");
        let sub = FetchRequest::decode(&mut payload, 12).expect("sub");
        assert_eq!((sub.session_id, sub.session_epoch), (0, -1));
        let moved = &sub.topics[0].partitions[0];
        assert_eq!(
            (moved.current_leader_epoch, moved.last_fetched_epoch),
            (-1, -1),
            "the source's epochs never reach the target"
        );
        let mut payload = parts[1].frame.slice(4..);
        RequestHeader::decode(&mut payload, ApiKey::Fetch.request_header_version(12))
            .expect("header");
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
}
