use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use crate::error::{Error, Kind, Result};
use crate::wire::{FLUSH_AT, Frame, FrameCodec, FrameWriter, RequestHeader};

/// The response to one forwarded request, when it arrives.
pub type Reply = oneshot::Receiver<Result<Frame>>;

struct Outbound {
    frame: Bytes,
    awaited: Awaited,
}

/// A pipelined connection to one upstream broker.
#[derive(Clone)]
pub struct UpstreamConn {
    tx: mpsc::Sender<Outbound>,
    cluster: Arc<str>,
    addr: Arc<str>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests queued toward one broker before the sender waits; the client
/// session has its own bound on requests in flight.
const QUEUE_DEPTH: usize = 256;
/// First read buffer of an upstream connection; the codec grows it (by
/// doubling) toward big fetch responses.
const READ_BUFFER: usize = 16 * 1024;

impl UpstreamConn {
    pub async fn connect(
        cluster: Arc<str>,
        addr: &str,
        max_frame_bytes: u32,
    ) -> Result<UpstreamConn> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| {
                Error::upstream(
                    &cluster,
                    Kind::Timeout,
                    format!("connect to {addr} timed out"),
                )
            })?
            .map_err(|e| Error::upstream(&cluster, Kind::Io, format!("connect to {addr}: {e}")))?;
        // Requests and responses are small and latency-bound as often as not.
        let _ = stream.set_nodelay(true);
        let (read, write) = stream.into_split();
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (inflight_tx, inflight_rx) = mpsc::unbounded_channel();
        let addr: Arc<str> = Arc::from(addr);
        tokio::spawn(write_requests(write, rx, inflight_tx));
        tokio::spawn(read_responses(
            read,
            inflight_rx,
            cluster.clone(),
            addr.clone(),
            max_frame_bytes,
        ));
        Ok(UpstreamConn { tx, cluster, addr })
    }

    pub fn address(&self) -> &str {
        &self.addr
    }

    /// Queues a whole request frame. Returns the reply to await, or `None`
    /// when the request gets no response (Produce with acks=0).
    pub async fn send(&self, frame: Bytes, expects_response: bool) -> Result<Option<Reply>> {
        let correlation_id =
            RequestHeader::correlation_id_of(frame.get(4..).unwrap_or_default())
                .ok_or_else(|| Error::klink(Kind::Protocol, "forwarding a frame without header"))?;
        let (awaited, reply) = if expects_response {
            let (tx, rx) = oneshot::channel();
            (Awaited::Response(correlation_id, tx), Some(rx))
        } else {
            (Awaited::MaybeResponse(correlation_id), None)
        };
        self.tx
            .send(Outbound { frame, awaited })
            .await
            .map_err(|_| self.closed())?;
        Ok(reply)
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    fn closed(&self) -> Error {
        Error::upstream(
            &self.cluster,
            Kind::Closed,
            format!("connection to {} closed", self.addr),
        )
    }
}

/// What the reader should expect for one request written upstream.
enum Awaited {
    /// A response the session waits for.
    Response(i32, oneshot::Sender<Result<Frame>>),
    /// Produce with acks=0: Kafka sends nothing, but some Kafka-compatible
    /// brokers (tansu 0.6) answer anyway. An answer is swallowed; a later
    /// response proves none is coming.
    MaybeResponse(i32),
}

/// acks=0 requests remembered while no later response has settled them;
/// past this many the oldest are assumed unanswered.
const MAX_UNSETTLED_ACKS0: usize = 4096;

