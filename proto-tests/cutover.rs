//! The cutover under running clients: a mirrored topic promoted to its
//! target while producers write through klink.
//!
//! Just over 600 lines: the helpers here (the migration, the ledger
//! producers, the group member) serve `cutover_clients.rs`,
//! `numbering.rs`, `producer_ids.rs`, `crashes.rs` and `security.rs` too.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::flips::{dump, flips_py, unix_now};
use crate::harness::{Broker, Klink, KlinkOptions};
use crate::mirror::{create, topic_status, wait_caught_up};
use crate::routing::{KillOnDrop, py};

/// A source with `orders` (linked) and `payments` (not), a target, and
/// klink mirroring `orders` with `link_extra` appended to the link (and
/// the config), caught up.
pub(crate) fn migration(name: &str, link_extra: &str) -> (Broker, Broker, Klink) {
    let source = Broker::start(&format!("{name}-source"));
    let target = Broker::start(&format!("{name}-target"));
    create(&source, "orders");
    create(&source, "payments");
    let klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), target.addr)],
            extra_config: format!(
                "[[links]]\nid = \"move\"\nsource = \"source\"\ntarget = \"target\"\n\
                 topics = [\"orders\"]\n{link_extra}"
            ),
            ..Default::default()
        },
    );
    wait_caught_up(&klink, "orders");
    (source, target, klink)
}

/// How many times each value is in a topic's dump.
fn copies(dumped: &BTreeMap<i64, Vec<String>>) -> HashMap<&str, usize> {
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for value in dumped.values().flatten() {
        *copies.entry(value.as_str()).or_default() += 1;
    }
    copies
}

/// A flips.py command started with its stdout piped, past its STARTED
/// line; the rest of its output is read from the returned lines.
pub(crate) fn started(
    args: &[&str],
) -> (
    KillOnDrop,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    started_command(flips_py(args))
}

/// A client command started with its stdout piped, past its STARTED line.
pub(crate) fn started_command(
    mut command: std::process::Command,
) -> (
    KillOnDrop,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = KillOnDrop(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a client"),
    );
    let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    assert_eq!(
        lines.next().and_then(Result::ok).unwrap_or_default(),
        "STARTED"
    );
    (child, lines)
}

/// A confluent-kafka member of group `billing` reading `orders` through
/// `bootstrap` for `seconds`, committing after every batch.
pub(crate) fn billing_consumer(
    bootstrap: &str,
    seconds: &str,
) -> (
    KillOnDrop,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    orders_member(bootstrap, "billing", seconds)
}

