//! One client connection: requests are read and forwarded as they arrive
//! (many in flight), and responses are written back strictly in request
//! order, whichever upstream answers first.
//!
//! Longer than most files here (~760 lines) on purpose: the reader, the
//! writer and what each does when an upstream fails are one pipeline, and
//! reading them together is how one checks that every request gets exactly
//! one answer, in order. Opening upstream connections ([`upstreams`]),
//! noting what a promotion waits on ([`held`]), bounding the answers a
//! slow reader leaves in klink ([`budget`]) and clients logging in to
//! klink ([`login`]) live beside it.

mod budget;
mod held;
pub(super) mod login;
mod upstreams;

use upstreams::extra_wait;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::ProxyContext;
use crate::broker::VirtualBroker;
use crate::error::{Error, Kind, Result};
use crate::metrics::metrics;
use crate::mirror::SentWrites;
use crate::rewrite::{BrokerView, Rewrite, Segments, needs_rewrite};
use crate::split::{
    self, Context, Destination, FetchSessions, Merge, PartAnswer, PartFailure, Plan, error_response,
};
use crate::upstream::{Reply, UpstreamConn};
use crate::versions::{api_versions_response, can_handle, unsupported_api_versions_response};
use crate::wire::{
    FLUSH_AT, Frame, FrameCodec, FrameError, FrameWriter, RequestHeader, produce_acks,
};

/// Requests one client may have in flight before klink stops reading from
/// it; Kafka clients default to 5 per connection, so this only bounds abuse.
const MAX_IN_FLIGHT: usize = 128;
/// A client connection's first read buffer; the codec grows it toward big
/// frames, and an idle connection should cost little.
const READ_BUFFER: usize = 1024;

/// What the writer owes the client for one request, in request order.
enum Pending {
    /// An answer klink made itself.
    Ready(Bytes),
    /// An upstream's answer, still to arrive and maybe to be rewritten.
    Upstream {
        reply: Reply,
        api: ApiKey,
        version: i16,
        cluster: Arc<str>,
        /// The request's payload (shared bytes, not a copy): if the answer
        /// never comes, klink answers it with a retriable error.
        request: Bytes,
    },
    /// Answers to the parts of a split request, merged into one.
    Merged {
        replies: Vec<PartReply>,
        api: ApiKey,
        version: i16,
        merge: Merge,
    },
}

/// One part of a split request, as the writer finds it.
enum PartReply {
    Waiting(Reply, Arc<str>),
    Failed(PartFailure),
}

/// A request's place in the writer's queue: what is owed, and (Produce to
/// a mirroring topic) what its answer tells the bypass detection.
struct Queued {
    pending: Pending,
    watched: Option<SentWrites>,
    /// An acks=0 Produce klink sent upstream as acks=1 (see
    /// `note_writes`): its answer feeds `watched` and goes no further.
    silent: bool,
    /// An offset commit in flight, for a promotion's group hand-over.
    _commit: Option<crate::cutover::CommitInFlight>,
    /// A Fetch's share of the connection's answer budget, given back once
    /// its answer is written.
    fetch_budget: Option<budget::Reserved>,
    /// The request's API key and when it arrived, for the figures.
    api_key: i16,
    arrived: std::time::Instant,
}

impl Queued {
    /// An answer klink made itself.
    fn ready(answer: Bytes, api_key: i16, arrived: std::time::Instant) -> Queued {
        Queued {
            pending: Pending::Ready(answer),
            watched: None,
            silent: false,
            _commit: None,
            fetch_budget: None,
            api_key,
            arrived,
        }
    }
}

/// A session's upstream connections, opened on first use.
type Upstreams = HashMap<Destination, UpstreamConn>;

pub struct Session {
    ctx: Arc<ProxyContext>,
    /// Where this connection's port points: the upstream broker its virtual
    /// broker stands for, or (bootstrap address) any default-cluster broker.
    home: Destination,
    peer: SocketAddr,
}

