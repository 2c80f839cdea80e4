//! The cutover under the other client libraries: kafkajs and kafka-python
//! producers and a kafkajs group member, through promote, rollback,
//! promote and commit.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cutover::{migration, started, started_command};
use crate::flips::dump;
use crate::harness::{node_path, repo_root};
use crate::routing::py;

pub(crate) fn ledger_js(args: &[&str]) -> Command {
    let mut command = Command::new("node");
    command
        .arg(repo_root().join("proto-tests/clients/ledger.js"))
        .args(args)
        .env("NODE_PATH", node_path());
    command
}

/// A kafkajs member of `group` reading `orders` for `seconds` (ledger.js
/// consume).
pub(crate) fn kafkajs_member(bootstrap: &str, group: &str, seconds: &str) -> Command {
    ledger_js(&[
        "consume",
        "--bootstrap",
        bootstrap,
        "--topic",
        "orders",
        "--group",
        group,
        "--seconds",
        seconds,
    ])
}

/// A kafkajs producer writing "kafkajs:N" to `orders` at `pace` records a
/// second for `seconds`, one send at a time (ledger.js produce).
pub(crate) fn kafkajs_producer(bootstrap: &str, seconds: &str, pace: &str) -> Command {
    ledger_js(&[
        "produce",
        "--bootstrap",
        bootstrap,
        "--topic",
        "orders",
        "--seconds",
        seconds,
        "--pace",
        pace,
    ])
}

/// The last line a started client printed, as JSON, once it exited 0.
pub(crate) fn report(
    mut child: crate::routing::KillOnDrop,
    lines: impl Iterator<Item = std::io::Result<String>>,
    what: &str,
) -> Value {
    let last = lines.map_while(Result::ok).last().unwrap_or_default();
    assert!(child.0.wait().expect(what).success(), "{what} failed");
    serde_json::from_str(&last).unwrap_or_else(|e| panic!("{what}: {e}: {last}"))
}

