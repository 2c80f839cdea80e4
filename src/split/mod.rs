//! Requests routed by topic or group: decide where each part of a request
//! goes, split it when its parts go to different brokers, and merge the
//! answers back into the one response the client expects.
//!
//! Planning never blocks the hot path when it need not: a request whose
//! parts all go where the client sent it is forwarded as its original bytes.
//! Only requests that cross clusters are decoded, re-encoded and merged.

mod admin;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod produce;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

pub use admin::plan_admin;
pub use fetch::{FetchSessions, plan_fetch};
pub use groups::{plan_find_coordinator, plan_group, plan_list_groups};
pub use metadata::plan_metadata;
pub use offsets::{plan_list_offsets, plan_read_side};
pub use produce::plan_produce;

use crate::error::{Error, Kind, Result};
use crate::route::{Catalog, Identity, Routes};
use crate::wire::Frame;

/// Where (part of) a request goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// One upstream broker.
    Broker { cluster: Arc<str>, upstream_id: i32 },
    /// Whichever broker of the cluster klink reaches first (bootstrap).
    Any(Arc<str>),
}

impl Destination {
    pub fn cluster(&self) -> &Arc<str> {
        match self {
            Destination::Broker { cluster, .. } | Destination::Any(cluster) => cluster,
        }
    }
}

/// One sub-request of a split request.
pub struct Part {
    pub destination: Destination,
    pub frame: Bytes,
    pub expects_response: bool,
}

/// Combines the parts' answers (already address-rewritten, in part order;
/// `None` for parts that get no answer) into the client's response frame.
pub type Merge = Box<dyn FnOnce(Vec<Frame>) -> Result<Bytes> + Send>;

pub enum Plan {
    /// Send the original bytes to one destination.
    Forward(Destination),
    /// klink answers itself.
    Answer(Bytes),
    /// Send each part; merge the answers (no merge: no answer is owed).
    Split {
        parts: Vec<Part>,
        merge: Option<Merge>,
    },
}

/// What planning needs from the running proxy.
pub trait Cluster {
    /// The upstream leader of a partition on `cluster`, asking the cluster
    /// when klink has not seen it yet.
    fn leader(
        &self,
        cluster: &Arc<str>,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Option<i32>> + Send;

    /// The cluster that issued a client's producer id, when klink saw it.
    fn producer_issuer(&self, _producer_id: i64) -> Option<Arc<str>> {
        None
    }

    /// The producer identity `cluster` issued klink for a client identity,
    /// asking the cluster for one the first time.
    fn producer_on(
        &self,
        _cluster: &Arc<str>,
        _client: Identity,
    ) -> impl Future<Output = Option<Identity>> + Send {
        async { None }
    }

    /// A batch's sequence as it goes to `cluster` under klink's identity.
    fn rebase_sequence(
        &self,
        _client: Identity,
        _cluster: &Arc<str>,
        _topic: &str,
        _partition: i32,
        sequence: i32,
    ) -> i32 {
        sequence
    }
}

/// Everything a planner looks at for one request.
pub struct Context<'a, C: Cluster> {
    pub cluster: &'a C,
    pub routes: &'a Arc<Routes>,
    pub catalog: &'a Catalog,
    /// Where the client sent the request.
    pub home: &'a Destination,
    pub api: ApiKey,
    pub version: i16,
    pub payload: &'a Bytes,
}

