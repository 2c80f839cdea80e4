//! Produce, routed per partition by each topic's write route.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};

use super::{
    Cluster, Context, Part, PartAnswer, PartFailure, Plan, TopicKey, UpstreamKeys, decode_response,
    encode_response, entry, group_by, last_entry, leader_moved,
};
use crate::batch;
use crate::error::Result;
use crate::route::{ClientProducer, Identity, Outcome, Placement, ProducerIds, outcome_of};
use crate::split::Destination;

/// Produce v13 names topics by id (KIP-516).
const TOPIC_IDS_SINCE: i16 = 13;

const NOT_LEADER: i16 = ResponseError::NotLeaderOrFollower.code();
const UNKNOWN_TOPIC_ID: i16 = ResponseError::UnknownTopicId.code();

/// One partition of a split request: how the client named its topic, the
/// topic's name, and the batches klink placed in a sequence space.
struct Routed {
    client_key: TopicKey,
    name: String,
    data: PartitionProduceData,
    placements: Vec<Placement>,
}

pub async fn plan_produce<C: Cluster>(cx: &Context<'_, C>, acks: i16) -> Result<Plan> {
    let (header, request): (_, ProduceRequest) = cx.decode()?;
    let by_id = cx.version >= TOPIC_IDS_SINCE;
    let mut resolved = Vec::with_capacity(request.topic_data.len());
    for topic in &request.topic_data {
        let client_key = TopicKey::new(by_id, topic.name.as_str(), topic.topic_id);
        let name = cx.topic_name(by_id, topic.name.as_str(), topic.topic_id);
        let cluster = name.as_deref().map(|n| cx.routes.writes(n).clone());
        resolved.push((client_key, name, cluster));
    }
    cx.prepare_leaders(
        resolved
            .iter()
            .filter_map(|(_, name, cluster)| Some((cluster.clone()?, name.clone()?))),
    )
    .await;
    // Every partition in request order, with where it goes or the error
    // klink answers it with itself.
    let mut order: Vec<(TopicKey, i32)> = Vec::new();
    let mut assigned: Vec<(Destination, Routed)> = Vec::new();
    let mut answered: HashMap<(TopicKey, i32), i16> = HashMap::new();
    let mut needs_translation = false;
    for (topic, (client_key, name, cluster)) in request.topic_data.iter().zip(resolved) {
        let (Some(name), Some(cluster)) = (name, cluster) else {
            for p in &topic.partition_data {
                order.push((client_key.clone(), p.index));
                answered.insert((client_key.clone(), p.index), UNKNOWN_TOPIC_ID);
            }
            continue;
        };
        if by_id {
            match upstream_id_of(cx, &cluster, &name).await {
                Some(id) => needs_translation |= id != topic.topic_id,
                None => {
                    for p in &topic.partition_data {
                        order.push((client_key.clone(), p.index));
                        answered.insert((client_key.clone(), p.index), UNKNOWN_TOPIC_ID);
                    }
                    continue;
                }
            }
        }
        for p in &topic.partition_data {
            order.push((client_key.clone(), p.index));
            let Some(destination) = cx.partition_destination(&cluster, &name, p.index).await else {
                // No leader klink could reach: the client refreshes its
                // metadata and retries, as after a leader change.
                answered.insert((client_key.clone(), p.index), NOT_LEADER);
                continue;
            };
            let mut data = p.clone();
            let mut placements = Vec::new();
            match reidentify(cx, &cluster, &name, p.index, p.records.as_ref()).await {
                Reidentified::AsTheyAre => {}
                Reidentified::Rewritten(records, placed) => {
                    data.records = Some(records);
                    placements = placed;
                    needs_translation = true;
                }
                Reidentified::Refused(code) => {
                    answered.insert((client_key.clone(), p.index), code);
                    continue;
                }
            }
            let routed = Routed {
                client_key: client_key.clone(),
                name: name.clone(),
                data,
                placements,
            };
            assigned.push((destination, routed));
        }
    }
    if answered.is_empty() && !needs_translation && assigned.iter().all(|(d, _)| d == cx.home) {
        return Ok(Plan::Forward(cx.home.clone()));
    }
    let mut parts = Vec::new();
    // Per part: its partitions, and the upstream's key for each topic back
    // to the client's.
    let mut part_partitions: Vec<Vec<(TopicKey, i32, Vec<Placement>)>> = Vec::new();
    let mut part_topics: Vec<UpstreamKeys> = Vec::new();
    for (destination, partitions) in group_by(assigned) {
        let mut sub = request.clone().with_topic_data(Vec::new());
        let mut keys = HashMap::new();
        let mut listed = Vec::with_capacity(partitions.len());
        for routed in partitions {
            let upstream_key = if by_id {
                // Known: checked above, before the partition was routed.
                let id = cx.catalog.upstream_id(destination.cluster(), &routed.name);
                TopicKey::Id(id.unwrap_or_default())
            } else {
                TopicKey::Name(routed.name.clone())
            };
            keys.insert(
                upstream_key.clone(),
                (routed.client_key.clone(), routed.name.clone()),
            );
            let index = routed.data.index;
            entry(&mut sub.topic_data, &upstream_key)
                .partition_data
                .push(routed.data);
            listed.push((routed.client_key, index, routed.placements));
        }
        parts.push(Part {
            frame: cx.encode_request(&header, &sub)?,
            expects_response: acks != 0,
            destination: destination.clone(),
        });
        part_partitions.push(listed);
        part_topics.push((destination.cluster().clone(), keys));
    }
    if acks == 0 {
        // No answer will tell: every placed batch keeps its place.
        return Ok(Plan::Split { parts, merge: None });
    }
    let producers = cx.cluster.producers().cloned();
    let catalog = cx.catalog.clone();
    let (api, version, correlation_id) = (cx.api, cx.version, header.correlation_id);
    let merge = Box::new(move |answers: Vec<PartAnswer>| {
        let mut results: HashMap<(TopicKey, i32), PartitionProduceResponse> = HashMap::new();
        let mut merged = ProduceResponse::default();
        for (((answer, listed), (cluster, keys)), _) in answers
            .into_iter()
            .zip(part_partitions)
            .zip(part_topics)
            .zip(0..)
        {
            let frame = match answer {
                PartAnswer::Answered(frame) => frame,
                PartAnswer::Failed(failure) => {
                    let (code, outcome) = failed_part(failure);
                    for (client_key, index, placements) in listed {
                        settle(producers.as_ref(), &placements, outcome);
                        let result = PartitionProduceResponse::default()
                            .with_index(index)
                            .with_error_code(code)
                            .with_base_offset(-1);
                        results.insert((client_key, index), result);
                    }
                    continue;
                }
            };
            let response: ProduceResponse = decode_response(api, version, &frame)?;
            merged.throttle_time_ms = merged.throttle_time_ms.max(response.throttle_time_ms);
            for endpoint in response.node_endpoints {
                if !merged
                    .node_endpoints
                    .iter()
                    .any(|e| e.node_id == endpoint.node_id)
                {
                    merged.node_endpoints.push(endpoint);
                }
            }
            let mut placed: HashMap<(TopicKey, i32), Vec<Placement>> = listed
                .into_iter()
                .map(|(key, index, placements)| ((key, index), placements))
                .collect();
            for topic in response.responses {
                let upstream_key = TopicKey::new(by_id, topic.name.as_str(), topic.topic_id);
                let Some((client_key, name)) = keys.get(&upstream_key) else {
                    tracing::error!(%cluster, topic = ?upstream_key, "Produce answer names a topic klink did not send there; dropped");
                    continue;
                };
                for p in topic.partition_responses {
                    if leader_moved(p.error_code) {
                        catalog.mark_stale(&cluster, name);
                    }
                    if let Some(placements) = placed.remove(&(client_key.clone(), p.index)) {
                        settle(producers.as_ref(), &placements, outcome_of(p.error_code));
                    }
                    results.insert((client_key.clone(), p.index), p);
                }
            }
            // A partition the answer left out was not taken.
            for ((client_key, index), placements) in placed {
                tracing::error!(%cluster, topic = ?client_key, index, "Produce answer left out a partition");
                settle(producers.as_ref(), &placements, Outcome::Refused);
            }
        }
        for (client_key, index) in order {
            let result = results
                .remove(&(client_key.clone(), index))
                .unwrap_or_else(|| {
                    let code = answered
                        .get(&(client_key.clone(), index))
                        .copied()
                        .unwrap_or(NOT_LEADER);
                    PartitionProduceResponse::default()
                        .with_index(index)
                        .with_error_code(code)
                        .with_base_offset(-1)
                });
            last_entry(&mut merged.responses, &client_key)
                .partition_responses
                .push(result);
        }
        encode_response(api, version, correlation_id, &merged)
    });
    Ok(Plan::Split {
        parts,
        merge: Some(merge),
    })
}