#[test]
fn kafkajs_and_kafka_python_go_through_promote_rollback_promote_and_commit() {
    let (_source, target, klink) = migration("cutover-clients", "groups = [\"billing\"]\n");
    let bootstrap = klink.bootstrap_str();
    // A group outside the link reads orders too: a promotion refuses to
    // leave it behind until it is named with --group.
    py(&[
        "produce",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--count",
        "30",
    ]);
    py(&[
        "group",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--group",
        "audit",
        "--seconds",
        "1",
    ]);
    let (code, _, stderr) = klink.ctl(&["promote", "orders"]);
    assert!(
        !code.success() && stderr.contains("group `audit` reads `orders` but is not in the link"),
        "{stderr}"
    );
    let (code, _, stderr) =
        klink.ctl(&["promote", "orders", "--group", "billing2", "--link", "move"]);
    assert!(!code.success(), "a topic and --link together: {stderr}");
    let group_route = |group: &str| -> Value {
        let status: Value =
            serde_json::from_str(&klink.ctl_ok(&["status", "--json"])).expect("status json");
        status["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["group"] == group).cloned())
            .unwrap_or(Value::Null)
    };
    let (consumer, consumer_lines) = started_command(kafkajs_member(&bootstrap, "billing", "14"));
    std::thread::sleep(Duration::from_millis(1500));
    let (js, js_lines) = started_command(kafkajs_producer(&bootstrap, "8", "200"));
    let (kp, kp_lines) = started(&[
        "kp-ledger",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--seconds",
        "8",
        "--pace",
        "200",
    ]);
    let flip = |command: &[&str]| {
        std::thread::sleep(Duration::from_millis(2000));
        let (code, stdout, stderr) = klink.ctl(command);
        assert!(
            code.success(),
            "{command:?}: {stdout}{stderr}\nklink log:\n{}",
            klink.process.log_text()
        );
        eprintln!("cutover_clients: {}", stdout.trim());
    };
    flip(&["promote", "orders", "--group", "audit"]);
    let audit = group_route("audit");
    assert_eq!(audit["route"], "target", "{audit}");
    assert_eq!(audit["link"], "move", "{audit}");
    // Joined to the link: the way back takes it without being named.
    flip(&["rollback", "orders"]);
    assert_eq!(group_route("audit")["route"], "source");
    flip(&["promote", "orders"]);
    assert_eq!(group_route("audit")["route"], "target");
    let js = report(js, js_lines, "kafkajs producer");
    let kp = report(kp, kp_lines, "kafka-python producer");
    let consumed = report(consumer, consumer_lines, "kafkajs consumer");
    klink.ctl_ok(&["commit", "orders"]);

    let on_target = dump(&target, "orders");
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for value in on_target.values().flatten() {
        *copies.entry(value.as_str()).or_default() += 1;
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for record in consumed["records"].as_array().into_iter().flatten() {
        *seen
            .entry(record[2].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let mut unseen = Vec::new();
    for (name, producer) in [("kafkajs", &js), ("kp", &kp)] {
        assert_eq!(producer["failed"], 0, "{name}: {}", producer["errors"]);
        assert_eq!(producer["unflushed"], 0, "{name}: {}", producer["errors"]);
        let acked = producer["acked"].as_array().cloned().unwrap_or_default();
        eprintln!("cutover_clients: {name} acknowledged {}", acked.len());
        assert!(acked.len() > 300, "{name} acknowledged {}", acked.len());
        for record in &acked {
            let value = format!("{name}:{}", record[2]);
            let found = copies.get(value.as_str()).copied().unwrap_or(0);
            assert_eq!(
                found,
                1,
                "{value} is on the target {found} times\nklink log:\n{}",
                klink.process.log_text()
            );
            if !seen.contains_key(&value) {
                unseen.push(value);
            }
        }
    }
    // Each producer's records in the order it sent them, per partition.
    for (partition, values) in &on_target {
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for value in values {
            let Some((name, n)) = value.split_once(':') else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            if let Some(before) = last.insert(name, n) {
                assert!(
                    before < n,
                    "{name} out of order on the target, partition {partition}: {before} before {n}"
                );
            }
        }
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "cutover_clients: the kafkajs consumer saw {} records, {duplicates} again, missed {}; errors {}",
        seen.len(),
        unseen.len(),
        consumed["errors"]
    );
    assert!(
        unseen.is_empty(),
        "the kafkajs consumer missed {}: {:?}\nits errors: {}\n{}\nklink log:\n{}",
        unseen.len(),
        &unseen[..unseen.len().min(10)],
        consumed["errors"],
        where_missed(&target, &unseen, &consumed),
        klink.process.log_text()
    );
    // kafkajs forgets a broker a Metadata answer leaves out, and then
    // cannot reach the coordinator it holds: every answer lists both
    // clusters' brokers whatever the routes.
    assert!(
        !consumed["errors"]
            .to_string()
            .contains("not found in the cached metadata"),
        "the kafkajs consumer lost a broker across a flip: {}",
        consumed["errors"]
    );
    assert!(
        duplicates < 500,
        "the kafkajs consumer re-read {duplicates} records"
    );
}

/// Where the first missed record is on the target, and what the consumer
/// read around it in that partition (offset, value), for the failure text.
fn where_missed(target: &crate::harness::Broker, unseen: &[String], consumed: &Value) -> String {
    let Some(missed) = unseen.first() else {
        return String::new();
    };
    let on_target = crate::flips::dump_records(&target.addr.to_string(), "orders");
    let Some((partition, offset)) = on_target.iter().find_map(|(p, records)| {
        records
            .iter()
            .find(|(_, v)| v == missed)
            .map(|(o, _)| (*p, *o))
    }) else {
        return format!("{missed} is not on the target");
    };
    let near: Vec<(i64, &str)> = consumed["records"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r[0].as_i64() == Some(partition))
        .filter_map(|r| Some((r[1].as_i64()?, r[2].as_str()?)))
        .filter(|(o, _)| (offset - 5..=offset + 5).contains(o))
        .collect();
    format!(
        "{missed} is partition {partition} offset {offset} on the target; \
         the consumer read there, in order: {near:?}"
    )
}
