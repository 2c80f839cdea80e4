//! klink itself killed under load on a promoted topic: idempotent
//! producers (their ids issued by the source, their batches sent to the
//! target under ids the target issued klink) keep going across `kill -9`
//! and restart of klink, with every acknowledged record on the target once.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::cutover::{migration, producers};
use crate::flips::dump;

#[test]
fn a_retry_after_klink_was_killed_is_not_written_twice() {
    let (_source, target, mut klink) = migration("producer-ids", "");
    klink.ctl_ok(&["promote", "orders"]);
    let (mut ledger, lines) = producers(&klink, "8", &[]);
    for generation in 2..5 {
        std::thread::sleep(Duration::from_millis(1500));
        klink.crash_and_restart(generation);
    }
    let last = lines.map_while(Result::ok).last().unwrap_or_default();
    assert!(ledger.0.wait().expect("producers").success());
    let report: Value = serde_json::from_str(&last).expect("ledger json");
    let on_target = dump(&target, "orders");
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for value in on_target.values().flatten() {
        *copies.entry(value.as_str()).or_default() += 1;
    }
    // A plain producer's retries may write twice; it loses nothing.
    let plain = report["plain"]["acked"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let lost: Vec<String> = plain
        .iter()
        .map(|r| format!("plain:{}", r[2]))
        .filter(|v| !copies.contains_key(v.as_str()))
        .take(10)
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged and not on the target: {lost:?}"
    );
    for name in ["idem", "split"] {
        let producer = &report[name];
        assert_eq!(
            producer["fatal"], false,
            "{name}: {}",
            producer["fatal_errors"]
        );
        let acked = producer["acked"].as_array().cloned().unwrap_or_default();
        assert!(acked.len() > 1_000, "{name} acknowledged {}", acked.len());
        let twice: Vec<String> = acked
            .iter()
            .filter(|r| r[0] == "orders")
            .map(|r| format!("{name}:{}", r[2]))
            .filter(|v| copies.get(v.as_str()).copied().unwrap_or(0) != 1)
            .take(10)
            .collect();
        assert!(
            twice.is_empty(),
            "{name}: records not on the target exactly once: {twice:?} ({:?})",
            twice
                .iter()
                .map(|v| copies.get(v.as_str()).copied().unwrap_or(0))
                .collect::<Vec<_>>()
        );
    }
}
