//! Group APIs follow the group's route. A request that reaches a broker of
//! the wrong cluster (the route flipped since the client found its
//! coordinator) is answered NOT_COORDINATOR by klink, which sends the client
//! back to FindCoordinator, which klink answers from the routed cluster.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponseGroup;
use kafka_protocol::messages::*;

use bytes::Bytes;
use kafka_protocol::protocol::Decodable;

use super::{Cluster, Context, Destination, Part, Plan, decode_response, encode_response};
use crate::error::Result;

const NOT_COORDINATOR: i16 = ResponseError::NotCoordinator.code();
/// FindCoordinator key types.
const GROUP_KEY: i8 = 0;
/// FindCoordinator v4 batches keys (KIP-699).
const BATCHED_SINCE: i16 = 4;

/// The cluster that coordinates a FindCoordinator key: groups by their
/// route; transactional ids where their transactions run (the default
/// cluster until their topics moved, see `transactions`).
fn coordinator_cluster<C: Cluster>(cx: &Context<'_, C>, key_type: i8, key: &str) -> Arc<str> {
    if key_type == GROUP_KEY {
        cx.routes.group(key).clone()
    } else {
        cx.cluster
            .producers()
            .and_then(|p| p.transactions_pinned(key))
            .unwrap_or_else(|| cx.routes.default_cluster().clone())
    }
}

pub(super) fn toward<C: Cluster>(cx: &Context<'_, C>, cluster: &Arc<str>) -> Destination {
    if cx.home.cluster() == cluster {
        cx.home.clone()
    } else {
        Destination::Any(cluster.clone())
    }
}

pub async fn plan_find_coordinator<C: Cluster>(cx: &Context<'_, C>) -> Result<Plan> {
    let (header, request): (_, FindCoordinatorRequest) = cx.decode()?;
    if cx.version < BATCHED_SINCE {
        let cluster = coordinator_cluster(cx, request.key_type, &request.key);
        return Ok(Plan::Forward(toward(cx, &cluster)));
    }
    let mut by_cluster: Vec<(Arc<str>, Vec<_>)> = Vec::new();
    for key in &request.coordinator_keys {
        let cluster = coordinator_cluster(cx, request.key_type, key);
        match by_cluster.iter_mut().find(|(c, _)| *c == cluster) {
            Some((_, keys)) => keys.push(key.clone()),
            None => by_cluster.push((cluster, vec![key.clone()])),
        }
    }
    if by_cluster.len() <= 1 {
        let cluster = by_cluster
            .first()
            .map(|(c, _)| c.clone())
            .unwrap_or_else(|| cx.home.cluster().clone());
        return Ok(Plan::Forward(toward(cx, &cluster)));
    }
    let mut parts = Vec::new();
    for (cluster, keys) in by_cluster {
        let sub = request.clone().with_coordinator_keys(keys);
        parts.push(Part {
            destination: toward(cx, &cluster),
            frame: cx.encode_request(&header, &sub)?,
            expects_response: true,
        });
    }
    let order = request.coordinator_keys.clone();
    let (api, version, correlation_id) = (cx.api, cx.version, header.correlation_id);
    let merge = Box::new(move |answers: Vec<super::PartAnswer>| {
        let frames = super::all_answered(answers)?;
        let mut found: Vec<Coordinator> = Vec::new();
        let mut merged = FindCoordinatorResponse::default();
        for frame in &frames {
            let response: FindCoordinatorResponse = decode_response(api, version, frame)?;
            merged.throttle_time_ms = merged.throttle_time_ms.max(response.throttle_time_ms);
            found.extend(response.coordinators);
        }
        for key in order {
            if let Some(i) = found.iter().position(|c| c.key == key) {
                merged.coordinators.push(found.swap_remove(i));
            }
        }
        encode_response(api, version, correlation_id, &merged)
    });
    Ok(Plan::Split {
        parts,
        merge: Some(merge),
    })
}

