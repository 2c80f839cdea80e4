//! ListOffsets (and the other per-partition read-side requests), routed by
//! each topic's read route.

use std::collections::HashMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use kafka_protocol::messages::{
    DeleteRecordsRequest, ListOffsetsRequest, ListOffsetsResponse, OffsetForLeaderEpochRequest,
};

use super::{
    Cluster, Context, Part, Plan, TopicKey, decode_response, encode_response, entry, group_by,
    last_entry,
};
use crate::error::Result;

pub async fn plan_list_offsets<C: Cluster>(cx: &Context<'_, C>) -> Result<Plan> {
    let (header, request): (_, ListOffsetsRequest) = cx.decode()?;
    let mut assigned = Vec::new();
    let mut order = Vec::new();
    for topic in &request.topics {
        let name = topic.name.to_string();
        let cluster = cx.routes.reads(&name).clone();
        for p in &topic.partitions {
            order.push((name.clone(), p.partition_index));
            if let Some(destination) = cx
                .partition_destination(&cluster, &name, p.partition_index)
                .await
            {
                assigned.push((destination, (name.clone(), p.clone())));
            }
        }
    }
    if assigned.len() == order.len() && assigned.iter().all(|(d, _)| d == cx.home) {
        return Ok(Plan::Forward(cx.home.clone()));
    }
    let mut parts = Vec::new();
    for (destination, partitions) in group_by(assigned) {
        let mut sub = request.clone().with_topics(Vec::new());
        for (name, partition) in partitions {
            let topic = entry(&mut sub.topics, &TopicKey::Name(name.clone()));
            topic.partitions.push(partition);
        }
        parts.push(Part {
            destination,
            frame: cx.encode_request(&header, &sub)?,
            expects_response: true,
        });
    }
    let (api, version, correlation_id) = (cx.api, cx.version, header.correlation_id);
    let merge = Box::new(move |frames: Vec<crate::wire::Frame>| {
        let mut results: HashMap<(String, i32), ListOffsetsPartitionResponse> = HashMap::new();
        let mut merged = ListOffsetsResponse::default();
        for frame in &frames {
            let response: ListOffsetsResponse = decode_response(api, version, frame)?;
            merged.throttle_time_ms = merged.throttle_time_ms.max(response.throttle_time_ms);
            for topic in response.topics {
                for p in topic.partitions {
                    results.insert((topic.name.to_string(), p.partition_index), p);
                }
            }
        }
        for (name, index) in order {
            let result = results.remove(&(name.clone(), index)).unwrap_or_else(|| {
                ListOffsetsPartitionResponse::default()
                    .with_partition_index(index)
                    .with_error_code(ResponseError::NotLeaderOrFollower.code())
                    .with_offset(-1)
                    .with_timestamp(-1)
            });
            let topic = last_entry(&mut merged.topics, &TopicKey::Name(name.clone()));
            topic.partitions.push(result);
        }
        encode_response(api, version, correlation_id, &merged)
    });
    Ok(Plan::Split {
        parts,
        merge: Some(merge),
    })
}

/// OffsetForLeaderEpoch and DeleteRecords: clients send them to each
/// partition's leader as klink's metadata names it, so they cross clusters
/// only on stale metadata; then the whole request follows its first
/// partition's route and any partition led elsewhere is told
/// NOT_LEADER_OR_FOLLOWER by the broker, which makes the client refresh.
pub async fn plan_read_side<C: Cluster>(cx: &Context<'_, C>) -> Result<Plan> {
    let first: Option<(String, i32)> = match cx.api {
        kafka_protocol::messages::ApiKey::OffsetForLeaderEpoch => {
            let (_, request): (_, OffsetForLeaderEpochRequest) = cx.decode()?;
            request
                .topics
                .first()
                .and_then(|t| Some((t.topic.to_string(), t.partitions.first()?.partition)))
        }
        _ => {
            let (_, request): (_, DeleteRecordsRequest) = cx.decode()?;
            request
                .topics
                .first()
                .and_then(|t| Some((t.name.to_string(), t.partitions.first()?.partition_index)))
        }
    };
    let Some((topic, partition)) = first else {
        return Ok(Plan::Forward(cx.home.clone()));
    };
    let cluster = cx.routes.reads(&topic).clone();
    Ok(Plan::Forward(
        cx.partition_destination(&cluster, &topic, partition)
            .await
            .unwrap_or_else(|| cx.home.clone()),
    ))
}