impl Session {
    pub fn new(ctx: Arc<ProxyContext>, home: Option<VirtualBroker>, peer: SocketAddr) -> Session {
        let home = match home {
            Some(broker) => Destination::Broker {
                cluster: broker.cluster,
                upstream_id: broker.upstream_id,
            },
            None => Destination::Any(Arc::from(ctx.config.proxy.default_cluster.as_str())),
        };
        Session { ctx, home, peer }
    }

    pub async fn run(self, stream: TcpStream) {
        // Owned halves: no lock between the reader and the writer.
        let (read, write) = stream.into_split();
        self.run_halves(read, write).await;
    }

    /// A client connection under TLS (the handshake done).
    pub async fn run_tls(self, stream: tokio_rustls::server::TlsStream<TcpStream>) {
        let (read, write) = tokio::io::split(stream);
        self.run_halves(read, write).await;
    }

    async fn run_halves<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(self, read: R, write: W) {
        metrics().connection_opened();
        let _closed = scopeguard_closed();
        let (queue_tx, queue_rx) = mpsc::channel(MAX_IN_FLIGHT);
        // The writer cancels this when it cannot go on, so the reader stops
        // forwarding requests nobody will answer.
        let writer_gone = CancellationToken::new();
        tokio::join!(
            self.read_requests(read, queue_tx, writer_gone.clone()),
            self.write_responses(write, queue_rx, writer_gone),
        );
        tracing::debug!(peer = %self.peer, "connection closed");
    }

