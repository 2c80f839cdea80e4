//! The cluster as this client sees it: brokers, topic partitions and their
//! leaders, one pipelined connection per broker, and the API versions.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use super::{Versions, broker_error};
use crate::error::{Error, Kind, Result};
use crate::upstream::security::Security;
use crate::upstream::{Cluster, UpstreamConn};
use crate::wire::Frame;

const TOPIC_ATTEMPTS: u32 = 20;
const TOPIC_BACKOFF: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Names the cluster in errors and logs.
    pub name: String,
    pub bootstrap: Vec<String>,
    pub client_id: String,
    pub max_frame_bytes: u32,
    pub request_timeout: Duration,
    /// Whether Metadata may create a topic it does not know (the Java
    /// producer's `allow.auto.create.topics`).
    pub allow_auto_topic_creation: bool,
    /// TLS and login to the cluster.
    pub security: Arc<Security>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            name: "kafka".to_string(),
            bootstrap: Vec::new(),
            client_id: "klink".to_string(),
            max_frame_bytes: 100 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            allow_auto_topic_creation: false,
            security: Security::plaintext(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMeta {
    pub partition: i32,
    /// -1 while the partition has no leader.
    pub leader: i32,
    pub leader_epoch: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    pub name: Arc<str>,
    /// Sorted by partition index.
    pub partitions: Vec<PartitionMeta>,
}

impl TopicMeta {
    pub fn leader(&self, partition: i32) -> Option<i32> {
        let p = self.partitions.get(usize::try_from(partition).ok()?)?;
        (p.partition == partition && p.leader >= 0).then_some(p.leader)
    }
}

/// One Metadata answer.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    pub brokers: HashMap<i32, String>,
    pub topics: HashMap<String, Arc<TopicMeta>>,
}

/// A handle to one cluster; clones share connections and metadata.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    cluster: Cluster,
    versions: Versions,
    metadata: RwLock<Arc<Metadata>>,
    /// Topics metadata refreshes ask for.
    wanted: Mutex<BTreeSet<String>>,
    conns: Mutex<HashMap<i32, UpstreamConn>>,
    bootstrap: Mutex<Option<UpstreamConn>>,
    /// One refresh at a time; callers that queued behind one reuse its
    /// answer, told by `generation` having moved while they waited.
    refreshing: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    correlation: AtomicI32,
}

