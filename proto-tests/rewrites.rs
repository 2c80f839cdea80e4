//! Every broker address a client can learn is a klink address.

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    DescribeClusterRequest, FetchRequest, FindCoordinatorRequest, MetadataRequest, ProduceRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::raw::RawConn;
use crate::{advertised, assert_virtual, create_topic, proxied};

#[test]
fn metadata_at_every_advertised_version_names_only_virtual_brokers() {
    let (broker, klink) = proxied("rewrite-metadata");
    create_topic(&klink, "orders", 3);
    let (min, max) = advertised(&klink)[&3];
    assert!(max >= 12, "Metadata v12 advertised, got {max}");
    for version in min..=max {
        let mut conn = RawConn::connect(klink.bootstrap);
        let response = conn.call(&MetadataRequest::default().with_topics(None), version);
        assert!(!response.brokers.is_empty(), "v{version}");
        let ids: Vec<i32> = response.brokers.iter().map(|b| b.node_id.0).collect();
        for b in &response.brokers {
            assert_virtual(&klink, &broker, &b.host, b.port);
        }
        if version >= 1 {
            assert!(
                ids.contains(&response.controller_id.0),
                "v{version} controller {:?}",
                response.controller_id
            );
        }
        let orders = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some("orders"))
            .unwrap_or_else(|| panic!("v{version}: orders listed"));
        assert_eq!(orders.partitions.len(), 3);
        for p in &orders.partitions {
            assert!(
                ids.contains(&p.leader_id.0),
                "v{version}: leader {:?} is a virtual broker",
                p.leader_id
            );
            assert!(p.replica_nodes.iter().all(|r| ids.contains(&r.0)));
        }
    }
}

#[test]
fn find_coordinator_single_and_batched_name_virtual_brokers() {
    let (broker, klink) = proxied("rewrite-coordinator");
    let (_, max) = advertised(&klink)[&10];
    assert!(max >= 4, "FindCoordinator v4+ advertised, got {max}");
    let mut conn = RawConn::connect(klink.bootstrap);
    let single = conn.call(
        &FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("billing")),
        3,
    );
    assert_eq!(single.error_code, 0, "{single:?}");
    assert_virtual(&klink, &broker, &single.host, single.port);
    for version in 4..=max {
        let batched = conn.call(
            &FindCoordinatorRequest::default().with_coordinator_keys(vec![
                StrBytes::from_static_str("billing"),
                StrBytes::from_static_str("shipping"),
            ]),
            version,
        );
        assert_eq!(batched.coordinators.len(), 2, "v{version}");
        for c in &batched.coordinators {
            assert_eq!(c.error_code, 0, "v{version}: {c:?}");
            assert_virtual(&klink, &broker, &c.host, c.port);
        }
    }
}

#[test]
fn describe_cluster_names_virtual_brokers() {
    let (broker, klink) = proxied("rewrite-describe");
    let (min, max) = advertised(&klink)[&60];
    for version in min..=max {
        let mut conn = RawConn::connect(klink.bootstrap);
        let response = conn.call(&DescribeClusterRequest::default(), version);
        assert_eq!(response.error_code, 0);
        assert!(!response.brokers.is_empty());
        for b in &response.brokers {
            assert_virtual(&klink, &broker, &b.host, b.port);
        }
        let ids: Vec<i32> = response.brokers.iter().map(|b| b.broker_id.0).collect();
        assert!(ids.contains(&response.controller_id.0) || response.controller_id.0 == -1);
    }
}

/// Produce v10+ and Fetch v16+ carry KIP-951 `node_endpoints`; through klink
/// they may only name virtual brokers, and the responses must stay intact.
#[test]
fn produce_and_fetch_with_node_endpoints_versions() {
    let (broker, klink) = proxied("rewrite-endpoints");
    create_topic(&klink, "events", 1);
    let versions = advertised(&klink);
    let produce_max = versions[&0].1;
    let fetch_max = versions[&1].1;
    assert!(
        produce_max >= 10 && fetch_max >= 16,
        "KIP-951 versions advertised"
    );
    let leader = crate::metadata_brokers(&klink, 12)[0].clone();
    let leader_addr = ([127, 0, 0, 1], leader.2 as u16).into();
    let mut conn = RawConn::connect(leader_addr);
    for version in 10..=produce_max.min(12) {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("events")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(crate::one_record_batch("hello"))),
                    ]),
            ]);
        let response = conn.call(&request, version);
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(partition.error_code, 0, "produce v{version}: {partition:?}");
        for e in &response.node_endpoints {
            assert_virtual(&klink, &broker, &e.host, e.port);
        }
    }
    for version in 16..=fetch_max {
        let request = FetchRequest::default()
            .with_max_wait_ms(10)
            .with_max_bytes(1 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_static_str("events")))
                    .with_topic_id(topic_id(&klink, "events"))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ]);
        let response = conn.call(&request, version);
        let partition = &response.responses[0].partitions[0];
        assert_eq!(partition.error_code, 0, "fetch v{version}: {partition:?}");
        let records = partition.records.clone().expect("records");
        assert!(
            records.windows(5).any(|w| w == b"hello"),
            "fetch v{version}: the produced record comes back intact"
        );
        for e in &response.node_endpoints {
            assert_virtual(&klink, &broker, &e.host, e.port);
        }
    }
}

fn topic_id(klink: &crate::harness::Klink, name: &str) -> uuid::Uuid {
    let mut conn = RawConn::connect(klink.bootstrap);
    let response = conn.call(&MetadataRequest::default().with_topics(None), 12);
    response
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some(name))
        .map(|t| t.topic_id)
        .expect("topic listed")
}
