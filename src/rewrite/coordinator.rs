use kafka_protocol::messages::FindCoordinatorResponse;
use kafka_protocol::protocol::StrBytes;

use super::BrokerView;
use crate::broker::UpstreamBroker;

/// FindCoordinator v4 replaced the single coordinator with a list (KIP-699).
const BATCHED_SINCE: i16 = 4;

pub fn announced(response: &FindCoordinatorResponse, version: i16) -> Vec<UpstreamBroker> {
    if version < BATCHED_SINCE {
        if response.error_code != 0 || response.node_id.0 < 0 {
            return Vec::new();
        }
        return vec![UpstreamBroker {
            node_id: response.node_id.0,
            host: response.host.to_string(),
            port: response.port,
        }];
    }
    response
        .coordinators
        .iter()
        .filter(|c| c.error_code == 0 && c.node_id.0 >= 0)
        .map(|c| UpstreamBroker {
            node_id: c.node_id.0,
            host: c.host.to_string(),
            port: c.port,
        })
        .collect()
}

pub fn rewrite(
    response: &mut FindCoordinatorResponse,
    version: i16,
    view: &BrokerView<'_>,
) -> bool {
    let host = StrBytes::from_string(view.host().to_string());
    let mut changed = false;
    // Errors come back with node -1 and an empty host; everything else names
    // a broker and must name a virtual one.
    let mut fix =
        |node_id: &mut kafka_protocol::messages::BrokerId, h: &mut StrBytes, port: &mut i32| {
            if node_id.0 < 0 && h.is_empty() {
                return;
            }
            changed = true;
            match view.virtual_of(node_id.0) {
                Some(b) => {
                    *node_id = b.id.into();
                    *h = host.clone();
                    *port = i32::from(b.port);
                }
                None => {
                    *node_id = (-1).into();
                    *h = StrBytes::default();
                    *port = -1;
                }
            }
        };
    if version < BATCHED_SINCE {
        fix(
            &mut response.node_id,
            &mut response.host,
            &mut response.port,
        );
    } else {
        for c in &mut response.coordinators {
            fix(&mut c.node_id, &mut c.host, &mut c.port);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::{ApiKey, BrokerId, FindCoordinatorResponse};

    use super::*;
    use crate::rewrite::test_support::*;

    #[test]
    fn single_coordinator_v0_to_v3() {
        for version in 0..BATCHED_SINCE {
            let upstream = FindCoordinatorResponse::default()
                .with_node_id(BrokerId(2))
                .with_host(StrBytes::from_static_str("10.9.9.2"))
                .with_port(19092);
            let (announced, bytes) = roundtrip(ApiKey::FindCoordinator, version, &upstream);
            assert_eq!(announced[0].node_id, 2);
            assert_no_upstream_address(&bytes);
            let out: FindCoordinatorResponse = decode(ApiKey::FindCoordinator, version, bytes);
            assert_eq!(
                (out.node_id.0, out.host.as_str(), out.port),
                (2, "127.0.0.1", 9101)
            );
        }
    }

    #[test]
    fn coordinator_list_v4_and_later() {
        let range = ApiKey::FindCoordinator.valid_versions();
        for version in BATCHED_SINCE..=range.max {
            let coordinator = |key: &'static str, id: i32| {
                Coordinator::default()
                    .with_key(StrBytes::from_static_str(key))
                    .with_node_id(BrokerId(id))
                    .with_host(StrBytes::from_string(format!("10.9.9.{id}")))
                    .with_port(19092)
            };
            let upstream = FindCoordinatorResponse::default().with_coordinators(vec![
                coordinator("g1", 1),
                coordinator("g2", 2),
                Coordinator::default()
                    .with_key(StrBytes::from_static_str("g3"))
                    .with_node_id(BrokerId(-1))
                    .with_error_code(15),
            ]);
            let (announced, bytes) = roundtrip(ApiKey::FindCoordinator, version, &upstream);
            assert_eq!(announced.len(), 2);
            assert_no_upstream_address(&bytes);
            let out: FindCoordinatorResponse = decode(ApiKey::FindCoordinator, version, bytes);
            let got: Vec<_> = out
                .coordinators
                .iter()
                .map(|c| (c.node_id.0, c.host.to_string(), c.port))
                .collect();
            assert_eq!(
                got,
                vec![
                    (1, "127.0.0.1".into(), 9100),
                    (2, "127.0.0.1".into(), 9101),
                    (-1, String::new(), 0)
                ]
            );
        }
    }
}
