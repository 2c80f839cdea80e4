//! `klink perf` through klink: the producer's summary line reads like
//! kafka-producer-perf-test's, and the consumer counts exactly the records
//! the producers were acknowledged for.

use std::process::Command;
use std::time::Duration;

use crate::harness::run_bounded;
use crate::{create_topic, proxied};

const TOPIC: &str = "perf-topic";
const FIRST: u64 = 50_000;
const SECOND: u64 = 10_000;

fn perf(args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_klink"));
    command.arg("perf").args(args).env("RUST_LOG", "warn");
    let (status, stdout, stderr) = run_bounded(command, Duration::from_secs(30));
    assert!(
        status.success(),
        "klink perf {args:?} failed ({status}):\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// The numbers of `N records sent, X records/sec (Y MB/sec), Z ms avg
/// latency, W ms max latency, A ms 50th, B ms 95th, C ms 99th, D ms 99.9th.`
fn parse_summary(line: &str) -> Vec<f64> {
    let body = line
        .strip_suffix('.')
        .unwrap_or_else(|| panic!("no final dot: {line}"));
    let parts: Vec<&str> = body.split(", ").collect();
    let suffixes = [
        " records sent",
        " records/sec (",
        " ms avg latency",
        " ms max latency",
        " ms 50th",
        " ms 95th",
        " ms 99th",
        " ms 99.9th",
    ];
    assert_eq!(parts.len(), suffixes.len(), "summary line: {line}");
    let mut numbers = Vec::new();
    for (part, suffix) in parts.iter().zip(suffixes) {
        let (number, rest) = part
            .split_once(suffix)
            .unwrap_or_else(|| panic!("{part:?} lacks {suffix:?} in {line}"));
        numbers.push(
            number
                .parse()
                .unwrap_or_else(|e| panic!("{number:?}: {e} in {line}")),
        );
        if suffix == " records/sec (" {
            let mb = rest
                .strip_suffix(" MB/sec)")
                .unwrap_or_else(|| panic!("no MB/sec in {line}"));
            numbers.push(
                mb.parse()
                    .unwrap_or_else(|e| panic!("{mb:?}: {e} in {line}")),
            );
        }
    }
    numbers
}

#[test]
fn perf_producer_and_consumer_through_klink_count_every_record() {
    let (_broker, klink) = proxied("perf");
    create_topic(&klink, TOPIC, 3);
    let bootstrap = format!("bootstrap.servers={}", klink.bootstrap_str());

    let out = perf(&[
        "producer",
        "--topic",
        TOPIC,
        "--num-records",
        &FIRST.to_string(),
        "--record-size",
        "100",
        "--throughput",
        "-1",
        "--producer-props",
        &bootstrap,
        "acks=all",
        "linger.ms=5",
    ]);
    let summary = parse_summary(out.lines().last().unwrap_or_default());
    assert_eq!(summary[0], FIRST as f64, "{out}");
    assert!(summary[1] > 0.0 && summary[2] > 0.0, "rates: {out}");
    let (avg, max, p50, p999) = (summary[3], summary[4], summary[5], summary[8]);
    assert!(
        p50 <= p999 && p999 <= max.ceil() && avg <= max,
        "latencies: {out}"
    );

    // Compression, acks=1 and a properties file, on the same topic.
    let config = klink.dir().join("producer.properties");
    std::fs::write(
        &config,
        format!("{bootstrap}\nacks=1\ncompression.type=zstd\n"),
    )
    .expect("write producer.properties");
    let out = perf(&[
        "producer",
        "--topic",
        TOPIC,
        "--num-records",
        &SECOND.to_string(),
        "--record-size",
        "1000",
        "--throughput",
        "-1",
        "--producer.config",
        &config.to_string_lossy(),
    ]);
    assert_eq!(
        parse_summary(out.lines().last().unwrap_or_default())[0],
        SECOND as f64,
        "{out}"
    );

    let total = FIRST + SECOND;
    let out = perf(&[
        "consumer",
        "--topic",
        TOPIC,
        "--messages",
        &total.to_string(),
        "--bootstrap-server",
        &klink.bootstrap_str(),
        "--timeout",
        "10000",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(
            "start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, \
             rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec"
        ),
        "{out}"
    );
    assert_eq!(lines.len(), 2, "no warning, one value line: {out}");
    let fields: Vec<&str> = lines[1].split(", ").collect();
    assert_eq!(fields.len(), 10, "{out}");
    assert_eq!(
        fields[4],
        total.to_string(),
        "every record exactly once: {out}"
    );
    let mb: f64 = fields[2].parse().expect("MB consumed");
    // 50,000 x 100 B plus 10,000 x 1,000 B (zstd on random letters shrinks
    // by about a third), plus batch headers.
    assert!((9.0..20.0).contains(&mb), "MB consumed: {out}");
}