/// The id `cluster` knows `topic` by, asking the cluster when klink has
/// not seen it there.
async fn upstream_id_of<C: Cluster>(
    cx: &Context<'_, C>,
    cluster: &Arc<str>,
    topic: &str,
) -> Option<uuid::Uuid> {
    if let Some(id) = cx.catalog.upstream_id(cluster, topic) {
        return Some(id);
    }
    cx.cluster
        .refresh_leaders(cluster, vec![topic.to_string()])
        .await;
    cx.catalog.upstream_id(cluster, topic)
}

/// The error a failed part's partitions get, and what it means for their
/// batches: a part that never left klink was certainly not taken.
fn failed_part(failure: PartFailure) -> (i16, Outcome) {
    match failure {
        PartFailure::NotSent => (NOT_LEADER, Outcome::Refused),
        PartFailure::Unsupported => (ResponseError::UnsupportedVersion.code(), Outcome::Refused),
        PartFailure::Lost => (ResponseError::RequestTimedOut.code(), Outcome::Kept),
    }
}

fn settle(producers: Option<&Arc<ProducerIds>>, placements: &[Placement], outcome: Outcome) {
    if let Some(producers) = producers {
        for placement in placements {
            producers.settle(placement, outcome);
        }
    }
}

enum Reidentified {
    /// Plain batches, or idempotent ones going to their issuer as they are.
    AsTheyAre,
    Rewritten(Bytes, Vec<Placement>),
    /// klink cannot send these batches where they must go (no producer id
    /// from that cluster): the client gets this error and retries.
    Refused(i16),
}

