use kafka_protocol::messages::DescribeClusterResponse;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::protocol::StrBytes;

use super::BrokerView;
use crate::broker::UpstreamBroker;

pub fn announced(response: &DescribeClusterResponse) -> Vec<UpstreamBroker> {
    response
        .brokers
        .iter()
        .map(|b| UpstreamBroker {
            node_id: b.broker_id.0,
            host: b.host.to_string(),
            port: b.port,
        })
        .collect()
}

pub fn rewrite(response: &mut DescribeClusterResponse, view: &BrokerView<'_>) -> bool {
    let host = StrBytes::from_string(view.host().to_string());
    response
        .brokers
        .retain_mut(|b| match view.virtual_of(b.broker_id.0) {
            Some(v) => {
                b.broker_id = v.id.into();
                b.host = host.clone();
                b.port = i32::from(v.port);
                true
            }
            None => false,
        });
    for other in view.registry.others(view.cluster) {
        if !response.brokers.iter().any(|b| b.broker_id.0 == other.id) {
            response.brokers.push(
                DescribeClusterBroker::default()
                    .with_broker_id(other.id.into())
                    .with_host(host.clone())
                    .with_port(i32::from(other.port)),
            );
        }
    }
    response.controller_id = view.map_id(response.controller_id);
    if let Some(id) = view.cluster_id {
        response.cluster_id = StrBytes::from_string(id.to_string());
    }
    true
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::{ApiKey, BrokerId, DescribeClusterResponse};

    use super::*;
    use crate::rewrite::test_support::*;

    #[test]
    fn brokers_and_controller_become_virtual() {
        let range = ApiKey::DescribeCluster.valid_versions();
        for version in range.min..=range.max {
            let broker = |id: i32| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(id))
                    .with_host(StrBytes::from_string(format!("10.9.9.{id}")))
                    .with_port(19092)
            };
            let upstream = DescribeClusterResponse::default()
                .with_brokers(vec![broker(1), broker(2)])
                .with_controller_id(BrokerId(1));
            let (announced, bytes) = roundtrip(ApiKey::DescribeCluster, version, &upstream);
            assert_eq!(announced.len(), 2);
            assert_no_upstream_address(&bytes);
            let out: DescribeClusterResponse = decode(ApiKey::DescribeCluster, version, bytes);
            let got: Vec<_> = out
                .brokers
                .iter()
                .map(|b| (b.broker_id.0, b.port))
                .collect();
            assert_eq!(got, vec![(1, 9100), (2, 9101)]);
            assert_eq!(out.controller_id, BrokerId(1));
        }
    }

    #[tokio::test]
    async fn the_other_clusters_brokers_are_listed_too() {
        let (_dir, registry) = registry_with_target().await;
        let upstream = DescribeClusterResponse::default().with_brokers(vec![
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(2))
                .with_host(StrBytes::from_static_str("10.9.9.2"))
                .with_port(19092),
        ]);
        let bytes = rewritten_from_source(&registry, ApiKey::DescribeCluster, 0, &upstream);
        let out: DescribeClusterResponse = decode(ApiKey::DescribeCluster, 0, bytes);
        let got: Vec<_> = out
            .brokers
            .iter()
            .map(|b| (b.broker_id.0, b.port))
            .collect();
        assert_eq!(got, vec![(2, 9101), (3, 9102)]);
    }
}
