use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, InitProducerIdRequest, MetadataRequest, MetadataResponse,
    TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{BrokerRegistry, UpstreamBroker, VirtualBroker};
use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::route::{Catalog, ClientProducer, Identity, ProducerIds, RouteTable};
use crate::upstream::Cluster;
use crate::upstream::UpstreamConn;
use crate::versions::UpstreamVersions;

use super::versions_cache::VersionsCache;

/// How long klink trusts what it learned of a topic's leaders on a cluster
/// clients do not ask for it (writes routed elsewhere than reads).
const METADATA_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(60);
/// After a failed leader lookup, how long requests use what klink knew
/// instead of asking again (a cluster that is down is not asked per request).
const METADATA_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// klink's own Metadata connection to one cluster.
#[derive(Default)]
pub struct MetadataAsker {
    conn: Option<UpstreamConn>,
    failed_at: Option<std::time::Instant>,
}

/// What every session shares.
pub struct ProxyContext {
    pub config: Config,
    pub registry: BrokerRegistry,
    pub routes: Arc<RouteTable>,
    pub catalog: Arc<Catalog>,
    pub producers: Arc<ProducerIds>,
    /// Where klink's writes to mirroring topics landed, for the mirror's
    /// bypass detection.
    pub forwarded: Arc<crate::mirror::ForwardedWrites>,
    /// Topics a promotion holds new writes for.
    pub fences: Arc<crate::cutover::Fences>,
    /// Which groups read which topics, for a promotion's checks.
    pub readers: Arc<crate::cutover::Readers>,
    /// Transactions open on topics, for a promotion's checks.
    pub transactions: Arc<crate::route::OpenTransactions>,
    pub(super) clusters: Vec<Cluster>,
    /// Per cluster (same order as `clusters`): klink's own connection for
    /// the Metadata requests that find partition leaders, behind a lock so
    /// that concurrent askers wait for one answer instead of each asking.
    pub(super) metadata_askers: Vec<tokio::sync::Mutex<MetadataAsker>>,
    /// Each cluster's ApiVersions answer (same order as `clusters`).
    pub(super) upstream_versions: Vec<VersionsCache>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    pub(super) new_listeners: mpsc::UnboundedSender<(TcpListener, VirtualBroker)>,
    pub(super) cluster_id: std::sync::OnceLock<String>,
    /// Client connections open, and how many may be.
    pub(super) connection_limit: Arc<super::limit::ConnectionLimit>,
    /// TLS for clients, when `[proxy] tls` is set.
    pub(super) client_tls: Option<tokio_rustls::TlsAcceptor>,
    /// Client logins, when `[proxy] sasl` is set.
    pub(super) client_logins: Option<Arc<super::session::login::ClientLogins>>,
}

