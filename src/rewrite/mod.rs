//! Responses that name brokers, rewritten so every broker a client learns is
//! a klink virtual broker.
//!
//! A response is decoded only when its API can carry a broker id or address
//! (Metadata, FindCoordinator, DescribeCluster, and Produce/Fetch versions
//! with KIP-951 leader hints or KIP-392 preferred replicas); Fetch responses
//! are only scanned, never decoded. When nothing in a response names a
//! broker the original bytes go back untouched. An upstream id
//! klink has no virtual broker for never passes through as it is: it becomes
//! -1 (no leader) or is dropped from replica lists.

mod coordinator;
mod describe_cluster;
mod fetch;
mod metadata;
mod produce;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeClusterResponse, FindCoordinatorResponse, MetadataResponse,
    ProduceResponse, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::broker::{BrokerRegistry, UpstreamBroker, VirtualBroker};
use crate::wire::Frame;

/// A response for the client: usually one frame; a rewritten fetch is
/// several slices of the upstream frame. The common case allocates nothing.
#[derive(Debug)]
pub enum Segments {
    One(Bytes),
    Many(Vec<Bytes>),
}

/// The first Produce version whose responses may carry `node_endpoints`.
pub const PRODUCE_ENDPOINTS_SINCE: i16 = 10;
/// The first Fetch version with `preferred_read_replica` (KIP-392); Fetch
/// v16+ also carries `node_endpoints`.
pub const FETCH_BROKER_IDS_SINCE: i16 = 11;

/// Whether responses of this API and version may name a broker.
pub fn needs_rewrite(api: ApiKey, version: i16) -> bool {
    match api {
        ApiKey::Metadata | ApiKey::FindCoordinator | ApiKey::DescribeCluster => true,
        ApiKey::Produce => version >= PRODUCE_ENDPOINTS_SINCE,
        ApiKey::Fetch => version >= FETCH_BROKER_IDS_SINCE,
        _ => false,
    }
}

/// How one cluster's upstream brokers map to virtual brokers.
pub struct BrokerView<'a> {
    pub registry: &'a BrokerRegistry,
    pub cluster: &'a str,
    /// Topic ids clients see, when klink serves more than one cluster.
    pub catalog: Option<&'a crate::route::Catalog>,
    /// The one cluster id clients see (the default cluster's).
    pub cluster_id: Option<&'a str>,
}

impl BrokerView<'_> {
    fn virtual_of(&self, upstream_id: i32) -> Option<VirtualBroker> {
        self.registry.by_upstream(self.cluster, upstream_id)
    }

    /// An upstream id as the client must see it; -1 when klink has no
    /// virtual broker for it (the client then asks for metadata again).
    fn map_id(&self, id: BrokerId) -> BrokerId {
        if id.0 < 0 {
            return id;
        }
        BrokerId(self.virtual_of(id.0).map_or(-1, |b| b.id))
    }

    fn map_ids(&self, ids: &[BrokerId]) -> Vec<BrokerId> {
        ids.iter()
            .filter_map(|id| self.virtual_of(id.0).map(|b| BrokerId(b.id)))
            .collect()
    }

    fn host(&self) -> &str {
        self.registry.advertised_host()
    }

    /// How this cluster's leader epochs of a partition read for clients,
    /// where they differ from its own (a mirrored topic after a flip).
    fn shifted(
        &self,
        topic: Option<&str>,
        partition: i32,
    ) -> Option<std::sync::Arc<crate::numbering::View>> {
        let view = self
            .catalog?
            .numbering
            .view(topic?, partition, self.cluster)?;
        (!view.epochs().is_identity()).then_some(view)
    }
}

#[derive(Debug)]
enum Body {
    Metadata(MetadataResponse),
    FindCoordinator(FindCoordinatorResponse),
    DescribeCluster(DescribeClusterResponse),
    Produce(ProduceResponse),
    Fetch(fetch::FetchScan),
}

