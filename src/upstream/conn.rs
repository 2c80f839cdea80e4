use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use crate::error::{Error, Kind, Result};
use crate::wire::{Frame, FrameCodec, RequestHeader};

/// The response to one forwarded request, when it arrives.
pub type Reply = oneshot::Receiver<Result<Frame>>;

struct Outbound {
    frame: Bytes,
    expects: Option<(i32, oneshot::Sender<Result<Frame>>)>,
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
const WRITE_BUFFER: usize = 64 * 1024;

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
        let (expects, reply) = if expects_response {
            let correlation_id = RequestHeader::correlation_id_of(
                frame.get(4..).unwrap_or_default(),
            )
            .ok_or_else(|| Error::klink(Kind::Protocol, "forwarding a frame without header"))?;
            let (tx, rx) = oneshot::channel();
            (Some((correlation_id, tx)), Some(rx))
        } else {
            (None, None)
        };
        self.tx
            .send(Outbound { frame, expects })
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

async fn write_requests(
    write: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Outbound>,
    inflight: mpsc::UnboundedSender<(i32, oneshot::Sender<Result<Frame>>)>,
) {
    let mut out = BufWriter::with_capacity(WRITE_BUFFER, write);
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(outbound) = next {
            // Register the waiter before the bytes leave, so the reader can
            // never see a response it has no waiter for.
            if let Some(waiter) = outbound.expects
                && inflight.send(waiter).is_err()
            {
                return; // reader gone: the connection is dead
            }
            if out.write_all(&outbound.frame).await.is_err() {
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
    mut inflight: mpsc::UnboundedReceiver<(i32, oneshot::Sender<Result<Frame>>)>,
    cluster: Arc<str>,
    addr: Arc<str>,
    max_frame_bytes: u32,
) {
    let mut frames = FramedRead::new(read, FrameCodec::responses(max_frame_bytes));
    let failure = loop {
        let frame = match frames.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                break Error::upstream(&cluster, Kind::Protocol, format!("{addr}: {e}"));
            }
            None => {
                break Error::upstream(
                    &cluster,
                    Kind::Closed,
                    format!("{addr} closed the connection"),
                );
            }
        };
        let Some((expected, waiter)) = inflight.recv().await else {
            return;
        };
        // A response payload starts with its correlation id.
        let got = frame
            .wire_bytes()
            .get(4..8)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        if got != Some(expected) {
            let error = Error::upstream(
                &cluster,
                Kind::Protocol,
                format!("{addr} answered correlation id {got:?}, expected {expected}"),
            );
            let _ = waiter.send(Err(error.clone()));
            break error;
        }
        let _ = waiter.send(Ok(frame));
    };
    tracing::debug!(%failure, "upstream connection ended");
    inflight.close();
    while let Ok((_, waiter)) = inflight.try_recv() {
        let _ = waiter.send(Err(failure.clone()));
    }
}
