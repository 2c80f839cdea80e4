//! Committed offsets in the client's numbering (`numbering`): a group's
//! coordinator stores them in its own cluster's numbering, so the target
//! stays self-consistent for tools that read it directly, and klink
//! translates OffsetCommit on the way in and OffsetFetch on the way out.
//! Only where a mirrored topic's numbering differs on the group's cluster;
//! everywhere else an OffsetCommit goes as its bytes.

use std::sync::Arc;

use kafka_protocol::messages::{
    ApiKey, OffsetCommitRequest, OffsetFetchResponse, TxnOffsetCommitRequest,
};

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

/// TxnOffsetCommit, which goes with its transaction to `destination`:
/// its offsets are stored in that cluster's numbering, like OffsetCommit's.
pub fn plan_txn_offset_commit<C: Cluster>(
    cx: &Context<'_, C>,
    destination: super::Destination,
) -> Result<Plan> {
    if !cx.catalog.numbering.any_mirrored() {
        return Ok(Plan::Forward(destination));
    }
    let cluster = destination.cluster().clone();
    let (header, mut request): (_, TxnOffsetCommitRequest) = cx.decode()?;
    if !in_cluster_numbering(cx, &cluster, &mut request) {
        return Ok(Plan::Forward(destination));
    }
    let merge: Merge =
        Box::new(|answers: Vec<PartAnswer>| Ok(only_answer(answers)?.wire_bytes().clone()));
    let frame = cx.encode_request(&header, &request)?;
    Ok(Plan::single(destination, frame, merge))
}

/// A TxnOffsetCommit's offsets put in `cluster`'s numbering; false when
/// none needed it.
pub fn in_cluster_numbering<C: Cluster>(
    cx: &Context<'_, C>,
    cluster: &Arc<str>,
    request: &mut TxnOffsetCommitRequest,
) -> bool {
    let numbering = &cx.catalog.numbering;
    let mut changed = false;
    for topic in &mut request.topics {
        for p in &mut topic.partitions {
            if let Some(view) = numbering.view(topic.name.as_str(), p.partition_index, cluster)
                && p.committed_offset >= 0
            {
                p.committed_offset = view.commit_position(p.committed_offset);
                p.committed_leader_epoch = -1;
                changed = true;
            }
        }
    }
    changed
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{RequestHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    use super::*;
    use crate::split::Destination;
    use crate::split::test_support::*;

    fn txn_commit(offsets: &[(i32, i64)]) -> Bytes {
        let body = TxnOffsetCommitRequest::default()
            .with_transactional_id(StrBytes::from_static_str("tx").into())
            .with_group_id(StrBytes::from_static_str("billing").into())
            .with_topics(vec![
                TxnOffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(
                        offsets
                            .iter()
                            .map(|&(p, offset)| {
                                TxnOffsetCommitRequestPartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(offset)
                                    .with_committed_leader_epoch(4)
                            })
                            .collect(),
                    ),
            ]);
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(ApiKey::TxnOffsetCommit as i16)
            .with_request_api_version(3)
            .with_correlation_id(9)
            .encode(&mut buf, ApiKey::TxnOffsetCommit.request_header_version(3))
            .expect("header");
        body.encode(&mut buf, 3).expect("body");
        buf.freeze()
    }

    #[tokio::test]
    async fn a_transactions_offsets_are_stored_in_its_clusters_numbering() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = routes(dir.path());
        let catalog = Arc::new(crate::route::Catalog::load(Arc::new(
            crate::state::StateStore::open(dir.path()).expect("state"),
        )));
        // A `latest` link: the source's 100.. are the target's 0..; the
        // transaction is pinned to the target in this test.
        catalog
            .numbering
            .register("orders", Arc::from("source"), Arc::from("target"));
        let mut copied = crate::mirror::OffsetMap::default();
        copied.append(100, 149, 0).expect("run");
        catalog.numbering.publish_map("orders", 0, &copied);
        let routes = table.snapshot();
        let leaders = FixedLeaders(HashMap::new());
        let home = Destination::Any(Arc::from("target"));
        let payload = txn_commit(&[(0, 120), (1, 7)]);
        let cx = Context {
            cluster: &leaders,
            routes: &routes,
            catalog: &catalog,
            home: &home,
            api: ApiKey::TxnOffsetCommit,
            version: 3,
            payload: &payload,
        };
        let Plan::Split { parts, .. } = plan_txn_offset_commit(&cx, home.clone()).expect("plan")
        else {
            panic!("translated");
        };
        let mut sent = parts[0].frame.slice(4..);
        RequestHeader::decode(&mut sent, ApiKey::TxnOffsetCommit.request_header_version(3))
            .expect("header");
        let sub = TxnOffsetCommitRequest::decode(&mut sent, 3).expect("sub");
        let stored: Vec<(i32, i64, i32)> = sub.topics[0]
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition_index,
                    p.committed_offset,
                    p.committed_leader_epoch,
                )
            })
            .collect();
        assert_eq!(
            stored,
            vec![(0, 20, -1), (1, 7, 4)],
            "partition 1 has no map"
        );
        // On the source, its own numbering: the bytes go as they came.
        let source = Destination::Any(Arc::from("source"));
        assert!(matches!(
            plan_txn_offset_commit(&cx, source).expect("plan"),
            Plan::Forward(_)
        ));
    }
}
