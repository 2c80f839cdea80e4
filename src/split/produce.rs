//! Produce, routed per partition by each topic's write route.

use std::collections::HashMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use uuid::Uuid;

use super::{
    Cluster, Context, Part, Plan, TopicKey, decode_response, encode_response, entry, group_by,
    last_entry,
};
use bytes::{Bytes, BytesMut};

use crate::batch;
use crate::error::Result;
use crate::route::Identity;
use crate::split::Destination;

/// Produce v13 names topics by id (KIP-516).
const TOPIC_IDS_SINCE: i16 = 13;

pub async fn plan_produce<C: Cluster>(cx: &Context<'_, C>, acks: i16) -> Result<Plan> {
    let (header, request): (_, ProduceRequest) = cx.decode()?;
    let by_id = cx.version >= TOPIC_IDS_SINCE;
    // Every partition with its destination, in request order; partitions
    // with no reachable leader are answered by klink.
    let mut assigned = Vec::new();
    let mut unroutable = Vec::new();
    let mut order = Vec::new();
    let mut needs_translation = false;
    for topic in &request.topic_data {
        let (name, cluster, translate) =
            cx.topic_name(by_id, topic.name.as_str(), topic.topic_id, |n| {
                cx.routes.writes(n).clone()
            });
        needs_translation |= translate;
        for p in &topic.partition_data {
            order.push((name.clone(), p.index));
            match cx.partition_destination(&cluster, &name, p.index).await {
                Some(destination) => {
                    let mut partition = p.clone();
                    if let Some(records) =
                        reidentify(cx, &destination, &name, p.index, p.records.as_ref()).await
                    {
                        partition.records = Some(records);
                        needs_translation = true;
                    }
                    assigned.push((destination, (name.clone(), partition)));
                }
                None => unroutable.push((name.clone(), p.index)),
            }
        }
    }
    if unroutable.is_empty() && !needs_translation && assigned.iter().all(|(d, _)| d == cx.home) {
        return Ok(Plan::Forward(cx.home.clone()));
    }
    let groups = group_by(assigned);
    let mut parts = Vec::with_capacity(groups.len());
    for (destination, partitions) in groups {
        let mut sub = request.clone().with_topic_data(Vec::new());
        for (name, partition) in partitions {
            let upstream_id = cx
                .catalog
                .upstream_id(destination.cluster(), &name)
                .unwrap_or_default();
            let key = TopicKey::new(by_id, &name, upstream_id);
            let topic = entry(&mut sub.topic_data, &key);
            topic.partition_data.push(partition);
        }
        parts.push(Part {
            destination,
            frame: cx.encode_request(&header, &sub)?,
            expects_response: acks != 0,
        });
    }
    if acks == 0 {
        return Ok(Plan::Split { parts, merge: None });
    }
    let (api, version, correlation_id) = (cx.api, cx.version, header.correlation_id);
    // Upstream topic ids (v13) back to names, per cluster.
    let mut names: HashMap<Uuid, String> = HashMap::new();
    let mut client_ids: HashMap<String, Uuid> = HashMap::new();
    if by_id {
        for part in &parts {
            for (name, _) in &order {
                if let Some(id) = cx.catalog.upstream_id(part.destination.cluster(), name) {
                    names.insert(id, name.clone());
                }
                client_ids.insert(name.clone(), cx.catalog.client_id(name).unwrap_or_default());
            }
        }
    }
    let merge = Box::new(move |frames: Vec<crate::wire::Frame>| {
        let mut results: HashMap<(String, i32), PartitionProduceResponse> = HashMap::new();
        let mut merged = ProduceResponse::default();
        for frame in &frames {
            let response: ProduceResponse = decode_response(api, version, frame)?;
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
            for topic in response.responses {
                let name = if by_id {
                    names.get(&topic.topic_id).cloned().unwrap_or_default()
                } else {
                    topic.name.to_string()
                };
                for p in topic.partition_responses {
                    results.insert((name.clone(), p.index), p);
                }
            }
        }
        for (name, index) in order {
            let result = results.remove(&(name.clone(), index)).unwrap_or_else(|| {
                // No leader klink could reach: the client refreshes its
                // metadata and retries, as after a leader change.
                PartitionProduceResponse::default()
                    .with_index(index)
                    .with_error_code(ResponseError::NotLeaderOrFollower.code())
                    .with_base_offset(-1)
            });
            let client_id = client_ids.get(&name).copied().unwrap_or_default();
            let key = TopicKey::new(by_id, &name, client_id);
            let topic = last_entry(&mut merged.responses, &key);
            topic.partition_responses.push(result);
        }
        encode_response(api, version, correlation_id, &merged)
    });
    Ok(Plan::Split {
        parts,
        merge: Some(merge),
    })
}

/// Idempotent batches going to a cluster other than the one that issued
/// their producer id, rewritten under the identity that cluster issued
/// klink (DESIGN trap 8); `None` when the records can go as they are.
async fn reidentify<C: Cluster>(
    cx: &Context<'_, C>,
    destination: &Destination,
    topic: &str,
    partition: i32,
    records: Option<&Bytes>,
) -> Option<Bytes> {
    let records = records?;
    let first = batch::BatchHeader::parse(records).ok()??;
    // Transactions stay on the cluster their id is pinned to; plain
    // batches carry no identity to translate.
    if first.producer_id < 0 || first.is_transactional() {
        return None;
    }
    let cluster = destination.cluster();
    let issuer = cx
        .cluster
        .producer_issuer(first.producer_id)
        .unwrap_or_else(|| cx.routes.default_cluster().clone());
    if issuer == *cluster {
        return None;
    }
    let client = Identity {
        producer_id: first.producer_id,
        epoch: first.producer_epoch,
    };
    let Some(ours) = cx.cluster.producer_on(cluster, client).await else {
        tracing::warn!(%cluster, producer_id = client.producer_id, "no producer id from the routed cluster; batches go as they are");
        return None;
    };
    let mut rewritten = BytesMut::from(&records[..]);
    for range in batch::batches(records).ok()? {
        let header = batch::header(&records[range.clone()]).ok()?;
        let sequence =
            cx.cluster
                .rebase_sequence(client, cluster, topic, partition, header.base_sequence);
        batch::rewrite_producer(
            &mut rewritten[range],
            ours.producer_id,
            ours.epoch,
            sequence,
        )
        .ok()?;
    }
    Some(rewritten.freeze())
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
        let catalog = crate::route::Catalog::load(Arc::new(
            crate::state::StateStore::open(dir.path()).expect("state"),
        ));
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
            .map(|(i, p)| answer(p, 100 * i as i64))
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
        let catalog = crate::route::Catalog::load(Arc::new(
            crate::state::StateStore::open(dir.path()).expect("state"),
        ));
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
}
