//! Two clusters behind one klink: per-topic and per-group routes changed by
//! an operator while real clients keep running.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::{CreateTopicsRequest, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde_json::Value;

use crate::harness::{Broker, Klink, KlinkOptions, python_bin, repo_root, run_bounded};
use crate::raw::RawConn;

const LINK: &str = "[[links]]\nid = \"orders-move\"\nsource = \"source\"\ntarget = \"target\"\nmirror = false\n\
                    start = \"earliest\"\ntopics = [\"orders\", \"payments\"]\ngroups = [\"billing\"]\n";

pub struct TwoClusters {
    pub source: Broker,
    pub target: Broker,
    pub klink: Klink,
}

pub fn two_clusters(name: &str) -> TwoClusters {
    let source = Broker::start(&format!("{name}-source"));
    let target = Broker::start(&format!("{name}-target"));
    let klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), target.addr)],
            extra_config: LINK.into(),
            ..Default::default()
        },
    );
    TwoClusters {
        source,
        target,
        klink,
    }
}

/// Runs proto-tests/clients/routing.py and returns its JSON line.
pub fn py(args: &[&str]) -> Value {
    let mut command = Command::new(python_bin());
    command
        .arg(repo_root().join("proto-tests/clients/routing.py"))
        .args(args);
    let (status, stdout, stderr) = run_bounded(command, Duration::from_secs(90));
    assert!(status.success(), "routing.py {args:?} failed:\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("routing.py {args:?}: bad JSON {line:?}: {e}\n{stderr}"))
}

/// Values in a topic, read from one cluster directly (not through klink).
pub fn values_on(broker: &Broker, topic: &str) -> Vec<String> {
    values_on_addr(&broker.addr.to_string(), topic)
}

fn values_on_addr(bootstrap: &str, topic: &str) -> Vec<String> {
    let report = py(&["count", "--bootstrap", bootstrap, "--topic", topic]);
    report["values"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Creates topics through klink in ONE CreateTopics request, which klink
/// splits by each topic's write route.
pub fn create_through_klink(klink: &Klink, topics: &[&str], partitions: i32) {
    let mut conn = RawConn::connect(klink.bootstrap);
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(10_000)
        .with_topics(
            topics
                .iter()
                .map(|t| {
                    CreatableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(t.to_string())))
                        .with_num_partitions(partitions)
                        .with_replication_factor(1)
                })
                .collect(),
        );
    let response = conn.call(&request, 5);
    let names: Vec<(String, i16)> = response
        .topics
        .iter()
        .map(|t| (t.name.to_string(), t.error_code))
        .collect();
    assert_eq!(names.len(), topics.len(), "{names:?}");
    assert!(names.iter().all(|(_, e)| *e == 0), "{names:?}");
}

#[test]
fn one_producer_writes_each_topic_to_its_routed_cluster() {
    let c = two_clusters("route-split");
    c.klink.ctl_ok(&[
        "route", "payments", "--writes", "target", "--reads", "target",
    ]);
    create_through_klink(&c.klink, &["orders", "payments"], 3);
    let report = py(&[
        "produce",
        "--bootstrap",
        &c.klink.bootstrap_str(),
        "--topic",
        "orders,payments",
        "--count",
        "400",
    ]);
    assert_eq!(report["delivered"], 400, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    let orders = values_on(&c.source, "orders");
    let payments = values_on(&c.target, "payments");
    assert_eq!(orders.len(), 200, "orders on the source");
    assert_eq!(payments.len(), 200, "payments on the target");
    assert!(
        values_on(&c.source, "payments").is_empty(),
        "no payments on the source"
    );
    assert!(
        values_on(&c.target, "orders").is_empty(),
        "no orders on the target"
    );

    // Through klink the client sees one cluster: both topics, each once,
    // led by virtual brokers of the cluster that serves its reads.
    let mut conn = RawConn::connect(c.klink.bootstrap);
    let metadata = conn.call(&MetadataRequest::default().with_topics(None), 12);
    let listed: Vec<String> = metadata
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .collect();
    assert_eq!(
        listed.iter().filter(|n| *n == "orders").count(),
        1,
        "{listed:?}"
    );
    assert_eq!(
        listed.iter().filter(|n| *n == "payments").count(),
        1,
        "{listed:?}"
    );
    assert_eq!(
        metadata.brokers.len(),
        2,
        "one virtual broker per upstream broker"
    );
    for b in &metadata.brokers {
        assert_ne!(b.port, i32::from(c.source.addr.port()));
        assert_ne!(b.port, i32::from(c.target.addr.port()));
    }
    let leader_of = |topic: &str| {
        metadata
            .topics
            .iter()
            .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some(topic))
            .map(|t| t.partitions[0].leader_id.0)
            .expect("listed")
    };
    assert_ne!(
        leader_of("orders"),
        leader_of("payments"),
        "different clusters, different virtual brokers"
    );
}

#[test]
fn flipping_writes_mid_stream_loses_and_fails_nothing() {
    let c = two_clusters("route-flip");
    create_through_klink(&c.klink, &["orders"], 1);
    py(&[
        "create",
        "--bootstrap",
        &c.target.addr.to_string(),
        "--topic",
        "orders",
        "--partitions",
        "1",
    ]);
    let mut producer = Command::new(python_bin());
    producer
        .arg(repo_root().join("proto-tests/clients/routing.py"))
        .args([
            "produce",
            "--bootstrap",
            &c.klink.bootstrap_str(),
            "--topic",
            "orders",
        ])
        .args(["--count", "300", "--rate", "150"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = producer.spawn().expect("start producer");
    std::thread::sleep(Duration::from_millis(900));
    c.klink.ctl_ok(&["route", "orders", "--writes", "target"]);
    let output = child.wait_with_output().expect("producer finishes");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "producer: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("json");
    assert_eq!(report["delivered"], 300, "{report}");
    assert_eq!(report["failed"], 0, "no failed delivery: {report}");

    let before = values_on(&c.source, "orders");
    let after = values_on(&c.target, "orders");
    assert!(
        !before.is_empty() && !after.is_empty(),
        "the flip happened mid-stream: {} / {}; klink log:\n{}",
        before.len(),
        after.len(),
        c.klink.process.log_text()
    );
    assert_eq!(before.len() + after.len(), 300, "every record once");
    let expected_before: Vec<String> = (0..before.len()).map(|i| i.to_string()).collect();
    let expected_after: Vec<String> = (before.len()..300).map(|i| i.to_string()).collect();
    assert_eq!(
        before, expected_before,
        "records before the flip are on the source, in order"
    );
    assert_eq!(
        after, expected_after,
        "records after the flip are on the target, in order"
    );

    // Flip the reads too: clients keep the topic id they know, and reading
    // through klink now reads the target.
    let id_before = topic_id(&c.klink, "orders");
    c.klink.ctl_ok(&["route", "orders", "--reads", "target"]);
    assert_eq!(
        topic_id(&c.klink, "orders"),
        id_before,
        "one topic id for the topic's life"
    );
    let through_klink = values_on_addr(&c.klink.bootstrap_str(), "orders");
    assert_eq!(through_klink, expected_after, "reads follow the route");
}

fn topic_id(klink: &Klink, topic: &str) -> uuid::Uuid {
    let mut conn = RawConn::connect(klink.bootstrap);
    let metadata = conn.call(&MetadataRequest::default().with_topics(None), 12);
    metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().map(|n| n.as_str()) == Some(topic))
        .map(|t| t.topic_id)
        .expect("topic listed")
}

#[test]
fn flipping_a_group_moves_its_coordinator_without_a_client_restart() {
    let c = two_clusters("route-group");
    create_through_klink(&c.klink, &["orders"], 1);
    // The topic exists on the target too, as a mirror would create it: a
    // coordinator only takes commits for topics it knows.
    py(&[
        "create",
        "--bootstrap",
        &c.target.addr.to_string(),
        "--topic",
        "orders",
        "--partitions",
        "1",
    ]);
    let report = py(&[
        "produce",
        "--bootstrap",
        &c.klink.bootstrap_str(),
        "--topic",
        "orders",
        "--count",
        "50",
    ]);
    assert_eq!(report["delivered"], 50);

    let mut consumer = KillOnDrop(
        Command::new(python_bin())
            .arg(repo_root().join("proto-tests/clients/routing.py"))
            .args([
                "group",
                "--bootstrap",
                &c.klink.bootstrap_str(),
                "--topic",
                "orders",
            ])
            .args(["--group", "billing", "--seconds", "8"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start consumer"),
    );
    let stdout = consumer.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    let ready = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(
        ready,
        "READY",
        "consumer joined and committed (after {:?})",
        started.elapsed()
    );
    let committed_on = |broker: &Broker| {
        py(&[
            "committed",
            "--bootstrap",
            &broker.addr.to_string(),
            "--topic",
            "orders",
            "--group",
            "billing",
        ])["committed"]["0"]
            .as_i64()
            .unwrap_or(-1)
    };
    assert_eq!(
        committed_on(&c.source),
        50,
        "the source coordinates billing first"
    );

    c.klink
        .ctl_ok(&["route-group", "billing", "--to", "target"]);
    let last = lines.map_while(Result::ok).last().unwrap_or_default();
    let status = consumer.0.wait().expect("consumer exits");
    assert!(status.success(), "the consumer kept running: {last}");
    let report: Value = serde_json::from_str(&last).expect("json");
    let assignments = report["assignments"].as_array().map(Vec::len).unwrap_or(0);
    assert!(
        assignments >= 2,
        "the consumer rejoined after the flip: {report}"
    );
    // Offsets are not carried over yet (that is the cutover's job): the group
    // starts afresh on the target, reads the topic again and commits there.
    assert_eq!(
        committed_on(&c.target),
        50,
        "the target coordinates billing now"
    );
    let status = c.klink.ctl_ok(&["status", "--json"]);
    let status: Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(status["groups"][0]["route"], "target", "{status}");
}

/// A client process that must not outlive its test, even a failed one.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn restart_restores_routes_and_node_ids_and_clients_keep_working() {
    let mut c = two_clusters("route-restart");
    c.klink.ctl_ok(&[
        "route", "payments", "--writes", "target", "--reads", "target",
    ]);
    c.klink
        .ctl_ok(&["route-group", "billing", "--to", "target"]);
    create_through_klink(&c.klink, &["orders", "payments"], 1);
    let brokers_before = crate::metadata_brokers(&c.klink, 12);
    let status_before = c.klink.ctl_ok(&["status", "--json"]);
    // A client connected before the restart ...
    let mut conn = RawConn::connect(c.klink.bootstrap);
    conn.call(&MetadataRequest::default().with_topics(None), 12);

    c.klink.restart();

    assert_eq!(
        c.klink.ctl_ok(&["status", "--json"]),
        status_before,
        "routes restored"
    );
    assert_eq!(
        crate::metadata_brokers(&c.klink, 12),
        brokers_before,
        "virtual brokers restored"
    );
    assert!(
        conn.closed_by_peer(),
        "the old connection was closed by the restart"
    );
    // ... reconnects and keeps working: its writes still follow the routes.
    let report = py(&[
        "produce",
        "--bootstrap",
        &c.klink.bootstrap_str(),
        "--topic",
        "payments",
        "--count",
        "20",
    ]);
    assert_eq!(report["delivered"], 20, "{report}");
    assert_eq!(values_on(&c.target, "payments").len(), 20);
    assert!(values_on(&c.source, "payments").is_empty());
}

#[test]
fn a_corrupt_state_file_stops_klink_with_a_reason() {
    let mut c = two_clusters("route-corrupt");
    c.klink.ctl_ok(&["route", "orders", "--writes", "target"]);
    c.klink.process.signal("TERM");
    assert!(c.klink.process.wait_exit(Duration::from_secs(15)).success());
    let state = c.klink.state_dir.join("klink-state.json");
    let text = std::fs::read_to_string(&state).expect("state file");
    std::fs::write(&state, &text[..text.len() / 2]).expect("truncate");
    let (status, _, stderr) = run_bounded(
        crate::harness::klink_command(&c.klink.config),
        Duration::from_secs(20),
    );
    assert!(!status.success(), "klink refused to start");
    assert!(stderr.contains("corrupt"), "says why: {stderr}");
    assert!(
        stderr.contains("klink-state.json"),
        "names the file: {stderr}"
    );
}

#[test]
fn ctl_rejects_bad_input_and_changes_nothing() {
    let c = two_clusters("route-ctl");
    let before = c.klink.ctl_ok(&["status", "--json"]);
    let table = c.klink.ctl_ok(&["status"]);
    assert!(
        table.contains("orders") && table.contains("billing"),
        "{table}"
    );

    let (status, _, stderr) = c.klink.ctl(&["explode"]);
    assert!(!status.success(), "unknown command: {stderr}");
    let (status, _, stderr) = c.klink.ctl(&["route", "nosuch", "--writes", "target"]);
    assert!(!status.success());
    assert!(stderr.contains("unknown topic"), "{stderr}");
    let (status, _, stderr) = c.klink.ctl(&["route", "orders", "--writes", "mars"]);
    assert!(!status.success());
    assert!(stderr.contains("unknown cluster"), "{stderr}");
    let (status, _, stderr) = c.klink.ctl(&["route-group", "nosuch", "--to", "target"]);
    assert!(!status.success());
    assert!(stderr.contains("unknown group"), "{stderr}");

    // Malformed JSON straight on the socket.
    use std::io::{Read, Write};
    let socket = c.klink.state_dir.join("control.sock");
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).expect("control socket");
    raw.write_all(b"{\"cmd\": \"route\", \"topic\": \n")
        .expect("write");
    raw.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut answer = String::new();
    raw.read_to_string(&mut answer).expect("read");
    let answer: Value = serde_json::from_str(answer.trim()).expect("json answer");
    assert_eq!(answer["ok"], false, "{answer}");
    let mode = std::fs::metadata(&socket)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777);
    assert_eq!(mode.ok(), Some(0o600), "control socket is private");

    assert_eq!(
        c.klink.ctl_ok(&["status", "--json"]),
        before,
        "nothing changed"
    );
}

/// A cluster that is down when klink starts gets its virtual brokers (on the
/// next free ports) once it comes up, without a restart; meanwhile clients
/// of the other cluster are served.
#[test]
fn a_cluster_that_comes_up_late_gets_virtual_brokers_without_a_restart() {
    let source = Broker::start("late-source");
    let target_port = crate::harness::free_port();
    let target_addr: std::net::SocketAddr = ([127, 0, 0, 1], target_port).into();
    let klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), target_addr)],
            extra_config: LINK.into(),
            ..Default::default()
        },
    );
    // The target is down: the source is still served, ApiVersions included.
    assert_eq!(crate::metadata_brokers(&klink, 12).len(), 1);
    create_through_klink(&klink, &["early"], 1);
    let report = py(&[
        "produce",
        "--bootstrap",
        &klink.bootstrap_str(),
        "--topic",
        "early",
        "--count",
        "1",
    ]);
    assert_eq!(report["failed"], 0, "{report}");

    let target = Broker::start_on(target_port, "late-target");
    klink.ctl_ok(&[
        "route", "payments", "--writes", "target", "--reads", "target",
    ]);
    create_through_klink(&klink, &["payments"], 1);
    let report = py(&[
        "produce",
        "--bootstrap",
        &klink.bootstrap_str(),
        "--topic",
        "payments",
        "--count",
        "10",
    ]);
    assert_eq!(report["delivered"], 10, "{report}");
    assert_eq!(values_on(&target, "payments").len(), 10);
    let brokers = crate::metadata_brokers(&klink, 12);
    assert_eq!(
        brokers.len(),
        2,
        "the target's broker appeared: {brokers:?}"
    );
    let ports: Vec<i32> = brokers.iter().map(|b| b.2).collect();
    let start = i32::from(klink.broker_ports_start);
    assert_eq!(ports, vec![start, start + 1], "the next free port");
}
