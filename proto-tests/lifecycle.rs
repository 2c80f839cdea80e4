//! klink as a process: pipelining, restarts, shutdown, config errors.

use std::process::Command;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiVersionsRequest, FetchRequest, ListOffsetsRequest, MetadataRequest, ProduceRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::harness::{Klink, run_bounded};
use crate::raw::RawConn;
use crate::{create_topic, metadata_brokers, proxied};

fn produce(topic: &str, acks: i16, value: &str) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(crate::one_record_batch(value))),
                ]),
        ])
}

fn latest_offset(conn: &mut RawConn, topic: &str) -> i64 {
    let request = ListOffsetsRequest::default()
        .with_replica_id((-1).into())
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(-1),
                ]),
        ]);
    let response = conn.call(&request, 7);
    response.topics[0].partitions[0].offset
}

fn leader(klink: &Klink) -> std::net::SocketAddr {
    let (_, _, port) = metadata_brokers(klink, 12)[0].clone();
    ([127, 0, 0, 1], port as u16).into()
}

/// Many requests in flight on one connection, answered by klink itself and
/// by the broker, come back in request order; acks=0 gets no answer and does
/// not hold up the ones after it.
#[test]
fn pipelined_requests_are_answered_in_order_and_acks0_gets_no_answer() {
    let (_broker, klink) = proxied("pipelining");
    create_topic(&klink, "pipe", 1);
    let mut conn = RawConn::connect(leader(&klink));
    let mut expected = Vec::new();
    let mut burst = Vec::new();
    for round in 0..20 {
        let (id, frame) = conn.encode(&MetadataRequest::default().with_topics(None), 12);
        expected.push(("metadata", id));
        burst.extend_from_slice(&frame);
        let (id, frame) = conn.encode(&ApiVersionsRequest::default(), 3);
        expected.push(("apiversions", id));
        burst.extend_from_slice(&frame);
        let (_, frame) = conn.encode(&produce("pipe", 0, &format!("fire-and-forget-{round}")), 9);
        burst.extend_from_slice(&frame);
        let (id, frame) = conn.encode(&produce("pipe", 1, &format!("acked-{round}")), 9);
        expected.push(("produce", id));
        burst.extend_from_slice(&frame);
    }
    conn.send_bytes(&burst);
    for (what, id) in &expected {
        let payload = conn.read_frame().unwrap_or_else(|e| {
            panic!(
                "{what} response: {e}; klink log:\n{}",
                klink.process.log_text()
            )
        });
        let got = i32::from_be_bytes(payload[0..4].try_into().expect("4 bytes"));
        assert_eq!(got, *id, "{what} response in request order");
    }
    // Every record arrived, acks=0 included: 20 rounds of two produces.
    assert_eq!(latest_offset(&mut conn, "pipe"), 40);
}

#[test]
fn restart_keeps_virtual_broker_ids_and_ports() {
    let (_broker, mut klink) = proxied("restart");
    let before = metadata_brokers(&klink, 12);
    assert!(!before.is_empty());
    let state_file = klink.state_dir.join("klink-state.json");
    assert!(state_file.exists(), "virtual brokers are persisted");
    klink.restart();
    let after = metadata_brokers(&klink, 12);
    assert_eq!(before, after, "ids and ports survive a restart");
    // A client that remembered the virtual broker reconnects to it.
    let mut conn = RawConn::connect(([127, 0, 0, 1], after[0].2 as u16).into());
    assert_eq!(conn.call(&ApiVersionsRequest::default(), 3).error_code, 0);
}

/// SIGTERM: klink stops accepting, answers what is in flight, exits 0.
#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let (_broker, mut klink) = proxied("shutdown");
    create_topic(&klink, "quiet", 1);
    let mut conn = RawConn::connect(leader(&klink));
    // An empty partition: the broker holds this fetch for max_wait_ms.
    let fetch = FetchRequest::default()
        .with_max_wait_ms(1_500)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("quiet")))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let (id, frame) = conn.encode(&fetch, 12);
    conn.send_bytes(&frame);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    klink.process.signal("TERM");
    let payload = conn.read_frame().unwrap_or_else(|e| {
        panic!(
            "the in-flight fetch is answered: {e}; klink log:\n{}",
            klink.process.log_text()
        )
    });
    let response = RawConn::decode::<FetchRequest>(payload, 12, id);
    assert_eq!(response.responses[0].partitions[0].error_code, 0);
    let status = klink.process.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(
        std::net::TcpStream::connect(klink.bootstrap).is_err(),
        "no longer accepting"
    );
}

#[test]
fn config_errors_name_file_line_and_key_and_exit_nonzero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[proxy]\nlisten = \"127.0.0.1:1\"\nadvertised_host = \"127.0.0.1\"\nbroker_ports_start = 9100\nmax_frame_bytez = 5\n\n[clusters.source]\nbootstrap = \"127.0.0.1:2\"\n",
    )
    .expect("write");
    let mut command = Command::new(env!("CARGO_BIN_EXE_klink"));
    command.args(["proxy", "--config"]).arg(&config);
    let (status, _, stderr) = run_bounded(command, Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    let expected = format!("{}:5", config.display());
    assert!(stderr.contains(&expected), "names file and line: {stderr}");
    assert!(
        stderr.contains("max_frame_bytez"),
        "names the key: {stderr}"
    );
}

/// kcat (librdkafka 2.0.2) fails its ApiVersions exchange with tansu
/// directly ("read underflow"); through klink, which answers ApiVersions
/// itself, it lists only klink addresses.
#[test]
fn kcat_lists_only_klink_addresses() {
    let (broker, klink) = proxied("kcat");
    create_topic(&klink, "listed", 2);
    let mut command = Command::new(crate::harness::kcat_bin());
    command.args(["-b", &klink.bootstrap_str(), "-L", "-m", "10"]);
    let (status, stdout, stderr) = run_bounded(command, Duration::from_secs(30));
    assert!(status.success(), "kcat -L failed: {stderr}");
    assert!(
        stdout.contains("topic \"listed\" with 2 partitions"),
        "{stdout}"
    );
    let upstream = format!(":{}", broker.addr.port());
    assert!(
        !stdout.contains(&upstream),
        "upstream address leaked: {stdout}"
    );
    let brokers: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("broker "))
        .collect();
    assert!(!brokers.is_empty(), "{stdout}");
    for line in brokers {
        let port: u16 = line
            .rsplit(':')
            .next()
            .and_then(|p| p.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("a port in {line:?}"));
        assert!(
            port >= klink.broker_ports_start && port < klink.broker_ports_start + 8,
            "{line}"
        );
    }
}
