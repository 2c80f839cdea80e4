//! An upstream that accepts requests and stops answering: klink times the
//! requests out with a retriable error, drops the connection, keeps the
//! other cluster flowing, and recovers by itself when answers come back.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::harness::{Broker, Klink, KlinkOptions, free_port, wait_for_log};
use crate::raw::RawConn;
use crate::routing::{create_through_klink, py};

/// A TCP relay in front of a broker that can swallow the broker's answers.
struct Relay {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
}

impl Relay {
    fn start(port: u16, upstream: SocketAddr) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("relay bind");
        let silent = Arc::new(AtomicBool::new(false));
        let quiet = silent.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(broker) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (Ok(client_in), Ok(broker_in)) = (client.try_clone(), broker.try_clone())
                else {
                    continue;
                };
                std::thread::spawn(move || copy(client_in, broker, None));
                let quiet = quiet.clone();
                std::thread::spawn(move || copy(broker_in, client, Some(quiet)));
            }
        });
        Relay {
            addr: ([127, 0, 0, 1], port).into(),
            silent,
        }
    }

    fn go_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }
}

/// Copies until either side closes; answers are dropped while `silent`.
fn copy(mut from: TcpStream, mut to: TcpStream, silent: Option<Arc<AtomicBool>>) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if silent.as_ref().is_some_and(|s| s.load(Ordering::SeqCst)) {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

fn produce_one(conn: &mut RawConn, topic: &str, value: &str) -> i16 {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(crate::one_record_batch(value))),
                ]),
        ]);
    let response = conn.call(&request, 9);
    response.responses[0].partition_responses[0].error_code
}

#[test]
fn a_hung_upstream_times_out_retriably_and_klink_recovers_by_itself() {
    let source = Broker::start("hung-source");
    let (target_port, relay_port) = (free_port(), free_port());
    let target = Broker::start_advertising(target_port, relay_port, "hung-target");
    let relay = Relay::start(relay_port, target.addr);
    let klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), relay.addr)],
            extra_proxy: "upstream_request_timeout_ms = 1500".into(),
            extra_config:
                "[[links]]\nid = \"m\"\nsource = \"source\"\ntarget = \"target\"\nmirror = false\n\
                           topics = [\"orders\", \"payments\"]\n"
                    .into(),
            ..Default::default()
        },
    );
    create_through_klink(&klink, &["orders", "payments"], 1);
    py(&[
        "create",
        "--bootstrap",
        &relay.addr.to_string(),
        "--topic",
        "payments",
        "--partitions",
        "1",
    ]);
    klink.ctl_ok(&["route", "payments", "--writes", "target"]);
    let mut client = RawConn::connect(klink.bootstrap);
    assert_eq!(produce_one(&mut client, "payments", "before"), 0);

    relay.go_silent(true);
    let asked = Instant::now();
    let code = produce_one(&mut client, "payments", "unanswered");
    let waited = asked.elapsed();
    assert_eq!(code, 7, "REQUEST_TIMED_OUT: retriable, may be written");
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(10),
        "answered after the configured timeout: {waited:?}"
    );
    wait_for_log(
        &klink.process,
        "upstream request timed out",
        Duration::from_secs(5),
    );
    // The same client connection is still up, and the healthy cluster
    // answers at once.
    let asked = Instant::now();
    assert_eq!(produce_one(&mut client, "orders", "healthy"), 0);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    relay.go_silent(false);
    // klink dropped the hung connection and opens a new one by itself.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let code = produce_one(&mut client, "payments", "after");
        if code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "payments never recovered: {code}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(target);
}