impl ProxyContext {
    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| &*c.name == name)
    }

    /// The cluster behind the bootstrap address.
    pub fn default_cluster(&self) -> Result<&Cluster> {
        self.cluster(&self.config.proxy.default_cluster)
            .ok_or_else(|| {
                Error::klink(Kind::Config, "default_cluster names no configured cluster")
            })
    }

    pub fn max_frame_bytes(&self) -> u32 {
        self.config.proxy.max_frame_bytes
    }

    /// The API versions of every cluster that has answered. A cluster that
    /// is down is left out (with a warning) rather than keeping every
    /// client from connecting, and asked again a little later; answers are
    /// renewed now and then (see [`VersionsCache`]).
    pub async fn upstream_versions(&self) -> Result<Vec<UpstreamVersions>> {
        let mut known = Vec::with_capacity(self.clusters.len());
        let mut last_error = None;
        for (cluster, cache) in self.clusters.iter().zip(&self.upstream_versions) {
            match cache.get(|| cluster.api_versions()).await {
                Ok(Some(versions)) => known.push(versions),
                Ok(None) => {}
                Err(e) => {
                    crate::warn_unless_logged!(e, cluster = %cluster.name, error = %e, "API versions unknown: cluster left out of the ApiVersions answer");
                    last_error = Some(e);
                }
            }
        }
        match (known.is_empty(), last_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(known),
        }
    }

    /// Whether `cluster` takes `version` of `api`, as far as klink knows: a
    /// client may have negotiated its versions while that cluster was down.
    pub fn supports(&self, cluster: &str, api: ApiKey, version: i16) -> bool {
        self.clusters
            .iter()
            .zip(&self.upstream_versions)
            .find(|(c, _)| &*c.name == cluster)
            .is_none_or(|(_, cache)| cache.supports(api, version))
    }

    /// Asks a cluster for its brokers and registers them.
    pub async fn discover(&self, cluster: &Cluster) -> Result<()> {
        let (brokers, cluster_id) = cluster.discover().await?;
        if let Some(id) = cluster_id {
            self.note_cluster_id(&cluster.name, &id);
        }
        self.announce(&cluster.name, &brokers).await?;
        self.registry.note_members(&cluster.name, &brokers);
        Ok(())
    }

    /// Remembers the default cluster's id: clients see it whichever cluster
    /// answers, since librdkafka and the Java client distrust a cluster
    /// whose id changes under them.
    pub fn note_cluster_id(&self, cluster: &str, id: &str) {
        if cluster == self.config.proxy.default_cluster {
            let _ = self.cluster_id.set(id.to_string());
        }
    }

    /// The cluster id clients see, once known.
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster_id.get().map(String::as_str)
    }

    /// Makes sure every broker in `brokers` has a virtual broker that is
    /// listening, before a client can learn its address.
    pub async fn announce(&self, cluster: &Arc<str>, brokers: &[UpstreamBroker]) -> Result<()> {
        for broker in self.registry.observe(cluster, brokers).await? {
            self.listen_virtual(broker).await?;
        }
        Ok(())
    }

    /// Binds a virtual broker's port and starts accepting on it.
    pub async fn listen_virtual(&self, broker: VirtualBroker) -> Result<()> {
        let addr = (self.config.proxy.listen.ip(), broker.port);
        let listener = super::listener::bind(addr.into()).map_err(|e| {
            Error::klink(
                Kind::Config,
                format!(
                    "virtual broker {} cannot listen on port {}: {e}",
                    broker.id, broker.port
                ),
            )
        })?;
        tracing::debug!(
            virtual_id = broker.id,
            port = broker.port,
            "virtual broker listening"
        );
        // Sessions announce brokers and accept loops run sessions; handing the
        // bound socket to a separate task keeps that cycle out of the types.
        // The port is bound now, so a client that connects at once waits in
        // the backlog instead of being refused.
        self.new_listeners
            .send((listener, broker))
            .map_err(|_| Error::klink(Kind::Closed, "proxy is shutting down"))?;
        Ok(())
    }
}

impl ProxyContext {
    /// Asks `cluster`, in one Metadata request, for the topics klink does
    /// not know there or knows from too long ago.
    async fn ask_leaders(&self, cluster: &Arc<str>, topics: &[String]) {
        let stale = self
            .catalog
            .missing_or_stale(cluster, topics, METADATA_MAX_AGE);
        if stale.is_empty() {
            return;
        }
        let Some((upstream, asker)) = self
            .clusters
            .iter()
            .zip(&self.metadata_askers)
            .find(|(c, _)| c.name == *cluster)
        else {
            return;
        };
        let mut asker = asker.lock().await;
        // Someone else may have asked while this one waited.
        let stale = self
            .catalog
            .missing_or_stale(cluster, topics, METADATA_MAX_AGE);
        if stale.is_empty()
            || asker
                .failed_at
                .is_some_and(|at| at.elapsed() < METADATA_RETRY_AFTER)
        {
            return;
        }
        let asked = async {
            let conn = match asker.conn.as_ref().filter(|c| !c.is_closed()) {
                Some(conn) => conn.clone(),
                None => upstream.connect_any().await?,
            };
            asker.conn = Some(conn.clone());
            let request = MetadataRequest::default().with_topics(Some(
                stale
                    .iter()
                    .map(|topic| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(topic.clone()))))
                    })
                    .collect(),
            ));
            let response: MetadataResponse = upstream.call(&conn, request, 9).await?;
            let brokers = UpstreamBroker::all_in(&response);
            self.announce(cluster, &brokers).await?;
            self.catalog.learn(cluster, &response).await
        };
        match asked.await {
            Ok(()) => asker.failed_at = None,
            Err(e) => {
                crate::warn_unless_logged!(e, %cluster, topics = ?stale, error = %e, "cannot learn partition leaders; using what klink knew");
                asker.conn = None;
                asker.failed_at = Some(std::time::Instant::now());
            }
        }
    }
}