/// A decoded response waiting to be rewritten.
#[derive(Debug)]
pub struct Rewrite {
    header: ResponseHeader,
    header_version: i16,
    version: i16,
    body: Body,
    original: Frame,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot decode {api:?} v{version} response: {reason}")]
pub struct RewriteError {
    pub api: ApiKey,
    pub version: i16,
    pub reason: String,
}

impl Rewrite {
    /// Decodes `frame` when responses of `api` at `version` may name a
    /// broker; `Ok(None)` means the frame can be forwarded as it is.
    pub fn decode(
        api: ApiKey,
        version: i16,
        frame: Frame,
    ) -> Result<Option<Rewrite>, RewriteError> {
        if !needs_rewrite(api, version) {
            return Ok(None);
        }
        let fail = |e: anyhow::Error| RewriteError {
            api,
            version,
            reason: e.to_string(),
        };
        let header_version = api.response_header_version(version);
        if api == ApiKey::Fetch {
            let scan =
                fetch::FetchScan::scan(&frame.payload(), version).map_err(|e| RewriteError {
                    api,
                    version,
                    reason: e.to_string(),
                })?;
            return Ok(Some(Rewrite {
                header: ResponseHeader::default(),
                header_version,
                version,
                body: Body::Fetch(scan),
                original: frame,
            }));
        }
        let mut buf = frame.payload();
        let header = ResponseHeader::decode(&mut buf, header_version).map_err(fail)?;
        let body = match api {
            ApiKey::Metadata => {
                Body::Metadata(MetadataResponse::decode(&mut buf, version).map_err(fail)?)
            }
            ApiKey::FindCoordinator => Body::FindCoordinator(
                FindCoordinatorResponse::decode(&mut buf, version).map_err(fail)?,
            ),
            ApiKey::DescribeCluster => Body::DescribeCluster(
                DescribeClusterResponse::decode(&mut buf, version).map_err(fail)?,
            ),
            ApiKey::Produce => {
                Body::Produce(ProduceResponse::decode(&mut buf, version).map_err(fail)?)
            }
            _ => return Ok(None),
        };
        Ok(Some(Rewrite {
            header,
            header_version,
            version,
            body,
            original: frame,
        }))
    }

    /// The brokers this response announces with an address; they must have
    /// virtual brokers (and listening ports) before the rewrite is applied.
    pub fn announced(&self) -> Vec<UpstreamBroker> {
        match &self.body {
            Body::Metadata(r) => metadata::announced(r),
            Body::FindCoordinator(r) => coordinator::announced(r, self.version),
            Body::DescribeCluster(r) => describe_cluster::announced(r),
            Body::Produce(r) => produce::announced(r),
            Body::Fetch(scan) => scan.announced(),
        }
    }

    /// Whether [`Rewrite::announced`] is the cluster's whole broker list.
    pub fn announces_every_broker(&self) -> bool {
        matches!(self.body, Body::Metadata(_) | Body::DescribeCluster(_))
    }

    /// The upstream Metadata response, before any rewrite.
    pub fn metadata(&self) -> Option<&MetadataResponse> {
        match &self.body {
            Body::Metadata(r) => Some(r),
            _ => None,
        }
    }

    /// Applies the rewrite and returns the frame for the client in pieces
    /// that share the upstream frame's memory where they can (see
    /// [`fetch::FetchScan::segments`]): write them one after the other.
    pub fn apply_segments(self, view: &BrokerView<'_>) -> Result<Segments, RewriteError> {
        if let Body::Fetch(scan) = &self.body {
            let frame = self.original.wire_bytes();
            return Ok(match scan.segments(frame, self.version, view) {
                Some(parts) => Segments::Many(parts),
                None => Segments::One(frame.clone()),
            });
        }
        self.apply(view).map(Segments::One)
    }

    /// Applies the rewrite and returns the frame for the client.
    pub fn apply(mut self, view: &BrokerView<'_>) -> Result<Bytes, RewriteError> {
        let changed = match &mut self.body {
            Body::Metadata(r) => metadata::rewrite(r, view),
            Body::FindCoordinator(r) => coordinator::rewrite(r, self.version, view),
            Body::DescribeCluster(r) => describe_cluster::rewrite(r, view),
            Body::Produce(r) => produce::rewrite(r, view),
            Body::Fetch(scan) => {
                let frame = self.original.wire_bytes();
                return Ok(match scan.segments(frame, self.version, view) {
                    Some(segments) => segments.concat().into(),
                    None => frame.clone(),
                });
            }
        };
        if !changed {
            return Ok(self.original.wire_bytes().clone());
        }
        let version = self.version;
        let api = self.api();
        let fail = |e: anyhow::Error| RewriteError {
            api,
            version,
            reason: e.to_string(),
        };
        let mut buf = BytesMut::with_capacity(self.original.len());
        buf.extend_from_slice(&[0; 4]);
        self.header
            .encode(&mut buf, self.header_version)
            .map_err(fail)?;
        match &self.body {
            Body::Metadata(r) => r.encode(&mut buf, version),
            Body::FindCoordinator(r) => r.encode(&mut buf, version),
            Body::DescribeCluster(r) => r.encode(&mut buf, version),
            Body::Produce(r) => r.encode(&mut buf, version),
            Body::Fetch(_) => Ok(()),
        }
        .map_err(fail)?;
        let length = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&length.to_be_bytes());
        Ok(buf.freeze())
    }

