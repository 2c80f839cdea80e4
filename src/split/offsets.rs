//! ListOffsets (and the other per-partition read-side requests), routed by
//! each topic's read route.

use std::collections::HashMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::list_offsets_response::ListOffsetsPartitionResponse;
use kafka_protocol::messages::{
    ApiKey, DeleteRecordsRequest, DeleteRecordsResponse, ListOffsetsRequest, ListOffsetsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

use super::{
    Cluster, Context, Part, PartAnswer, PartFailure, Plan, TopicKey, decode_response,
    encode_response, entry, group_by, last_entry, leader_moved,
};
use crate::error::Result;
use crate::numbering::View;

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
                if destination.cluster() != cx.home.cluster() {
                    // An epoch from the client's cluster means nothing here.
                    partition.current_leader_epoch = -1;
                }
                if let Some(view) =
                    cx.catalog
                        .numbering
                        .view(&name, p.partition_index, destination.cluster())
                {
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
        for topic in &mut request.topics {
            for p in &mut topic.partitions {
                if crossing {
                    p.current_leader_epoch = -1;
                }
                translated |= numbering
                    .view(topic.topic.as_str(), p.partition, &cluster)
                    .is_some();
            }
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
                    if let Some(view) = numbering.view(topic.topic.as_str(), p.partition, &cluster)
                        && p.end_offset >= 0
                    {
                        p.end_offset = view.end_to_client(p.end_offset);
                    }
                }
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
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::list_offsets_response::ListOffsetsTopicResponse;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, MetadataResponse, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    use super::*;
    use crate::split::Destination;
    use crate::split::test_support::*;

    fn request() -> Bytes {
        let body = ListOffsetsRequest::default().with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_current_leader_epoch(12)
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
    async fn another_clusters_offsets_are_asked_without_the_clients_epoch_and_leader_errors_refresh()
     {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = routes(dir.path());
        table
            .route_topic("orders", None, Some("target"))
            .expect("route");
        let routes = table.snapshot();
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
        let leaders = FixedLeaders(HashMap::from([("orders".to_string(), 1)]));
        let home = Destination::Any(Arc::from("source"));
        let payload = request();
        let cx = Context {
            cluster: &leaders,
            routes: &routes,
            catalog: &catalog,
            home: &home,
            api: ApiKey::ListOffsets,
            version: 7,
            payload: &payload,
        };
        let Plan::Split { parts, merge } = plan_list_offsets(&cx).await.expect("plan") else {
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
}
