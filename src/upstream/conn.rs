use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Kind, Result};
use crate::metrics::{ClusterSlot, metrics};
use crate::upstream::outages;
use crate::upstream::security::{Security, Stream};
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
    /// Cancelled when the connection is gone (closed, broken or hung), so
    /// its owner opens a new one instead of queueing into a dead one.
    dead: CancellationToken,
    request_timeout: Duration,
    /// Where this connection's figures are counted.
    slot: ClusterSlot,
    /// When its owners should stop sending on it: its login expires soon.
    retire_at: Option<std::time::Instant>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an upstream may take to answer a request before klink gives up
/// on the connection, as a Kafka client's `request.timeout.ms` does.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests queued toward one broker before the sender waits; the client
/// session has its own bound on requests in flight.
const QUEUE_DEPTH: usize = 256;
/// First read buffer of an upstream connection; the codec grows it (by
/// doubling) toward big fetch responses.
const READ_BUFFER: usize = 16 * 1024;

impl UpstreamConn {
    /// Connects to `addr`, goes through the cluster's TLS and login if it
    /// has them, and starts the connection's reader and writer.
    /// `request_timeout` is how long an answer may take.
    pub async fn connect_timed(
        cluster: Arc<str>,
        addr: &str,
        max_frame_bytes: u32,
        request_timeout: Duration,
        security: &Security,
    ) -> Result<UpstreamConn> {
        let addr: Arc<str> = Arc::from(addr);
        let connected = async {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&*addr))
                .await
                .map_err(|_| {
                    Error::upstream(
                        &cluster,
                        Kind::Timeout,
                        format!("connect to {addr} timed out"),
                    )
                })?
                .map_err(|e| {
                    Error::upstream(&cluster, Kind::Io, format!("connect to {addr}: {e}"))
                })?;
            // Requests and responses are small and latency-bound as often
            // as not.
            let _ = tcp.set_nodelay(true);
            security.establish(&cluster, &addr, tcp).await
        };
        // The outage ends at the connection's first answer (see the
        // reader), not here: a broker being killed still accepts
        // connections for a moment, which would end it and start another.
        let established = match connected.await {
            Ok(established) => established,
            Err(e) => return Err(outages().failed(&cluster, &addr, e)),
        };
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (inflight_tx, inflight_rx) = mpsc::unbounded_channel();
        let dead = CancellationToken::new();
        let slot = metrics().cluster_slot(&cluster);
        let peer = Peer {
            cluster: cluster.clone(),
            addr: addr.clone(),
            slot,
        };
        let pipes = Pipes {
            requests: rx,
            inflight_tx,
            inflight_rx,
            peer,
            max_frame_bytes,
            dead: dead.clone(),
        };
        match established.stream {
            // Owned halves: no lock between the reader and the writer.
            Stream::Plain(tcp) => {
                let (read, write) = tcp.into_split();
                pipes.spawn(read, write);
            }
            Stream::Tls(tls) => {
                let (read, write) = tokio::io::split(*tls);
                pipes.spawn(read, write);
            }
        }
        // Retired before the broker's login session runs out (KIP-368): its
        // owners open a new, freshly logged-in connection for their next
        // requests while this one finishes what it carries. The Java
        // client re-authenticates between 85% and 95% of the lifetime.
        let retire_at = established.session_lifetime.map(|lifetime| {
            security.note_session_lifetime(&cluster, lifetime);
            std::time::Instant::now() + lifetime.mul_f64(0.8)
        });
        Ok(UpstreamConn {
            tx,
            cluster,
            addr,
            dead,
            request_timeout,
            slot,
            retire_at,
        })
    }

    pub fn address(&self) -> &str {
        &self.addr
    }

    /// Queues a whole request frame. Returns the reply to await, or `None`
    /// when the request gets no response (Produce with acks=0). An answer
    /// that takes longer than the connection's request timeout fails this
    /// request and every other one waiting on the connection, and closes
    /// it: a broker that stops answering one request answers none after it.
    pub async fn send(&self, frame: Bytes, expects_response: bool) -> Result<Option<Reply>> {
        self.send_within(frame, expects_response, Duration::ZERO)
            .await
    }

    /// As [`UpstreamConn::send`], for a request the broker may rightly hold
    /// for `extra` beyond the request timeout (JoinGroup waits for the
    /// whole group up to its rebalance timeout).
    pub async fn send_within(
        &self,
        frame: Bytes,
        expects_response: bool,
        extra: Duration,
    ) -> Result<Option<Reply>> {
        if self.is_dead() {
            return Err(self.closed());
        }
        let correlation_id =
            RequestHeader::correlation_id_of(frame.get(4..).unwrap_or_default())
                .ok_or_else(|| Error::klink(Kind::Protocol, "forwarding a frame without header"))?;
        // The API key follows the length prefix.
        let api_key = frame
            .get(4..6)
            .map_or(-1, |k| i16::from_be_bytes([k[0], k[1]]));
        metrics().upstream_request(self.slot, api_key, frame.len());
        let (awaited, reply) = if expects_response {
            let (tx, rx) = oneshot::channel();
            let budget = self.request_timeout.saturating_add(extra);
            let sent = Sent {
                api_key,
                at: std::time::Instant::now(),
            };
            (
                Awaited::Response(correlation_id, tx, budget, sent),
                Some(rx),
            )
        } else {
            (Awaited::MaybeResponse(correlation_id), None)
        };
        self.tx
            .send(Outbound { frame, awaited })
            .await
            .map_err(|_| self.closed())?;
        Ok(reply)
    }

    /// Whether its owner should open a new connection instead: this one
    /// is gone, or its login is about to expire.
    pub fn is_closed(&self) -> bool {
        if self.is_dead() {
            return true;
        }
        let retired = self
            .retire_at
            .is_some_and(|at| std::time::Instant::now() >= at);
        if retired {
            tracing::debug!(cluster = %self.cluster, addr = %self.addr, "login about to expire: a new connection for the next requests");
        }
        retired
    }

    /// Whether the connection can carry no more requests. A retired one
    /// still can: a request handed to it just as it retired goes out.
    fn is_dead(&self) -> bool {
        self.dead.is_cancelled() || self.tx.is_closed()
    }

    /// Drops the connection: every request waiting on it fails.
    pub fn close(&self) {
        self.dead.cancel();
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
    /// A response the session waits for, and how long it may take once
    /// it is the oldest one outstanding.
    Response(i32, oneshot::Sender<Result<Frame>>, Duration, Sent),
    /// Produce with acks=0: Kafka sends nothing, but some Kafka-compatible
    /// brokers (tansu 0.6) answer anyway. An answer is swallowed; a later
    /// response proves none is coming.
    MaybeResponse(i32),
}