    async fn read_requests<R: AsyncRead + Unpin>(
        &self,
        read: R,
        queue: mpsc::Sender<Queued>,
        writer_gone: CancellationToken,
    ) {
        let codec = FrameCodec::requests(self.ctx.max_frame_bytes());
        let mut frames = FramedRead::with_capacity(read, codec, READ_BUFFER);
        let mut upstreams = Upstreams::new();
        let mut fetch_sessions = FetchSessions::default();
        let fetch_budget =
            budget::FetchBudget::new(self.ctx.config.proxy.client_fetch_buffer_bytes);
        let mut login = login::Login::new(self.ctx.client_logins.clone());
        let login_deadline = tokio::time::Instant::now() + login::LOGIN_WITHIN;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => break,
                _ = writer_gone.cancelled() => break,
                _ = tokio::time::sleep_until(login_deadline), if login.pending() => {
                    tracing::info!(peer = %self.peer, "closing client connection: no login within {} s", login::LOGIN_WITHIN.as_secs());
                    break;
                }
                next = frames.next() => next,
            };
            let frame = match next {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(FrameError::Io(e))) if is_disconnect(&e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "client disconnected");
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(peer = %self.peer, error = %e, "closing client connection: bad frame");
                    break;
                }
            };
            if login.pending() || login::is_login_request(&frame) {
                match self.log_in(&mut login, &frame).await {
                    Ok(None) => {}
                    Ok(Some((queued, close))) => {
                        if queue.send(queued).await.is_err() || close {
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::info!(peer = %self.peer, error = %e, "closing client connection");
                        break;
                    }
                }
            }
            // A client that reads its answers slowly stops here, before
            // its next Fetch goes out, rather than filling klink's memory.
            let reserved = tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => break,
                _ = writer_gone.cancelled() => break,
                reserved = fetch_budget.reserve(&frame) => reserved,
            };
            match self
                .dispatch(frame, &mut upstreams, &mut fetch_sessions)
                .await
            {
                Ok(Some(mut queued)) => {
                    queued.fetch_budget = reserved;
                    if queue.send(queued).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    // Responses already queued still go out; then the
                    // connection closes, as a Kafka broker does for a
                    // request it cannot parse.
                    crate::warn_unless_logged!(e, peer = %self.peer, error = %e, "closing client connection");
                    break;
                }
            }
        }
    }

    /// Decides what one request needs and sends it on its way. `Ok(None)`
    /// means no response is owed (Produce with acks=0).
    async fn dispatch(
        &self,
        frame: Frame,
        upstreams: &mut Upstreams,
        fetch_sessions: &mut FetchSessions,
    ) -> Result<Option<Queued>> {
        let arrived = std::time::Instant::now();
        let payload = frame.payload();
        let header = RequestHeader::parse(&payload)
            .map_err(|e| Error::client(Kind::Protocol, e.to_string()))?;
        let api_key = header.api_key;
        metrics().client_request(api_key, frame.wire_bytes().len());
        let (routes, watched, silent) = if header.known_api == Some(ApiKey::Produce) {
            self.note_writes(&header, &payload).await
        } else {
            (self.ctx.routes.snapshot(), None, false)
        };
        let frame = if silent {
            with_acks_one(&frame, &header)?
        } else {
            frame
        };
        if let Some(api @ (ApiKey::OffsetFetch | ApiKey::JoinGroup)) = header.known_api {
            self.ctx.readers.observe(api, header.api_version, &payload);
        }
        if header.known_api == Some(ApiKey::AddPartitionsToTxn)
            && self.ctx.fences.any()
            && let Some(answer) =
                split::refused_while_fenced(header.api_version, &payload, |topic| {
                    !self.ctx.fences.holding([topic]).is_empty()
                })
        {
            return Ok(Some(Queued::ready(answer, api_key, arrived)));
        }
        if let Some(api @ (ApiKey::AddPartitionsToTxn | ApiKey::EndTxn | ApiKey::InitProducerId)) =
            header.known_api
        {
            self.ctx
                .transactions
                .observe(api, header.api_version, &payload);
        }
        let (routes, commit) = if header.known_api == Some(ApiKey::OffsetCommit) {
            self.note_commit(&header, &payload, routes).await
        } else {
            (routes, None)
        };
        let pending = self
            .dispatch_pending(frame, header, routes, upstreams, fetch_sessions)
            .await?;
        Ok(pending.map(|pending| Queued {
            pending,
            watched,
            silent,
            _commit: commit,
            fetch_budget: None,
            api_key,
            arrived,
        }))
    }

    async fn dispatch_pending(
        &self,
        frame: Frame,
        header: RequestHeader,
        routes: Arc<crate::route::Routes>,
        upstreams: &mut Upstreams,
        fetch_sessions: &mut FetchSessions,
    ) -> Result<Option<Pending>> {
        let payload = frame.payload();
        let Some(api) = header.known_api else {
            return Err(Error::client(
                Kind::Unsupported,
                format!(
                    "unknown API key {} (v{})",
                    header.api_key, header.api_version
                ),
            ));
        };
        if api == ApiKey::ApiVersions {
            return self.api_versions(&header).await.map(Some);
        }
        if !can_handle(api, header.api_version) {
            return Err(Error::client(
                Kind::Unsupported,
                format!(
                    "{api:?} v{} is not something klink can carry (client id {:?})",
                    header.api_version, header.client_id
                ),
            ));
        }
        let acks = match api {
            ApiKey::Produce => produce_acks(&payload, &header)
                .map_err(|e| Error::client(Kind::Protocol, e.to_string()))?,
            _ => -1,
        };
        let version = header.api_version;
        // One cluster's worth of routes and a connection to it: nothing to
        // decide per topic, the request goes where the client sent it.
        // Topic ids (Fetch, Produce v13+) are the clients' own only where the
        // topic was first seen; elsewhere even the fast path must translate.
        let by_topic_id = matches!(api, ApiKey::Fetch | ApiKey::Produce) && version >= 13;
        // A producer whose partition's writes have been elsewhere may need
        // its sequences moved even back on its own cluster.
        let remapped = api == ApiKey::Produce && self.ctx.producers.any_remapped();
        let fast = routes.all_default()
            && self.home.cluster() == routes.default_cluster()
            && !remapped
            && !self.ctx.catalog.numbering.translates()
            && !(by_topic_id && self.ctx.catalog.ids_differ_on(self.home.cluster()));
        let plan = if fast {
            Plan::Forward(self.home.clone())
        } else {
            let cx = Context {
                cluster: &*self.ctx,
                routes: &routes,
                catalog: &self.ctx.catalog,
                home: &self.home,
                api,
                version,
                payload: &payload,
            };
            // Boxed: planning's state is large and only crossing requests
            // need it; an idle connection should not carry it.
            let plan = Box::pin(split::plan_request(&cx, acks, fetch_sessions)).await?;
            if tracing::enabled!(tracing::Level::TRACE) {
                let decision = match &plan {
                    Plan::Forward(d) => format!("forward to {d:?}"),
                    Plan::Answer(_) => "answered by klink".to_string(),
                    Plan::Split { parts, .. } => format!("split into {} parts", parts.len()),
                };
                tracing::trace!(peer = %self.peer, ?api, version, %decision, "routed");
            }
            plan
        };
        match plan {
            Plan::Answer(bytes) => Ok(Some(Pending::Ready(bytes))),
            Plan::Forward(destination) => {
                let expects_response = acks != 0;
                let cluster = destination.cluster().clone();
                // On the fast path the request goes to the cluster the
                // client's ApiVersions answer was made from.
                if !fast && !self.ctx.supports(&cluster, api, version) {
                    tracing::warn!(peer = %self.peer, ?api, version, %cluster, "the routed cluster lacks this version");
                    return self.refuse(&header, &payload, PartFailure::Unsupported, acks);
                }
                let extra = extra_wait(api, version, &payload);
                let sent = async {
                    let conn = self.upstream(upstreams, &destination).await?;
                    conn.send_within(frame.wire_bytes().clone(), expects_response, extra)
                        .await
                };
                match sent.await {
                    Ok(reply) => Ok(reply.map(|reply| Pending::Upstream {
                        reply,
                        api,
                        version,
                        cluster,
                        request: payload,
                    })),
                    Err(e) => {
                        crate::warn_unless_logged!(e, peer = %self.peer, ?api, %cluster, error = %e, "request not sent upstream");
                        self.refuse(&header, &payload, PartFailure::NotSent, acks)
                            .map_err(|_| e)
                    }
                }
            }
            Plan::Split { parts, merge } => {
                let extra = extra_wait(api, version, &payload);
                let mut replies = Vec::with_capacity(parts.len());
                for part in parts {
                    let cluster = part.destination.cluster().clone();
                    if !self.ctx.supports(&cluster, api, version) {
                        tracing::warn!(peer = %self.peer, ?api, version, %cluster, "the routed cluster lacks this version");
                        replies.push(PartReply::Failed(PartFailure::Unsupported));
                        continue;
                    }
                    // A part that cannot go out is answered with an error
                    // for its partitions alone: the parts already written
                    // keep their answers, so a client's retry resends only
                    // what was not written.
                    let sent = async {
                        let conn = self.upstream(upstreams, &part.destination).await?;
                        conn.send_within(part.frame, part.expects_response, extra)
                            .await
                    };
                    match sent.await {
                        Ok(Some(reply)) => replies.push(PartReply::Waiting(reply, cluster)),
                        Ok(None) => {}
                        Err(e) => {
                            crate::warn_unless_logged!(e, peer = %self.peer, ?api, %cluster, error = %e, "part of a split request not sent upstream");
                            if part.expects_response {
                                replies.push(PartReply::Failed(PartFailure::NotSent));
                            }
                        }
                    }
                }
                Ok(merge.map(|merge| Pending::Merged {
                    replies,
                    api,
                    version,
                    merge,
                }))
            }
        }
    }

    /// klink's own error answer to a request that cannot be carried out,
    /// or an error (closing the connection) where the API has no room for
    /// one. acks=0 Produce is owed nothing either way.
    fn refuse(
        &self,
        header: &RequestHeader,
        payload: &Bytes,
        failure: PartFailure,
        acks: i16,
    ) -> Result<Option<Pending>> {
        if acks == 0 {
            return Ok(None);
        }
        let Some(api) = header.known_api else {
            return Err(Error::client(Kind::Unsupported, "unknown API"));
        };
        match error_response(api, header.api_version, payload, failure) {
            Some(answer) => Ok(Some(Pending::Ready(answer))),
            None => Err(Error::klink(
                Kind::Closed,
                format!(
                    "{api:?} could not be carried out ({failure:?}) and has no error to answer with"
                ),
            )),
        }
    }

    async fn api_versions(&self, header: &RequestHeader) -> Result<Pending> {
        if !can_handle(ApiKey::ApiVersions, header.api_version) {
            tracing::info!(
                peer = %self.peer, version = header.api_version,
                "ApiVersions at an unknown version: answering v0 UNSUPPORTED_VERSION"
            );
            return Ok(Pending::Ready(unsupported_api_versions_response(
                header.correlation_id,
            )));
        }
        let upstreams = self.ctx.upstream_versions().await?;
        Ok(Pending::Ready(api_versions_response(
            header.correlation_id,
            header.api_version,
            &upstreams,
            self.ctx.client_logins.is_some(),
        )))
    }

    async fn write_responses<W: AsyncWrite + Unpin>(
        &self,
        write: W,
        mut queue: mpsc::Receiver<Queued>,
        writer_gone: CancellationToken,
    ) {
        let mut out = FrameWriter::new(write);
        loop {
            // Flush only when nothing is ready to go next, so pipelined
            // responses share writes without one waiting on another.
            let Queued {
                pending,
                watched,
                silent,
                _commit,
                // Held until the answer is written.
                fetch_budget: _fetch_budget,
                api_key,
                arrived,
            } = match queue.try_recv() {
                Ok(p) => p,
                Err(TryRecvError::Empty) => {
                    if out.flush().await.is_err() {
                        break;
                    }
                    match queue.recv().await {
                        Some(p) => p,
                        None => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            let segments = match pending {
                Pending::Ready(bytes) => Segments::One(bytes),
                Pending::Merged {
                    replies,
                    api,
                    version,
                    merge,
                } => {
                    if out.flush().await.is_err() {
                        break;
                    }
                    match Box::pin(self.merge(replies, api, version, merge)).await {
                        Ok(bytes) => Segments::One(bytes),
                        Err(e) => {
                            crate::warn_unless_logged!(e, peer = %self.peer, error = %e, "closing client connection");
                            break;
                        }
                    }
                }
                Pending::Upstream {
                    mut reply,
                    api,
                    version,
                    cluster,
                    request,
                } => {
                    let answer = match reply.try_recv() {
                        Ok(answer) => answer,
                        Err(_) => {
                            if out.flush().await.is_err() {
                                break;
                            }
                            match reply.await {
                                Ok(answer) => answer,
                                Err(_) => Err(Error::upstream(
                                    &cluster,
                                    Kind::Closed,
                                    "upstream connection dropped",
                                )),
                            }
                        }
                    };
                    let finished = match answer {
                        Ok(frame) => Box::pin(self.finish(frame, api, version, &cluster)).await,
                        Err(e) => {
                            // Sent, and no answer: the client gets a
                            // retriable error where its API has room for
                            // one, and the connection stays up.
                            crate::warn_unless_logged!(e, peer = %self.peer, ?api, %cluster, error = %e, "no answer from upstream");
                            if api == ApiKey::Produce {
                                split::note_lost_produce(
                                    &self.ctx.producers,
                                    &self.ctx.catalog,
                                    self.ctx.routes.snapshot().default_cluster(),
                                    &cluster,
                                    version,
                                    &request,
                                );
                            }
                            error_response(api, version, &request, PartFailure::Lost)
                                .map(Segments::One)
                                .ok_or(e)
                        }
                    };
                    match finished {
                        Ok(segments) => segments,
                        Err(e) => {
                            crate::warn_unless_logged!(e, peer = %self.peer, error = %e, "closing client connection");
                            break;
                        }
                    }
                }
            };
            if let Some(watched) = watched {
                match &segments {
                    Segments::One(bytes) => watched.answered(bytes, &self.ctx.catalog.numbering),
                    Segments::Many(parts) => {
                        watched.answered(&parts.concat(), &self.ctx.catalog.numbering)
                    }
                }
            }
            if silent {
                continue;
            }
            let bytes = match segments {
                Segments::One(bytes) => {
                    let len = bytes.len();
                    out.push(bytes);
                    len
                }
                Segments::Many(parts) => parts
                    .into_iter()
                    .map(|part| {
                        let len = part.len();
                        out.push(part);
                        len
                    })
                    .sum(),
            };
            metrics().client_answer(api_key, bytes, arrived.elapsed());
            if out.queued() >= FLUSH_AT && out.flush().await.is_err() {
                break;
            }
        }
        writer_gone.cancel();
        let _ = out.shutdown().await;
    }

    /// Waits for every part of a split request and merges the answers; a
    /// part without an answer is handed to the merge as failed.
    async fn merge(
        &self,
        replies: Vec<PartReply>,
        api: ApiKey,
        version: i16,
        merge: Merge,
    ) -> Result<Bytes> {
        let mut answers = Vec::with_capacity(replies.len());
        for part in replies {
            let (reply, cluster) = match part {
                PartReply::Waiting(reply, cluster) => (reply, cluster),
                PartReply::Failed(failure) => {
                    answers.push(PartAnswer::Failed(failure));
                    continue;
                }
            };
            let answer = reply.await.unwrap_or_else(|_| {
                Err(Error::upstream(
                    &cluster,
                    Kind::Closed,
                    "upstream connection dropped",
                ))
            });
            let finished = match answer {
                Ok(frame) => self.finish(frame, api, version, &cluster).await,
                Err(e) => Err(e),
            };
            match finished {
                Ok(Segments::One(whole)) => {
                    answers.push(PartAnswer::Answered(Frame::from_prefixed(whole)));
                }
                Ok(Segments::Many(parts)) => {
                    answers.push(PartAnswer::Answered(Frame::from_prefixed(
                        parts.concat().into(),
                    )));
                }
                Err(e) => {
                    crate::warn_unless_logged!(e, peer = %self.peer, ?api, %cluster, error = %e, "no answer from upstream for part of a split request");
                    answers.push(PartAnswer::Failed(PartFailure::Lost));
                }
            }
        }
        merge(answers)
    }

    /// Turns an upstream answer into the bytes the client gets.
    async fn finish(
        &self,
        frame: Frame,
        api: ApiKey,
        version: i16,
        cluster: &Arc<str>,
    ) -> Result<Segments> {
        if !needs_rewrite(api, version) {
            return Ok(Segments::One(frame.wire_bytes().clone()));
        }
        let rewrite = Rewrite::decode(api, version, frame)
            .map_err(|e| Error::upstream(cluster, Kind::Protocol, e.to_string()))?;
        let Some(rewrite) = rewrite else {
            return Err(Error::klink(Kind::Protocol, "rewrite expected"));
        };
        if let Some(metadata) = rewrite.metadata() {
            self.ctx.catalog.learn(cluster, metadata).await?;
            if let Some(id) = &metadata.cluster_id {
                self.ctx.note_cluster_id(cluster, id);
            }
        }
        let announced = rewrite.announced();
        self.ctx.announce(cluster, &announced).await?;
        if rewrite.announces_every_broker() {
            self.ctx.registry.note_members(cluster, &announced);
        }
        let view = BrokerView {
            registry: &self.ctx.registry,
            cluster,
            catalog: Some(&*self.ctx.catalog),
            cluster_id: self.ctx.cluster_id(),
        };
        rewrite
            .apply_segments(&view)
            .map_err(|e| Error::klink(Kind::Protocol, e.to_string()))
    }
}

/// Counts the connection closed however the session ends (a panic
/// included).
fn scopeguard_closed() -> impl Drop {
    struct Closed;
    impl Drop for Closed {
        fn drop(&mut self) {
            metrics().connection_closed();
        }
    }
    Closed
}

/// A client going away: not worth a warning. (EOF in the middle of a frame
/// is still one: the client broke off a request.)
fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}

/// The request frame with its Produce `acks` set to 1 (a copy: the
/// client's bytes are shared).
fn with_acks_one(frame: &Frame, header: &RequestHeader) -> Result<Frame> {
    let at = crate::wire::produce_acks_at(&frame.payload(), header)
        .map_err(|e| Error::client(Kind::Protocol, e.to_string()))?;
    let mut bytes = bytes::BytesMut::from(&frame.wire_bytes()[..]);
    // The payload starts after the 4-byte length prefix.
    bytes[4 + at..4 + at + 2].copy_from_slice(&1i16.to_be_bytes());
    Ok(Frame::from_prefixed(bytes.freeze()))
}
