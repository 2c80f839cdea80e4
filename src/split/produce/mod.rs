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
use crate::numbering::View;
use crate::route::{
    BatchKey, ClientProducer, Identity, Outcome, Placement, ProducerIds, outcome_of,
};
use crate::split::Destination;

/// Produce v13 names topics by id (KIP-516).
const TOPIC_IDS_SINCE: i16 = 13;

const NOT_LEADER: i16 = ResponseError::NotLeaderOrFollower.code();
const UNKNOWN_TOPIC_ID: i16 = ResponseError::UnknownTopicId.code();

/// One partition of a split request: how the client named its topic, the
/// topic's name, the batches klink placed in a sequence space, and the
/// client's idempotent batch as it sent it.
struct Routed {
    client_key: TopicKey,
    name: String,
    data: PartitionProduceData,
    placements: Vec<Placement>,
    batch: Option<BatchKey>,
}

/// What the merge needs of one partition it sent.
struct Listed {
    client_key: TopicKey,
    index: i32,
    placements: Vec<Placement>,
    batch: Option<BatchKey>,
}

pub async fn plan_produce<C: Cluster>(cx: &Context<'_, C>, acks: i16) -> Result<Plan> {
    let (header, request): (_, ProduceRequest) = cx.decode()?;
    let by_id = cx.version >= TOPIC_IDS_SINCE;
    let named = request
        .topic_data
        .iter()
        .map(|t| (t.name.as_str(), t.topic_id));
    let resolved = cx
        .resolve_topics(by_id, named, |routes, n| routes.writes(n).clone())
        .await;
    // Every partition in request order, with where it goes or the error
    // klink answers it with itself.
    let mut order: Vec<(TopicKey, i32)> = Vec::new();
    let mut assigned: Vec<(Destination, Routed)> = Vec::new();
    let mut answered: HashMap<(TopicKey, i32), i16> = HashMap::new();
    let mut needs_translation = false;
    let mut views: HashMap<(TopicKey, i32), Arc<View>> = HashMap::new();
    // A retry of a batch whose answer was lost goes where its first try
    // went, and that cluster's answer must be seen per partition to end the
    // doubt: such requests are never forwarded whole.
    let mut settles_doubt = false;
    let producers = cx.cluster.producers().cloned();
    let issuer = cx.routes.default_cluster();
    for (topic, (client_key, name, route)) in request.topic_data.iter().zip(resolved) {
        let (Some(name), Some(route)) = (name, route) else {
            for p in &topic.partition_data {
                order.push((client_key.clone(), p.index));
                answered.insert((client_key.clone(), p.index), UNKNOWN_TOPIC_ID);
            }
            continue;
        };
        for p in &topic.partition_data {
            order.push((client_key.clone(), p.index));
            let batch = batch_key(issuer, &name, p.index, p.records.as_ref());
            let held_by = producers
                .as_ref()
                .zip(batch.as_ref())
                .and_then(|(producers, batch)| producers.held_by(batch));
            settles_doubt |= held_by.is_some();
            let cluster = held_by.unwrap_or_else(|| route.clone());
            if by_id {
                match upstream_id_of(cx, &cluster, &name).await {
                    Some(id) => needs_translation |= id != topic.topic_id,
                    None => {
                        answered.insert((client_key.clone(), p.index), UNKNOWN_TOPIC_ID);
                        continue;
                    }
                }
            }
            let Some(destination) = cx.partition_destination(&cluster, &name, p.index).await else {
                // No leader klink could reach: the client refreshes its
                // metadata and retries, as after a leader change.
                answered.insert((client_key.clone(), p.index), NOT_LEADER);
                continue;
            };
            if let Some(view) = cx
                .catalog
                .numbering
                .view(&name, p.index, destination.cluster())
            {
                // The answer's offsets are the cluster's: clients get theirs.
                needs_translation = true;
                views.insert((client_key.clone(), p.index), view);
            }
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
                batch,
            };
            assigned.push((destination, routed));
        }
    }
    if answered.is_empty()
        && !needs_translation
        && !settles_doubt
        && assigned.iter().all(|(d, _)| d == cx.home)
    {
        return Ok(Plan::Forward(cx.home.clone()));
    }
    let mut parts = Vec::new();
    // Per part: its partitions, and the upstream's key for each topic back
    // to the client's.
    let mut part_partitions: Vec<Vec<Listed>> = Vec::new();
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
            listed.push(Listed {
                client_key: routed.client_key,
                index,
                placements: routed.placements,
                batch: routed.batch,
            });
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
                    for listed in listed {
                        settle(producers.as_ref(), &listed.placements, outcome);
                        if failure == PartFailure::Lost
                            && let (Some(producers), Some(batch)) = (&producers, listed.batch)
                        {
                            producers.lost(batch, cluster.clone());
                        }
                        let result = PartitionProduceResponse::default()
                            .with_index(listed.index)
                            .with_error_code(code)
                            .with_base_offset(-1);
                        results.insert((listed.client_key, listed.index), result);
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
            let mut placed: HashMap<(TopicKey, i32), Listed> = listed
                .into_iter()
                .map(|listed| ((listed.client_key.clone(), listed.index), listed))
                .collect();
            for topic in response.responses {
                let upstream_key = TopicKey::new(by_id, topic.name.as_str(), topic.topic_id);
                let Some((client_key, name)) = keys.get(&upstream_key) else {
                    tracing::error!(%cluster, topic = ?upstream_key, "Produce answer names a topic klink did not send there; dropped");
                    continue;
                };
                for mut p in topic.partition_responses {
                    if leader_moved(p.error_code) {
                        catalog.mark_stale(&cluster, name);
                    }
                    if let Some(view) = views.get(&(client_key.clone(), p.index)) {
                        if p.base_offset >= 0 {
                            p.base_offset = view.to_client(p.base_offset).unwrap_or(-1);
                        }
                        if p.log_start_offset >= 0 {
                            p.log_start_offset = view.start_to_client(p.log_start_offset);
                        }
                    }
                    if let Some(listed) = placed.remove(&(client_key.clone(), p.index)) {
                        answered_for(producers.as_ref(), &listed, &cluster, p.error_code);
                    }
                    results.insert((client_key.clone(), p.index), p);
                }
            }
            // A partition the answer left out was not taken.
            for ((client_key, index), listed) in placed {
                tracing::error!(%cluster, topic = ?client_key, index, "Produce answer left out a partition");
                answered_for(
                    producers.as_ref(),
                    &listed,
                    &cluster,
                    ResponseError::UnknownServerError.code(),
                );
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

/// A cluster's answer for one partition it was sent: its batches are
/// settled and no longer in doubt there.
fn answered_for(
    producers: Option<&Arc<ProducerIds>>,
    listed: &Listed,
    cluster: &Arc<str>,
    error_code: i16,
) {
    settle(producers, &listed.placements, outcome_of(error_code));
    if let (Some(producers), Some(batch)) = (producers, &listed.batch) {
        producers.answered(batch, cluster);
    }
}

/// The idempotent batch a partition's records start with, as the client
/// sent it (its producer id was issued by `issuer`; see `reidentify`).
fn batch_key(
    issuer: &Arc<str>,
    topic: &str,
    partition: i32,
    records: Option<&Bytes>,
) -> Option<BatchKey> {
    let first = batch::BatchHeader::parse(records?).ok()??;
    (first.producer_id >= 0).then(|| BatchKey {
        client: ClientProducer {
            issuer: issuer.clone(),
            identity: Identity {
                producer_id: first.producer_id,
                epoch: first.producer_epoch,
            },
        },
        topic: topic.to_string(),
        partition,
        client_sequence: first.base_sequence,
    })
}

/// The idempotent batches of a Produce request forwarded whole to
/// `cluster` whose answer was lost: each is in doubt there. Topic ids
/// (v13+) are `cluster`'s own on that path.
pub fn note_lost(
    producers: &ProducerIds,
    catalog: &crate::route::Catalog,
    issuer: &Arc<str>,
    cluster: &Arc<str>,
    version: i16,
    payload: &Bytes,
) {
    use kafka_protocol::protocol::Decodable;
    let mut body = payload.clone();
    let decoded = kafka_protocol::messages::RequestHeader::decode(
        &mut body,
        kafka_protocol::messages::ApiKey::Produce.request_header_version(version),
    )
    .and_then(|_| ProduceRequest::decode(&mut body, version));
    let Ok(request) = decoded else {
        return;
    };
    for topic in &request.topic_data {
        let name = if version >= TOPIC_IDS_SINCE {
            catalog.name_by_upstream_id(cluster, &topic.topic_id)
        } else {
            Some(topic.name.to_string())
        };
        let Some(name) = name else {
            continue;
        };
        for p in &topic.partition_data {
            if let Some(batch) = batch_key(issuer, &name, p.index, p.records.as_ref()) {
                producers.lost(batch, cluster.clone());
            }
        }
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
    // Plain batches carry no identity to translate.
    if first.producer_id < 0 {
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
        // A transactional batch goes only under the identity its
        // transaction's coordinator issued klink (when AddPartitionsToTxn
        // moved the transaction there): a plain id would not be in it.
        None if first.is_transactional() => {
            tracing::warn!(%cluster, %topic, partition, producer_id = client.identity.producer_id, "a transactional batch for a cluster its transaction does not run on; the client will retry");
            return Reidentified::Refused(NOT_LEADER);
        }
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
mod tests;
