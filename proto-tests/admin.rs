//! The admin listener against real brokers and a real klink: `/metrics`
//! counts exactly what went through (requests sent by hand), parses with
//! the Prometheus project's own parser, and follows a promotion; `/readyz`
//! follows a cluster going down and coming back; the status page renders
//! in headless Chromium with each topic's state and routes.

use std::process::Command;
use std::time::{Duration, Instant};

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use serde_json::Value;

use crate::harness::{
    Broker, Klink, KlinkOptions, chromium_bin, free_port, python_bin, repo_root, run_bounded,
};
use crate::mirror::{create, wait_caught_up};
use crate::raw::RawConn;
use crate::routing::py;

fn scrape_py(mode: &str, url: &str) -> Value {
    let mut command = Command::new(python_bin());
    command
        .arg(repo_root().join("proto-tests/clients/scrape.py"))
        .args([mode, url]);
    let (status, stdout, stderr) = run_bounded(command, Duration::from_secs(30));
    assert!(status.success(), "scrape.py {mode} {url}: {stderr}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("scrape.py {mode} {url}: {e}: {stdout}"))
}

/// Every sample of `/metrics`, parsed.
struct Scrape(Value);

impl Scrape {
    fn of(admin: &str) -> Scrape {
        let scraped = scrape_py("metrics", &format!("{admin}/metrics"));
        assert_eq!(scraped["status"], 200, "{scraped}");
        assert!(
            scraped["content_type"]
                .as_str()
                .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
            "{}",
            scraped["content_type"]
        );
        Scrape(scraped)
    }

    /// The samples named `name` whose labels include `labels`.
    fn samples<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Value> {
        self.0["samples"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(move |s| s[0] == name)
            .filter(move |s| labels.iter().all(|(k, v)| s[1][*k] == *v))
    }

    /// Their sum.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(name, labels)
            .filter_map(|s| s[2].as_f64())
            .sum()
    }

    fn count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.samples(name, labels).count()
    }
}