    fn api(&self) -> ApiKey {
        match self.body {
            Body::Metadata(_) => ApiKey::Metadata,
            Body::FindCoordinator(_) => ApiKey::FindCoordinator,
            Body::DescribeCluster(_) => ApiKey::DescribeCluster,
            Body::Produce(_) => ApiKey::Produce,
            Body::Fetch(_) => ApiKey::Fetch,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::Arc;

    use super::*;
    use crate::state::StateStore;

    /// A registry that knows upstream brokers 1 and 2 of `source` at
    /// 10.9.9.1:19092 and 10.9.9.2:19092, as virtual brokers 1 and 2 on
    /// 127.0.0.1:9100/9101.
    pub fn registry() -> (tempfile::TempDir, BrokerRegistry) {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(StateStore::open(dir.path()).expect("state"));
        let registry = BrokerRegistry::load(state, "127.0.0.1".into(), 9100);
        let cluster: Arc<str> = Arc::from("source");
        // Its own thread and runtime: callers may be inside a runtime.
        let brokers = [
            UpstreamBroker {
                node_id: 1,
                host: "10.9.9.1".into(),
                port: 19092,
            },
            UpstreamBroker {
                node_id: 2,
                host: "10.9.9.2".into(),
                port: 19092,
            },
        ];
        let observe = registry.observe(&cluster, &brokers);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .build()
                        .expect("runtime")
                        .block_on(observe)
                })
                .join()
                .expect("thread")
        })
        .expect("observe");
        (dir, registry)
    }

    /// Encodes a response body into a frame as an upstream would send it.
    pub fn frame<T: Encodable>(api: ApiKey, version: i16, body: &T) -> Frame {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        ResponseHeader::default()
            .with_correlation_id(5)
            .encode(&mut buf, api.response_header_version(version))
            .expect("header");
        body.encode(&mut buf, version).expect("body");
        let length = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&length.to_be_bytes());
        Frame::from_prefixed(buf.freeze())
    }

    /// Decodes a rewritten frame back into a response.
    pub fn decode<T: Decodable>(api: ApiKey, version: i16, bytes: Bytes) -> T {
        let mut buf = bytes.slice(4..);
        let header =
            ResponseHeader::decode(&mut buf, api.response_header_version(version)).expect("header");
        assert_eq!(header.correlation_id, 5);
        T::decode(&mut buf, version).expect("body")
    }

    /// Runs decode, announced and apply the way the proxy does.
    pub fn roundtrip<T: Encodable>(
        api: ApiKey,
        version: i16,
        body: &T,
    ) -> (Vec<UpstreamBroker>, Bytes) {
        let (_dir, registry) = registry();
        let rewrite = Rewrite::decode(api, version, frame(api, version, body))
            .expect("decode")
            .expect("rewritten api");
        let announced = rewrite.announced();
        let view = BrokerView {
            registry: &registry,
            cluster: "source",
            catalog: None,
            cluster_id: None,
        };
        (announced, rewrite.apply(&view).expect("apply"))
    }

    /// [`registry`], plus a `target` cluster whose whole broker list is
    /// its upstream broker 1 (virtual broker 3, port 9102).
    pub async fn registry_with_target() -> (tempfile::TempDir, BrokerRegistry) {
        let (dir, registry) = registry();
        let target: std::sync::Arc<str> = std::sync::Arc::from("target");
        let whole = [UpstreamBroker {
            node_id: 1,
            host: "10.9.9.7".into(),
            port: 29092,
        }];
        registry.observe(&target, &whole).await.expect("observe");
        registry.note_members(&target, &whole);
        (dir, registry)
    }

    /// `body` as the `source` cluster answered it, rewritten through
    /// `registry`.
    pub fn rewritten_from_source<T: Encodable>(
        registry: &BrokerRegistry,
        api: ApiKey,
        version: i16,
        body: &T,
    ) -> Bytes {
        let rewrite = Rewrite::decode(api, version, frame(api, version, body))
            .expect("decode")
            .expect("rewritten api");
        let view = BrokerView {
            registry,
            cluster: "source",
            catalog: None,
            cluster_id: None,
        };
        rewrite.apply(&view).expect("apply")
    }

    /// No upstream host string may survive a rewrite.
    pub fn assert_no_upstream_address(bytes: &Bytes) {
        let text = String::from_utf8_lossy(bytes);
        assert!(
            !text.contains("10.9.9."),
            "an upstream address survived: {text:?}"
        );
    }
}
