//! Route flips under full-speed load: producers with the client's defaults
//! (5 in flight, linger, batching), idempotent and not, acks=all and acks=0,
//! one of them writing split requests, while an operator flips a topic's
//! writes back and forth and klink's upstream connections are cut.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Broker, python_bin, repo_root, run_bounded};
use crate::raw::RawConn;
use crate::routing::{KillOnDrop, create_through_klink, py, two_clusters, values_on};

const FLIPS: usize = 10;
const FLIP_EVERY: Duration = Duration::from_millis(500);
/// Flips at which klink's upstream connections to both clusters are cut
/// just before the new route is in place: requests in flight to the old
/// cluster lose their answers and the client's retries meet the new route.
/// klink sends such a retry where its first try went (the old cluster may
/// hold it), not where the route now points.
const CUT_AT_FLIP: [usize; 3] = [4, 6, 8];
/// Flips after which the connections are cut halfway to the next flip:
/// retries go to the cluster that lost the answers. The first flips have no
/// cut, so that what a plain producer wrote before any failure can be held
/// to exactly once, in order.
const CUT_BETWEEN_FLIPS: [usize; 3] = [3, 6, 9];

pub(crate) fn flips_py(args: &[&str]) -> Command {
    let mut command = Command::new(python_bin());
    command
        .arg(repo_root().join("proto-tests/clients/flips.py"))
        .args(args);
    command
}

/// Every record of `topic` on one cluster, read directly: per partition,
/// the values in log order.
pub(crate) fn dump(broker: &Broker, topic: &str) -> BTreeMap<i64, Vec<String>> {
    dump_records(&broker.addr.to_string(), topic)
        .into_iter()
        .map(|(p, records)| (p, records.into_iter().map(|(_, v)| v).collect()))
        .collect()
}

/// Every record of `topic` read from `bootstrap` (a broker, or klink):
/// per partition, offsets and values in log order.
pub(crate) fn dump_records(bootstrap: &str, topic: &str) -> BTreeMap<i64, Vec<(i64, String)>> {
    let (status, stdout, stderr) = run_bounded(
        flips_py(&["dump", "--bootstrap", bootstrap, "--topic", topic]),
        Duration::from_secs(90),
    );
    assert!(status.success(), "dump {topic}: {stderr}");
    let report: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("dump json");
    assert_eq!(
        report["errors"].as_array().map(Vec::len),
        Some(0),
        "dump {topic} from {bootstrap}: read every record: {}",
        report["errors"]
    );
    let mut partitions: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    for record in report["records"].as_array().into_iter().flatten() {
        let partition = record[0].as_i64().unwrap_or(-1);
        let offset = record[1].as_i64().unwrap_or(-1);
        let value = record[2].as_str().unwrap_or_default().to_string();
        partitions
            .entry(partition)
            .or_default()
            .push((offset, value));
    }
    for records in partitions.values_mut() {
        records.sort();
    }
    partitions
}

