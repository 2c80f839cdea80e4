use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::{OnceCell, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    InitProducerIdRequest, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::broker::{BrokerRegistry, UpstreamBroker, VirtualBroker};
use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::route::{Catalog, Identity, ProducerIds, RouteTable};
use crate::upstream::Cluster;
use crate::versions::UpstreamVersions;

/// What every session shares.
pub struct ProxyContext {
    pub config: Config,
    pub registry: BrokerRegistry,
    pub routes: Arc<RouteTable>,
    pub catalog: Catalog,
    pub producers: ProducerIds,
    pub(super) clusters: Vec<Cluster>,
    /// Each cluster's ApiVersions answer (same order as `clusters`), learned
    /// once it answers: versions do not change under a running broker in a
    /// way klink could act on.
    pub(super) upstream_versions: Vec<OnceCell<UpstreamVersions>>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    pub(super) new_listeners: mpsc::UnboundedSender<(TcpListener, VirtualBroker)>,
    pub(super) cluster_id: std::sync::OnceLock<String>,
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

    /// The API versions of every cluster that has answered, asked on first
    /// need. A cluster that is down is left out (with a warning) rather than
    /// keeping every client from connecting; it counts once it answers.
    pub async fn upstream_versions(&self) -> Result<Vec<UpstreamVersions>> {
        let mut known = Vec::with_capacity(self.clusters.len());
        let mut last_error = None;
        for (cluster, cell) in self.clusters.iter().zip(&self.upstream_versions) {
            match cell.get_or_try_init(|| cluster.api_versions()).await {
                Ok(versions) => known.push(versions.clone()),
                Err(e) => {
                    tracing::warn!(cluster = %cluster.name, error = %e, "API versions unknown: cluster left out of the ApiVersions answer");
                    last_error = Some(e);
                }
            }
        }
        match (known.is_empty(), last_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(known),
        }
    }

    /// Asks a cluster for its brokers and registers them.
    pub async fn discover(&self, cluster: &Cluster) -> Result<()> {
        let (brokers, cluster_id) = cluster.discover().await?;
        if let Some(id) = cluster_id {
            self.note_cluster_id(&cluster.name, &id);
        }
        self.announce(&cluster.name, &brokers).await
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
        for broker in self.registry.observe(cluster, brokers)? {
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

impl crate::split::Cluster for ProxyContext {
    fn producer_issuer(&self, producer_id: i64) -> Option<Arc<str>> {
        self.producers.issuer(producer_id)
    }

    async fn producer_on(&self, cluster: &Arc<str>, client: Identity) -> Option<Identity> {
        if let Some(ours) = self.producers.mapped(client, cluster) {
            return Some(ours);
        }
        let upstream = self.cluster(cluster)?;
        let asked = async {
            let conn = upstream.connect_any().await?;
            // v3+: the first version that issues ids on every broker klink
            // meets (tansu answers v0-v2 with UNKNOWN_SERVER_ERROR).
            let request = InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000);
            upstream.call(&conn, request, 4).await
        };
        match asked.await {
            Ok(response) if response.error_code == 0 => {
                let ours = Identity {
                    producer_id: response.producer_id.0,
                    epoch: response.producer_epoch,
                };
                tracing::info!(%cluster, client = client.producer_id, ours = ours.producer_id, "producer id mapped");
                self.producers.set_mapped(client, cluster, ours);
                self.producers.mapped(client, cluster)
            }
            Ok(response) => {
                tracing::warn!(%cluster, error = response.error_code, "InitProducerId refused");
                None
            }
            Err(e) => {
                tracing::warn!(%cluster, error = %e, "InitProducerId failed");
                None
            }
        }
    }

    fn rebase_sequence(
        &self,
        client: Identity,
        cluster: &Arc<str>,
        topic: &str,
        partition: i32,
        sequence: i32,
    ) -> i32 {
        self.producers
            .rebase(client, cluster, topic, partition, sequence)
    }

    async fn leader(&self, cluster: &Arc<str>, topic: &str, partition: i32) -> Option<i32> {
        if let Some(leader) = self.catalog.leader(cluster, topic, partition) {
            return Some(leader);
        }
        // Not seen yet (or forgotten after a leader change): ask the cluster.
        let upstream = self.cluster(cluster)?;
        let refreshed = async {
            let conn = upstream.connect_any().await?;
            let request = MetadataRequest::default()
                .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                    TopicName(StrBytes::from_string(topic.to_string())),
                ))]));
            let response: MetadataResponse = upstream.call(&conn, request, 9).await?;
            let brokers = UpstreamBroker::all_in(&response);
            self.announce(cluster, &brokers).await?;
            self.catalog.learn(cluster, &response)
        };
        if let Err(e) = refreshed.await {
            tracing::warn!(%cluster, topic, error = %e, "cannot learn partition leaders");
            return None;
        }
        self.catalog.leader(cluster, topic, partition)
    }
}