fn produce_by_hand(klink: &Klink, count: usize) -> usize {
    let mut conn = RawConn::connect(klink.bootstrap);
    let mut bytes = 0;
    for i in 0..count {
        let request = ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(crate::one_record_batch(&format!("hand-{i}")))),
                    ]),
            ]);
        let (_, frame) = conn.encode(&request, 7);
        bytes += frame.len();
        conn.send_bytes(&frame);
        conn.read_frame().expect("produce answered");
    }
    bytes
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_probes_and_status_page_follow_traffic_a_promotion_and_an_outage() {
    let source = Broker::start("admin-source");
    let mut target = Broker::start("admin-target");
    create(&source, "orders");
    let admin_port = free_port();
    let klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), target.addr)],
            extra_proxy: format!("admin_listen = \"127.0.0.1:{admin_port}\"\n"),
            extra_config: "[[links]]\nid = \"move\"\nsource = \"source\"\ntarget = \"target\"\n\
                           topics = [\"orders\"]\ngroups = [\"billing\"]\n"
                .into(),
            ..Default::default()
        },
    );
    wait_caught_up(&klink, "orders");
    let admin = format!("http://127.0.0.1:{admin_port}");

    // Counted exactly: nothing but this connection talks Kafka to klink.
    const SENT: usize = 25;
    let before = Scrape::of(&admin);
    let bytes = produce_by_hand(&klink, SENT);
    let after = Scrape::of(&admin);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let produce = [("api", "Produce")];
    assert_eq!(delta("klink_requests_total", &produce), SENT as f64);
    assert_eq!(
        delta("klink_request_duration_seconds_count", &produce),
        SENT as f64
    );
    assert_eq!(
        delta(
            "klink_upstream_requests_total",
            &[("cluster", "source"), ("api", "Produce")]
        ),
        SENT as f64,
        "the mirror writes the target only"
    );
    assert_eq!(
        delta("klink_client_bytes_total", &[("direction", "in")]),
        bytes as f64
    );
    assert_eq!(delta("klink_client_connections_opened_total", &[]), 1.0);
    assert!(delta("klink_client_bytes_total", &[("direction", "out")]) > 0.0);
    assert!(
        after.value(
            "klink_request_duration_seconds_bucket",
            &[("api", "Produce"), ("le", "+Inf")]
        ) >= SENT as f64
    );
    assert_eq!(
        after.value("klink_cluster_up", &[("cluster", "source")]),
        1.0
    );
    assert_eq!(
        after.value("klink_cluster_up", &[("cluster", "target")]),
        1.0
    );
    assert_eq!(
        after.value(
            "klink_topic_route",
            &[
                ("topic", "orders"),
                ("state", "mirroring"),
                ("writes", "source"),
                ("reads", "source")
            ]
        ),
        1.0
    );
    assert_eq!(
        after.value(
            "klink_group_route",
            &[("group", "billing"), ("cluster", "source")]
        ),
        1.0
    );
    let partitions = after.count("klink_mirror_lag_records", &[("topic", "orders")]);
    assert!(partitions > 0, "mirror lag per partition is exported");
    wait_until("the mirror catches up", Duration::from_secs(30), || {
        Scrape::of(&admin).value("klink_mirror_lag_records", &[("topic", "orders")]) == 0.0
    });
    wait_until("the connection closes", Duration::from_secs(10), || {
        Scrape::of(&admin).value("klink_client_connections", &[]) == 0.0
    });

    // A promotion: its fence, its drains, the route and the audit line.
    klink.ctl_ok(&["promote", "orders"]);
    let promoted = Scrape::of(&admin);
    assert_eq!(
        promoted.value(
            "klink_cutovers_total",
            &[("command", "promote"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        promoted.value("klink_fence_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        promoted.value("klink_drain_duration_seconds_count", &[]),
        partitions as f64
    );
    assert_eq!(
        promoted.value(
            "klink_topic_route",
            &[
                ("topic", "orders"),
                ("state", "promoted"),
                ("reads", "target")
            ]
        ),
        1.0
    );
    let (code, _, _) = klink.ctl(&["rollback", "nosuchtopic"]);
    assert!(!code.success());
    let log = klink.process.log_text();
    let uid = my_uid();
    assert!(
        log.lines().any(|l| l.contains("control command")
            && l.contains(r#""cmd":"promote""#)
            && l.contains(&format!("uid=Some({uid})"))
            && l.contains("ok=true")),
        "an audit line for the promotion:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("control command")
            && l.contains("nosuchtopic")
            && l.contains("ok=false")),
        "an audit line for the refused rollback:\n{log}"
    );

    // Real clients move the counters too, toward the target now.
    let to_target = |s: &Scrape| {
        s.value(
            "klink_upstream_requests_total",
            &[("cluster", "target"), ("api", "Produce")],
        )
    };
    let produced = py(&[
        "produce",
        "--bootstrap",
        &klink.bootstrap_str(),
        "--topic",
        "orders",
        "--count",
        "200",
    ]);
    let after_clients = Scrape::of(&admin);
    assert!(
        to_target(&after_clients) > to_target(&promoted),
        "produced {produced}: Produce went to the target"
    );

    // The status page, as a browser renders it.
    let page = scrape_py("get", &format!("{admin}/"));
    assert_eq!(page["status"], 200);
    let dom = chromium(&["--dump-dom".to_string(), format!("{admin}/")]);
    for needle in [
        r#"data-topic="orders""#,
        r#"<td class="state">promoted</td>"#,
        r#"<td class="reads">target</td>"#,
        r#"<td class="writes">target</td>"#,
        r#"data-group="billing""#,
        "promote",
        "nosuchtopic",
    ] {
        assert!(
            dom.contains(needle),
            "the rendered page lacks {needle}:\n{dom}"
        );
    }
    let artifacts = repo_root().join("target/proto-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact dir");
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    chromium(&[
        format!("--screenshot={}", screenshot.display()),
        "--window-size=1280,900".to_string(),
        format!("{admin}/"),
    ]);
    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );

    // Probes: live and ready; not ready while the target is down.
    assert_eq!(scrape_py("get", &format!("{admin}/livez"))["status"], 200);
    assert_eq!(scrape_py("get", &format!("{admin}/readyz"))["status"], 200);
    target.kill();
    wait_until("/readyz says not ready", Duration::from_secs(15), || {
        let ready = scrape_py("get", &format!("{admin}/readyz"));
        ready["status"] == 503 && ready["body"].as_str().is_some_and(|b| b.contains("target"))
    });
    assert_eq!(
        Scrape::of(&admin).value("klink_cluster_up", &[("cluster", "target")]),
        0.0
    );
    assert_eq!(scrape_py("get", &format!("{admin}/livez"))["status"], 200);
    target.restart();
    wait_until("/readyz is ready again", Duration::from_secs(30), || {
        scrape_py("get", &format!("{admin}/readyz"))["status"] == 200
    });
}

/// This process's uid (the control socket's peer), from /proc.
fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .expect("uid")
}

/// Runs headless Chromium with `args`; its stdout.
fn chromium(args: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut command = Command::new(chromium_bin());
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args);
    let (status, stdout, stderr) = run_bounded(command, Duration::from_secs(60));
    assert!(status.success(), "chromium {args:?}: {stderr}");
    stdout
}

#[test]
fn json_logs_are_one_object_per_line() {
    let source = Broker::start("jsonlog-source");
    let mut klink = Klink::start(&source);
    // The same config again, logging JSON.
    klink.process.signal("TERM");
    let _ = klink.process.wait_exit(Duration::from_secs(15));
    let log = klink.state_dir.with_file_name("json.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut child = crate::harness::klink_command(&klink.config)
        .args(["--log-format", "json"])
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start klink");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text().contains("klink ready") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = text();
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "klink ready" && l["level"] == "INFO"),
        "{text}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["target"].is_string())
    );
}
