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
    Cluster, Context, Part, PartAnswer, PartFailure, Plan, TopicKey, UpstreamKeys,
    current_epoch_there, decode_response, encode_response, entry, group_by, last_entry,
    leader_moved,
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
            let view = cx
                .catalog
                .numbering
                .view(&name, p.partition, destination.cluster());
            let crossing = destination.cluster() != cx.home.cluster();
            partition.current_leader_epoch =
                current_epoch_there(view.as_deref(), p.current_leader_epoch, crossing);
            if crossing {
                // Another cluster would take the client's last fetched
                // epoch for a divergence and truncate it.
                partition.last_fetched_epoch = -1;
            }
            if let Some(view) = view {
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
    let epochs = view.epochs();
    p.current_leader.leader_epoch = epochs.to_client(p.current_leader.leader_epoch);
    if p.diverging_epoch.epoch >= 0 {
        p.diverging_epoch.epoch = epochs.to_client(p.diverging_epoch.epoch);
        p.diverging_epoch.end_offset = view.end_to_client(p.diverging_epoch.end_offset);
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
#[path = "fetch_tests.rs"]
mod tests;