/// Group APIs addressed to one coordinator.
pub async fn plan_group<C: Cluster>(cx: &Context<'_, C>) -> Result<Plan> {
    let groups = group_ids(cx.api, cx.version, cx.payload)?;
    if groups
        .iter()
        .all(|g| cx.routes.group(g) == cx.home.cluster())
    {
        if let Some(plan) = super::commits::plan_translated_commits(cx)? {
            return Ok(plan);
        }
        return Ok(Plan::Forward(cx.home.clone()));
    }
    tracing::debug!(api = ?cx.api, ?groups, "group routed elsewhere: NOT_COORDINATOR");
    let correlation_id = crate::wire::RequestHeader::correlation_id_of(cx.payload)
        .ok_or_else(|| crate::error::Error::client(crate::error::Kind::Protocol, "no header"))?;
    Ok(Plan::Answer(group_error(
        cx.api,
        cx.version,
        cx.payload,
        correlation_id,
        &groups,
        NOT_COORDINATOR,
    )?))
}

/// The groups a group API request names.
pub(super) fn group_ids(api: ApiKey, version: i16, payload: &Bytes) -> Result<Vec<String>> {
    Ok(match api {
        ApiKey::JoinGroup => vec![
            decode_body::<JoinGroupRequest>(api, version, payload)?
                .group_id
                .to_string(),
        ],
        ApiKey::SyncGroup => vec![
            decode_body::<SyncGroupRequest>(api, version, payload)?
                .group_id
                .to_string(),
        ],
        ApiKey::Heartbeat => vec![
            decode_body::<HeartbeatRequest>(api, version, payload)?
                .group_id
                .to_string(),
        ],
        ApiKey::LeaveGroup => vec![
            decode_body::<LeaveGroupRequest>(api, version, payload)?
                .group_id
                .to_string(),
        ],
        ApiKey::OffsetCommit => vec![
            decode_body::<OffsetCommitRequest>(api, version, payload)?
                .group_id
                .to_string(),
        ],
        ApiKey::OffsetDelete => vec![
            decode_body::<OffsetDeleteRequest>(api, version, payload)?
                .group_id
                .to_string(),
        ],
        ApiKey::ConsumerGroupHeartbeat => {
            vec![
                decode_body::<ConsumerGroupHeartbeatRequest>(api, version, payload)?
                    .group_id
                    .to_string(),
            ]
        }
        ApiKey::OffsetFetch => {
            let request = decode_body::<OffsetFetchRequest>(api, version, payload)?;
            if request.groups.is_empty() {
                vec![request.group_id.to_string()]
            } else {
                request
                    .groups
                    .iter()
                    .map(|g| g.group_id.to_string())
                    .collect()
            }
        }
        ApiKey::DescribeGroups => {
            let request = decode_body::<DescribeGroupsRequest>(api, version, payload)?;
            request.groups.iter().map(|g| g.to_string()).collect()
        }
        ApiKey::DeleteGroups => {
            let request = decode_body::<DeleteGroupsRequest>(api, version, payload)?;
            request.groups_names.iter().map(|g| g.to_string()).collect()
        }
        _ => Vec::new(),
    })
}

