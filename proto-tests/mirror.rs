//! The mirror's copy path against real brokers: records written directly
//! to a source cluster are copied to a target cluster byte for byte
//! (keys, values, headers, timestamps, codecs), exactly once, including
//! after a crash that lost the end of the offset map; then the same run
//! by `klink proxy` for linked topics (kill -9, a refused foreign topic, a
//! `latest` link, a producer that bypasses klink).

use std::path::Path;
use std::time::{Duration, Instant};

use klink::client::{Client, ClientConfig};
use klink::mirror::{CopyConfig, PartitionCopier};
use serde_json::Value;

use crate::harness::{Broker, Klink, KlinkOptions, python_bin, repo_root, run_bounded};
use crate::routing::py;

const PARTITIONS: i32 = 3;

fn mirror_py(args: &[&str]) -> Value {
    let mut command = std::process::Command::new(python_bin());
    command
        .arg(repo_root().join("proto-tests/clients/mirror.py"))
        .args(args);
    let (status, stdout, stderr) = run_bounded(command, Duration::from_secs(120));
    assert!(status.success(), "mirror.py {args:?}: {stderr}");
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("json")
}

pub(crate) fn produce(broker: &Broker, topic: &str, start: u64, count: u64) {
    produce_to(&broker.addr.to_string(), topic, start, count, None);
}

/// `count` records to `bootstrap` (a broker or klink), to one partition
/// or by key.
pub(crate) fn produce_to(
    bootstrap: &str,
    topic: &str,
    start: u64,
    count: u64,
    partition: Option<i32>,
) {
    let (start, count_arg) = (start.to_string(), count.to_string());
    let mut args = vec![
        "produce",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--start",
        &start,
        "--count",
        &count_arg,
    ];
    let partition = partition.map(|p| p.to_string());
    if let Some(p) = &partition {
        args.extend(["--partition", p]);
    }
    let report = mirror_py(&args);
    assert_eq!(report["delivered"], count, "{report}");
}

fn dump(broker: &Broker, topic: &str) -> Value {
    mirror_py(&[
        "dump",
        "--bootstrap",
        &broker.addr.to_string(),
        "--topic",
        topic,
    ])["partitions"]
        .clone()
}

pub(crate) fn create(broker: &Broker, topic: &str) {
    py(&[
        "create",
        "--bootstrap",
        &broker.addr.to_string(),
        "--topic",
        topic,
        "--partitions",
        &PARTITIONS.to_string(),
    ]);
}

async fn client(name: &str, broker: &Broker) -> Client {
    Client::connect(ClientConfig {
        name: name.to_string(),
        bootstrap: vec![broker.addr.to_string()],
        ..Default::default()
    })
    .await
    .expect("connect")
}

async fn copiers(
    source: &Broker,
    target: &Broker,
    topic: &str,
    maps: &Path,
) -> Vec<PartitionCopier> {
    let (from, to) = (
        client("source", source).await,
        client("target", target).await,
    );
    let mut copiers = Vec::new();
    for p in 0..PARTITIONS {
        let copier = PartitionCopier::open(
            from.clone(),
            to.clone(),
            topic,
            p,
            &maps.join(format!("{topic}-{p}.map")),
            klink::mirror::Origin::forward(0),
            CopyConfig::default(),
        )
        .await
        .expect("open copier");
        copiers.push(copier);
    }
    copiers
}

/// Steps every copier until none has lag left (bounded in time).
async fn catch_up(copiers: &mut [PartitionCopier]) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut copied = 0;
    loop {
        let mut lag = 0;
        for copier in copiers.iter_mut() {
            let progress = copier.step().await.expect("copy step");
            copied += progress.records;
            lag += progress.lag();
        }
        if lag == 0 {
            return copied;
        }
        assert!(Instant::now() < deadline, "lag {lag} left after 60 s");
    }
}