impl<C: Cluster> Context<'_, C> {
    /// Decodes the request header and body.
    pub fn decode<R: Decodable>(&self) -> Result<(RequestHeader, R)> {
        let fail = |e: anyhow::Error| {
            Error::client(
                Kind::Protocol,
                format!("{:?} v{}: {e}", self.api, self.version),
            )
        };
        let mut buf = self.payload.clone();
        let header = RequestHeader::decode(&mut buf, self.api.request_header_version(self.version))
            .map_err(fail)?;
        let body = R::decode(&mut buf, self.version).map_err(fail)?;
        Ok((header, body))
    }

    /// The name of a topic a request names by name or (v13+) by the id
    /// clients see, and whether `cluster` knows it by another id (then the
    /// request must be re-encoded with that cluster's id).
    pub fn topic_name(
        &self,
        by_id: bool,
        name: &str,
        id: uuid::Uuid,
        cluster: impl Fn(&str) -> Arc<str>,
    ) -> (String, Arc<str>, bool) {
        let name = if by_id {
            self.catalog.name_by_client_id(&id).unwrap_or_default()
        } else {
            name.to_string()
        };
        let cluster = cluster(&name);
        let translate = by_id
            && self
                .catalog
                .upstream_id(&cluster, &name)
                .is_some_and(|known| known != id);
        (name, cluster, translate)
    }

    /// Where a partition of `topic` routed to `cluster` goes: the broker
    /// the client chose when the route stays on its cluster, otherwise the
    /// partition's leader on the routed cluster.
    pub async fn partition_destination(
        &self,
        cluster: &Arc<str>,
        topic: &str,
        partition: i32,
    ) -> Option<Destination> {
        if self.home.cluster() == cluster {
            return Some(self.home.clone());
        }
        let leader = self.cluster.leader(cluster, topic, partition).await?;
        Some(Destination::Broker {
            cluster: cluster.clone(),
            upstream_id: leader,
        })
    }

    /// The original request as a whole frame.
    pub fn payload_frame(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(4 + self.payload.len());
        buf.extend_from_slice(&(self.payload.len() as i32).to_be_bytes());
        buf.extend_from_slice(self.payload);
        buf.freeze()
    }

    pub fn encode_request<R: Encodable>(&self, header: &RequestHeader, body: &R) -> Result<Bytes> {
        encode_frame(|buf| {
            header.encode(buf, self.api.request_header_version(self.version))?;
            body.encode(buf, self.version)
        })
    }

    pub fn encode_response<R: Encodable>(&self, correlation_id: i32, body: &R) -> Result<Bytes> {
        encode_response(self.api, self.version, correlation_id, body)
    }
}

pub fn encode_response<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes> {
    encode_frame(|buf| {
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(buf, api.response_header_version(version))?;
        body.encode(buf, version)
    })
}

pub fn decode_response<R: Decodable>(api: ApiKey, version: i16, frame: &Frame) -> Result<R> {
    let fail =
        |e: anyhow::Error| Error::klink(Kind::Protocol, format!("merging {api:?} v{version}: {e}"));
    let mut buf = frame.payload();
    ResponseHeader::decode(&mut buf, api.response_header_version(version)).map_err(fail)?;
    R::decode(&mut buf, version).map_err(fail)
}

fn encode_frame(write: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    write(&mut buf).map_err(|e| Error::klink(Kind::Protocol, format!("encoding: {e}")))?;
    let length = i32::try_from(buf.len() - 4)
        .map_err(|_| Error::klink(Kind::Protocol, "frame too large"))?;
    buf[..4].copy_from_slice(&length.to_be_bytes());
    Ok(buf.freeze())
}

/// A topic as a request version names it: by name, or (Fetch and Produce
/// v13+, KIP-516) by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicKey {
    Name(String),
    Id(uuid::Uuid),
}

impl TopicKey {
    pub fn new(by_id: bool, name: &str, id: uuid::Uuid) -> TopicKey {
        if by_id {
            TopicKey::Id(id)
        } else {
            TopicKey::Name(name.to_string())
        }
    }
}

/// A per-topic entry of a request or response, found or made by its key.
pub trait TopicEntry: Default {
    fn is(&self, key: &TopicKey) -> bool;
    fn named(key: &TopicKey) -> Self;
}

