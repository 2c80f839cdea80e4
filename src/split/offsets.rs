//! ListOffsets (and the other per-partition read-side requests), routed by
//! each topic's read route.

use std::collections::HashMap;
use std::sync::Arc;

use super::{
    Cluster, Context, Part, PartAnswer, PartFailure, Plan, TopicKey, current_epoch_there,
    decode_response, encode_response, entry, group_by, last_entry, leader_moved,
};
use crate::error::Result;
use crate::numbering::View;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use kafka_protocol::messages::offset_for_leader_epoch_response::EpochEndOffset;
use kafka_protocol::messages::{
    ApiKey, DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

/// ListOffsets' time for "the end of the log" (its offset is an end, not a
/// record's).
const LATEST: i64 = -1;

pub async fn plan_list_offsets<C: Cluster>(cx: &Context<'_, C>) -> Result<Plan> {
    let (header, request): (_, ListOffsetsRequest) = cx.decode()?;
    cx.prepare_leaders(
        request
            .topics
            .iter()
            .map(|t| (cx.routes.reads(t.name.as_str()).clone(), t.name.to_string())),
    )
    .await;
    let mut assigned = Vec::new();
    let mut order = Vec::new();
    // Partitions whose offsets the cluster numbers otherwise than clients,
    // with the time asked for.
    let mut views: HashMap<(String, i32), (Arc<View>, i64)> = HashMap::new();
    for topic in &request.topics {
        let name = topic.name.to_string();
        let cluster = cx.routes.reads(&name).clone();
        for p in &topic.partitions {
            order.push((name.clone(), p.partition_index));
            if let Some(destination) = cx
                .partition_destination(&cluster, &name, p.partition_index)
                .await
            {
                let mut partition = p.clone();
                let crossing = destination.cluster() != cx.home.cluster();
                let view =
                    cx.catalog
                        .numbering
                        .view(&name, p.partition_index, destination.cluster());
                partition.current_leader_epoch =
                    current_epoch_there(view.as_deref(), p.current_leader_epoch, crossing);
                if let Some(view) = view {
                    views.insert((name.clone(), p.partition_index), (view, p.timestamp));
                }
                assigned.push((destination, (name.clone(), partition)));
            }
        }
    }
    if views.is_empty()
        && assigned.len() == order.len()
        && assigned.iter().all(|(d, _)| d == cx.home)
    {
        return Ok(Plan::Forward(cx.home.clone()));
    }
    let mut parts = Vec::new();
    // Per part: its cluster and its (topic, partition) list.
    let mut part_partitions = Vec::new();
    for (destination, partitions) in group_by(assigned) {
        let mut sub = request.clone().with_topics(Vec::new());
        let mut listed = Vec::new();
        for (name, partition) in partitions {
            listed.push((name.clone(), partition.partition_index));
            let topic = entry(&mut sub.topics, &TopicKey::Name(name));
            topic.partitions.push(partition);
        }
        parts.push(Part {
            frame: cx.encode_request(&header, &sub)?,
            expects_response: true,
            destination: destination.clone(),
        });
        part_partitions.push((destination.cluster().clone(), listed as Vec<(String, i32)>));
    }
    let catalog = cx.catalog.clone();
    let (api, version, correlation_id) = (cx.api, cx.version, header.correlation_id);
    let merge = Box::new(move |answers: Vec<PartAnswer>| {
        let mut results: HashMap<(String, i32), ListOffsetsPartitionResponse> = HashMap::new();
        let mut merged = ListOffsetsResponse::default();
        for (answer, (cluster, listed)) in answers.into_iter().zip(part_partitions) {
            let frame = match answer {
                PartAnswer::Answered(frame) => frame,
                PartAnswer::Failed(failure) => {
                    let code = match failure {
                        PartFailure::Unsupported => ResponseError::UnsupportedVersion.code(),
                        PartFailure::NotSent | PartFailure::Lost => {
                            ResponseError::NotLeaderOrFollower.code()
                        }
                    };
                    for (name, index) in listed {
                        results.insert((name, index), failed_partition(index, code));
                    }
                    continue;
                }
            };
            let response: ListOffsetsResponse = decode_response(api, version, &frame)?;
            merged.throttle_time_ms = merged.throttle_time_ms.max(response.throttle_time_ms);
            for topic in response.topics {
                for mut p in topic.partitions {
                    if leader_moved(p.error_code) {
                        catalog.mark_stale(&cluster, topic.name.as_str());
                    }
                    let key = (topic.name.to_string(), p.partition_index);
                    if let Some((view, timestamp)) = views.get(&key)
                        && p.error_code == 0
                        && p.offset >= 0
                    {
                        p.offset = match *timestamp {
                            LATEST => view.end_to_client(p.offset),
                            _ => view.start_to_client(p.offset),
                        };
                        p.leader_epoch = view.epochs().to_client(p.leader_epoch);
                    }
                    results.insert((topic.name.to_string(), p.partition_index), p);
                }
            }
        }
        for (name, index) in order {
            let result = results.remove(&(name.clone(), index)).unwrap_or_else(|| {
                failed_partition(index, ResponseError::NotLeaderOrFollower.code())
            });
            let topic = last_entry(&mut merged.topics, &TopicKey::Name(name));
            topic.partitions.push(result);
        }
        encode_response(api, version, correlation_id, &merged)
    });
    Ok(Plan::Split {
        parts,
        merge: Some(merge),
    })
}

fn failed_partition(index: i32, code: i16) -> ListOffsetsPartitionResponse {
    ListOffsetsPartitionResponse::default()
        .with_partition_index(index)
        .with_error_code(code)
        .with_offset(-1)
        .with_timestamp(-1)
}

/// OffsetForLeaderEpoch and DeleteRecords: clients send them to each
/// partition's leader as klink's metadata names it, so they cross clusters
/// only on stale metadata; then the whole request follows its first
/// partition's route and any partition led elsewhere is told
/// NOT_LEADER_OR_FOLLOWER by the broker, which makes the client refresh.
/// Sent to a cluster other than the client's, OffsetForLeaderEpoch carries
/// no current leader epoch: the client's came from its own cluster. Where
/// the cluster numbers a partition otherwise than clients (`numbering`),
/// end offsets, deletion points and low watermarks are translated.
pub async fn plan_read_side<C: Cluster>(cx: &Context<'_, C>) -> Result<Plan> {
    let first: Option<(String, i32)> = match cx.api {
        ApiKey::OffsetForLeaderEpoch => {
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
    cx.prepare_leaders([(cluster.clone(), topic.clone())]).await;
    let destination = cx
        .partition_destination(&cluster, &topic, partition)
        .await
        .unwrap_or_else(|| cx.home.clone());
    let cluster = destination.cluster().clone();
    let numbering = cx.catalog.numbering.clone();
    let crossing = destination.cluster() != cx.home.cluster();
    let (api, version) = (cx.api, cx.version);
    let correlation_id = crate::wire::RequestHeader::correlation_id_of(cx.payload)
        .ok_or_else(|| crate::error::Error::client(crate::error::Kind::Protocol, "no header"))?;
    let (frame, merge): (_, super::Merge) = if cx.api == ApiKey::OffsetForLeaderEpoch {
        let (header, mut request): (_, OffsetForLeaderEpochRequest) = cx.decode()?;
        let mut translated = false;
        // Epochs clients saw in an earlier era, answered here.
        let mut answered = OffsetForLeaderEpochResponse::default();
        for topic in &mut request.topics {
            let name = topic.topic.to_string();
            topic.partitions.retain_mut(|p| {
                let view = numbering.view(&name, p.partition, &cluster);
                p.current_leader_epoch =
                    current_epoch_there(view.as_deref(), p.current_leader_epoch, crossing);
                let Some(view) = view else {
                    return true;
                };
                translated = true;
                let epochs = view.epochs();
                if let Some(end) = epochs.earlier_end(p.leader_epoch) {
                    entry(&mut answered.topics, &TopicKey::Name(name.clone()))
                        .partitions
                        .push(
                            EpochEndOffset::default()
                                .with_partition(p.partition)
                                .with_leader_epoch(p.leader_epoch)
                                .with_end_offset(end),
                        );
                    return false;
                }
                p.leader_epoch = epochs.to_upstream(p.leader_epoch);
                true
            });
        }
        request.topics.retain(|t| !t.partitions.is_empty());
        if request.topics.is_empty() {
            return Ok(Plan::Answer(encode_response(
                api,
                version,
                correlation_id,
                &answered,
            )?));
        }
        if !crossing && !translated {
            return Ok(Plan::Forward(destination));
        }
        let frame = cx.encode_request(&header, &request)?;
        let merge: super::Merge = Box::new(move |answers: Vec<PartAnswer>| {
            let frame = super::only_answer(answers)?;
            if !translated {
                // The one part kept the client's correlation id: its
                // answer goes back as it came.
                return Ok(frame.wire_bytes().clone());
            }
            let mut response: OffsetForLeaderEpochResponse = decode_response(api, version, &frame)?;
            for topic in &mut response.topics {
                for p in &mut topic.partitions {
                    let Some(view) = numbering.view(topic.topic.as_str(), p.partition, &cluster)
                    else {
                        continue;
                    };
                    if p.end_offset >= 0 {
                        p.end_offset = view.end_to_client(p.end_offset);
                    }
                    p.leader_epoch = view.epochs().to_client(p.leader_epoch);
                }
            }
            for topic in answered.topics {
                let key = TopicKey::Name(topic.topic.to_string());
                entry(&mut response.topics, &key)
                    .partitions
                    .extend(topic.partitions);
            }
            encode_response(api, version, correlation_id, &response)
        });
        (frame, merge)
    } else {
        let (header, mut request): (_, DeleteRecordsRequest) = cx.decode()?;
        let mut translated = false;
        for topic in &mut request.topics {
            for p in &mut topic.partitions {
                if let Some(view) = numbering.view(topic.name.as_str(), p.partition_index, &cluster)
                    && p.offset >= 0
                {
                    p.offset = view.commit_position(p.offset);
                    translated = true;
                }
            }
        }
        if !translated {
            return Ok(Plan::Forward(destination));
        }
        let frame = cx.encode_request(&header, &request)?;
        let merge: super::Merge = Box::new(move |answers: Vec<PartAnswer>| {
            let frame = super::only_answer(answers)?;
            let mut response: DeleteRecordsResponse = decode_response(api, version, &frame)?;
            for topic in &mut response.topics {
                for p in &mut topic.partitions {
                    if let Some(view) =
                        numbering.view(topic.name.as_str(), p.partition_index, &cluster)
                        && p.low_watermark >= 0
                    {
                        p.low_watermark = view.start_to_client(p.low_watermark);
                    }
                }
            }
            encode_response(api, version, correlation_id, &response)
        });
        (frame, merge)
    };
    Ok(Plan::single(destination, frame, merge))
}

#[cfg(test)]
#[path = "offsets_tests.rs"]
mod tests;