#[test]
fn earliest_copies_every_record_byte_for_byte_while_the_source_grows() {
    let source = Broker::start("mirror-source");
    let target = Broker::start("mirror-target");
    create(&source, "orders");
    create(&target, "orders");
    produce(&source, "orders", 0, 60_000);
    let maps = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let copied = runtime.block_on(async {
        let mut copiers = copiers(&source, &target, "orders", maps.path()).await;
        let first = catch_up(&mut copiers).await;
        // More records arrive while mirroring.
        produce(&source, "orders", 60_000, 20_000);
        let second = catch_up(&mut copiers).await;
        for copier in &copiers {
            let runs = copier.map().runs();
            assert!(
                copier.map().is_identity(),
                "from offset 0, no gaps: {runs:?}"
            );
        }
        first + second
    });
    eprintln!("mirror: copied {copied} records in {:?}", started.elapsed());
    assert_eq!(copied, 80_000);
    let (on_source, on_target) = (dump(&source, "orders"), dump(&target, "orders"));
    let count: usize = on_source
        .as_object()
        .map(|o| o.values().map(|v| v.as_array().map_or(0, Vec::len)).sum())
        .unwrap_or(0);
    assert_eq!(count, 80_000);
    assert_eq!(
        on_source, on_target,
        "same keys, values, headers and timestamps, in the same order per partition"
    );
}

#[test]
fn a_crash_that_lost_the_end_of_the_offset_map_copies_nothing_twice() {
    let source = Broker::start("mirror-crash-source");
    let target = Broker::start("mirror-crash-target");
    create(&source, "orders");
    create(&target, "orders");
    produce(&source, "orders", 0, 20_000);
    let maps = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut copiers = copiers(&source, &target, "orders", maps.path()).await;
        catch_up(&mut copiers).await;
    });
    // The batches reached the target, but the map's last entries did not
    // reach the disk: keep only its first entry per partition.
    for p in 0..PARTITIONS {
        let path = maps.path().join(format!("orders-{p}.map"));
        let bytes = std::fs::read(&path).expect("map");
        assert!(bytes.len() > 28, "several entries were written");
        std::fs::write(&path, &bytes[..28]).expect("truncate");
    }
    produce(&source, "orders", 20_000, 5_000);
    runtime.block_on(async {
        let mut copiers = copiers(&source, &target, "orders", maps.path()).await;
        let copied = catch_up(&mut copiers).await;
        assert_eq!(copied, 5_000, "only the new records are copied");
    });
    assert_eq!(dump(&source, "orders"), dump(&target, "orders"));
}

/// A topic's line of `klink ctl status --json`.
pub(crate) fn topic_status(klink: &Klink, topic: &str) -> Value {
    let status: Value =
        serde_json::from_str(&klink.ctl_ok(&["status", "--json"])).expect("status json");
    status["topics"]
        .as_array()
        .and_then(|topics| topics.iter().find(|t| t["topic"] == topic).cloned())
        .unwrap_or(Value::Null)
}

/// Waits until `topic` is mirroring with no lag left.
pub(crate) fn wait_caught_up(klink: &Klink, topic: &str) {
    wait_copied(klink, topic, Some("mirroring"));
}

