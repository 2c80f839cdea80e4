//! KIP-951 leader hints (`current_leader` and `node_endpoints`) in Produce
//! and Fetch responses, and KIP-392's `preferred_read_replica` in Fetch.

use kafka_protocol::messages::{FetchResponse, ProduceResponse};
use kafka_protocol::protocol::StrBytes;

use super::BrokerView;
use crate::broker::UpstreamBroker;

pub fn produce_announced(response: &ProduceResponse) -> Vec<UpstreamBroker> {
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

pub fn fetch_announced(response: &FetchResponse) -> Vec<UpstreamBroker> {
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

pub fn rewrite_produce(response: &mut ProduceResponse, view: &BrokerView<'_>) -> bool {
    let mut changed = false;
    for topic in &mut response.responses {
        for partition in &mut topic.partition_responses {
            let leader = &mut partition.current_leader.leader_id;
            if leader.0 >= 0 {
                *leader = view.map_id(*leader);
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

pub fn rewrite_fetch(response: &mut FetchResponse, view: &BrokerView<'_>) -> bool {
    let mut changed = false;
    for topic in &mut response.responses {
        for partition in &mut topic.partitions {
            let leader = &mut partition.current_leader.leader_id;
            if leader.0 >= 0 {
                *leader = view.map_id(*leader);
                changed = true;
            }
            let replica = &mut partition.preferred_read_replica;
            if replica.0 >= 0 {
                *replica = view.map_id(*replica);
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
    use bytes::Bytes;
    use kafka_protocol::messages::fetch_response::{self, FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::produce_response::{
        self, PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, TopicName};

    use super::*;
    use crate::rewrite::Rewrite;
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

    #[test]
    fn fetch_node_endpoints_and_preferred_replica() {
        let range = ApiKey::Fetch.valid_versions();
        for version in 16..=range.max {
            let upstream = FetchResponse::default()
                .with_responses(vec![
                    FetchableTopicResponse::default()
                        .with_topic(TopicName(StrBytes::from_static_str("orders")))
                        .with_partitions(vec![
                            PartitionData::default()
                                .with_preferred_read_replica(BrokerId(1))
                                .with_records(Some(Bytes::from_static(b"records-bytes"))),
                        ]),
                ])
                .with_node_endpoints(vec![
                    fetch_response::NodeEndpoint::default()
                        .with_node_id(BrokerId(1))
                        .with_host(StrBytes::from_static_str("10.9.9.1"))
                        .with_port(19092),
                ]);
            let (_, bytes) = roundtrip(ApiKey::Fetch, version, &upstream);
            assert_no_upstream_address(&bytes);
            let out: FetchResponse = decode(ApiKey::Fetch, version, bytes);
            assert_eq!(out.node_endpoints[0].port, 9100);
            let partition = &out.responses[0].partitions[0];
            assert_eq!(partition.preferred_read_replica, BrokerId(1));
            assert_eq!(partition.records.as_deref(), Some(&b"records-bytes"[..]));
        }
    }

    #[test]
    fn responses_without_broker_names_keep_their_bytes() {
        let (_dir, registry) = registry();
        let view = crate::rewrite::BrokerView {
            registry: &registry,
            cluster: "source",
        };
        let upstream = FetchResponse::default().with_responses(vec![
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(vec![
                    PartitionData::default().with_records(Some(Bytes::from_static(b"abc"))),
                ]),
        ]);
        let original = frame(ApiKey::Fetch, 12, &upstream);
        let rewrite = Rewrite::decode(ApiKey::Fetch, 12, original.clone())
            .expect("decode")
            .expect("fetch v12 is inspected");
        let out = rewrite.apply(&view).expect("apply");
        assert_eq!(&out, original.wire_bytes());
        assert!(
            Rewrite::decode(ApiKey::Fetch, 10, original)
                .expect("decode")
                .is_none()
        );
    }
}
