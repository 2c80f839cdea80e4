//! Handing a consumer group's committed offsets over to the target at a
//! promotion: read on the source's coordinator, translated through the
//! topic's offset map, written on the target's coordinator. The group's
//! commits are held by the fence meanwhile, so none lands on the source
//! after it was read.

use std::collections::BTreeMap;

use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    DescribeGroupsRequest, FindCoordinatorRequest, GroupId, LeaveGroupRequest, OffsetCommitRequest,
    OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::client::{Client, broker_error};
use crate::error::{Error, Kind, Result};
use crate::mirror::Run;

const FIND_COORDINATOR_VERSION: i16 = 3;
const OFFSET_FETCH_VERSION: i16 = 7;
const OFFSET_COMMIT_VERSION: i16 = 8;
const DESCRIBE_GROUPS_VERSION: i16 = 5;
/// The first version that removes several members by id.
const LEAVE_GROUP_VERSION: i16 = 4;

/// One group's committed offsets for one topic, by partition (source
/// numbering), as handed over.
pub type Committed = BTreeMap<i32, i64>;

async fn coordinator(client: &Client, group: &str) -> Result<crate::upstream::UpstreamConn> {
    let any = client
        .metadata()
        .brokers
        .keys()
        .next()
        .copied()
        .ok_or_else(|| Error::upstream(client.cluster_name(), Kind::Protocol, "no broker known"))?;
    let conn = client.broker_conn(any).await?;
    let request = FindCoordinatorRequest::default()
        .with_key(StrBytes::from_string(group.to_string()))
        .with_key_type(0);
    let response = client
        .call(&conn, request, FIND_COORDINATOR_VERSION)
        .await?;
    if response.error_code != 0 {
        return Err(broker_error(
            client.cluster_name(),
            response.error_code,
            &format!("FindCoordinator for group {group}"),
        ));
    }
    client.refresh_metadata().await?;
    client.broker_conn(response.node_id.0).await
}

/// The offsets `group` committed for `topic`'s `partitions` on `client`'s
/// cluster; partitions without a commit are left out.
pub async fn fetch_committed(
    client: &Client,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<Committed> {
    let conn = coordinator(client, group).await?;
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_topics(Some(vec![
            OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_indexes(partitions.to_vec()),
        ]));
    let response = client.call(&conn, request, OFFSET_FETCH_VERSION).await?;
    if response.error_code != 0 {
        return Err(broker_error(
            client.cluster_name(),
            response.error_code,
            &format!("OffsetFetch for group {group}"),
        ));
    }
    let mut committed = Committed::new();
    for t in response.topics.iter().filter(|t| t.name.as_str() == topic) {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(broker_error(
                    client.cluster_name(),
                    p.error_code,
                    &format!(
                        "OffsetFetch for group {group}, {topic}/{}",
                        p.partition_index
                    ),
                ));
            }
            if p.committed_offset >= 0 {
                committed.insert(p.partition_index, p.committed_offset);
            }
        }
    }
    Ok(committed)
}