/// Waits until the copy of `topic` (in whichever direction its state asks
/// for) has nothing left to copy, in `state` when one is named.
pub(crate) fn wait_copied(klink: &Klink, topic: &str, state: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let status = topic_status(klink, topic);
        if state.is_none_or(|state| status["state"] == state) && status["lag"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} did not catch up: {status}\nklink log:\n{}",
            klink.process.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn mirror_link(topics: &str, start: &str) -> String {
    format!(
        "[[links]]\nid = \"move\"\nsource = \"source\"\ntarget = \"target\"\n\
         start = \"{start}\"\ntopics = [{topics}]\n"
    )
}

#[test]
fn a_linked_topic_mirrors_by_itself_survives_kill_9_and_a_foreign_topic_is_refused() {
    let source = Broker::start("link-mirror-source");
    let target = Broker::start("link-mirror-target");
    create(&source, "orders");
    create(&source, "taken");
    create(&target, "taken");
    produce(&source, "orders", 0, 60_000);
    let mut klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), target.addr)],
            extra_config: mirror_link("\"orders\", \"taken\"", "earliest"),
            ..Default::default()
        },
    );
    wait_caught_up(&klink, "orders");
    let taken = topic_status(&klink, "taken");
    assert_eq!(taken["state"], "source", "{taken}");
    let note = taken["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("refused") && note.contains("already exists"),
        "{taken}"
    );
    assert!(klink.ctl_ok(&["status"]).contains("taken: refused"));

    // 50,000 more written while mirroring, and klink killed while it copies
    // them (the producer writes to the source directly and keeps going).
    let mut producer = std::process::Command::new(python_bin())
        .arg(repo_root().join("proto-tests/clients/mirror.py"))
        .args(["produce", "--bootstrap", &source.addr.to_string()])
        .args(["--topic", "orders", "--start", "60000", "--count", "50000"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start producer");
    let deadline = Instant::now() + Duration::from_secs(30);
    while topic_status(&klink, "orders")["lag"].as_i64().unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "the mirror never had records to copy"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    klink.crash_and_restart(1);
    assert!(producer.wait().expect("producer").success());
    wait_caught_up(&klink, "orders");

    let mirror: Value =
        serde_json::from_str(&klink.ctl_ok(&["mirror", "orders", "--json"])).expect("json");
    let partitions = mirror["mirror"].as_array().cloned().unwrap_or_default();
    assert_eq!(partitions.len(), 3, "{mirror}");
    for p in &partitions {
        assert_eq!(p["lag"], 0, "{p}");
        assert_eq!(p["last_error"], Value::Null, "{p}");
        assert_eq!(p["mirrored_to"], p["source_end"], "{p}");
    }
    assert!(klink.ctl_ok(&["mirror", "orders"]).contains("MIRRORED TO"));
    let offsets = klink.ctl_ok(&["offsets", "orders", "0"]);
    assert!(offsets.contains("identity: the same offsets"), "{offsets}");
    assert_eq!(
        dump(&source, "orders"),
        dump(&target, "orders"),
        "every record once, in order, after a kill -9"
    );
}

#[test]
fn a_latest_link_copies_only_what_comes_after_it_started() {
    let source = Broker::start("latest-source");
    let target = Broker::start("latest-target");
    // Two topics: their mirrors share the target's Produce streams.
    for topic in ["orders", "payments"] {
        create(&source, topic);
        produce(&source, topic, 0, 3_000);
    }
    let klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), target.addr)],
            extra_config: mirror_link("\"orders\", \"payments\"", "latest"),
            ..Default::default()
        },
    );
    for topic in ["orders", "payments"] {
        wait_caught_up(&klink, topic);
        produce(&source, topic, 3_000, 1_000);
    }
    for topic in ["orders", "payments"] {
        wait_caught_up(&klink, topic);
        let on_target = dump(&target, topic);
        let values: Vec<u64> = on_target
            .as_object()
            .into_iter()
            .flat_map(|o| o.values())
            .flat_map(|records| records.as_array().cloned().unwrap_or_default())
            .filter_map(|r| r[1].as_str()?.strip_prefix('v')?.parse().ok())
            .collect();
        assert_eq!(
            values.len(),
            1_000,
            "{topic}: only the records after the start"
        );
        assert!(values.iter().all(|v| *v >= 3_000));
        let offsets = klink.ctl_ok(&["offsets", topic, "0"]);
        assert!(offsets.contains("not the identity"), "{offsets}");
    }
}

