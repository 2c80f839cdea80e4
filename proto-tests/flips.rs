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
use crate::routing::{KillOnDrop, create_through_klink, py, two_clusters};

const FLIPS: usize = 10;
const FLIP_EVERY: Duration = Duration::from_millis(500);

fn flips_py(args: &[&str]) -> Command {
    let mut command = Command::new(python_bin());
    command
        .arg(repo_root().join("proto-tests/clients/flips.py"))
        .args(args);
    command
}

/// Every record of `topic` on one cluster, read directly: per partition,
/// the values in log order.
fn dump(broker: &Broker, topic: &str) -> BTreeMap<i64, Vec<String>> {
    let (status, stdout, stderr) = run_bounded(
        flips_py(&[
            "dump",
            "--bootstrap",
            &broker.addr.to_string(),
            "--topic",
            topic,
        ]),
        Duration::from_secs(90),
    );
    assert!(status.success(), "dump {topic}: {stderr}");
    let report: Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("dump json");
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
    partitions
        .into_iter()
        .map(|(p, mut records)| {
            records.sort();
            (p, records.into_iter().map(|(_, v)| v).collect())
        })
        .collect()
}

/// Cuts every connection klink holds to a broker (`ss -K`, root only).
fn cut_connections_to(broker: &Broker) {
    let port = broker.addr.port().to_string();
    let status = Command::new("ss")
        .args(["-K", "dst", "127.0.0.1", "dport", "=", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run ss -K (iproute2)");
    assert!(status.success(), "ss -K for port {port}: {status}");
}

#[test]
fn repeated_flips_at_full_speed_lose_duplicate_and_reorder_nothing() {
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

    // Flip every half second; between some flips, cut klink's upstream
    // connections to both clusters (in-flight answers are lost; retries
    // go where the writes still go).
    let mut cuts = 0;
    let began = Instant::now();
    for flip in 0..FLIPS {
        let to = if flip % 2 == 0 { "target" } else { "source" };
        c.klink.ctl_ok(&["route", "orders", "--writes", to]);
        std::thread::sleep(FLIP_EVERY / 2);
        if flip % 3 == 1 {
            cut_connections_to(&c.source);
            cut_connections_to(&c.target);
            cuts += 1;
        }
        std::thread::sleep(FLIP_EVERY / 2);
    }
    let flipping = began.elapsed();
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
    let count_on = |cluster: &str| -> usize {
        on[cluster]
            .values()
            .flat_map(|p| p.values())
            .map(Vec::len)
            .sum()
    };
    eprintln!(
        "flips: {FLIPS} flips and {cuts} cuts in {flipping:?}; records on source {}, on target {}",
        count_on("source"),
        count_on("target")
    );

    for name in ["idem", "plain", "acks0", "split"] {
        let producer = &report[name];
        let acked = producer["acked"].as_array().cloned().unwrap_or_default();
        eprintln!(
            "flips: {name}: sent {}, acked {}, errors {}",
            producer["sent"],
            acked.len(),
            producer["errors"]
        );
        assert_eq!(producer["fatal"], false, "{name}: no fatal error");
        if name == "acks0" {
            // No answers: nothing to account for, but nothing written twice.
            let twice = landed
                .iter()
                .filter(|(v, places)| v.starts_with("acks0:") && places.len() > 1)
                .count();
            assert_eq!(twice, 0, "acks0 records written twice");
            continue;
        }
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
                "{value} landed where its delivery report did not say: {places:?}"
            );
            if name == "plain" {
                // A non-idempotent producer resends what a cut connection
                // may have written: at least once, as against Kafka itself.
                assert!(!places.is_empty(), "{value} acknowledged, then lost");
            } else {
                assert_eq!(
                    places.len(),
                    1,
                    "{value} acknowledged: exactly once, found {places:?}"
                );
            }
        }
    }
    // Idempotent producers: per partition on each cluster, in the order
    // they were produced.
    for (cluster, topics) in &on {
        for (topic, partitions) in topics {
            for (partition, values) in partitions {
                for name in ["idem", "split"] {
                    let prefix = format!("{name}:");
                    let seqs: Vec<u64> = values
                        .iter()
                        .filter_map(|v| v.strip_prefix(&prefix)?.parse().ok())
                        .collect();
                    assert!(
                        seqs.windows(2).all(|w| w[0] < w[1]),
                        "{name} out of order on {cluster} {topic}-{partition}"
                    );
                }
            }
        }
    }
    // Both clusters took writes: the flips happened under load.
    assert!(count_on("source") > 0 && count_on("target") > 0);
}
