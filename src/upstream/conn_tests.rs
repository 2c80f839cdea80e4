//! The upstream connection's pipelining, timeouts and acks=0 handling.

use super::*;

const BUDGET: Duration = Duration::from_secs(30);
const SLOT: ClusterSlot = ClusterSlot::KLINK;

fn sent() -> Sent {
    Sent {
        api_key: 0,
        at: std::time::Instant::now(),
    }
}

fn response(id: i32) -> Frame {
    let mut bytes = vec![0, 0, 0, 4];
    bytes.extend_from_slice(&id.to_be_bytes());
    Frame::from_prefixed(Bytes::from(bytes))
}

#[test]
fn acks0_answers_are_swallowed_and_silence_is_tolerated() {
    let (tx1, mut rx1) = oneshot::channel();
    let (tx4, mut rx4) = oneshot::channel();
    let mut awaited = VecDeque::from([
        Awaited::Response(1, tx1, BUDGET, sent()),
        Awaited::MaybeResponse(2), // this broker stays silent (Kafka)
        Awaited::MaybeResponse(3), // this one answers (tansu)
        Awaited::Response(4, tx4, BUDGET, sent()),
    ]);
    let mut unsettled = 2;
    assert_eq!(
        settle(&mut awaited, &mut unsettled, Some(1), response(1), SLOT),
        Ok(true)
    );
    assert!(rx1.try_recv().is_ok());
    assert_eq!(
        settle(&mut awaited, &mut unsettled, Some(3), response(3), SLOT),
        Ok(false)
    );
    assert_eq!(
        settle(&mut awaited, &mut unsettled, Some(4), response(4), SLOT),
        Ok(true)
    );
    assert!(rx4.try_recv().is_ok());
    assert_eq!(unsettled, 0);
    assert!(awaited.is_empty());
}

#[test]
fn a_response_nobody_asked_for_is_an_error() {
    let (tx, _rx) = oneshot::channel();
    let mut awaited = VecDeque::from([Awaited::Response(5, tx, BUDGET, sent())]);
    let mut unsettled = 0;
    assert_eq!(
        settle(&mut awaited, &mut unsettled, Some(9), response(9), SLOT),
        Err(Some(5))
    );
    assert_eq!(
        settle(&mut awaited, &mut unsettled, Some(9), response(9), SLOT),
        Err(None)
    );
}

fn request(correlation_id: i32) -> Bytes {
    // Length, api key 18 (ApiVersions) v0, correlation id, no client id.
    let mut bytes = vec![0, 0, 0, 10, 0, 18, 0, 0];
    bytes.extend_from_slice(&correlation_id.to_be_bytes());
    bytes.extend_from_slice(&[0xff, 0xff]);
    Bytes::from(bytes)
}

#[tokio::test]
async fn an_upstream_that_never_answers_fails_every_waiter_and_closes() {
    // Accepts and reads, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let (mut stream, _) = silent.accept().await.expect("accept");
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
    });
    let timeout = Duration::from_millis(200);
    let plaintext = Security::default();
    let conn =
        UpstreamConn::connect_timed(Arc::from("target"), &addr, 1 << 20, timeout, &plaintext)
            .await
            .expect("connect");
    let started = std::time::Instant::now();
    let first = conn
        .send(request(1), true)
        .await
        .expect("sent")
        .expect("reply");
    let second = conn
        .send(request(2), true)
        .await
        .expect("sent")
        .expect("reply");
    for reply in [first, second] {
        let error = reply.await.expect("answered").expect_err("failed");
        assert_eq!(error.kind, Kind::Timeout, "{error}");
        assert!(error.retriable);
    }
    let waited = started.elapsed();
    assert!(waited >= timeout, "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(conn.is_closed(), "a hung connection is dropped");
    assert!(conn.send(request(3), true).await.is_err());
}

#[tokio::test]
async fn a_request_allowed_longer_is_not_cut_short() {
    let (server, addr) = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        (listener, addr)
    };
    // Answers correlation id 7 after 400 ms.
    tokio::spawn(async move {
        let (mut stream, _) = server.accept().await.expect("accept");
        let mut request = [0u8; 14];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut request)
            .await
            .expect("read");
        tokio::time::sleep(Duration::from_millis(400)).await;
        let answer = [0, 0, 0, 4, 0, 0, 0, 7];
        tokio::io::AsyncWriteExt::write_all(&mut stream, &answer)
            .await
            .expect("write");
        std::future::pending::<()>().await;
    });
    let conn = UpstreamConn::connect_timed(
        Arc::from("source"),
        &addr,
        1 << 20,
        Duration::from_millis(100),
        &Security::default(),
    )
    .await
    .expect("connect");
    let reply = conn
        .send_within(request(7), true, Duration::from_secs(2))
        .await
        .expect("sent")
        .expect("reply");
    assert!(reply.await.expect("answered").is_ok());
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn a_dying_broker_that_still_accepts_does_not_end_its_outage() {
    // Accepts, reads a request and hangs up: what a broker being killed
    // does for a moment. Then it answers one ApiVersions.
    let dying = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = dying.local_addr().expect("addr").to_string();
    let answer_from = 3;
    tokio::spawn(async move {
        for n in 1.. {
            let (mut stream, _) = dying.accept().await.expect("accept");
            let mut request = [0u8; 14];
            let _ = tokio::io::AsyncReadExt::read_exact(&mut stream, &mut request).await;
            if n >= answer_from {
                // Length 4, then the correlation id.
                let mut reply = vec![0, 0, 0, 4];
                reply.extend_from_slice(&request[8..12]);
                let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &reply).await;
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut [0u8; 1]).await;
            }
        }
    });
    let cluster: Arc<str> = Arc::from("dying-source");
    let key: Arc<str> = Arc::from(addr.as_str());
    let plaintext = Security::default();
    for n in 1..=answer_from {
        let conn = UpstreamConn::connect_timed(
            cluster.clone(),
            &addr,
            1 << 20,
            Duration::from_secs(5),
            &plaintext,
        )
        .await
        .expect("connect");
        if n > 1 {
            assert!(
                outages().is_down(&cluster, &key),
                "connecting again is no recovery (connection {n})"
            );
        }
        let reply = conn
            .send(request(n), true)
            .await
            .expect("sent")
            .expect("reply");
        let answered = reply.await.expect("settled");
        if n < answer_from {
            assert!(answered.is_err(), "connection {n} hung up");
            assert!(outages().is_down(&cluster, &key), "connection {n}");
        } else {
            assert!(answered.is_ok(), "connection {n} answered");
            assert!(!outages().is_down(&cluster, &key), "an answer is");
        }
    }
}
