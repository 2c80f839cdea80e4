//! The session's one entry into planning: which planner an API takes.

use kafka_protocol::messages::ApiKey;

use super::*;
use crate::error::Result;

/// What the session does with one request, by API: the routing plan.
/// (Pure over its inputs but for the leader lookups `C` answers, which is
/// what lets the fuzzer run every plan the session runs.)
pub async fn plan_request<C: Cluster>(
    cx: &Context<'_, C>,
    acks: i16,
    fetch_sessions: &mut FetchSessions,
) -> Result<Plan> {
    use ApiKey::*;
    match cx.api {
        Metadata => plan_metadata(cx).await,
        Produce => plan_produce(cx, acks).await,
        Fetch => plan_fetch(cx, fetch_sessions).await,
        ListOffsets => plan_list_offsets(cx).await,
        OffsetForLeaderEpoch | DeleteRecords => plan_read_side(cx).await,
        FindCoordinator => plan_find_coordinator(cx).await,
        JoinGroup
        | SyncGroup
        | Heartbeat
        | LeaveGroup
        | OffsetCommit
        | OffsetFetch
        | DescribeGroups
        | DeleteGroups
        | OffsetDelete
        | ConsumerGroupHeartbeat => plan_group(cx).await,
        ListGroups => plan_list_groups(cx).await,
        CreateTopics
        | DeleteTopics
        | CreatePartitions
        | DescribeConfigs
        | AlterConfigs
        | IncrementalAlterConfigs => plan_admin(cx).await,
        // Producer ids come from one cluster, so a client's id is only
        // ever compared with that cluster's (DESIGN trap 8); a transaction
        // runs where its topics' writes go (trap 9).
        InitProducerId | AddPartitionsToTxn | AddOffsetsToTxn | EndTxn | TxnOffsetCommit => {
            super::transactions::plan_transactional(cx).await
        }
        // Everything else goes where the client sent it.
        _ => Ok(Plan::Forward(cx.home.clone())),
    }
}
