//! One client connection: requests are read and forwarded as they arrive
//! (many in flight), and responses are written back strictly in request
//! order, whichever upstream answers first.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use kafka_protocol::messages::ApiKey;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::ProxyContext;
use crate::broker::VirtualBroker;
use crate::error::{Error, Kind, Result};
use crate::rewrite::{BrokerView, Rewrite, Segments, needs_rewrite};
use crate::split::{self, Context, Destination, FetchSessions, Merge, Plan};
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
    },
    /// Answers to the parts of a split request, merged into one.
    Merged {
        replies: Vec<(Reply, Arc<str>)>,
        api: ApiKey,
        version: i16,
        merge: Merge,
    },
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
        let (read, write) = stream.into_split();
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

    async fn read_requests(
        &self,
        read: OwnedReadHalf,
        queue: mpsc::Sender<Pending>,
        writer_gone: CancellationToken,
    ) {
        let codec = FrameCodec::requests(self.ctx.max_frame_bytes());
        let mut frames = FramedRead::with_capacity(read, codec, READ_BUFFER);
        let mut upstreams = Upstreams::new();
        let mut fetch_sessions = FetchSessions::default();
        loop {
            let next = tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => break,
                _ = writer_gone.cancelled() => break,
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
            match self
                .dispatch(frame, &mut upstreams, &mut fetch_sessions)
                .await
            {
                Ok(Some(pending)) => {
                    if queue.send(pending).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    // Responses already queued still go out; then the
                    // connection closes, as a Kafka broker does for a
                    // request it cannot parse.
                    tracing::warn!(peer = %self.peer, error = %e, "closing client connection");
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
    ) -> Result<Option<Pending>> {
        let payload = frame.payload();
        let header = RequestHeader::parse(&payload)
            .map_err(|e| Error::client(Kind::Protocol, e.to_string()))?;
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
        let routes = self.ctx.routes.snapshot();
        // One cluster's worth of routes and a connection to it: nothing to
        // decide per topic, the request goes where the client sent it.
        // Topic ids (Fetch, Produce v13+) are the clients' own only where the
        // topic was first seen; elsewhere even the fast path must translate.
        let by_topic_id = matches!(api, ApiKey::Fetch | ApiKey::Produce) && version >= 13;
        let plan = if routes.all_default()
            && self.home.cluster() == routes.default_cluster()
            && !(by_topic_id && self.ctx.catalog.ids_differ_on(self.home.cluster()))
        {
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
            let plan = Box::pin(self.plan(&cx, acks, fetch_sessions)).await?;
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
                let conn = self.upstream(upstreams, &destination).await?;
                let reply = conn.send(frame.wire_bytes().clone(), acks != 0).await?;
                Ok(reply.map(|reply| Pending::Upstream {
                    reply,
                    api,
                    version,
                    cluster: destination.cluster().clone(),
                }))
            }
            Plan::Split { parts, merge } => {
                let mut replies = Vec::with_capacity(parts.len());
                for part in parts {
                    let conn = self.upstream(upstreams, &part.destination).await?;
                    if let Some(reply) = conn.send(part.frame, part.expects_response).await? {
                        replies.push((reply, part.destination.cluster().clone()));
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

    async fn plan(
        &self,
        cx: &Context<'_, ProxyContext>,
        acks: i16,
        fetch_sessions: &mut FetchSessions,
    ) -> Result<Plan> {
        use ApiKey::*;
        match cx.api {
            Metadata => split::plan_metadata(cx).await,
            Produce => split::plan_produce(cx, acks).await,
            Fetch => split::plan_fetch(cx, fetch_sessions).await,
            ListOffsets => split::plan_list_offsets(cx).await,
            OffsetForLeaderEpoch | DeleteRecords => split::plan_read_side(cx).await,
            FindCoordinator => split::plan_find_coordinator(cx).await,
            JoinGroup
            | SyncGroup
            | Heartbeat
            | LeaveGroup
            | OffsetCommit
            | OffsetFetch
            | DescribeGroups
            | DeleteGroups
            | OffsetDelete
            | ConsumerGroupHeartbeat => split::plan_group(cx).await,
            ListGroups => split::plan_list_groups(cx).await,
            CreateTopics
            | DeleteTopics
            | CreatePartitions
            | DescribeConfigs
            | AlterConfigs
            | IncrementalAlterConfigs => split::plan_admin(cx).await,
            // Transactions stay on the cluster their id is pinned to (the
            // default cluster until cutover work moves them); everything
            // else goes where the client sent it.
            _ => Ok(Plan::Forward(cx.home.clone())),
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
        )))
    }

    /// The connection to `destination`, opened on first use.
    async fn upstream(
        &self,
        upstreams: &mut Upstreams,
        destination: &Destination,
    ) -> Result<UpstreamConn> {
        if let Some(conn) = upstreams.get(destination)
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        let cluster = self.ctx.cluster(destination.cluster()).ok_or_else(|| {
            Error::klink(
                Kind::Config,
                format!("cluster {} is not configured", destination.cluster()),
            )
        })?;
        let conn = match destination {
            Destination::Any(_) => cluster.connect_any().await?,
            Destination::Broker { upstream_id, .. } => {
                let address = |ctx: &ProxyContext| {
                    let broker = ctx.registry.by_upstream(&cluster.name, *upstream_id)?;
                    ctx.registry.upstream_address(&broker)
                };
                let addr = match address(&self.ctx) {
                    Some(addr) => addr,
                    None => {
                        // Remembered from before a restart but not announced
                        // since: ask the cluster where it is now.
                        self.ctx.discover(cluster).await?;
                        address(&self.ctx).ok_or_else(|| {
                            Error::upstream(
                                &cluster.name,
                                Kind::Closed,
                                format!(
                                    "upstream broker {upstream_id} is no longer in the cluster"
                                ),
                            )
                        })?
                    }
                };
                UpstreamConn::connect(cluster.name.clone(), &addr, self.ctx.max_frame_bytes())
                    .await?
            }
        };
        upstreams.insert(destination.clone(), conn.clone());
        Ok(conn)
    }

    async fn write_responses(
        &self,
        write: OwnedWriteHalf,
        mut queue: mpsc::Receiver<Pending>,
        writer_gone: CancellationToken,
    ) {
        let mut out = FrameWriter::new(write);
        loop {
            // Flush only when nothing is ready to go next, so pipelined
            // responses share writes without one waiting on another.
            let pending = match queue.try_recv() {
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
                            tracing::warn!(peer = %self.peer, error = %e, "closing client connection");
                            break;
                        }
                    }
                }
                Pending::Upstream {
                    mut reply,
                    api,
                    version,
                    cluster,
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
                    match Box::pin(self.finish(answer, api, version, &cluster)).await {
                        Ok(segments) => segments,
                        Err(e) => {
                            tracing::warn!(peer = %self.peer, error = %e, "closing client connection");
                            break;
                        }
                    }
                }
            };
            match segments {
                Segments::One(bytes) => out.push(bytes),
                Segments::Many(parts) => parts.into_iter().for_each(|part| out.push(part)),
            }
            if out.queued() >= FLUSH_AT && out.flush().await.is_err() {
                break;
            }
        }
        writer_gone.cancel();
        let _ = out.shutdown().await;
    }

    /// Remembers which cluster issued a client's producer id, so its batches
    /// can be re-identified if its topics' writes move (DESIGN trap 8).
    fn note_producer_id(&self, frame: &Frame, version: i16, cluster: &Arc<str>) {
        let decoded: Result<kafka_protocol::messages::InitProducerIdResponse> =
            split::decode_response(ApiKey::InitProducerId, version, frame);
        if let Ok(response) = decoded
            && response.error_code == 0
        {
            self.ctx
                .producers
                .note_issued(response.producer_id.0, cluster);
        }
    }

    /// Waits for every part of a split request and merges the answers.
    async fn merge(
        &self,
        replies: Vec<(Reply, Arc<str>)>,
        api: ApiKey,
        version: i16,
        merge: Merge,
    ) -> Result<Bytes> {
        let mut frames = Vec::with_capacity(replies.len());
        for (reply, cluster) in replies {
            let answer = reply.await.unwrap_or_else(|_| {
                Err(Error::upstream(
                    &cluster,
                    Kind::Closed,
                    "upstream connection dropped",
                ))
            });
            let segments = self.finish(answer, api, version, &cluster).await?;
            let bytes = match segments {
                Segments::One(whole) => whole,
                Segments::Many(parts) => parts.concat().into(),
            };
            frames.push(Frame::from_prefixed(bytes));
        }
        merge(frames)
    }

    /// Turns an upstream answer into the bytes the client gets.
    async fn finish(
        &self,
        answer: Result<Frame>,
        api: ApiKey,
        version: i16,
        cluster: &Arc<str>,
    ) -> Result<Segments> {
        let frame = answer?;
        if api == ApiKey::InitProducerId {
            self.note_producer_id(&frame, version, cluster);
        }
        if !needs_rewrite(api, version) {
            return Ok(Segments::One(frame.wire_bytes().clone()));
        }
        let rewrite = Rewrite::decode(api, version, frame)
            .map_err(|e| Error::upstream(cluster, Kind::Protocol, e.to_string()))?;
        let Some(rewrite) = rewrite else {
            return Err(Error::klink(Kind::Protocol, "rewrite expected"));
        };
        if let Some(metadata) = rewrite.metadata() {
            self.ctx.catalog.learn(cluster, metadata)?;
            if let Some(id) = &metadata.cluster_id {
                self.ctx.note_cluster_id(cluster, id);
            }
        }
        self.ctx.announce(cluster, &rewrite.announced()).await?;
        let view = BrokerView {
            registry: &self.ctx.registry,
            cluster,
            catalog: Some(&self.ctx.catalog),
            cluster_id: self.ctx.cluster_id(),
        };
        rewrite
            .apply_segments(&view)
            .map_err(|e| Error::klink(Kind::Protocol, e.to_string()))
    }
}

/// A client going away: not worth a warning. (EOF in the middle of a frame
/// is still one: the client broke off a request.)
fn is_disconnect(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionReset | ConnectionAborted | BrokenPipe)
}
