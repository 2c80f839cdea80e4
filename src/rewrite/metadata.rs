use kafka_protocol::messages::MetadataResponse;
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::protocol::StrBytes;

use super::BrokerView;
use crate::broker::UpstreamBroker;

pub fn announced(response: &MetadataResponse) -> Vec<UpstreamBroker> {
    UpstreamBroker::all_in(response)
}

/// Metadata always changes: its broker list is nothing but addresses, and
/// it lists every cluster's brokers ([`crate::broker::BrokerRegistry::others`]).
pub fn rewrite(response: &mut MetadataResponse, view: &BrokerView<'_>) -> bool {
    let host = StrBytes::from_string(view.host().to_string());
    response.brokers = response
        .brokers
        .iter()
        .filter_map(|b| {
            let virtual_broker = view.virtual_of(b.node_id.0)?;
            Some(
                MetadataResponseBroker::default()
                    .with_node_id(virtual_broker.id.into())
                    .with_host(host.clone())
                    .with_port(i32::from(virtual_broker.port))
                    .with_rack(b.rack.clone()),
            )
        })
        .collect();
    for other in view.registry.others(view.cluster) {
        if !response.brokers.iter().any(|b| b.node_id.0 == other.id) {
            response.brokers.push(
                MetadataResponseBroker::default()
                    .with_node_id(other.id.into())
                    .with_host(host.clone())
                    .with_port(i32::from(other.port)),
            );
        }
    }
    response.controller_id = view.map_id(response.controller_id);
    if let (Some(id), Some(_)) = (view.cluster_id, &response.cluster_id) {
        response.cluster_id = Some(StrBytes::from_string(id.to_string()));
    }
    for topic in &mut response.topics {
        if let (Some(catalog), Some(name)) = (view.catalog, topic.name.as_ref())
            && let Some(id) = catalog.client_id(name)
        {
            topic.topic_id = id;
        }
        for partition in &mut topic.partitions {
            if let Some(shifted) = view.shifted(
                topic.name.as_ref().map(|n| n.as_str()),
                partition.partition_index,
            ) {
                partition.leader_epoch = shifted.epochs().to_client(partition.leader_epoch);
            }
            partition.leader_id = view.map_id(partition.leader_id);
            partition.replica_nodes = view.map_ids(&partition.replica_nodes);
            partition.isr_nodes = view.map_ids(&partition.isr_nodes);
            partition.offline_replicas = view.map_ids(&partition.offline_replicas);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::metadata_response::{
        MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, MetadataResponse, TopicName};

    use super::*;
    use crate::rewrite::test_support::*;

    fn upstream_metadata() -> MetadataResponse {
        let broker = |id: i32| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_string(format!("10.9.9.{id}")))
                .with_port(19092)
        };
        let partition = |index: i32, leader: i32| {
            MetadataResponsePartition::default()
                .with_partition_index(index)
                .with_leader_id(BrokerId(leader))
                .with_replica_nodes(vec![BrokerId(1), BrokerId(2), BrokerId(3)])
                .with_isr_nodes(vec![BrokerId(leader)])
        };
        MetadataResponse::default()
            .with_brokers(vec![broker(1), broker(2)])
            .with_controller_id(BrokerId(2))
            .with_cluster_id(Some(StrBytes::from_static_str("c1")))
            .with_topics(vec![
                MetadataResponseTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))
                    .with_partitions(vec![partition(0, 1), partition(1, 2), partition(2, 3)]),
            ])
    }

    #[test]
    fn every_version_gets_virtual_brokers_only() {
        let range = ApiKey::Metadata.valid_versions();
        for version in range.min..=range.max {
            let (announced, bytes) = roundtrip(ApiKey::Metadata, version, &upstream_metadata());
            assert_eq!(announced.len(), 2);
            assert_no_upstream_address(&bytes);
            let out: MetadataResponse = decode(ApiKey::Metadata, version, bytes);
            let brokers: Vec<_> = out
                .brokers
                .iter()
                .map(|b| (b.node_id.0, b.host.to_string(), b.port))
                .collect();
            assert_eq!(
                brokers,
                vec![(1, "127.0.0.1".into(), 9100), (2, "127.0.0.1".into(), 9101)]
            );
            if version >= 1 {
                assert_eq!(out.controller_id, BrokerId(2));
            }
            let partitions = &out.topics[0].partitions;
            assert_eq!(partitions[0].leader_id, BrokerId(1));
            // Upstream broker 3 was never announced: no leader, not a replica.
            assert_eq!(partitions[2].leader_id, BrokerId(-1));
            assert_eq!(partitions[0].replica_nodes, vec![BrokerId(1), BrokerId(2)]);
        }
    }

    #[tokio::test]
    async fn every_clusters_brokers_are_listed_whichever_cluster_answers() {
        let (_dir, registry) = registry_with_target().await;
        let listed = |registry: &crate::broker::BrokerRegistry| {
            let bytes = rewritten_from_source(registry, ApiKey::Metadata, 12, &upstream_metadata());
            let out: MetadataResponse = decode(ApiKey::Metadata, 12, bytes);
            out.brokers
                .iter()
                .map(|b| (b.node_id.0, b.port))
                .collect::<Vec<_>>()
        };
        assert_eq!(listed(&registry), vec![(1, 9100), (2, 9101), (3, 9102)]);
        // The answering cluster's own brokers are its answer's.
        registry.note_members(&std::sync::Arc::from("source"), &[]);
        assert_eq!(listed(&registry), vec![(1, 9100), (2, 9101), (3, 9102)]);
        // A broker the target no longer lists is not shown.
        registry.note_members(&std::sync::Arc::from("target"), &[]);
        assert_eq!(listed(&registry), vec![(1, 9100), (2, 9101)]);
    }

    #[test]
    fn a_partition_flipped_back_shows_epochs_above_the_ones_the_target_showed() {
        let (dir, registry) = registry();
        let catalog = crate::route::Catalog::load(std::sync::Arc::new(
            crate::state::StateStore::open(dir.path()).expect("state"),
        ));
        let numbering = &catalog.numbering;
        numbering.register("orders", "source".into(), "target".into());
        // Promoted (source at 5, new target shown from 5), then rolled
        // back when the target was at 3 (shown 8): the source's 5 reads 8.
        let era = |side, at, epoch_shift, epoch_from| crate::numbering::Era {
            side,
            upstream_from: at,
            client_from: at,
            epoch_shift,
            epoch_from,
        };
        use crate::numbering::Side::{Source, Target};
        numbering.publish_eras(&std::collections::BTreeMap::from([(
            "orders".to_string(),
            std::collections::BTreeMap::from([(
                1,
                vec![era(Target, 100, 5, 5), era(Source, 200, 3, 8)],
            )]),
        )]));
        let mut upstream = upstream_metadata();
        for p in &mut upstream.topics[0].partitions {
            p.leader_epoch = 5;
        }
        let version = 12;
        let rewrite = crate::rewrite::Rewrite::decode(
            ApiKey::Metadata,
            version,
            frame(ApiKey::Metadata, version, &upstream),
        )
        .expect("decode")
        .expect("rewritten api");
        let view = BrokerView {
            registry: &registry,
            cluster: "source",
            catalog: Some(&catalog),
            cluster_id: None,
        };
        let out: MetadataResponse = decode(
            ApiKey::Metadata,
            version,
            rewrite.apply(&view).expect("apply"),
        );
        let epochs: Vec<i32> = out.topics[0]
            .partitions
            .iter()
            .map(|p| p.leader_epoch)
            .collect();
        assert_eq!(epochs, vec![5, 8, 5], "only the flipped partition moves");
    }
}