macro_rules! topic_entry {
    ($type:ty, $field:ident, $with:ident, by_id) => {
        impl TopicEntry for $type {
            fn is(&self, key: &TopicKey) -> bool {
                match key {
                    TopicKey::Name(name) => self.$field.as_str() == name,
                    TopicKey::Id(id) => self.topic_id == *id,
                }
            }
            fn named(key: &TopicKey) -> Self {
                match key {
                    TopicKey::Name(name) => Self::default().$with(TopicName(name.clone().into())),
                    TopicKey::Id(id) => Self::default().with_topic_id(*id),
                }
            }
        }
    };
    ($type:ty, $field:ident, $with:ident) => {
        impl TopicEntry for $type {
            fn is(&self, key: &TopicKey) -> bool {
                matches!(key, TopicKey::Name(name) if self.$field.as_str() == name)
            }
            fn named(key: &TopicKey) -> Self {
                match key {
                    TopicKey::Name(name) => Self::default().$with(TopicName(name.clone().into())),
                    TopicKey::Id(_) => Self::default(),
                }
            }
        }
    };
}

use kafka_protocol::messages::TopicName;
use kafka_protocol::messages::{
    fetch_request, fetch_response, list_offsets_request, list_offsets_response,
};
use kafka_protocol::messages::{produce_request, produce_response};
topic_entry!(fetch_request::FetchTopic, topic, with_topic, by_id);
topic_entry!(
    fetch_response::FetchableTopicResponse,
    topic,
    with_topic,
    by_id
);
topic_entry!(produce_request::TopicProduceData, name, with_name, by_id);
topic_entry!(
    produce_response::TopicProduceResponse,
    name,
    with_name,
    by_id
);
topic_entry!(list_offsets_request::ListOffsetsTopic, name, with_name);
topic_entry!(
    list_offsets_response::ListOffsetsTopicResponse,
    name,
    with_name
);

/// The entry of `list` for `key`, appended when missing.
pub fn entry<'a, T: TopicEntry>(list: &'a mut Vec<T>, key: &TopicKey) -> &'a mut T {
    let index = match list.iter().position(|t| t.is(key)) {
        Some(index) => index,
        None => {
            list.push(T::named(key));
            list.len() - 1
        }
    };
    &mut list[index]
}

/// As [`entry`], looking at the last entry only: a merged answer lists a
/// topic again where the request did, so partitions keep the request's order.
pub fn last_entry<'a, T: TopicEntry>(list: &'a mut Vec<T>, key: &TopicKey) -> &'a mut T {
    if !list.last().is_some_and(|t| t.is(key)) {
        list.push(T::named(key));
    }
    let last = list.len() - 1;
    &mut list[last]
}

/// Groups items by destination, keeping first-seen order of destinations.
pub fn group_by<T>(items: Vec<(Destination, T)>) -> Vec<(Destination, Vec<T>)> {
    let mut groups: Vec<(Destination, Vec<T>)> = Vec::new();
    for (destination, item) in items {
        match groups.iter_mut().find(|(d, _)| *d == destination) {
            Some((_, list)) => list.push(item),
            None => groups.push((destination, vec![item])),
        }
    }
    groups
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::route::RouteTable;
    use crate::state::StateStore;

    /// Two clusters; `orders` and `payments` and group `billing` linked.
    pub fn routes(dir: &Path) -> RouteTable {
        let config = Config::parse(
            Path::new("klink.toml"),
            "[proxy]\nlisten = \"127.0.0.1:9092\"\nadvertised_host = \"127.0.0.1\"\nbroker_ports_start = 9100\n\
             [clusters.source]\nbootstrap = \"127.0.0.1:1\"\n[clusters.target]\nbootstrap = \"127.0.0.1:2\"\n\
             [[links]]\nid = \"m\"\nsource = \"source\"\ntarget = \"target\"\ntopics = [\"orders\", \"payments\"]\ngroups = [\"billing\"]\n",
        )
        .expect("config");
        RouteTable::load(&config, Arc::new(StateStore::open(dir).expect("state"))).expect("routes")
    }

    /// Leaders: every partition p of every topic is led by broker 10 + p.
    pub struct FixedLeaders(pub HashMap<String, i32>);

    impl Cluster for FixedLeaders {
        async fn leader(&self, _cluster: &Arc<str>, topic: &str, partition: i32) -> Option<i32> {
            self.0
                .get(topic)
                .filter(|n| partition < **n)
                .map(|_| 10 + partition)
        }
    }

    pub fn frame_of(bytes: Bytes) -> Frame {
        Frame::from_prefixed(bytes)
    }
}