impl ProxyContext {
    /// The identity `cluster` issued klink for a client identity, asking
    /// it the first time: a plain idempotent one, or (with a transactional
    /// id) one from that id's transaction coordinator, which fences the
    /// identities it issued for the id before.
    async fn issued_on(
        &self,
        cluster: &Arc<str>,
        client: &ClientProducer,
        transactional_id: Option<&str>,
    ) -> Option<Identity> {
        if let Some(ours) = self.producers.mapped(client, cluster) {
            return Some(ours);
        }
        let upstream = self.cluster(cluster)?;
        let asked = async {
            let mut conn = upstream.connect_any().await?;
            // Explicitly none: the crate's default is an empty transactional
            // id, which a broker takes for one and fences by.
            let mut request = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000);
            if let Some(id) = transactional_id {
                // The id's own coordinator: any other broker answers
                // NOT_COORDINATOR.
                let found = upstream
                    .call(
                        &conn,
                        FindCoordinatorRequest::default()
                            .with_key(StrBytes::from_string(id.to_string()))
                            .with_key_type(1),
                        3,
                    )
                    .await?;
                if found.error_code == 0 {
                    conn = upstream
                        .connect_to(&format!("{}:{}", found.host.as_str(), found.port))
                        .await?;
                }
                request = request
                    .with_transactional_id(Some(TransactionalId(StrBytes::from_string(
                        id.to_string(),
                    ))))
                    .with_transaction_timeout_ms(self.transactions.timeout_ms(id));
            }
            // v3+: the first version that issues ids on every broker klink
            // meets (tansu answers v0-v2 with UNKNOWN_SERVER_ERROR).
            upstream.call(&conn, request, 4).await
        };
        let transactional_id = transactional_id.unwrap_or("");
        match asked.await {
            Ok(response) if response.error_code == 0 => {
                let issued = Identity {
                    producer_id: response.producer_id.0,
                    epoch: response.producer_epoch,
                };
                let ours = self.producers.set_mapped(client, cluster, issued);
                tracing::info!(%cluster, transactional_id, client = client.identity.producer_id, client_epoch = client.identity.epoch, ours = ours.producer_id, ours_epoch = ours.epoch, "producer id mapped");
                Some(ours)
            }
            Ok(response) => {
                tracing::warn!(%cluster, transactional_id, error = response.error_code, "InitProducerId refused; the client will retry");
                None
            }
            Err(e) => {
                crate::warn_unless_logged!(e, %cluster, transactional_id, error = %e, "InitProducerId failed");
                None
            }
        }
    }
}

impl crate::split::Cluster for ProxyContext {
    fn producers(&self) -> Option<&Arc<ProducerIds>> {
        Some(&self.producers)
    }

    async fn producer_on(&self, cluster: &Arc<str>, client: &ClientProducer) -> Option<Identity> {
        self.issued_on(cluster, client, None).await
    }

    fn transactions(&self) -> Option<&Arc<crate::route::OpenTransactions>> {
        Some(&self.transactions)
    }

    async fn transactional_producer_on(
        &self,
        cluster: &Arc<str>,
        client: &ClientProducer,
        transactional_id: &str,
    ) -> Option<Identity> {
        self.issued_on(cluster, client, Some(transactional_id))
            .await
    }

    async fn refresh_leaders(&self, cluster: &Arc<str>, topics: Vec<String>) {
        self.ask_leaders(cluster, &topics).await;
    }

    async fn leader(&self, cluster: &Arc<str>, topic: &str, partition: i32) -> Option<i32> {
        // Planners ask for the leaders they need first, once per cluster
        // (`refresh_leaders`); asking here, per partition, would send one
        // Metadata request per partition of a topic the cluster lacks.
        self.catalog.leader(cluster, topic, partition)
    }
}
