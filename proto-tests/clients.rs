//! Real client libraries through klink: three independent protocol
//! implementations produce, consume in a group, commit, and resume.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Broker, Klink, KlinkOptions, node_path, python_bin, repo_root, run_bounded};
use crate::proxied;

const RECORDS: u64 = 10_000;

fn check_scenario(name: &str, command: Command) {
    let (_broker, klink) = proxied(name);
    check_scenario_through(&klink, name, command);
}

/// The scenario with its topic and group routed to the second of two
/// clusters: every request crosses from the client's first broker to the
/// other cluster (admin, produce, fetch, group coordination).
fn check_scenario_on_target(name: &str, command: Command) {
    let source = Broker::start(&format!("{name}-source"));
    let target = Broker::start(&format!("{name}-target"));
    let (topic, group) = (format!("{name}-topic"), format!("{name}-group"));
    let klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), target.addr)],
            extra_config: format!(
                "[[links]]\nid = \"move\"\nsource = \"source\"\ntarget = \"target\"\nmirror = false\n\
                 topics = [\"{topic}\"]\ngroups = [\"{group}\"]\n"
            ),
            ..Default::default()
        },
    );
    klink.ctl_ok(&["route", &topic, "--writes", "target", "--reads", "target"]);
    klink.ctl_ok(&["route-group", &group, "--to", "target"]);
    check_scenario_through(&klink, name, command);
    // The records live on the target only.
    let count = |broker: &Broker| {
        let mut c = Command::new(python_bin());
        c.arg(repo_root().join("proto-tests/clients/routing.py"))
            .args([
                "count",
                "--bootstrap",
                &broker.addr.to_string(),
                "--topic",
                &topic,
            ]);
        let (_, stdout, _) = run_bounded(c, Duration::from_secs(60));
        let report: Value =
            serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_default();
        report["count"].as_u64().unwrap_or(0)
    };
    assert_eq!(
        count(&target),
        RECORDS,
        "{name}: every record on the target"
    );
    assert_eq!(count(&source), 0, "{name}: nothing on the source");
}

fn check_scenario_through(klink: &Klink, name: &str, mut command: Command) {
    command.args([
        "--bootstrap",
        &klink.bootstrap_str(),
        "--topic",
        &format!("{name}-topic"),
        "--group",
        &format!("{name}-group"),
        "--records",
        &RECORDS.to_string(),
        "--partitions",
        "3",
        "--timeout-s",
        "150",
    ]);
    let (status, stdout, stderr) = run_bounded(command, Duration::from_secs(200));
    let tail: String = stderr
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        status.success(),
        "{name} scenario failed ({status}):\n{tail}\nklink log:\n{}",
        klink.process.log_text()
    );
    let line = stdout.lines().last().unwrap_or_default();
    let report: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}: bad JSON {line:?}: {e}"));
    assert_eq!(report["produced"], RECORDS, "{name}: {report}");
    assert_eq!(report["delivery_errors"], 0, "{name}: {report}");
    // Each script counts these while consuming; a number other than 0 is
    // a record seen twice, a record whose key/value do not match, or a
    // record read at another partition/offset than its delivery report
    // (which every record has, so that this last count means something).
    assert_eq!(
        report["delivery_offsets_known"], RECORDS,
        "{name}: a delivery report with an offset for every record: {report}"
    );
    for counted in ["duplicates", "bad_records", "delivery_mismatch"] {
        assert_eq!(
            report[counted].as_u64(),
            Some(0),
            "{name}: {counted}: {report}"
        );
    }
    assert_eq!(
        report["distinct_values"], RECORDS,
        "{name}: every record consumed: {report}"
    );
    assert_eq!(
        report["missing"].as_array().map(Vec::len),
        Some(0),
        "{name}: {report}"
    );
    assert_eq!(
        report["order_ok"], true,
        "{name}: offsets increase per partition: {report}"
    );
    assert_eq!(
        report["resumed_exactly"], true,
        "{name}: run 2 resumed at the committed offsets: {report}"
    );
    let run1 = report["run1"]["consumed"].as_u64().unwrap_or(0);
    let run2 = report["run2"]["consumed"].as_u64().unwrap_or(0);
    assert!(run1 > 0 && run2 > 0, "{name}: both runs consumed: {report}");
    assert_eq!(
        run1 + run2,
        RECORDS,
        "{name}: nothing consumed twice after the commit: {report}"
    );
    let committed = report["run1"]["committed"]
        .as_object()
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(committed > 0, "{name}: run 1 committed offsets: {report}");
}

fn python(lib: &str) -> Command {
    let mut command = Command::new(python_bin());
    command
        .arg(repo_root().join("proto-tests/clients/scenario.py"))
        .args(["--lib", lib]);
    command
}

#[test]
fn confluent_kafka_produces_consumes_commits_and_resumes() {
    check_scenario("confluent", python("confluent"));
}

#[test]
fn kafka_python_produces_consumes_commits_and_resumes() {
    check_scenario("kafkapython", python("kafka-python"));
}

#[test]
fn kafkajs_produces_consumes_commits_and_resumes() {
    let mut command = Command::new("node");
    command
        .arg(repo_root().join("proto-tests/clients/scenario.js"))
        .env("NODE_PATH", node_path());
    check_scenario("kafkajs", command);
}

#[test]
fn kafkajs_works_with_everything_routed_to_the_other_cluster() {
    let mut command = Command::new("node");
    command
        .arg(repo_root().join("proto-tests/clients/scenario.js"))
        .env("NODE_PATH", node_path());
    check_scenario_on_target("js-routed", command);
}