/// Idempotent batches placed in the sequence space of the cluster they go
/// to, under the identity that cluster issued klink where it is not the
/// client's issuer (DESIGN trap 8).
async fn reidentify<C: Cluster>(
    cx: &Context<'_, C>,
    cluster: &Arc<str>,
    topic: &str,
    partition: i32,
    records: Option<&Bytes>,
) -> Reidentified {
    let Some(records) = records else {
        return Reidentified::AsTheyAre;
    };
    let Some(producers) = cx.cluster.producers() else {
        return Reidentified::AsTheyAre;
    };
    let Ok(Some(first)) = batch::BatchHeader::parse(records) else {
        return Reidentified::AsTheyAre;
    };
    // Transactions stay on the cluster their id is pinned to; plain
    // batches carry no identity to translate.
    if first.producer_id < 0 || first.is_transactional() {
        return Reidentified::AsTheyAre;
    }
    let client = ClientProducer {
        // InitProducerId is pinned to the default cluster: every client
        // id comes from there.
        issuer: cx.routes.default_cluster().clone(),
        identity: Identity {
            producer_id: first.producer_id,
            epoch: first.producer_epoch,
        },
    };
    let ours = match producers.mapped(&client, cluster) {
        Some(ours) => ours,
        None => match cx.cluster.producer_on(cluster, &client).await {
            Some(ours) => ours,
            None => {
                tracing::warn!(%cluster, producer_id = client.identity.producer_id, "no producer id from the routed cluster; the client will retry");
                return Reidentified::Refused(NOT_LEADER);
            }
        },
    };
    let Ok(ranges) = batch::batches(records) else {
        return Reidentified::AsTheyAre;
    };
    let mut placements = Vec::with_capacity(ranges.len());
    let mut rewritten = BytesMut::from(&records[..]);
    for range in ranges {
        let Ok(header) = batch::header(&records[range.clone()]) else {
            return Reidentified::AsTheyAre;
        };
        let Some(placement) = producers.place(
            &client,
            cluster,
            topic,
            partition,
            header.base_sequence,
            header.record_count,
        ) else {
            continue;
        };
        let sequence = placement.sequence;
        placements.push(placement);
        if batch::rewrite_producer(
            &mut rewritten[range],
            ours.producer_id,
            ours.epoch,
            sequence,
        )
        .is_err()
        {
            settle(Some(producers), &placements, Outcome::Refused);
            return Reidentified::Refused(ResponseError::CorruptMessage.code());
        }
    }
    if placements.is_empty() {
        return Reidentified::AsTheyAre;
    }
    Reidentified::Rewritten(rewritten.freeze(), placements)
}