async fn write_requests(
    write: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outbound>,
    inflight: mpsc::UnboundedSender<Awaited>,
) {
    let mut out = FrameWriter::new(write);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(outbound) = next {
            // Register what to expect before the bytes leave, so the reader
            // can never see a response it has no entry for.
            if inflight.send(outbound.awaited).is_err() {
                return; // reader gone: the connection is dead
            }
            out.push(outbound.frame);
            if out.queued() >= FLUSH_AT && out.flush().await.is_err() {
                return;
            }
            next = rx.try_recv().ok();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.shutdown().await;
}

async fn read_responses(
    read: OwnedReadHalf,
    mut inflight: mpsc::UnboundedReceiver<Awaited>,
    cluster: Arc<str>,
    addr: Arc<str>,
    max_frame_bytes: u32,
) {
    let mut frames =
        FramedRead::with_capacity(read, FrameCodec::responses(max_frame_bytes), READ_BUFFER);
    let mut awaited: VecDeque<Awaited> = VecDeque::new();
    let mut unsettled_acks0 = 0usize;
    // The writer closes its side when the session is done sending; answers
    // to what it already sent are still owed to the session.
    let mut writer_done = false;
    let failure = loop {
        if writer_done && !awaited.iter().any(|a| matches!(a, Awaited::Response(..))) {
            return;
        }
        let frame = tokio::select! {
            next = frames.next() => match next {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => break Error::upstream(&cluster, Kind::Protocol, format!("{addr}: {e}")),
                None => break Error::upstream(&cluster, Kind::Closed, format!("{addr} closed the connection")),
            },
            entry = inflight.recv(), if !writer_done => {
                let Some(entry) = entry else {
                    writer_done = true;
                    continue;
                };
                if matches!(entry, Awaited::MaybeResponse(_)) {
                    unsettled_acks0 += 1;
                }
                awaited.push_back(entry);
                if unsettled_acks0 > MAX_UNSETTLED_ACKS0
                    && let Some(Awaited::MaybeResponse(_)) = awaited.front()
                {
                    awaited.pop_front();
                    unsettled_acks0 -= 1;
                }
                continue;
            }
        };
        while let Ok(entry) = inflight.try_recv() {
            if matches!(entry, Awaited::MaybeResponse(_)) {
                unsettled_acks0 += 1;
            }
            awaited.push_back(entry);
        }
        // A response payload starts with its correlation id.
        let got = frame
            .wire_bytes()
            .get(4..8)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        match settle(&mut awaited, &mut unsettled_acks0, got, frame) {
            Ok(()) => {}
            Err(expected) => {
                break Error::upstream(
                    &cluster,
                    Kind::Protocol,
                    format!("{addr} answered correlation id {got:?}, expected {expected:?}"),
                );
            }
        }
    };
    tracing::debug!(%failure, "upstream connection ended");
    inflight.close();
    while let Ok(entry) = inflight.try_recv() {
        awaited.push_back(entry);
    }
    for entry in awaited {
        if let Awaited::Response(_, waiter) = entry {
            let _ = waiter.send(Err(failure.clone()));
        }
    }
}

/// Hands a response to its waiter. Brokers answer in request order, so the
/// response settles every acks=0 entry before its own. Returns the expected
/// correlation id when the response belongs to nobody.
fn settle(
    awaited: &mut VecDeque<Awaited>,
    unsettled_acks0: &mut usize,
    got: Option<i32>,
    frame: Frame,
) -> std::result::Result<(), Option<i32>> {
    loop {
        match awaited.pop_front() {
            Some(Awaited::MaybeResponse(id)) => {
                *unsettled_acks0 -= 1;
                if Some(id) == got {
                    tracing::trace!(correlation_id = id, "dropped a broker's answer to acks=0");
                    return Ok(());
                }
            }
            Some(Awaited::Response(id, waiter)) => {
                if Some(id) == got {
                    let _ = waiter.send(Ok(frame));
                    return Ok(());
                }
                let _ = waiter.send(Err(Error::klink(
                    Kind::Protocol,
                    "upstream answered out of order",
                )));
                return Err(Some(id));
            }
            None => return Err(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Awaited::Response(1, tx1),
            Awaited::MaybeResponse(2), // this broker stays silent (Kafka)
            Awaited::MaybeResponse(3), // this one answers (tansu)
            Awaited::Response(4, tx4),
        ]);
        let mut unsettled = 2;
        assert_eq!(
            settle(&mut awaited, &mut unsettled, Some(1), response(1)),
            Ok(())
        );
        assert!(rx1.try_recv().is_ok());
        assert_eq!(
            settle(&mut awaited, &mut unsettled, Some(3), response(3)),
            Ok(())
        );
        assert_eq!(
            settle(&mut awaited, &mut unsettled, Some(4), response(4)),
            Ok(())
        );
        assert!(rx4.try_recv().is_ok());
        assert_eq!(unsettled, 0);
        assert!(awaited.is_empty());
    }

    #[test]
    fn a_response_nobody_asked_for_is_an_error() {
        let (tx, _rx) = oneshot::channel();
        let mut awaited = VecDeque::from([Awaited::Response(5, tx)]);
        let mut unsettled = 0;
        assert_eq!(
            settle(&mut awaited, &mut unsettled, Some(9), response(9)),
            Err(Some(5))
        );
        assert_eq!(
            settle(&mut awaited, &mut unsettled, Some(9), response(9)),
            Err(None)
        );
    }
}