/// The answer to a group API request that fails with `e` for every group
/// (and every partition) it names.
pub(super) fn group_error(
    api: ApiKey,
    version: i16,
    payload: &Bytes,
    correlation_id: i32,
    groups: &[String],
    e: i16,
) -> Result<Bytes> {
    match api {
        ApiKey::JoinGroup => encode_response(
            api,
            version,
            correlation_id,
            &JoinGroupResponse::default()
                .with_error_code(e)
                .with_generation_id(-1),
        ),
        ApiKey::SyncGroup => encode_response(
            api,
            version,
            correlation_id,
            &SyncGroupResponse::default().with_error_code(e),
        ),
        ApiKey::Heartbeat => encode_response(
            api,
            version,
            correlation_id,
            &HeartbeatResponse::default().with_error_code(e),
        ),
        ApiKey::LeaveGroup => encode_response(
            api,
            version,
            correlation_id,
            &LeaveGroupResponse::default().with_error_code(e),
        ),
        ApiKey::OffsetDelete => encode_response(
            api,
            version,
            correlation_id,
            &OffsetDeleteResponse::default().with_error_code(e),
        ),
        ApiKey::ConsumerGroupHeartbeat => encode_response(
            api,
            version,
            correlation_id,
            &ConsumerGroupHeartbeatResponse::default().with_error_code(e),
        ),
        ApiKey::OffsetCommit => {
            // Errors are per partition: every partition asked about.
            let request = decode_body::<OffsetCommitRequest>(api, version, payload)?;
            let topics = request
                .topics
                .iter()
                .map(|t| {
                    OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_topic_id(t.topic_id)
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(e)
                                })
                                .collect(),
                        )
                })
                .collect();
            encode_response(
                api,
                version,
                correlation_id,
                &OffsetCommitResponse::default().with_topics(topics),
            )
        }
        ApiKey::OffsetFetch => {
            let response = if version >= 8 {
                OffsetFetchResponse::default().with_groups(
                    groups
                        .iter()
                        .map(|g| {
                            OffsetFetchResponseGroup::default()
                                .with_group_id(GroupId(g.clone().into()))
                                .with_error_code(e)
                        })
                        .collect(),
                )
            } else {
                OffsetFetchResponse::default().with_error_code(e)
            };
            encode_response(api, version, correlation_id, &response)
        }
        ApiKey::DescribeGroups => encode_response(
            api,
            version,
            correlation_id,
            &DescribeGroupsResponse::default().with_groups(
                groups
                    .iter()
                    .map(|g| {
                        DescribedGroup::default()
                            .with_group_id(GroupId(g.clone().into()))
                            .with_error_code(e)
                    })
                    .collect(),
            ),
        ),
        ApiKey::DeleteGroups => encode_response(
            api,
            version,
            correlation_id,
            &DeleteGroupsResponse::default().with_results(
                groups
                    .iter()
                    .map(|g| {
                        DeletableGroupResult::default()
                            .with_group_id(GroupId(g.clone().into()))
                            .with_error_code(e)
                    })
                    .collect(),
            ),
        ),
        _ => Err(crate::error::Error::klink(
            crate::error::Kind::Unsupported,
            format!("{api:?} is not a group API"),
        )),
    }
}

/// A request's body, decoded from its payload (header first).
fn decode_body<R: Decodable>(api: ApiKey, version: i16, payload: &Bytes) -> Result<R> {
    let fail = |e: anyhow::Error| {
        crate::error::Error::client(
            crate::error::Kind::Protocol,
            format!("{api:?} v{version}: {e}"),
        )
    };
    let mut buf = payload.clone();
    RequestHeader::decode(&mut buf, api.request_header_version(version)).map_err(fail)?;
    R::decode(&mut buf, version).map_err(fail)
}

/// ListGroups lists what one broker coordinates; groups routed to the other
/// cluster are left out, so each group appears once, where clients reach it.
pub async fn plan_list_groups<C: Cluster>(cx: &Context<'_, C>) -> Result<Plan> {
    let (header, _request): (_, ListGroupsRequest) = cx.decode()?;
    let routes = cx.routes.clone();
    let cluster = cx.home.cluster().clone();
    let (api, version, correlation_id) = (cx.api, cx.version, header.correlation_id);
    let merge = Box::new(move |answers: Vec<super::PartAnswer>| {
        let frames = super::all_answered(answers)?;
        let mut response = ListGroupsResponse::default();
        for frame in &frames {
            response = decode_response(api, version, frame)?;
        }
        response
            .groups
            .retain(|g| routes.group(g.group_id.as_str()) == &cluster);
        encode_response(api, version, correlation_id, &response)
    });
    Ok(Plan::Split {
        parts: vec![Part {
            destination: cx.home.clone(),
            frame: cx.payload_frame(),
            expects_response: true,
        }],
        merge: Some(merge),
    })
}
