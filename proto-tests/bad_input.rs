//! Client input never hurts klink: each bad connection is closed with a log
//! line naming the peer, and a normal client succeeds right after.

use std::net::Shutdown;

use kafka_protocol::messages::{ApiVersionsResponse, MetadataRequest};
use kafka_protocol::protocol::Decodable;

use crate::harness::Klink;
use crate::raw::RawConn;
use crate::{metadata_brokers, proxied};

fn normal_client_succeeds(klink: &mut Klink) {
    assert!(klink.process.is_running(), "klink is still running");
    let brokers = metadata_brokers(klink, 12);
    assert!(!brokers.is_empty(), "a normal client gets metadata");
}

/// Sends `bytes` on a fresh connection and expects klink to close it, with a
/// log line naming this connection's address and containing `logged`.
fn expect_closed(klink: &mut Klink, bytes: &[u8], logged: &str) {
    let mut conn = RawConn::connect(klink.bootstrap);
    let local = conn.stream.local_addr().expect("local addr").to_string();
    conn.send_bytes(bytes);
    assert!(
        conn.closed_by_peer(),
        "klink closes the connection after {logged:?}"
    );
    crate::harness::wait_for_log(&klink.process, &local, std::time::Duration::from_secs(5));
    let log = klink.process.log_text();
    let line = log.lines().find(|l| l.contains(&local)).unwrap_or_default();
    assert!(
        line.contains(logged),
        "log line for {local} mentions {logged:?}: {line}"
    );
    normal_client_succeeds(klink);
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as i32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// Deterministic noise, so a failure can be replayed.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        })
        .collect()
}

#[test]
fn bad_input_closes_one_connection_and_nothing_else() {
    let (_broker, mut klink) = proxied("bad-input");
    // A connection that stays open through all of it keeps working.
    let mut bystander = RawConn::connect(klink.bootstrap);
    bystander.call(&MetadataRequest::default().with_topics(None), 12);

    expect_closed(&mut klink, &i32::MAX.to_be_bytes(), "exceeds the limit");
    expect_closed(&mut klink, &(-7i32).to_be_bytes(), "negative frame length");
    expect_closed(&mut klink, &frame(&[0, 3, 0]), "too short");
    // Random bytes announcing a huge length, and random bytes inside a frame
    // of plausible length (garbage header: unknown key, odd version, ...).
    let mut garbage = noise(4096, 7);
    garbage[0] = 0x5a;
    expect_closed(&mut klink, &garbage, "exceeds the limit");
    let mut payload = noise(200, 11);
    payload[0..2].copy_from_slice(&31_000i16.to_be_bytes());
    expect_closed(&mut klink, &frame(&payload), "unknown API key 31000");
    // A well-formed header with an API key no Kafka version defines.
    let mut unknown = Vec::new();
    unknown.extend_from_slice(&999i16.to_be_bytes());
    unknown.extend_from_slice(&0i16.to_be_bytes());
    unknown.extend_from_slice(&42i32.to_be_bytes());
    unknown.extend_from_slice(&(-1i16).to_be_bytes());
    expect_closed(&mut klink, &frame(&unknown), "unknown API key 999");
    // A known API at a version nobody speaks.
    let mut metadata_v99 = unknown.clone();
    metadata_v99[0..2].copy_from_slice(&3i16.to_be_bytes());
    metadata_v99[2..4].copy_from_slice(&99i16.to_be_bytes());
    expect_closed(&mut klink, &frame(&metadata_v99), "Metadata v99");

    // Closed mid-frame: half a frame, then the client goes away.
    let mut conn = RawConn::connect(klink.bootstrap);
    let local = conn.stream.local_addr().expect("local").to_string();
    conn.send_bytes(&frame(&noise(100, 3))[..40]);
    conn.stream.shutdown(Shutdown::Both).expect("shutdown");
    crate::harness::wait_for_log(&klink.process, &local, std::time::Duration::from_secs(5));
    assert!(
        klink.process.log_text().contains("mid-frame"),
        "mid-frame close is logged"
    );
    normal_client_succeeds(&mut klink);

    bystander.call(&MetadataRequest::default().with_topics(None), 12);
}

#[test]
fn api_versions_v99_gets_a_v0_unsupported_version_answer() {
    let (_broker, mut klink) = proxied("bad-apiversions");
    let mut conn = RawConn::connect(klink.bootstrap);
    let mut request = Vec::new();
    request.extend_from_slice(&18i16.to_be_bytes());
    request.extend_from_slice(&99i16.to_be_bytes());
    request.extend_from_slice(&5i32.to_be_bytes());
    request.extend_from_slice(&(-1i16).to_be_bytes());
    request.extend_from_slice(&[0, 0, 0]); // whatever v99 might carry
    conn.send_bytes(&frame(&request));
    let mut payload = conn.read_frame().expect("an answer, not a close");
    assert_eq!(
        i32::from_be_bytes(payload[0..4].try_into().expect("4 bytes")),
        5
    );
    let mut body = payload.split_off(4); // response header v0: correlation id only
    let response = ApiVersionsResponse::decode(&mut body, 0).expect("v0 body");
    assert_eq!(response.error_code, 35, "UNSUPPORTED_VERSION");
    let own = response
        .api_keys
        .iter()
        .find(|k| k.api_key == 18)
        .expect("ApiVersions range");
    assert!(own.max_version >= 3);
    // The client retries at a version both know, on the same connection.
    let retry = conn.call(
        &kafka_protocol::messages::ApiVersionsRequest::default(),
        own.max_version,
    );
    assert_eq!(retry.error_code, 0);
    assert!(retry.api_keys.len() > 10);
    normal_client_succeeds(&mut klink);
}

/// Requests that cross clusters are decoded by klink; a request whose array
/// length lies (2^31-1 topics in 19 bytes) must fail that one connection,
/// not make klink reserve 154 GB and abort.
#[test]
fn lying_array_lengths_in_decoded_requests_do_not_hurt_klink() {
    let source = crate::harness::Broker::start("bad-arrays-source");
    let target = crate::harness::Broker::start("bad-arrays-target");
    let mut klink = crate::harness::Klink::start_with(
        &source,
        crate::harness::KlinkOptions {
            clusters: vec![("target".into(), target.addr)],
            extra_config: "[[links]]\nid = \"m\"\nsource = \"source\"\ntarget = \"target\"\nmirror = false\ntopics = [\"moved\"]\n".into(),
            ..Default::default()
        },
    );
    klink.ctl_ok(&["route", "moved", "--writes", "target", "--reads", "target"]);
    let mut payload = Vec::new();
    payload.extend_from_slice(&3i16.to_be_bytes()); // Metadata
    payload.extend_from_slice(&1i16.to_be_bytes()); // v1
    payload.extend_from_slice(&7i32.to_be_bytes());
    payload.extend_from_slice(&1i16.to_be_bytes());
    payload.push(b'x');
    payload.extend_from_slice(&i32::MAX.to_be_bytes()); // topics: 2^31-1 entries
    expect_closed(&mut klink, &frame(&payload), "Metadata v1");
}
