//! Faults with real processes: connection churn and a crowd of idle
//! connections leave no file descriptors or memory behind in klink, and
//! the connection limit refuses the one too many with a log line while
//! the connections already open keep working.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiVersionsRequest;

use crate::harness::{Broker, Klink, KlinkOptions};
use crate::raw::RawConn;

/// Open file descriptors and resident memory (KiB) of a process.
pub(crate) fn fds_and_rss(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("klink's fds")
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("VmRSS");
    (fds, rss)
}

/// One ApiVersions request frame (v0: answered by klink itself).
fn api_versions_frame(klink: &Klink) -> Vec<u8> {
    let mut conn = RawConn::connect(klink.bootstrap);
    let (_, frame) = conn.encode(&ApiVersionsRequest::default(), 0);
    frame.to_vec()
}

/// Connects, asks ApiVersions, reads the answer, closes: `cycles` times.
fn churn(addr: SocketAddr, frame: &[u8], cycles: usize) {
    let mut answer = vec![0u8; 64 * 1024];
    for _ in 0..cycles {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(frame).expect("write");
        let mut length = [0u8; 4];
        stream.read_exact(&mut length).expect("answer length");
        let length = i32::from_be_bytes(length) as usize;
        stream
            .read_exact(&mut answer[..length])
            .expect("whole answer");
    }
}

/// Waits until klink holds no more descriptors than `fds` (its client
/// connections closed), then gives its descriptors and RSS.
fn settled(pid: u32, fds: usize) -> (usize, u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = fds_and_rss(pid);
        if now.0 <= fds || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn churn_and_idle_crowds_leave_nothing_behind_and_the_limit_refuses_with_a_log_line() {
    const CYCLES: usize = 100_000;
    const THREADS: usize = 4;
    const LIMIT: usize = 10_000;
    /// What klink's allocator may keep after the crowds are gone.
    const RSS_SLACK_KIB: u64 = 16 * 1024;
    let source = Broker::start("faults-source");
    let klink = Klink::start_with(
        &source,
        KlinkOptions {
            extra_proxy: format!("max_client_connections = {LIMIT}\n"),
            ..Default::default()
        },
    );
    let pid = klink.process.pid();
    let frame = api_versions_frame(&klink);
    // Warm up: the first sessions size klink's pools.
    churn(klink.bootstrap, &frame, 1_000);
    let (fds_before, rss_before) = settled(pid, usize::MAX);

    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| churn(klink.bootstrap, &frame, CYCLES / THREADS));
        }
    });
    let took = started.elapsed();
    let (fds, rss) = settled(pid, fds_before);
    eprintln!(
        "faults: {CYCLES} connect/ApiVersions/close cycles in {took:?}; klink fds {fds_before} -> {fds}, \
         RSS {rss_before} -> {rss} KiB"
    );
    assert!(
        fds <= fds_before,
        "no descriptor left behind by churn: {fds_before} -> {fds}"
    );
    assert!(
        rss <= rss_before + RSS_SLACK_KIB,
        "RSS grew by {} KiB over {CYCLES} cycles",
        rss - rss_before
    );

    // Crowds of idle connections up to the limit, twice: the allocator
    // keeps what the first one freed (glibc does not give it back), so
    // growth is what the second crowd adds to the first.
    let (fds_crowded, rss_crowded) = crowd(&klink, &frame, LIMIT);
    let mut after: Vec<(usize, u64)> = vec![settled(pid, fds_before)];
    for _ in 0..2 {
        crowd(&klink, &frame, LIMIT);
        after.push(settled(pid, fds_before));
    }
    eprintln!(
        "faults: {LIMIT} idle connections: klink fds {fds_crowded}, RSS {rss_crowded} KiB \
         ({:.2} KiB each); after each of three crowds: {after:?} (fds, RSS KiB)",
        rss_crowded.saturating_sub(rss) as f64 / LIMIT as f64
    );
    for (fds, _) in &after {
        assert!(*fds <= fds_before, "no descriptor left behind by a crowd");
    }
    // Measured against the second crowd, not the first: how much glibc
    // hands back after the first crowd varies (72 and 106 MiB in two runs
    // here), and a leak shows as what each crowd adds to the one before.
    let (second, last) = (after[1].1, after[after.len() - 1].1);
    assert!(
        last <= second + RSS_SLACK_KIB,
        "more crowds kept growing RSS: {after:?}"
    );
    // And a new client is served again.
    churn(klink.bootstrap, &frame, 10);
}

/// Opens `limit` idle connections to klink (the last one served, so every
/// one is a session), checks that one more is closed at once with a log
/// line and that the crowd is still served, then closes them all. Gives
/// klink's descriptors and RSS with the crowd open.
fn crowd(klink: &Klink, frame: &[u8], limit: usize) -> (usize, u64) {
    let served = |stream: &mut TcpStream, what: &str| {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream.write_all(frame).expect("write");
        let mut length = [0u8; 4];
        stream.read_exact(&mut length).expect(what);
        let mut answer = vec![0u8; i32::from_be_bytes(length) as usize];
        stream.read_exact(&mut answer).expect(what);
    };
    let mut crowd: Vec<TcpStream> = (0..limit)
        .map(|_| TcpStream::connect(klink.bootstrap).expect("connect"))
        .collect();
    if let Some(last) = crowd.last_mut() {
        served(last, "the limit-th connection is served");
    }
    let open = fds_and_rss(klink.process.pid());
    // One too many: accepted by the kernel, closed by klink at once.
    let mut extra = TcpStream::connect(klink.bootstrap).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = extra.write_all(frame);
    let mut byte = [0u8; 1];
    match extra.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection past the limit was served: {other:?}"),
    }
    crate::harness::wait_for_log(
        &klink.process,
        "refusing client connections: at max_client_connections",
        Duration::from_secs(5),
    );
    if let Some(first) = crowd.first_mut() {
        served(first, "an open connection is served at the limit");
    }
    open
}