/// Cuts every connection klink holds to a broker (`ss -K`, root only) and
/// returns how many it cut (ss lists each socket it destroyed).
fn cut_connections_to(broker: &Broker) -> usize {
    let port = broker.addr.port().to_string();
    let output = Command::new("ss")
        .args(["-K", "-t", "-n", "dst", "127.0.0.1", "dport", "=", &port])
        .stdin(Stdio::null())
        .output()
        .expect("run ss -K (iproute2)");
    assert!(
        output.status.success(),
        "ss -K for port {port}: {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains(&format!(":{port}")))
        .count()
}

pub(crate) fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The producers (proto-tests/clients/flips.py `ledger`) and what they are
/// held to: acks=all producers lose nothing and see no failure; idempotent
/// ones write every acknowledged record exactly once, in order, through any
/// flip and cut; the plain one does so until the first cut and at least
/// once after (a non-idempotent client resends what a lost answer may have
/// written, as against Kafka itself); acks=0 writes nothing twice.
#[test]
fn repeated_flips_at_full_speed_lose_duplicate_and_reorder_nothing() {
    // Four producers at full speed fill both cores: no other test runs
    // brokers meanwhile. Declared first, dropped last.
    let _machine = crate::harness::whole_machine();
    let c = two_clusters("flips");
    create_through_klink(&c.klink, &["orders", "payments"], 3);
    for topic in ["orders", "payments"] {
        py(&[
            "create",
            "--bootstrap",
            &c.target.addr.to_string(),
            "--topic",
            topic,
            "--partitions",
            "3",
        ]);
    }
    // payments is written to the target while read from the source: one
    // producer's requests name both topics and are split by klink, which
    // must find the target's leaders itself.
    c.klink.ctl_ok(&["route", "payments", "--writes", "target"]);

    let mut ledger = KillOnDrop(
        flips_py(&[
            "ledger",
            "--bootstrap",
            &c.klink.bootstrap_str(),
            "--topic",
            "orders",
            "--other",
            "payments",
            // Longer than the flips take, so every flip happens under load.
            "--seconds",
            "7",
            "--max",
            "2000000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start producers"),
    );
    let mut lines = BufReader::new(ledger.0.stdout.take().expect("stdout")).lines();
    let started = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(started, "STARTED");
    std::thread::sleep(Duration::from_millis(800));

    // Flip every half second; at some flips, and once between flips, cut
    // klink's upstream connections to both clusters (in-flight answers are
    // lost; the client retries).
    let mut cuts: Vec<(usize, usize, usize)> = Vec::new(); // (flip, source, target)
    let mut first_cut: Option<f64> = None;
    let mut cut = |flip: usize, cuts: &mut Vec<(usize, usize, usize)>| {
        first_cut.get_or_insert_with(unix_now);
        let on_source = cut_connections_to(&c.source);
        let on_target = cut_connections_to(&c.target);
        cuts.push((flip, on_source, on_target));
    };
    let began = Instant::now();
    for flip in 0..FLIPS {
        let to = if flip % 2 == 0 { "target" } else { "source" };
        if CUT_AT_FLIP.contains(&flip) {
            cut(flip, &mut cuts);
        }
        c.klink.ctl_ok(&["route", "orders", "--writes", to]);
        std::thread::sleep(FLIP_EVERY / 2);
        if CUT_BETWEEN_FLIPS.contains(&flip) {
            cut(flip, &mut cuts);
        }
        std::thread::sleep(FLIP_EVERY / 2);
    }
    let flipping = began.elapsed();
    let first_cut = first_cut.expect("connections were cut");
    let last = lines.map_while(Result::ok).last().unwrap_or_default();
    let status = ledger.0.wait().expect("producers finish");
    assert!(status.success(), "producers: {status}");
    let report: Value = serde_json::from_str(&last).expect("ledger json");

    let mut on: HashMap<&str, HashMap<&str, BTreeMap<i64, Vec<String>>>> = HashMap::new();
    for (name, broker) in [("source", &c.source), ("target", &c.target)] {
        for topic in ["orders", "payments"] {
            on.entry(name)
                .or_default()
                .insert(topic, dump(broker, topic));
        }
    }
    // Where each value landed: (cluster, topic, partition), once per copy.
    let mut landed: HashMap<String, Vec<(&str, &str, i64)>> = HashMap::new();
    for (cluster, topics) in &on {
        for (topic, partitions) in topics {
            for (partition, values) in partitions {
                for value in values {
                    landed
                        .entry(value.clone())
                        .or_default()
                        .push((cluster, topic, *partition));
                }
            }
        }
    }
    let count_on = |cluster: &str, prefix: &str| -> usize {
        on[cluster]
            .values()
            .flat_map(|p| p.values())
            .flatten()
            .filter(|v| v.starts_with(prefix))
            .count()
    };
    eprintln!(
        "flips: {FLIPS} flips in {flipping:?}, {} cuts (flip, connections cut to source, to target): {cuts:?}",
        cuts.len()
    );
    eprintln!(
        "flips: records on source {}, on target {}; acks0 on source {}, on target {}",
        count_on("source", ""),
        count_on("target", ""),
        count_on("source", "acks0:"),
        count_on("target", "acks0:")
    );
    // Every cut happened under load, and the cuts met klink's connections
    // to both clusters. (One cluster may have none open at a given cut:
    // the cut at flip 6 and the one halfway after it come close together,
    // and no write may have needed the cluster in between.)
    for (flip, on_source, on_target) in &cuts {
        assert!(
            on_source + on_target > 0,
            "cut at flip {flip} found none of klink's connections"
        );
    }
    assert!(
        cuts.iter().filter(|c| c.1 > 0).count() >= 3
            && cuts.iter().filter(|c| c.2 > 0).count() >= 3,
        "cuts met klink's connections to each cluster at least three times: {cuts:?}"
    );

    let log = c.klink.process.log_text();
    eprintln!(
        "flips: klink answered {} requests (or parts) without an upstream answer",
        log.lines()
            .filter(|l| l.contains("no answer from upstream"))
            .count()
    );
    // klink's warnings, the first epochs it mapped past 0 (a client that
    // bumped its epoch met an error it could recover from; its first
    // mapping tells when), and the last lines.
    let log_tail = || -> String {
        let lines: Vec<&str> = log.lines().collect();
        let warnings = lines
            .iter()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .take(30);
        let bumped = lines
            .iter()
            .filter(|l| l.contains("producer id mapped") && !l.contains("client_epoch=0 "))
            .take(5);
        let last = &lines[lines.len().saturating_sub(20)..];
        warnings
            .chain(bumped)
            .chain(last)
            .copied()
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Plain records acknowledged before the first cut, by value.
    let mut plain_before_cut: std::collections::HashSet<String> = Default::default();
    for name in ["idem", "plain", "acks0", "split"] {
        let producer = &report[name];
        let acked = producer["acked"].as_array().cloned().unwrap_or_default();
        eprintln!(
            "flips: {name}: sent {}, acked {}, failed {}, unflushed {}, fatal {}, errors {}",
            producer["sent"],
            acked.len(),
            producer["failed"],
            producer["unflushed"],
            producer["fatal"],
            producer["errors"]
        );
        assert_eq!(
            producer["fatal"],
            false,
            "{name}: no fatal error: {}\nerrors (and how often): {}\nklink log tail:\n{}",
            producer["fatal_errors"],
            producer["errors"],
            log_tail()
        );
        assert_eq!(
            producer["unflushed"], 0,
            "{name}: flush delivered everything: {}",
            producer["errors"]
        );
        if name == "acks0" {
            // No answers: nothing to account for, but nothing written twice.
            let twice: Vec<_> = landed
                .iter()
                .filter(|(v, places)| v.starts_with("acks0:") && places.len() > 1)
                .take(5)
                .collect();
            assert!(twice.is_empty(), "acks0 records written twice: {twice:?}");
            continue;
        }
        assert_eq!(
            producer["failed"],
            0,
            "{name}: no acks=all delivery failed: {}\nthe client's own words: {}\nklink log tail:\n{}",
            producer["errors"],
            producer["eos_log"],
            log_tail()
        );
        assert_eq!(
            producer["sent"].as_u64(),
            Some(acked.len() as u64),
            "{name}: every record sent was acknowledged"
        );
        assert!(
            acked.len() > 1000,
            "{name} produced at speed: {}",
            acked.len()
        );
        for record in &acked {
            let value = format!("{name}:{}", record[2]);
            let places = landed.get(&value).map(Vec::as_slice).unwrap_or_default();
            let topic = record[0].as_str().unwrap_or_default();
            let partition = record[1].as_i64().unwrap_or(-1);
            assert!(
                places
                    .iter()
                    .all(|(_, t, p)| *t == topic && *p == partition),
                "{value} landed where its delivery report did not say ({topic}-{partition}): {places:?}"
            );
            let before_cut = record[3].as_f64().unwrap_or(f64::MAX) < first_cut;
            if name == "plain" && !before_cut {
                // A non-idempotent producer resends what a cut connection
                // may have written: at least once, as against Kafka itself.
                assert!(!places.is_empty(), "{value} acknowledged, then lost");
            } else {
                assert_eq!(
                    places.len(),
                    1,
                    "{value} (acknowledged {}) exactly once, found {places:?}",
                    if before_cut {
                        "before the first cut"
                    } else {
                        "after a cut"
                    }
                );
            }
            if name == "plain" && before_cut {
                plain_before_cut.insert(value);
            }
        }
    }
    eprintln!(
        "flips: plain records acknowledged before the first cut: {}",
        plain_before_cut.len()
    );
    assert!(
        plain_before_cut.len() > 1000,
        "flips before the first cut happened under load"
    );
    // Per partition on each cluster, a producer's records in the order it
    // produced them: every record of an idempotent producer; of the plain
    // producer, those acknowledged before any failure.
    for (cluster, topics) in &on {
        for (topic, partitions) in topics {
            for (partition, values) in partitions {
                for name in ["idem", "split", "plain"] {
                    let prefix = format!("{name}:");
                    let seqs: Vec<u64> = values
                        .iter()
                        .filter(|v| name != "plain" || plain_before_cut.contains(*v))
                        .filter_map(|v| v.strip_prefix(&prefix)?.parse().ok())
                        .collect();
                    if let Some(w) = seqs.windows(2).find(|w| w[0] >= w[1]) {
                        panic!(
                            "{name} out of order on {cluster} {topic}-{partition}: {} before {}",
                            w[0], w[1]
                        );
                    }
                }
            }
        }
    }
    // Both clusters took writes of the flipped topic: the flips happened
    // under load.
    for cluster in ["source", "target"] {
        let orders: usize = on[cluster]["orders"].values().map(Vec::len).sum();
        assert!(orders > 0, "orders written on the {cluster}");
    }
}

/// Ids the broker at `broker` issues to `count` fresh producers.
fn issue_producer_ids(broker: &Broker, count: usize) -> Vec<i64> {
    use kafka_protocol::messages::InitProducerIdRequest;
    let mut conn = RawConn::connect(broker.addr);
    (0..count)
        .map(|_| {
            let request = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000);
            let response = conn.call(&request, 4);
            assert_eq!(response.error_code, 0, "{response:?}");
            response.producer_id.0
        })
        .collect()
}

/// An idempotent producer gets its producer id from the default cluster;
/// when its partition's writes flip to the target mid-stream, its batches
/// go there under an id the target issued klink, sequences in a space of
/// their own (DESIGN trap 8). Made hard on purpose: the client's id differs
/// from the first id the target issues, the id the target issues klink is
/// the same number as the client's, and the first batch the target sees
/// has a client sequence far from 0.
#[test]
fn idempotent_producers_keep_going_across_a_flip_with_colliding_ids() {
    let c = two_clusters("route-idempotent");
    create_through_klink(&c.klink, &["orders", "payments"], 1);
    py(&[
        "create",
        "--bootstrap",
        &c.target.addr.to_string(),
        "--topic",
        "payments",
        "--partitions",
        "1",
    ]);
    let on_source = issue_producer_ids(&c.source, 3);
    let on_target = issue_producer_ids(&c.target, 3);
    let mut producer = Command::new(python_bin());
    producer
        .arg(repo_root().join("proto-tests/clients/routing.py"))
        .args(["produce", "--bootstrap", &c.klink.bootstrap_str()])
        .args([
            "--topic",
            "orders,payments",
            "--count",
            "400",
            "--rate",
            "200",
        ])
        .arg("--idempotent")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = producer.spawn().expect("start producer");
    std::thread::sleep(Duration::from_millis(1000));
    c.klink.ctl_ok(&["route", "payments", "--writes", "target"]);
    let output = child.wait_with_output().expect("producer finishes");
    assert!(
        output.status.success(),
        "producer: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("json");
    let log = c.klink.process.log_text();
    assert_eq!(report["delivered"], 400, "{report}\nklink log:\n{log}");
    assert_eq!(report["failed"], 0, "{report}");

    let expected = |parity: usize| -> Vec<String> {
        (0..400)
            .filter(|i| i % 2 == parity)
            .map(|i| i.to_string())
            .collect()
    };
    assert_eq!(
        values_on(&c.source, "orders"),
        expected(0),
        "orders on the source, in order, once"
    );
    let before = values_on(&c.source, "payments");
    let after = values_on(&c.target, "payments");
    assert!(
        before.len() > 10 && !after.is_empty(),
        "the flip happened mid-stream: {} / {}",
        before.len(),
        after.len()
    );
    let both: Vec<String> = before.into_iter().chain(after).collect();
    assert_eq!(both, expected(1), "payments once each, in order");

    // The ids were as hard as intended.
    let mapped = log
        .lines()
        .find(|l| l.contains("producer id mapped") && l.contains("cluster=target"))
        .unwrap_or_else(|| panic!("klink asked the target for an id:\n{log}"));
    let field = |name: &str| -> i64 {
        mapped
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {mapped}"))
    };
    let (client, ours) = (field("client"), field("ours"));
    eprintln!(
        "ids: source pre-issued {on_source:?}, target pre-issued {on_target:?}, client {client}, klink's on the target {ours}"
    );
    assert_ne!(
        client, on_target[0],
        "the client's id is not the target's first"
    );
    assert_eq!(client, ours, "the target issued klink the client's number");
}