/// Commits `offsets` for `group` on `client`'s cluster, as an admin
/// commit (no member, no generation): the group has no members there yet.
pub async fn commit(client: &Client, group: &str, topic: &str, offsets: &Committed) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let conn = coordinator(client, group).await?;
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_generation_id_or_member_epoch(-1)
        .with_member_id(StrBytes::from_static_str(""))
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|(&partition, &offset)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(partition)
                                .with_committed_offset(offset)
                                .with_committed_leader_epoch(-1)
                        })
                        .collect(),
                ),
        ]);
    let response = client.call(&conn, request, OFFSET_COMMIT_VERSION).await?;
    for t in &response.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                return Err(broker_error(
                    client.cluster_name(),
                    p.error_code,
                    &format!(
                        "OffsetCommit for group {group}, {topic}/{}",
                        p.partition_index
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Removes every member `group` has on `client`'s cluster; returns how
/// many. After a flip the group's members there are stale: their clients
/// now talk to the other cluster's coordinator, but the old one keeps
/// them until their sessions expire, and a rejoin there within that time
/// (a flip back) would wait for them, or (tansu) hand the lead to a
/// member that never answers.
pub async fn remove_members(client: &Client, group: &str) -> Result<usize> {
    let conn = coordinator(client, group).await?;
    let request = DescribeGroupsRequest::default()
        .with_groups(vec![GroupId(StrBytes::from_string(group.to_string()))]);
    let described = client.call(&conn, request, DESCRIBE_GROUPS_VERSION).await?;
    let mut members = Vec::new();
    for g in described
        .groups
        .iter()
        .filter(|g| g.group_id.as_str() == group)
    {
        if g.error_code != 0 {
            return Err(broker_error(
                client.cluster_name(),
                g.error_code,
                &format!("DescribeGroups for group {group}"),
            ));
        }
        members.extend(g.members.iter().map(|m| {
            MemberIdentity::default()
                .with_member_id(m.member_id.clone())
                .with_group_instance_id(m.group_instance_id.clone())
        }));
    }
    if members.is_empty() {
        return Ok(0);
    }
    let count = members.len();
    let request = LeaveGroupRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
        .with_members(members);
    let response = client.call(&conn, request, LEAVE_GROUP_VERSION).await?;
    if response.error_code != 0 {
        return Err(broker_error(
            client.cluster_name(),
            response.error_code,
            &format!("LeaveGroup for group {group}"),
        ));
    }
    Ok(count)
}

/// Where a committed source offset (the next record to read) points on
/// the target: exactly the record it names when copied, the next copied
/// one when it names a gap, the target's end when it names the end.
pub fn translate(runs: &[Run], offset: i64) -> Option<i64> {
    for run in runs {
        if offset < run.source_start {
            // In a gap before this run: the next copied record is its first.
            return Some(run.target_start);
        }
        if offset < run.source_end {
            return Some(run.target_start + (offset - run.source_start));
        }
    }
    // At or past the end of what was copied (drained: the end itself).
    runs.last().map(Run::target_end).or(Some(offset))
}

/// The target's offsets for a source group's commits.
pub fn translate_all(runs: &BTreeMap<i32, Vec<Run>>, committed: &Committed) -> Result<Committed> {
    committed
        .iter()
        .map(|(&partition, &offset)| {
            let runs = runs.get(&partition).map(Vec::as_slice).unwrap_or_default();
            translate(runs, offset)
                .map(|target| (partition, target))
                .ok_or_else(|| {
                    Error::klink(
                        Kind::Protocol,
                        format!("no target offset for partition {partition} offset {offset}"),
                    )
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(source_start: i64, source_end: i64, target_start: i64) -> Run {
        Run {
            source_start,
            source_end,
            target_start,
        }
    }

    #[test]
    fn committed_offsets_keep_naming_the_same_record() {
        // Identity.
        assert_eq!(translate(&[run(0, 100, 0)], 40), Some(40));
        assert_eq!(translate(&[run(0, 100, 0)], 100), Some(100), "the end");
        // A latest link: source 500.. copied to target 0..
        assert_eq!(translate(&[run(500, 600, 0)], 550), Some(50));
        assert_eq!(translate(&[run(500, 600, 0)], 600), Some(100));
        // Before the first copied record: the target's first.
        assert_eq!(translate(&[run(500, 600, 0)], 10), Some(0));
        // A gap (a dropped transaction) between two runs.
        let runs = [run(0, 10, 0), run(12, 20, 10)];
        assert_eq!(translate(&runs, 11), Some(10), "next copied record");
        assert_eq!(translate(&runs, 15), Some(13));
        // Nothing copied (an empty partition): unchanged.
        assert_eq!(translate(&[], 0), Some(0));
    }
}