impl Client {
    /// Connects to the first bootstrap broker that answers, learns its API
    /// versions and the cluster's brokers.
    pub async fn connect(config: ClientConfig) -> Result<Client> {
        let cluster = Cluster::new(
            &config.name,
            config.bootstrap.clone(),
            config.max_frame_bytes,
        )
        .with_security(config.security.clone());
        let versions = Versions::choose(&cluster.api_versions().await?)?;
        let client = Client {
            inner: Arc::new(Inner {
                config,
                cluster,
                versions,
                metadata: RwLock::new(Arc::new(Metadata::default())),
                wanted: Mutex::new(BTreeSet::new()),
                conns: Mutex::new(HashMap::new()),
                bootstrap: Mutex::new(None),
                refreshing: tokio::sync::Mutex::new(()),
                generation: AtomicU64::new(0),
                correlation: AtomicI32::new(1),
            }),
        };
        client.refresh_metadata().await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub fn versions(&self) -> Versions {
        self.inner.versions
    }

    pub fn cluster_name(&self) -> &Arc<str> {
        &self.inner.cluster.name
    }

    /// The latest metadata, without asking the cluster.
    pub fn metadata(&self) -> Arc<Metadata> {
        match self.inner.metadata.read() {
            Ok(m) => m.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// A topic's partitions, asking the cluster when they are not known yet.
    pub async fn topic(&self, name: &str) -> Result<Arc<TopicMeta>> {
        if let Some(topic) = self.metadata().topics.get(name) {
            return Ok(topic.clone());
        }
        lock(&self.inner.wanted).insert(name.to_string());
        // A topic being created has no leaders for a moment; a refresh that
        // was already under way did not ask for this topic.
        for attempt in 0..TOPIC_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(TOPIC_BACKOFF).await;
            }
            let metadata = self.refresh_metadata().await?;
            if let Some(topic) = metadata.topics.get(name) {
                return Ok(topic.clone());
            }
        }
        Err(Error::upstream(
            self.cluster_name(),
            Kind::Protocol,
            format!(
                "topic {name} is unknown or has no leaders after {:?}",
                TOPIC_BACKOFF * TOPIC_ATTEMPTS
            ),
        ))
    }

    /// Whether the cluster has a topic of this name now: one Metadata
    /// request naming it, never creating it, never waiting for leaders.
    pub async fn topic_exists(&self, name: &str) -> Result<bool> {
        let request = MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(name.to_string())),
            ))]))
            .with_allow_auto_topic_creation(false);
        let conn = self.bootstrap_conn().await?;
        let response: MetadataResponse = self
            .call(&conn, request, self.inner.versions.metadata)
            .await?;
        let unknown = kafka_protocol::ResponseError::UnknownTopicOrPartition.code();
        Ok(response.topics.iter().any(|t| {
            t.name.as_ref().is_some_and(|n| n.as_str() == name) && t.error_code != unknown
        }))
    }

    /// Asks the cluster again for its brokers and the wanted topics. Callers
    /// that waited behind a refresh in progress get its answer.
    pub async fn refresh_metadata(&self) -> Result<Arc<Metadata>> {
        let seen = self.inner.generation.load(Ordering::Acquire);
        let _one_at_a_time = self.inner.refreshing.lock().await;
        if self.inner.generation.load(Ordering::Acquire) != seen {
            return Ok(self.metadata());
        }
        let topics: Vec<String> = lock(&self.inner.wanted).iter().cloned().collect();
        let request = MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect(),
            ))
            .with_allow_auto_topic_creation(self.inner.config.allow_auto_topic_creation);
        let conn = self.bootstrap_conn().await?;
        let response: MetadataResponse = match self
            .call(&conn, request, self.inner.versions.metadata)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                *lock(&self.inner.bootstrap) = None;
                return Err(e);
            }
        };
        let metadata = Arc::new(self.parse_metadata(response));
        match self.inner.metadata.write() {
            Ok(mut m) => *m = metadata.clone(),
            Err(poisoned) => *poisoned.into_inner() = metadata.clone(),
        }
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        Ok(metadata)
    }

    fn parse_metadata(&self, response: MetadataResponse) -> Metadata {
        let mut metadata = Metadata {
            brokers: response
                .brokers
                .iter()
                .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
                .collect(),
            topics: HashMap::new(),
        };
        for topic in response.topics {
            let Some(name) = topic.name else { continue };
            if topic.error_code != 0 {
                // LEADER_NOT_AVAILABLE while a topic is being created, or
                // UNKNOWN_TOPIC_OR_PARTITION: the topic is not usable yet.
                tracing::debug!(topic = %name.0, code = topic.error_code, "topic metadata error");
                continue;
            }
            let mut partitions: Vec<PartitionMeta> = topic
                .partitions
                .iter()
                .map(|p| PartitionMeta {
                    partition: p.partition_index,
                    leader: if p.error_code == 0 { p.leader_id.0 } else { -1 },
                    leader_epoch: p.leader_epoch,
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            let dense = partitions
                .iter()
                .enumerate()
                .all(|(i, p)| usize::try_from(p.partition).ok() == Some(i));
            if !dense || partitions.is_empty() {
                // Partitions missing from the answer: not usable until a
                // later refresh lists them all.
                tracing::debug!(topic = %name.0, "topic metadata lacks partitions");
                continue;
            }
            let name: Arc<str> = Arc::from(name.0.as_str());
            metadata
                .topics
                .insert(name.to_string(), Arc::new(TopicMeta { name, partitions }));
        }
        metadata
    }

    async fn bootstrap_conn(&self) -> Result<UpstreamConn> {
        if let Some(conn) = lock(&self.inner.bootstrap).as_ref()
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        let conn = self.inner.cluster.connect_any().await?;
        *lock(&self.inner.bootstrap) = Some(conn.clone());
        Ok(conn)
    }

    /// The connection to a broker, opened on first use and again after it
    /// closed.
    pub async fn broker_conn(&self, node_id: i32) -> Result<UpstreamConn> {
        if let Some(conn) = lock(&self.inner.conns).get(&node_id)
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        let conn = self.new_broker_conn(node_id).await?;
        lock(&self.inner.conns).insert(node_id, conn.clone());
        Ok(conn)
    }

    /// A connection to a broker of the caller's own, not shared with the
    /// client's other requests.
    pub async fn new_broker_conn(&self, node_id: i32) -> Result<UpstreamConn> {
        let addr = self
            .metadata()
            .brokers
            .get(&node_id)
            .cloned()
            .ok_or_else(|| {
                Error::upstream(
                    self.cluster_name(),
                    Kind::Protocol,
                    format!("no address for broker {node_id}"),
                )
            })?;
        self.inner.cluster.connect_to(&addr).await
    }

    /// Returns once every request queued so far on every broker connection
    /// has been written and handled: a Metadata round trip queues behind
    /// them, and brokers answer in order. Produce with acks=0 has no answer
    /// of its own to wait for.
    pub async fn sync_connections(&self) {
        let conns: Vec<(i32, UpstreamConn)> = lock(&self.inner.conns)
            .iter()
            .map(|(id, c)| (*id, c.clone()))
            .collect();
        let version = self.inner.versions.metadata;
        for (node, conn) in conns {
            let request = MetadataRequest::default().with_topics(Some(Vec::new()));
            if let Err(e) = self.call(&conn, request, version).await {
                tracing::debug!(node, error = %e, "connection sync failed");
            }
        }
    }

    /// Forgets a connection that failed, so the next use opens a new one.
    pub fn drop_conn(&self, node_id: i32) {
        lock(&self.inner.conns).remove(&node_id);
    }

    /// One request and its decoded answer (for the small, rare requests).
    pub async fn call<R: Request>(
        &self,
        conn: &UpstreamConn,
        request: R,
        version: i16,
    ) -> Result<R::Response> {
        self.inner.cluster.call(conn, request, version).await
    }

    /// A whole request frame with this client's id and the next correlation id.
    pub fn encode<R: Request>(&self, request: &R, version: i16) -> Result<Bytes> {
        let api = api_key::<R>()?;
        let fail =
            |e: anyhow::Error| Error::klink(Kind::Protocol, format!("encoding {api:?}: {e}"));
        let correlation_id = self.inner.correlation.fetch_add(1, Ordering::Relaxed) & i32::MAX;
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(&[0; 4]);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_string(
                self.inner.config.client_id.clone(),
            )))
            .encode(&mut buf, api.request_header_version(version))
            .map_err(fail)?;
        request.encode(&mut buf, version).map_err(fail)?;
        let length = i32::try_from(buf.len() - 4)
            .map_err(|_| Error::klink(Kind::Protocol, format!("{api:?} request too large")))?;
        buf[..4].copy_from_slice(&length.to_be_bytes());
        Ok(buf.freeze())
    }

    /// Decodes the answer to a frame built by [`Client::encode`].
    pub fn decode<R: Request>(&self, frame: &Frame, version: i16) -> Result<R::Response> {
        let api = api_key::<R>()?;
        let fail = |e: anyhow::Error| {
            Error::upstream(
                self.cluster_name(),
                Kind::Protocol,
                format!("decoding {api:?}: {e}"),
            )
        };
        let mut body = frame.payload();
        ResponseHeader::decode(&mut body, api.response_header_version(version)).map_err(fail)?;
        R::Response::decode(&mut body, version).map_err(fail)
    }

    /// Sends a frame and waits for its answer within the request timeout
    /// plus `extra` (a fetch's own wait).
    pub async fn round_trip(
        &self,
        conn: &UpstreamConn,
        frame: Bytes,
        extra: Duration,
    ) -> Result<Frame> {
        let reply = conn
            .send(frame, true)
            .await?
            .ok_or_else(|| Error::klink(Kind::Protocol, "request without reply"))?;
        let within = self.inner.config.request_timeout + extra;
        match tokio::time::timeout(within, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::upstream(
                self.cluster_name(),
                Kind::Closed,
                format!("connection to {} closed", conn.address()),
            )),
            Err(_) => Err(Error::upstream(
                self.cluster_name(),
                Kind::Timeout,
                format!("no answer from {} within {within:?}", conn.address()),
            )),
        }
    }

    /// The earliest (`timestamp` -2) or latest (-1) offset of partitions.
    pub async fn list_offsets(
        &self,
        topic: &TopicMeta,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<HashMap<i32, i64>> {
        use kafka_protocol::messages::ListOffsetsRequest;
        use kafka_protocol::messages::list_offsets_request::{
            ListOffsetsPartition, ListOffsetsTopic,
        };
        let mut by_leader: HashMap<i32, Vec<i32>> = HashMap::new();
        for &p in partitions {
            let leader = topic.leader(p).ok_or_else(|| {
                Error::upstream(
                    self.cluster_name(),
                    Kind::Protocol,
                    format!("{}/{p} has no leader", topic.name),
                )
            })?;
            by_leader.entry(leader).or_default().push(p);
        }
        let mut offsets = HashMap::new();
        for (leader, parts) in by_leader {
            let request = ListOffsetsRequest::default()
                .with_replica_id((-1).into())
                .with_topics(vec![
                    ListOffsetsTopic::default()
                        .with_name(TopicName(StrBytes::from_string(topic.name.to_string())))
                        .with_partitions(
                            parts
                                .iter()
                                .map(|&p| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(p)
                                        .with_current_leader_epoch(-1)
                                        .with_timestamp(timestamp)
                                })
                                .collect(),
                        ),
                ]);
            let conn = self.broker_conn(leader).await?;
            let response = self
                .call(&conn, request, self.inner.versions.list_offsets)
                .await?;
            for t in response.topics {
                for p in t.partitions {
                    if p.error_code != 0 {
                        return Err(broker_error(
                            self.cluster_name(),
                            p.error_code,
                            &format!("ListOffsets {}/{}", topic.name, p.partition_index),
                        ));
                    }
                    offsets.insert(p.partition_index, p.offset);
                }
            }
        }
        Ok(offsets)
    }
}

fn api_key<R: Request>() -> Result<ApiKey> {
    ApiKey::try_from(R::KEY)
        .map_err(|_| Error::klink(Kind::Unsupported, format!("api key {}", R::KEY)))
}

/// A poisoned lock only means another task panicked mid-update of plain
/// maps; their contents are still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