/// Records a mirroring topic's source partition got from a producer that
/// writes to the source directly: the mirror's bypass warning.
fn bypass_warnings(klink: &Klink) -> Vec<String> {
    topic_status(klink, "orders")["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| Some(w.as_str()?.to_string()))
        .collect()
}

#[test]
fn a_producer_writing_to_the_source_directly_is_named_as_a_bypass() {
    let source = Broker::start("bypass-source");
    let target = Broker::start("bypass-target");
    create(&source, "orders");
    let klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), target.addr)],
            extra_config: mirror_link("\"orders\"", "latest"),
            ..Default::default()
        },
    );
    wait_caught_up(&klink, "orders");
    // Through klink (four producers, every codec, batching): every record
    // is one klink forwarded, so no warning.
    produce_to(&klink.bootstrap_str(), "orders", 0, 20_000, None);
    wait_caught_up(&klink, "orders");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        bypass_warnings(&klink),
        Vec::<String>::new(),
        "klink log:\n{}",
        klink.process.log_text()
    );

    // 300 records straight to the source's partition 1.
    produce_to(&source.addr.to_string(), "orders", 20_000, 300, Some(1));
    let deadline = Instant::now() + Duration::from_secs(30);
    // The copier counts them batch by batch: wait for the last batch.
    let counted = |warnings: &[String]| -> Option<u64> {
        let text = warnings.first()?.strip_prefix("bypass: partition 1: ")?;
        text.split(' ').next()?.parse().ok()
    };
    let warnings = loop {
        let warnings = bypass_warnings(&klink);
        if counted(&warnings).is_some_and(|n| n >= 300) {
            break warnings;
        }
        assert!(
            Instant::now() < deadline,
            "no bypass warning of 300 records: {warnings:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("bypass: partition 1: 300 records"),
        "{warnings:?}"
    );
    // More through klink: the warning stays as it was.
    produce_to(&klink.bootstrap_str(), "orders", 20_300, 5_000, None);
    wait_caught_up(&klink, "orders");
    std::thread::sleep(Duration::from_millis(500));
    let warnings = bypass_warnings(&klink);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("bypass: partition 1: 300 records"));
    assert!(
        klink
            .ctl_ok(&["status"])
            .contains("orders: warning: bypass: partition 1")
    );
    let mirror: Value =
        serde_json::from_str(&klink.ctl_ok(&["mirror", "orders", "--json"])).expect("json");
    let bypassed: Vec<(i64, i64)> = mirror["mirror"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap_or(-1),
                p["bypassed"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(bypassed, vec![(0, 0), (1, 300), (2, 0)]);
    let logged = klink
        .process
        .log_text()
        .lines()
        .filter(|l| l.contains("bypass:"))
        .count();
    assert_eq!(logged, 1, "one log line for the episode");
}

/// Each partition's last error, from `klink ctl mirror orders --json`.
fn mirror_errors(klink: &Klink) -> Vec<Option<String>> {
    let mirror: Value =
        serde_json::from_str(&klink.ctl_ok(&["mirror", "orders", "--json"])).expect("json");
    mirror["mirror"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["last_error"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_mirror_resumes_by_itself_after_the_source_broker_restarts() {
    // sqlite storage: the source keeps its records across the restart.
    let mut source = Broker::start_persistent("restart-source");
    let target = Broker::start("restart-target");
    create(&source, "orders");
    // Few records: tansu's sqlite engine is slow to fetch (README quirks).
    produce(&source, "orders", 0, 1_000);
    let mut klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), target.addr)],
            extra_config: mirror_link("\"orders\"", "earliest"),
            ..Default::default()
        },
    );
    wait_caught_up(&klink, "orders");

    source.kill();
    // The mirror notices (each partition's fetch fails) and says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let errors = mirror_errors(&klink);
        if errors.iter().any(Option::is_some) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no mirror error while the source is down: {errors:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    source.restart();
    produce(&source, "orders", 1_000, 500);
    wait_caught_up(&klink, "orders");
    let deadline = Instant::now() + Duration::from_secs(30);
    while mirror_errors(&klink).iter().any(Option::is_some) {
        assert!(Instant::now() < deadline, "errors stay after recovery");
        std::thread::sleep(Duration::from_millis(100));
    }
    let on_source = dump(&source, "orders");
    let count: usize = on_source
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .map(|records| records.as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(count, 1_500, "the source kept its records");
    assert_eq!(
        on_source,
        dump(&target, "orders"),
        "every record once, in order, across the source's restart"
    );
    assert!(klink.process.is_running(), "klink kept running");
}