/// A request's API and when it was queued, for the figures.
#[derive(Debug, Clone, Copy)]
struct Sent {
    api_key: i16,
    at: std::time::Instant,
}

/// acks=0 requests remembered while no later response has settled them;
/// past this many the oldest are assumed unanswered.
const MAX_UNSETTLED_ACKS0: usize = 4096;

async fn write_requests<W: AsyncWrite + Unpin>(
    write: W,
    mut rx: mpsc::Receiver<Outbound>,
    inflight: mpsc::UnboundedSender<Awaited>,
    dead: CancellationToken,
) {
    let mut out = FrameWriter::new(write);
    loop {
        let first = tokio::select! {
            _ = dead.cancelled() => break,
            first = rx.recv() => match first {
                Some(first) => first,
                None => break,
            },
        };
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
    // Requests still queued get their waiters' senders dropped, which the
    // waiters see as a closed connection.
    rx.close();
    let _ = out.shutdown().await;
}

/// What a connection's writer and reader tasks share, before they start.
struct Pipes {
    requests: mpsc::Receiver<Outbound>,
    inflight_tx: mpsc::UnboundedSender<Awaited>,
    inflight_rx: mpsc::UnboundedReceiver<Awaited>,
    peer: Peer,
    max_frame_bytes: u32,
    dead: CancellationToken,
}

impl Pipes {
    fn spawn<R, W>(self, read: R, write: W)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        tokio::spawn(write_requests(
            write,
            self.requests,
            self.inflight_tx,
            self.dead.clone(),
        ));
        tokio::spawn(read_responses(
            read,
            self.inflight_rx,
            self.peer,
            self.max_frame_bytes,
            self.dead,
        ));
    }
}

/// The broker at the other end, for errors and logs.
struct Peer {
    cluster: Arc<str>,
    addr: Arc<str>,
    slot: ClusterSlot,
}

