//! A client that keeps asking for large fetches and reads the answers at
//! 1 KiB/s: klink holds no more of its answers than the connection's fetch
//! budget (`client_fetch_buffer_bytes`, here 4 MiB), and another client's
//! produce rate through the same klink stays where it was.

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{FetchRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::faults::fds_and_rss;
use crate::harness::{Broker, Klink, KlinkOptions, run_bounded};
use crate::raw::RawConn;

const BUDGET: u64 = 4 * 1024 * 1024;
/// Fetches the slow client sends at once, each asking for 1 MiB: 64 MiB of
/// answers if klink held them all.
const FETCHES: usize = 64;
const ASK: i32 = 1024 * 1024;

/// `klink perf producer` through klink; returns records/sec.
fn produce_rate(klink: &Klink, topic: &str, records: u32, size: u32) -> f64 {
    let mut command = Command::new(env!("CARGO_BIN_EXE_klink"));
    command
        .args(["perf", "producer", "--topic", topic])
        .args(["--num-records", &records.to_string()])
        .args(["--record-size", &size.to_string()])
        .args(["--throughput", "-1", "--producer-props"])
        .arg(format!("bootstrap.servers={}", klink.bootstrap_str()))
        .args(["acks=all", "linger.ms=5"])
        .env("RUST_LOG", "warn");
    let (status, stdout, stderr) = run_bounded(command, Duration::from_secs(60));
    assert!(status.success(), "klink perf: {stdout}{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    last.split(", ")
        .nth(1)
        .and_then(|rate| rate.split_once(" records/sec"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no rate in {last}"))
}

fn fetch(offset: i64) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(ASK)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("big")))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(ASK),
                ]),
        ])
}

#[test]
fn a_slow_reader_costs_klink_its_fetch_budget_and_other_clients_keep_their_speed() {
    let broker = Broker::start("slow-reader");
    let mut klink = Klink::start_with(
        &broker,
        KlinkOptions {
            extra_proxy: format!("client_fetch_buffer_bytes = {BUDGET}\n"),
            ..Default::default()
        },
    );
    crate::create_topic(&klink, "big", 1);
    crate::create_topic(&klink, "other", 3);
    // 8 MB of 100 kB records to fetch from.
    produce_rate(&klink, "big", 80, 100_000);
    let before_rate = produce_rate(&klink, "other", 20_000, 1_000);
    let pid = klink.process.pid();
    let (_, rss_before) = fds_and_rss(pid);

    let mut conn = RawConn::connect(klink.bootstrap);
    let frames: Vec<u8> = (0..FETCHES)
        .flat_map(|n| conn.encode(&fetch((n % 70) as i64), 12).1.to_vec())
        .collect();
    let stream = conn.stream.try_clone().expect("clone");
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut stream = stream.try_clone().expect("clone");
        std::thread::spawn(move || {
            // Blocks once klink stops reading: that is the point.
            let _ = stream.write_all(&frames);
        })
    };
    let reader = {
        let mut stream = stream.try_clone().expect("clone");
        let done = done.clone();
        std::thread::spawn(move || {
            let mut read = 0usize;
            let mut chunk = [0u8; 1024];
            while !done.load(Ordering::Relaxed) {
                if let Ok(n) = stream.read(&mut chunk) {
                    read += n;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            read
        })
    };
    let sample = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sample = sample.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while sample.load(Ordering::Relaxed) {
                peak = peak.max(fds_and_rss(pid).1);
                std::thread::sleep(Duration::from_millis(200));
            }
            peak
        })
    };
    std::thread::sleep(Duration::from_secs(3));
    let during_rate = produce_rate(&klink, "other", 20_000, 1_000);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    sample.store(false, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    done.store(true, Ordering::Relaxed);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let read = reader.join().expect("reader");
    let _ = writer.join();
    let grown_kib = peak.saturating_sub(rss_before);
    eprintln!(
        "slow_reader: klink RSS {rss_before} KiB before, {peak} KiB at most with the slow \
         reader (+{grown_kib} KiB; budget {} KiB, {FETCHES} fetches of {} KiB asked); the \
         slow reader read {read} bytes; other client {before_rate:.0} records/s before, \
         {during_rate:.0} during ({:.2}x)",
        BUDGET / 1024,
        ASK / 1024,
        during_rate / before_rate
    );
    // The budget, one answer past it, and the allocator's slack; far
    // below the 64 MiB klink would hold without the budget.
    assert!(
        grown_kib < 24 * 1024,
        "klink grew {grown_kib} KiB behind a slow reader"
    );
    // A loose bound: the machine is shared, and the point is that the
    // other client is not held up behind the slow one.
    assert!(
        during_rate > before_rate * 0.4,
        "the other client slowed from {before_rate:.0} to {during_rate:.0} records/s"
    );
    assert!(klink.process.is_running(), "klink kept running");
}
