//! Committed offsets in the client's numbering (`numbering`): a group's
//! coordinator stores them in its own cluster's numbering, so the target
//! stays self-consistent for tools that read it directly, and klink
//! translates OffsetCommit on the way in and OffsetFetch on the way out.
//! Only where a mirrored topic's numbering differs on the group's cluster;
//! everywhere else an OffsetCommit goes as its bytes.

use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, OffsetCommitRequest, OffsetFetchResponse};

use super::{Cluster, Context, Merge, PartAnswer, Plan, decode_response, only_answer};
use crate::error::{Error, Kind, Result};
use crate::numbering::Numbering;

/// The plan for an OffsetCommit or OffsetFetch whose group the client's
/// cluster coordinates, when its offsets need translating there.
pub fn plan_translated_commits<C: Cluster>(cx: &Context<'_, C>) -> Result<Option<Plan>> {
    let numbering = &cx.catalog.numbering;
    // Not gated on `translates`: a group routed by hand to a `latest`
    // link's target reads target offsets before any flip.
    if !numbering.any_mirrored() {
        return Ok(None);
    }
    let cluster = cx.home.cluster().clone();
    match cx.api {
        ApiKey::OffsetCommit => {
            let (header, mut request): (_, OffsetCommitRequest) = cx.decode()?;
            let mut changed = false;
            for topic in &mut request.topics {
                let name = topic_name(cx, topic.name.as_str(), topic.topic_id);
                for p in &mut topic.partitions {
                    let Some(view) = numbering.view(&name, p.partition_index, &cluster) else {
                        continue;
                    };
                    if p.committed_offset >= 0 {
                        p.committed_offset = view.commit_position(p.committed_offset);
                        // The client's epoch is another numbering's.
                        p.committed_leader_epoch = -1;
                        changed = true;
                    }
                }
            }
            if !changed {
                return Ok(None);
            }
            // The answer goes back as it came (the part kept the client's
            // correlation id).
            let merge: Merge =
                Box::new(|answers: Vec<PartAnswer>| Ok(only_answer(answers)?.wire_bytes().clone()));
            let frame = cx.encode_request(&header, &request)?;
            Ok(Some(Plan::single(cx.home.clone(), frame, merge)))
        }
        ApiKey::OffsetFetch => {
            let correlation_id = crate::wire::RequestHeader::correlation_id_of(cx.payload)
                .ok_or_else(|| Error::client(Kind::Protocol, "no header"))?;
            let numbering = numbering.clone();
            let by_id = cx.catalog.clone();
            let (api, version) = (cx.api, cx.version);
            let merge: Merge = Box::new(move |answers: Vec<PartAnswer>| {
                let frame = only_answer(answers)?;
                let mut response: OffsetFetchResponse = decode_response(api, version, &frame)?;
                in_client_numbering(&numbering, &cluster, &mut response, |name, id| {
                    if name.is_empty() {
                        by_id.name_by_client_id(&id).unwrap_or_default()
                    } else {
                        name.to_string()
                    }
                });
                super::encode_response(api, version, correlation_id, &response)
            });
            Ok(Some(Plan::single(
                cx.home.clone(),
                cx.payload_frame(),
                merge,
            )))
        }
        _ => Ok(None),
    }
}

fn topic_name<C: Cluster>(cx: &Context<'_, C>, name: &str, id: uuid::Uuid) -> String {
    if name.is_empty() {
        cx.catalog.name_by_client_id(&id).unwrap_or_default()
    } else {
        name.to_string()
    }
}

fn in_client_numbering(
    numbering: &Arc<Numbering>,
    cluster: &str,
    response: &mut OffsetFetchResponse,
    name_of: impl Fn(&str, uuid::Uuid) -> String,
) {
    let translate = |topic: &str, partition: i32, offset: &mut i64, epoch: &mut i32| {
        if *offset < 0 {
            return;
        }
        if let Some(view) = numbering.view(topic, partition, cluster) {
            *offset = view.committed_to_client(*offset);
            *epoch = -1;
        }
    };
    for topic in &mut response.topics {
        let name = name_of(topic.name.as_str(), uuid::Uuid::nil());
        for p in &mut topic.partitions {
            translate(
                &name,
                p.partition_index,
                &mut p.committed_offset,
                &mut p.committed_leader_epoch,
            );
        }
    }
    for group in &mut response.groups {
        for topic in &mut group.topics {
            let name = name_of(topic.name.as_str(), topic.topic_id);
            for p in &mut topic.partitions {
                translate(
                    &name,
                    p.partition_index,
                    &mut p.committed_offset,
                    &mut p.committed_leader_epoch,
                );
            }
        }
    }
}