async fn read_responses<R: AsyncRead + Unpin>(
    read: R,
    mut inflight: mpsc::UnboundedReceiver<Awaited>,
    peer: Peer,
    max_frame_bytes: u32,
    dead: CancellationToken,
) {
    let Peer {
        cluster,
        addr,
        slot,
    } = peer;
    let mut frames =
        FramedRead::with_capacity(read, FrameCodec::responses(max_frame_bytes), READ_BUFFER);
    let mut awaited: VecDeque<Awaited> = VecDeque::new();
    let mut unsettled_acks0 = 0usize;
    // When the oldest awaited response must have arrived by. Brokers answer
    // in order, so only the oldest one's clock runs; the next one's starts
    // when it becomes the oldest.
    let mut deadline: Option<Instant> = None;
    // The writer closes its side when the session is done sending; answers
    // to what it already sent are still owed to the session.
    let mut writer_done = false;
    // Whether the broker ended the connection, not klink (its owner closed
    // it, or it timed out).
    let mut broker_side = true;
    let mut answered_before = false;
    let failure = loop {
        if writer_done && !awaited.iter().any(|a| matches!(a, Awaited::Response(..))) {
            dead.cancel();
            return;
        }
        if deadline.is_none() {
            deadline = oldest_budget(&awaited).map(|budget| Instant::now() + budget);
        }
        let frame = tokio::select! {
            _ = dead.cancelled() => {
                broker_side = false;
                break Error::upstream(&cluster, Kind::Closed, format!("connection to {addr} dropped"));
            }
            _ = sleep_until(deadline) => {
                let error = Error::upstream(
                    &cluster,
                    Kind::Timeout,
                    format!("{addr} did not answer in time; dropping the connection"),
                );
                tracing::warn!(%cluster, %addr, "upstream request timed out: connection dropped, waiting requests failed");
                break error.logged();
            }
            next = frames.next() => match next {
                Some(Ok(frame)) => frame,
                Some(Err(crate::wire::FrameError::Io(e))) => break Error::upstream(&cluster, Kind::Io, format!("{addr}: {e}")),
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
        match settle(&mut awaited, &mut unsettled_acks0, got, frame, slot) {
            Ok(answered) => {
                if answered {
                    deadline = None;
                }
                if !answered_before {
                    answered_before = true;
                    outages().reached(&cluster, &addr);
                }
            }
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
    dead.cancel();
    inflight.close();
    while let Ok(entry) = inflight.try_recv() {
        awaited.push_back(entry);
    }
    let owed = awaited.iter().any(|a| matches!(a, Awaited::Response(..)));
    // A broker that breaks a connection with answers owed may be going
    // down: the outage is logged once, not once per waiting request. A
    // connection klink itself dropped, or an idle one the broker closed,
    // is no outage.
    let failure = if owed && broker_side && matches!(failure.kind, Kind::Closed | Kind::Io) {
        outages().failed(&cluster, &addr, failure)
    } else {
        failure
    };
    for entry in awaited {
        if let Awaited::Response(_, waiter, _, sent) = entry {
            metrics().upstream_error(slot, sent.api_key);
            let _ = waiter.send(Err(failure.clone()));
        }
    }
}

/// The time the oldest awaited response may take; acks=0 entries wait for
/// nothing.
fn oldest_budget(awaited: &VecDeque<Awaited>) -> Option<Duration> {
    awaited.iter().find_map(|a| match a {
        Awaited::Response(_, _, budget, _) => Some(*budget),
        Awaited::MaybeResponse(_) => None,
    })
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Hands a response to its waiter. Brokers answer in request order, so the
/// response settles every acks=0 entry before its own. Returns whether a
/// waiter was answered (not an acks=0 answer swallowed), or the expected
/// correlation id when the response belongs to nobody.
fn settle(
    awaited: &mut VecDeque<Awaited>,
    unsettled_acks0: &mut usize,
    got: Option<i32>,
    frame: Frame,
    slot: ClusterSlot,
) -> std::result::Result<bool, Option<i32>> {
    loop {
        match awaited.pop_front() {
            Some(Awaited::MaybeResponse(id)) => {
                *unsettled_acks0 -= 1;
                if Some(id) == got {
                    tracing::trace!(correlation_id = id, "dropped a broker's answer to acks=0");
                    return Ok(false);
                }
            }
            Some(Awaited::Response(id, waiter, _, sent)) => {
                if Some(id) == got {
                    metrics().upstream_answer(slot, frame.wire_bytes().len(), sent.at.elapsed());
                    let _ = waiter.send(Ok(frame));
                    return Ok(true);
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
#[path = "conn_tests.rs"]
mod tests;