#[cfg(test)]
mod tests {
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

        async fn producer_on(
            &self,
            cluster: &Arc<str>,
            client: &ClientProducer,
        ) -> Option<Identity> {
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
        RequestHeader::decode(&mut payload, ApiKey::Produce.request_header_version(9))
            .expect("header");
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

    #[tokio::test]
    async fn idempotent_batches_follow_their_partition_back_and_forth() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = routes(dir.path());
        let catalog = Arc::new(crate::route::Catalog::load(Arc::new(
            crate::state::StateStore::open(dir.path()).expect("state"),
        )));
        let cluster = Remapping {
            leaders: FixedLeaders(HashMap::from([("payments".to_string(), 1)])),
            producers: Arc::default(),
        };
        let home = Destination::Any(Arc::from("source"));
        async fn plan_at(
            cluster: &Remapping,
            catalog: &Arc<crate::route::Catalog>,
            home: &Destination,
            sequence: i32,
            routes: Arc<crate::route::Routes>,
        ) -> Plan {
            let payload = idempotent_request(sequence);
            let cx = Context {
                cluster,
                routes: &routes,
                catalog,
                home,
                api: ApiKey::Produce,
                version: 9,
                payload: &payload,
            };
            plan_produce(&cx, -1).await.expect("plan")
        }
        let plan = |sequence: i32, routes: Arc<crate::route::Routes>| {
            plan_at(&cluster, &catalog, &home, sequence, routes)
        };
        // On its own cluster the batch goes as it is.
        assert!(matches!(
            plan(100, table.snapshot()).await,
            Plan::Forward(_)
        ));

        table
            .route_topic("payments", Some("target"), None)
            .expect("route");
        let Plan::Split { parts, merge } = plan(104, table.snapshot()).await else {
            panic!("rewritten");
        };
        assert_eq!(sent_identity(&parts[0]), (900, 0, 0), "target's id, from 0");
        // Refused (leader moved): the place is given back...
        let refused = |part: &Part| {
            let mut payload = part.frame.slice(4..);
            RequestHeader::decode(&mut payload, ApiKey::Produce.request_header_version(9))
                .expect("header");
            let sub = ProduceRequest::decode(&mut payload, 9).expect("sub");
            let response = ProduceResponse::default().with_responses(vec![
                TopicProduceResponse::default()
                    .with_name(sub.topic_data[0].name.clone())
                    .with_partition_responses(vec![
                        PartitionProduceResponse::default()
                            .with_index(0)
                            .with_error_code(NOT_LEADER),
                    ]),
            ]);
            frame_of(encode_response(ApiKey::Produce, 9, 77, &response).expect("encode"))
        };
        (merge.expect("merge"))(vec![PartAnswer::Answered(refused(&parts[0]))]).expect("merge");
        // ... so the retry takes it again, and the next batch follows.
        let Plan::Split { parts, .. } = plan(104, table.snapshot()).await else {
            panic!("rewritten");
        };
        assert_eq!(sent_identity(&parts[0]), (900, 0, 0));
        let Plan::Split { parts, .. } = plan(108, table.snapshot()).await else {
            panic!("rewritten");
        };
        assert_eq!(sent_identity(&parts[0]), (900, 0, 4));

        // Back on the source: the client's own id, continuing where the
        // source left off (it last saw 100..103).
        table
            .route_topic("payments", Some("source"), None)
            .expect("route");
        let Plan::Split { parts, .. } = plan(112, table.snapshot()).await else {
            panic!("rewritten, not forwarded: the sequence moves");
        };
        assert_eq!(sent_identity(&parts[0]), (4242, 3, 104));
        // And to the target again: it continues after 0..7.
        table
            .route_topic("payments", Some("target"), None)
            .expect("route");
        let Plan::Split { parts, .. } = plan(116, table.snapshot()).await else {
            panic!("rewritten");
        };
        assert_eq!(sent_identity(&parts[0]), (900, 0, 8));
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
}
