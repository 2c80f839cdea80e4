//! Offsets that never change meaning (DESIGN trap 7): a `latest` link over
//! a topic that already holds records, so the target numbers every record
//! otherwise than the source, promoted and rolled back under running
//! producers and a committing consumer.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;

use crate::cutover::{billing_committed as committed, billing_consumer, producers};
use crate::flips::dump_records;
use crate::harness::{Broker, Klink, KlinkOptions};
use crate::mirror::{create, produce, produce_to, topic_status, wait_caught_up, wait_copied};

/// Records each partition of `orders` held before the link started.
const BEFORE: u64 = 300;

fn promote(klink: &Klink, command: &str) -> Value {
    let (code, stdout, stderr) = klink.ctl(&[command, "orders", "--json"]);
    assert!(
        code.success(),
        "{command} failed: {stdout}{stderr}\nklink log:\n{}",
        klink.process.log_text()
    );
    let answer: Value = serde_json::from_str(&stdout).expect("json");
    eprintln!("numbering: {command} {}", answer["promotion"]);
    answer
}

/// The consumer's (partition, offset, value) lines of a `consume` report.
fn consumed(report: &Value) -> Vec<(i64, i64, String)> {
    report["records"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r[0].as_i64().unwrap_or(-1),
                r[1].as_i64().unwrap_or(-1),
                r[2].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_latest_link_keeps_every_offset_meaning_across_promote_and_rollback() {
    let source = Broker::start("numbering-source");
    let target = Broker::start("numbering-target");
    create(&source, "orders");
    create(&source, "payments");
    produce(&source, "orders", 0, BEFORE);
    let klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), target.addr)],
            extra_config: "[[links]]\nid = \"move\"\nsource = \"source\"\ntarget = \"target\"\n\
                 start = \"latest\"\ntopics = [\"orders\"]\ngroups = [\"billing\"]\n"
                .to_string(),
            ..Default::default()
        },
    );
    wait_caught_up(&klink, "orders");
    let source_before = dump_records(&source.addr.to_string(), "orders");
    let starts: BTreeMap<i64, i64> = source_before
        .iter()
        .map(|(p, records)| (*p, records.len() as i64))
        .collect();
    assert!(
        starts.values().all(|&n| n > 0),
        "every partition holds records before the link: {starts:?}"
    );

    // A member of billing reads everything through klink from the
    // beginning, committing as it goes, across both flips.
    let bootstrap = klink.bootstrap_str();
    let (mut consumer, consumer_lines) = billing_consumer(&bootstrap, "12");
    std::thread::sleep(Duration::from_millis(1500));
    let (mut ledger, lines) = producers(&klink, "7", &["--one-per-batch"]);
    std::thread::sleep(Duration::from_millis(1500));
    promote(&klink, "promote");
    let offsets = klink.ctl_ok(&["offsets", "orders", "0"]);
    assert!(offsets.contains("not the identity"), "{offsets}");
    assert_eq!(topic_status(&klink, "orders")["offsets"], "translated");
    std::thread::sleep(Duration::from_millis(2000));
    promote(&klink, "rollback");
    std::thread::sleep(Duration::from_millis(1500));
    promote(&klink, "promote");

    let last = lines.map_while(Result::ok).last().unwrap_or_default();
    assert!(ledger.0.wait().expect("producers").success());
    let report: Value = serde_json::from_str(&last).expect("ledger json");
    for name in ["idem", "plain", "split"] {
        assert_eq!(report[name]["failed"], 0, "{name}: {}", report[name]);
        assert_eq!(report[name]["fatal"], false, "{name}: {}", report[name]);
    }
    let consumer_report = consumer_lines
        .map_while(Result::ok)
        .last()
        .unwrap_or_default();
    assert!(consumer.0.wait().expect("consumer").success());
    let consumer_report: Value = serde_json::from_str(&consumer_report).expect("consumer json");

    // The reverse mirror carries the last records back: then the source
    // holds every record, each at the offset clients know it by.
    wait_copied(&klink, "orders", None);
    let on_source = dump_records(&source.addr.to_string(), "orders");
    let by_offset: HashMap<(i64, i64), &str> = on_source
        .iter()
        .flat_map(|(p, records)| records.iter().map(move |(o, v)| ((*p, *o), v.as_str())))
        .collect();
    let on_target = dump_records(&target.addr.to_string(), "orders");
    // Read through klink (from the target): the source's offsets, from
    // where the link started.
    let through_klink = dump_records(&bootstrap, "orders");
    for (partition, records) in &through_klink {
        let start = starts.get(partition).copied().unwrap_or(-1);
        assert_eq!(
            records.first().map(|(o, _)| *o),
            Some(start),
            "partition {partition} through klink starts where the link did"
        );
        assert_eq!(
            records.len(),
            on_target.get(partition).map_or(0, Vec::len),
            "partition {partition}: every target record, through klink"
        );
        assert_eq!(
            on_target[partition].first().map(|(o, _)| *o),
            Some(0),
            "the target numbers from 0"
        );
        for (offset, value) in records {
            assert_eq!(
                by_offset.get(&(*partition, *offset)).copied(),
                Some(value.as_str()),
                "{value} at {partition}/{offset} through klink is not there on the source"
            );
        }
        let source_end = on_source[partition].last().map(|(o, _)| o + 1);
        assert_eq!(records.last().map(|(o, _)| o + 1), source_end);
    }
    // Every record the consumer saw, at the offset it has on the source:
    // before the first promotion, while promoted, after the rollback.
    let seen = consumed(&consumer_report);
    let mut wrong = Vec::new();
    for (partition, offset, value) in &seen {
        if by_offset.get(&(*partition, *offset)).copied() != Some(value.as_str()) {
            wrong.push(format!("{value}@{partition}/{offset}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "the consumer saw {} of {} records at offsets that mean other records: {:?}\nklink log:\n{}",
        wrong.len(),
        seen.len(),
        &wrong[..wrong.len().min(10)],
        klink.process.log_text()
    );
    let old_seen = seen.iter().filter(|(_, o, _)| *o < 5).count();
    assert!(old_seen > 0, "the consumer read from the beginning");
    // Its commits: in the client's numbering through klink (the source's
    // end), in the target's own on the target.
    let through = committed(&bootstrap);
    let direct = committed(&target.addr.to_string());
    for (partition, records) in &on_source {
        let end = records.last().map_or(0, |(o, _)| o + 1);
        assert_eq!(
            through[partition.to_string()].as_i64(),
            Some(end),
            "billing's commit through klink, partition {partition}: {through}"
        );
        let target_end = on_target.get(partition).map_or(0, Vec::len) as i64;
        assert_eq!(
            direct[partition.to_string()].as_i64(),
            Some(target_end),
            "billing's commit on the target, partition {partition}: {direct}"
        );
    }

    // A consumer that joins after the promotion resumes at the group's
    // commit: it reads the records written since, and only those, at
    // the offsets the source gives them once copied back.
    produce_to(&bootstrap, "orders", 10_000, 30, None);
    let (mut late, late_lines) = billing_consumer(&bootstrap, "4");
    let late_report = late_lines.map_while(Result::ok).last().unwrap_or_default();
    assert!(late.0.wait().expect("late consumer").success());
    let late_seen = consumed(&serde_json::from_str(&late_report).expect("json"));
    let mut values: Vec<&str> = late_seen.iter().map(|(_, _, v)| v.as_str()).collect();
    values.sort();
    values.dedup();
    assert_eq!(values.len(), 30, "the late consumer read: {late_seen:?}");
    assert!(values.iter().all(|v| v.starts_with('v')), "{values:?}");
    wait_copied(&klink, "orders", None);
    let on_source = dump_records(&source.addr.to_string(), "orders");
    for (partition, offset, value) in &late_seen {
        let found = on_source
            .get(partition)
            .and_then(|r| r.iter().find(|(o, _)| o == offset));
        assert_eq!(
            found.map(|(_, v)| v.as_str()),
            Some(value.as_str()),
            "{value} read at {partition}/{offset}"
        );
    }
    // The reverse copy judged the target's records by klink's answers,
    // which clients get in the source's numbering: none is a bypass.
    let warnings = topic_status(&klink, "orders")["warnings"].to_string();
    assert!(
        !warnings.contains("bypass"),
        "klink's own writes were taken for a bypass: {warnings}"
    );
}
