use kafka_protocol::messages::DescribeClusterResponse;
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
    response.controller_id = view.map_id(response.controller_id);
    if let Some(id) = view.cluster_id {
        response.cluster_id = StrBytes::from_string(id.to_string());
    }
    true
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
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
}
