//! KIP-951 leader hints (`current_leader` and `node_endpoints`) in Produce
//! responses (v10+). Produce responses are small: decoded by the crate.

use kafka_protocol::messages::ProduceResponse;
use kafka_protocol::protocol::StrBytes;

use super::BrokerView;
use crate::broker::UpstreamBroker;

pub fn announced(response: &ProduceResponse) -> Vec<UpstreamBroker> {
    response
        .node_endpoints
        .iter()
        .map(|e| UpstreamBroker {
            node_id: e.node_id.0,
            host: e.host.to_string(),
            port: e.port,
        })
        .collect()
}

pub fn rewrite(response: &mut ProduceResponse, view: &BrokerView<'_>) -> bool {
    let mut changed = false;
    for topic in &mut response.responses {
        // v13+ names topics by the cluster's id.
        let name = match topic.name.as_str() {
            "" => view
                .catalog
                .and_then(|c| c.name_by_upstream_id(view.cluster, &topic.topic_id)),
            name => Some(name.to_string()),
        };
        for partition in &mut topic.partition_responses {
            let leader = &mut partition.current_leader.leader_id;
            if leader.0 >= 0 {
                *leader = view.map_id(*leader);
                if let Some(shifted) = view.shifted(name.as_deref(), partition.index) {
                    let epoch = &mut partition.current_leader.leader_epoch;
                    *epoch = shifted.epochs().to_client(*epoch);
                }
                changed = true;
            }
        }
    }
    if !response.node_endpoints.is_empty() {
        let host = StrBytes::from_string(view.host().to_string());
        response
            .node_endpoints
            .retain_mut(|e| match view.virtual_of(e.node_id.0) {
                Some(v) => {
                    e.node_id = v.id.into();
                    e.host = host.clone();
                    e.port = i32::from(v.port);
                    true
                }
                None => false,
            });
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::produce_response::{
        self, PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, TopicName};

    use super::*;
    use crate::rewrite::test_support::*;

    #[test]
    fn produce_node_endpoints_and_leader_hints() {
        let range = ApiKey::Produce.valid_versions();
        for version in 10..=range.max {
            let upstream = ProduceResponse::default()
                .with_responses(vec![
                    TopicProduceResponse::default()
                        .with_name(TopicName(StrBytes::from_static_str("orders")))
                        .with_partition_responses(vec![
                            PartitionProduceResponse::default()
                                .with_error_code(6)
                                .with_current_leader(
                                    produce_response::LeaderIdAndEpoch::default()
                                        .with_leader_id(BrokerId(2))
                                        .with_leader_epoch(4),
                                ),
                        ]),
                ])
                .with_node_endpoints(vec![
                    produce_response::NodeEndpoint::default()
                        .with_node_id(BrokerId(2))
                        .with_host(StrBytes::from_static_str("10.9.9.2"))
                        .with_port(19092),
                ]);
            let (announced, bytes) = roundtrip(ApiKey::Produce, version, &upstream);
            assert_eq!(announced.len(), 1);
            assert_no_upstream_address(&bytes);
            let out: ProduceResponse = decode(ApiKey::Produce, version, bytes);
            assert_eq!(out.node_endpoints[0].port, 9101);
            let leader = &out.responses[0].partition_responses[0].current_leader;
            assert_eq!((leader.leader_id.0, leader.leader_epoch), (2, 4));
        }
    }
}