/// A confluent-kafka member of `group` reading `orders` through
/// `bootstrap` for `seconds`, committing after every batch (flips.py
/// consume).
pub(crate) fn orders_member(
    bootstrap: &str,
    group: &str,
    seconds: &str,
) -> (
    KillOnDrop,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    started(&[
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

/// Group `billing`'s committed offsets of `orders` as `bootstrap` (a
/// broker, or klink) answers them, by partition.
pub(crate) fn billing_committed(bootstrap: &str) -> Value {
    py(&[
        "committed",
        "--bootstrap",
        bootstrap,
        "--topic",
        "orders",
        "--group",
        "billing",
    ])["committed"]
        .clone()
}

/// The four producers of flips.py's ledger through klink for `seconds`.
pub(crate) fn producers(
    klink: &Klink,
    seconds: &str,
    extra: &[&str],
) -> (
    KillOnDrop,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let bootstrap = klink.bootstrap_str();
    let mut args = vec![
        "ledger",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--other",
        "payments",
        "--seconds",
        seconds,
        // Per producer: an idempotent producer keeps at most 5 requests
        // in flight per broker, and on two shared cores a promoted
        // topic's round trip (client -> klink -> target, with the reverse
        // mirror copying every batch back) reaches 15-20 ms; at 1,000/s
        // it fell behind and had not flushed at the end (measured here).
        "--pace",
        "500",
        "--max",
        "1000000",
    ];
    args.extend_from_slice(extra);
    started(&args)
}

/// Four confluent-kafka producers (idempotent, plain, acks=0, and one
/// whose requests also name an unlinked topic, so klink splits them after
/// the promotion) write through klink at a steady pace, one record per
/// batch (tansu loses the rest of a batch a consumer resumes inside);
/// `orders` is promoted, rolled back and promoted again mid-stream while a
/// member of the link's group reads it, then committed. Every acknowledged
/// record of `orders` is on the target exactly once, in producer order per
/// partition, and every one acknowledged before the second promotion is on
/// the source exactly once, in order (the reverse mirror carried what was
/// written to the target back); nothing failed, nothing fatal; the
/// unlinked topic stays on the source; the consumer saw every acknowledged
/// record and, its group's offsets handed over at each flip, re-read only
/// what it had not committed.
#[test]
fn a_topic_promoted_rolled_back_and_promoted_under_running_producers_loses_duplicates_and_reorders_nothing()
 {
    let (source, target, klink) = migration("cutover", "groups = [\"billing\"]\n");

    // A member of group billing reads orders through klink throughout,
    // committing as it goes.
    let bootstrap = klink.bootstrap_str();
    let (mut consumer, consumed_lines) = billing_consumer(&bootstrap, "18");
    std::thread::sleep(Duration::from_millis(1500));

    let (mut ledger, lines) = producers(&klink, "9", &["--one-per-batch"]);
    std::thread::sleep(Duration::from_millis(2000));
    let (code, stdout, stderr) = klink.ctl(&["promote", "orders", "--json"]);
    assert!(
        code.success(),
        "promote failed: {stdout}{stderr}\nklink log:\n{}",
        klink.process.log_text()
    );
    let answer: Value = serde_json::from_str(&stdout).expect("json");
    let promotion = &answer["promotion"];
    eprintln!("cutover: {promotion}");
    assert_eq!(promotion["already"], false, "{answer}");
    assert_eq!(promotion["partitions"].as_array().map(Vec::len), Some(3));
    let status = topic_status(&klink, "orders");
    assert_eq!(status["state"], "promoted", "{status}");
    assert_eq!(status["writes"], "target", "{status}");
    assert_eq!(status["reads"], "target", "{status}");
    assert_eq!(status["offsets"], "identical", "{status}");
    assert!(
        promotion["groups"]["billing"]
            .as_object()
            .is_some_and(|o| !o.is_empty()),
        "the group's offsets were handed over: {promotion}"
    );
    // Promoting again says so and changes nothing.
    let again = klink.ctl_ok(&["promote", "orders"]);
    assert!(again.contains("promoted already"), "{again}");
    // Back to the source, the reverse mirror having carried the target's
    // new records there.
    std::thread::sleep(Duration::from_millis(2000));
    let (code, stdout, stderr) = klink.ctl(&["rollback", "orders", "--json"]);
    assert!(
        code.success(),
        "rollback failed: {stdout}{stderr}\nklink log:\n{}",
        klink.process.log_text()
    );
    let rollback: Value = serde_json::from_str(&stdout).expect("json");
    eprintln!("cutover: rollback {}", rollback["promotion"]);
    assert_eq!(rollback["promotion"]["rollback"], true, "{rollback}");
    assert_eq!(rollback["promotion"]["already"], false, "{rollback}");
    let status = topic_status(&klink, "orders");
    assert_eq!(status["state"], "mirroring", "{status}");
    assert_eq!(status["writes"], "source", "{status}");
    let again = klink.ctl_ok(&["rollback", "orders"]);
    assert!(again.contains("rolled back already"), "{again}");

    // And to the target again, for good.
    std::thread::sleep(Duration::from_millis(2000));
    let second_promotion_at = unix_now();
    let (code, stdout, stderr) = klink.ctl(&["promote", "orders", "--json"]);
    assert!(
        code.success(),
        "second promote failed: {stdout}{stderr}\nklink log:\n{}",
        klink.process.log_text()
    );
    let second: Value = serde_json::from_str(&stdout).expect("json");
    eprintln!("cutover: promoted again {}", second["promotion"]);
    assert_eq!(topic_status(&klink, "orders")["writes"], "target");
    // A topic no link mirrors is refused.
    let (code, _, stderr) = klink.ctl(&["promote", "payments"]);
    assert!(
        !code.success() && stderr.contains("not a topic of any mirroring link"),
        "{stderr}"
    );

    let last = lines.map_while(Result::ok).last().unwrap_or_default();
    assert!(ledger.0.wait().expect("producers").success());
    let report: Value = serde_json::from_str(&last).expect("ledger json");
    let consumed = consumed_lines
        .map_while(Result::ok)
        .last()
        .unwrap_or_default();
    assert!(consumer.0.wait().expect("consumer").success());
    let consumed: Value = serde_json::from_str(&consumed).expect("consumer json");
    let mut seen: HashMap<String, usize> = HashMap::new();
    for value in consumed["values"].as_array().into_iter().flatten() {
        *seen
            .entry(value.as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "cutover: the consumer saw {} records, {duplicates} of them again; commit errors {}",
        seen.len(),
        consumed["commit_errors"]
    );
    let on_target = dump(&target, "orders");
    let on_source = dump(&source, "orders");
    let on_source_payments = dump(&source, "payments");
    let source_copies = copies(&on_source);
    let copies = copies(&on_target);
    let payments: usize = on_source_payments.values().map(Vec::len).sum();
    assert!(payments > 0, "payments written to the source");
    // Committing ends the migration; committing again says so; there is
    // no way back after it.
    klink.ctl_ok(&["commit", "orders"]);
    assert_eq!(topic_status(&klink, "orders")["state"], "committed");
    let (code, _, stderr) = klink.ctl(&["commit", "--link", "move"]);
    assert!(
        code.success() && stderr.contains("committed already"),
        "{stderr}"
    );
    let (code, _, stderr) = klink.ctl(&["rollback", "orders"]);
    assert!(
        !code.success() && stderr.contains("is committed"),
        "{stderr}"
    );
    let log = klink.process.log_text();
    let stopped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("mirror stopped"))
        .collect();
    assert!(
        stopped.is_empty(),
        "the mirror stopped: {stopped:?}\npromotion: {answer}\nklink log:\n{}",
        log.lines()
            .filter(|l| l.contains("mirror") || l.contains("promot") || l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Acknowledged records the consumer never saw. tansu can answer a
    // fetch with a batch missing below later ones while its write is under
    // way, and a consumer then moves past it (README quirks): the
    // consumer's count is held to nearly all, and the group to its end.
    let mut unseen: Vec<String> = Vec::new();
    let mut carried_back = 0;
    let warnings = || {
        klink
            .process
            .log_text()
            .lines()
            .filter(|l| {
                [" WARN ", " ERROR ", "translated", " done"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    };
    for name in ["idem", "plain", "acks0", "split"] {
        let producer = &report[name];
        let summary = format!(
            "{name}: errors {} fatal {} unflushed {} failed {} eos {}\nklink's warnings:\n{}",
            producer["errors"],
            producer["fatal_errors"],
            producer["unflushed"],
            producer["failed"],
            producer["eos_log"],
            warnings()
        );
        assert_eq!(producer["fatal"], false, "{summary}");
        assert_eq!(producer["unflushed"], 0, "{summary}");
        if name == "acks0" {
            let twice: Vec<_> = copies
                .iter()
                .filter(|(v, n)| v.starts_with("acks0:") && **n > 1)
                .take(5)
                .collect();
            assert!(twice.is_empty(), "acks0 records written twice: {twice:?}");
            continue;
        }
        assert_eq!(producer["failed"], 0, "{summary}");
        let acked = producer["acked"].as_array().cloned().unwrap_or_default();
        assert!(acked.len() > 2_000, "{name} produced: {}", acked.len());
        let mut orders = 0;
        for record in &acked {
            if record[0] != "orders" {
                continue;
            }
            orders += 1;
            let value = format!("{name}:{}", record[2]);
            let found = copies.get(value.as_str()).copied().unwrap_or(0);
            if found != 1 {
                let on_source = dump(&source, "orders");
                let partition = record[1].as_i64().unwrap_or(-1);
                let near = |values: Option<&Vec<String>>| -> Vec<String> {
                    let values = values.cloned().unwrap_or_default();
                    let at = values.iter().position(|v| *v == value).unwrap_or(0);
                    values[at.saturating_sub(3)..(at + 3).min(values.len())].to_vec()
                };
                panic!(
                    "{value} (partition {partition}) on the target {found} times; \
                     around it on the target: {:?}; on the source: {:?}\npromotion: {answer}\nklink log:\n{}",
                    near(on_target.get(&partition)),
                    near(on_source.get(&partition)),
                    klink.process.log_text()
                );
            }
            // Acknowledged before the second promotion: on the source
            // once (written there, or carried back by the reverse mirror).
            if record[3].as_f64().unwrap_or(f64::MAX) < second_promotion_at {
                let found = source_copies.get(value.as_str()).copied().unwrap_or(0);
                assert_eq!(
                    found,
                    1,
                    "{value}, acknowledged before the second promotion, is on the source {found} times\nklink log:\n{}",
                    klink.process.log_text()
                );
                carried_back += 1;
            }
            if !seen.contains_key(&value) {
                unseen.push(value);
            }
        }
        assert!(orders > 0, "{name} wrote orders");
    }
    let acked_orders: usize = ["idem", "plain", "split"]
        .iter()
        .map(|name| {
            report[name]["acked"]
                .as_array()
                .map_or(0, |a| a.iter().filter(|r| r[0] == "orders").count())
        })
        .sum();
    eprintln!(
        "cutover: the consumer missed {} of {acked_orders} acknowledged records: {:?}",
        unseen.len(),
        &unseen[..unseen.len().min(5)]
    );
    assert!(
        unseen.len() * 100 <= acked_orders,
        "the consumer missed {} of {acked_orders}: {:?}\nits errors: {}\nklink's warnings:\n{}",
        unseen.len(),
        &unseen[..unseen.len().min(10)],
        consumed["errors"],
        klink
            .process
            .log_text()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("group"))
            .take(60)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The group went on on the target to the end: its commits there reach
    // each partition's end.
    let committed = billing_committed(&target.addr.to_string());
    for (partition, values) in &on_target {
        assert_eq!(
            committed[partition.to_string()].as_i64(),
            Some(values.len() as i64),
            "billing's commit on the target for partition {partition}: {committed}"
        );
    }
    // The group resumed on the target where it had committed: it re-read
    // at most what it had not committed (a batch or so), not everything
    // from the start.
    assert!(
        duplicates < 2_000,
        "the consumer re-read {duplicates} records after the promotion"
    );
    assert!(
        carried_back > 2_000,
        "records checked on the source: {carried_back}"
    );
    // In producer order per partition, on both clusters.
    for (partition, values) in on_target.iter().chain(&on_source) {
        let mut last: BTreeMap<&str, u64> = BTreeMap::new();
        for value in values {
            let Some((name, n)) = value.split_once(':') else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            if name == "acks0" {
                continue;
            }
            if let Some(before) = last.insert(name, n) {
                assert!(
                    before < n,
                    "{name} out of order on the target, partition {partition}: {before} before {n}"
                );
            }
        }
    }
}

/// A promotion that cannot finish (the target dies during it) aborts at
/// `cutover.fence_timeout_ms`: the held writes go to the source, the topic
/// stays mirroring, and every acknowledged record is on the source once, in
/// order, with no producer failing.
#[test]
fn an_aborted_promotion_loses_and_duplicates_nothing() {
    let (source, mut target, klink) = migration("abort", "[cutover]\nfence_timeout_ms = 1500\n");
    let (mut ledger, lines) = producers(&klink, "4", &[]);
    std::thread::sleep(Duration::from_millis(1000));
    target.kill();
    let (code, stdout, stderr) = klink.ctl(&["promote", "orders"]);
    assert!(!code.success(), "promote succeeded: {stdout}");
    assert!(stderr.contains("aborted"), "{stdout}{stderr}");
    let status = topic_status(&klink, "orders");
    assert_eq!(status["state"], "mirroring", "{status}");
    assert_eq!(status["writes"], "source", "{status}");
    // Commit before promote makes no sense: refused, nothing changes.
    let (code, _, stderr) = klink.ctl(&["commit", "orders"]);
    assert!(
        !code.success() && stderr.contains("only a promoted topic can be committed"),
        "{stderr}"
    );
    assert_eq!(topic_status(&klink, "orders")["state"], "mirroring");

    let last = lines.map_while(Result::ok).last().unwrap_or_default();
    assert!(ledger.0.wait().expect("producers").success());
    let report: Value = serde_json::from_str(&last).expect("ledger json");
    let on_source = dump(&source, "orders");
    let copies = copies(&on_source);
    for name in ["idem", "plain", "split"] {
        let producer = &report[name];
        assert_eq!(producer["fatal"], false, "{name}: {producer}");
        assert_eq!(producer["failed"], 0, "{name}: {producer}");
        let acked = producer["acked"].as_array().cloned().unwrap_or_default();
        assert!(acked.len() > 1_000, "{name} produced: {}", acked.len());
        for record in acked.iter().filter(|r| r[0] == "orders") {
            let value = format!("{name}:{}", record[2]);
            assert_eq!(
                copies.get(value.as_str()).copied().unwrap_or(0),
                1,
                "{value} on the source exactly once"
            );
        }
    }
    assert!(
        klink.process.log_text().contains("promotion aborted"),
        "the abort is logged"
    );

    // A group outside the link reads orders through klink: promoting
    // orders would leave its offsets behind, so it is refused.
    py(&[
        "group",
        "--bootstrap",
        &klink.bootstrap_str(),
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
    assert_eq!(topic_status(&klink, "orders")["state"], "mirroring");
}

/// klink killed with `kill -9` in the middle of a flip: it comes back on
/// the old routes and the flip can be done again.
fn kill_during(klink: &mut Klink, frozen: &Broker, command: &[&str], state: &str) {
    // The copy cannot write while the cluster it writes is frozen: the
    // drain waits.
    frozen.process.signal("STOP");
    let config = klink.config.clone();
    let args: Vec<String> = command.iter().map(|a| a.to_string()).collect();
    let flip = std::thread::spawn(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_klink"));
        command.args(["ctl", "--config"]).arg(&config).args(&args);
        crate::harness::run_bounded(command, Duration::from_secs(60))
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while topic_status(klink, "orders")["state"] != state {
        assert!(
            std::time::Instant::now() < deadline,
            "never saw {state}: {}",
            topic_status(klink, "orders")
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    klink.process.signal("KILL");
    klink.process.wait_exit(Duration::from_secs(10));
    frozen.process.signal("CONT");
    klink.process = crate::harness::spawn_klink(&klink.config, klink.dir(), 1);
    let (code, _, _) = flip.join().expect("flip thread");
    assert!(!code.success(), "the flip cannot have finished");
}

/// klink killed with `kill -9` in the middle of a promotion (while the
/// drain waits on a target frozen with SIGSTOP) comes back with the topic
/// mirroring on its old routes, and promotes again; killed in the middle
/// of a rollback (the source frozen), it comes back promoted, and rolls
/// back again. Every acknowledged record is then on the source, and was on
/// the target before the rollback: exactly once from the idempotent
/// producers, at least once from the plain one (whose requests in flight
/// at a kill were lost with klink).
#[test]
fn a_promotion_or_rollback_cut_short_by_kill_9_leaves_the_old_routes_and_can_be_done_again() {
    let (source, target, mut klink) = migration("crash", "");
    let (mut ledger, lines) = producers(&klink, "14", &[]);
    std::thread::sleep(Duration::from_millis(1000));
    kill_during(&mut klink, &target, &["promote", "orders"], "promoting");
    let status = topic_status(&klink, "orders");
    assert_eq!(status["state"], "mirroring", "{status}");
    assert_eq!(
        (&status["writes"], &status["reads"]),
        (&Value::from("source"), &Value::from("source"))
    );
    assert!(
        klink
            .process
            .log_text()
            .contains("a promotion was cut short"),
        "the restart says what it undid"
    );
    wait_caught_up(&klink, "orders");
    // Again, naming the link this time.
    let answer: Value =
        serde_json::from_str(&klink.ctl_ok(&["promote", "--link", "move", "--json"]))
            .expect("json");
    assert_eq!(answer["promotion"]["already"], false, "{answer}");
    assert_eq!(answer["promotion"]["topics"], serde_json::json!(["orders"]));
    let (code, _, stderr) = klink.ctl(&["promote", "--link", "nosuch"]);
    assert!(
        !code.success() && stderr.contains("no mirroring link"),
        "{stderr}"
    );

    // The way back, cut short the same way.
    std::thread::sleep(Duration::from_millis(1500));
    let on_target_before_rollback = std::time::Instant::now();
    kill_during(&mut klink, &source, &["rollback", "orders"], "rolling-back");
    let status = topic_status(&klink, "orders");
    assert_eq!(status["state"], "promoted", "{status}");
    assert_eq!(status["writes"], "target", "{status}");
    assert!(
        klink
            .process
            .log_text()
            .contains("a rollback was cut short"),
        "the restart says what it undid"
    );
    let answer: Value =
        serde_json::from_str(&klink.ctl_ok(&["rollback", "--link", "move", "--json"]))
            .expect("json");
    assert_eq!(answer["promotion"]["rollback"], true, "{answer}");
    assert_eq!(topic_status(&klink, "orders")["writes"], "source");
    eprintln!(
        "cutover: rolled back {:?} after the first try",
        on_target_before_rollback.elapsed()
    );

    let last = lines.map_while(Result::ok).last().unwrap_or_default();
    assert!(ledger.0.wait().expect("producers").success());
    let report: Value = serde_json::from_str(&last).expect("ledger json");
    // Everything is on the source: written there, or carried back.
    let on_source = dump(&source, "orders");
    let copies = copies(&on_source);
    for name in ["idem", "plain", "split"] {
        let producer = &report[name];
        assert_eq!(producer["fatal"], false, "{name}: {producer}");
        assert_eq!(producer["failed"], 0, "{name}: {producer}");
        for record in producer["acked"].as_array().into_iter().flatten() {
            if record[0] != "orders" {
                continue;
            }
            let value = format!("{name}:{}", record[2]);
            let found = copies.get(value.as_str()).copied().unwrap_or(0);
            if name == "plain" {
                assert!(found >= 1, "{value} acknowledged, then lost");
            } else {
                assert_eq!(
                    found,
                    1,
                    "{value} on the source exactly once\nklink log:\n{}",
                    klink.process.log_text()
                );
            }
        }
    }
}
