//! Requests routed by topic or group: decide where each part of a request
//! goes, split it when its parts go to different brokers, and merge the
//! answers back into the one response the client expects.
//!
//! Planning never blocks the hot path when it need not: a request whose
//! parts all go where the client sent it is forwarded as its original bytes.
//! Only requests that cross clusters are decoded, re-encoded and merged.

mod admin;
mod commits;
mod errors;
mod fetch;
mod groups;
mod metadata;
mod offsets;
mod plan;
mod produce;
mod transactions;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};

pub use admin::plan_admin;
pub use commits::plan_txn_offset_commit;
pub use errors::error_response;
pub use fetch::{FetchSessions, plan_fetch};
pub use groups::{plan_find_coordinator, plan_group, plan_list_groups};
pub use metadata::plan_metadata;
pub use offsets::{plan_list_offsets, plan_read_side};
pub use plan::plan_request;
pub use produce::{note_lost as note_lost_produce, plan_produce};
pub use transactions::refused_while_fenced;

use crate::error::{Error, Kind, Result};
use crate::route::{Catalog, ClientProducer, Identity, ProducerIds, Routes};
use crate::wire::Frame;

/// For one part of a split request: the cluster it went to, and each topic
/// as that cluster names it, back to the client's key and the topic name.
pub type UpstreamKeys = (
    Arc<str>,
    std::collections::HashMap<TopicKey, (TopicKey, String)>,
);

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

/// Why a part of a split request has no upstream answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartFailure {
    /// It never left klink (no connection): certainly not applied.
    NotSent,
    /// It was sent, and the answer never came (connection lost, timeout):
    /// it may or may not have been applied.
    Lost,
    /// The cluster it goes to lacks the request's version.
    Unsupported,
}

/// What one part of a split request came back with.
pub enum PartAnswer {
    /// The upstream's answer, already address-rewritten.
    Answered(Frame),
    Failed(PartFailure),
}

/// Combines the parts' answers (in part order) into the client's response
/// frame. A merge answers the partitions of a failed part with an error the
/// client retries where the API has per-partition errors, and fails (which
/// closes the client connection) where it has none.
pub type Merge = Box<dyn FnOnce(Vec<PartAnswer>) -> Result<Bytes> + Send>;

/// The answered frames of every part, or an error naming the first part
/// that has none: for merges whose API has no per-part error to give.
pub fn all_answered(answers: Vec<PartAnswer>) -> Result<Vec<Frame>> {
    answers
        .into_iter()
        .map(|answer| match answer {
            PartAnswer::Answered(frame) => Ok(frame),
            PartAnswer::Failed(failure) => Err(Error::klink(
                Kind::Closed,
                format!("a part of a split request failed ({failure:?})"),
            )),
        })
        .collect()
}

/// The one answer of a single-part plan: for requests klink sends on to
/// one broker rewritten (translated offsets, epochs taken out).
pub fn only_answer(answers: Vec<PartAnswer>) -> Result<Frame> {
    all_answered(answers)?
        .pop()
        .ok_or_else(|| Error::klink(Kind::Protocol, "no answer"))
}

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

impl Plan {
    /// One request to one destination, its answer made by `merge`.
    pub fn single(destination: Destination, frame: Bytes, merge: Merge) -> Plan {
        Plan::Split {
            parts: vec![Part {
                destination,
                frame,
                expects_response: true,
            }],
            merge: Some(merge),
        }
    }
}

/// What planning needs from the running proxy.
pub trait Cluster {
    /// The upstream leader of a partition on `cluster`, as klink knows it
    /// (planners call [`Cluster::refresh_leaders`] first).
    fn leader(
        &self,
        cluster: &Arc<str>,
        topic: &str,
        partition: i32,
    ) -> impl Future<Output = Option<i32>> + Send;

    /// Makes sure klink knows, and not from too long ago, the layout of
    /// these topics on `cluster`: one Metadata request for all of them,
    /// shared with whoever asks for the same meanwhile.
    fn refresh_leaders(
        &self,
        _cluster: &Arc<str>,
        _topics: Vec<String>,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Producer identities and sequence spaces across clusters.
    fn producers(&self) -> Option<&Arc<ProducerIds>> {
        None
    }

    /// The producer identity `cluster` issued klink for a client identity,
    /// asking the cluster for one the first time.
    fn producer_on(
        &self,
        _cluster: &Arc<str>,
        _client: &ClientProducer,
    ) -> impl Future<Output = Option<Identity>> + Send {
        async { None }
    }

    /// Transactions klink has seen open, and the cluster each
    /// transactional id's transactions run on.
    fn transactions(&self) -> Option<&Arc<crate::route::OpenTransactions>> {
        None
    }

    /// The identity `cluster`'s transaction coordinator issued klink for a
    /// client's transactional identity (InitProducerId with its
    /// transactional id), asking the first time.
    fn transactional_producer_on(
        &self,
        _cluster: &Arc<str>,
        _client: &ClientProducer,
        _transactional_id: &str,
    ) -> impl Future<Output = Option<Identity>> + Send {
        async { None }
    }
}

/// Partition error codes after which klink asks the cluster for the
/// partition's leader again before routing to it.
pub fn leader_moved(error_code: i16) -> bool {
    use kafka_protocol::ResponseError as E;
    [
        E::NotLeaderOrFollower.code(),
        E::UnknownTopicOrPartition.code(),
        E::FencedLeaderEpoch.code(),
        E::LeaderNotAvailable.code(),
        E::UnknownTopicId.code(),
    ]
    .contains(&error_code)
}

/// Everything a planner looks at for one request.
pub struct Context<'a, C: Cluster> {
    pub cluster: &'a C,
    pub routes: &'a Arc<Routes>,
    pub catalog: &'a Arc<Catalog>,
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
    /// clients see; `None` for an id klink has never shown a client.
    pub fn topic_name(&self, by_id: bool, name: &str, id: uuid::Uuid) -> Option<String> {
        if by_id {
            let known = self.catalog.name_by_client_id(&id);
            if known.is_none() {
                tracing::warn!(api = ?self.api, %id, "request names a topic id klink does not know");
            }
            known
        } else {
            Some(name.to_string())
        }
    }

    /// Each topic of a request (as the client named it: by name, or by id
    /// from v13) with its name and the cluster `route` sends it to (`None`
    /// for an id klink never showed a client), after asking the clusters
    /// involved for the leaders klink lacks.
    pub async fn resolve_topics<'n>(
        &self,
        by_id: bool,
        topics: impl Iterator<Item = (&'n str, uuid::Uuid)>,
        route: fn(&Routes, &str) -> Arc<str>,
    ) -> Vec<(TopicKey, Option<String>, Option<Arc<str>>)> {
        let resolved: Vec<_> = topics
            .map(|(name, id)| {
                let client_key = TopicKey::new(by_id, name, id);
                let name = self.topic_name(by_id, name, id);
                let cluster = name.as_deref().map(|n| route(self.routes, n));
                (client_key, name, cluster)
            })
            .collect();
        self.prepare_leaders(
            resolved
                .iter()
                .filter_map(|(_, name, cluster)| Some((cluster.clone()?, name.clone()?))),
        )
        .await;
        resolved
    }

    /// Asks each cluster other than the client's own, once, for the
    /// layout of the topics routed to it that klink does not know or knows
    /// from too long ago.
    pub async fn prepare_leaders(&self, wanted: impl IntoIterator<Item = (Arc<str>, String)>) {
        let mut by_cluster: Vec<(Arc<str>, Vec<String>)> = Vec::new();
        for (cluster, topic) in wanted {
            if cluster == *self.home.cluster() {
                continue;
            }
            match by_cluster.iter_mut().find(|(c, _)| *c == cluster) {
                Some((_, topics)) => {
                    if !topics.contains(&topic) {
                        topics.push(topic);
                    }
                }
                None => by_cluster.push((cluster, vec![topic])),
            }
        }
        for (cluster, topics) in by_cluster {
            self.cluster.refresh_leaders(&cluster, topics).await;
        }
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

/// A client's current leader epoch for the cluster a request part goes
/// to: translated where that cluster's epochs are shifted for clients;
/// else the client's own at its own cluster, and -1 ("no check") at
/// another (the client learnt it from the cluster it talks to; another
/// would fence it, or take it for a divergence).
pub fn current_epoch_there(
    view: Option<&crate::numbering::View>,
    epoch: i32,
    crossing: bool,
) -> i32 {
    match view.map(|v| v.epochs()).filter(|e| !e.is_identity()) {
        Some(epochs) => epochs.to_upstream(epoch),
        None if crossing => -1,
        None => epoch,
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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
topic_entry!(
    kafka_protocol::messages::offset_for_leader_epoch_response::OffsetForLeaderTopicResult,
    topic,
    with_topic
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

    /// `orders` partition 2 promoted at offset 100 (offsets the same on
    /// both clusters) from a source at epoch 5 to a target at epoch 0: the
    /// target's epochs read 5 higher.
    pub fn promoted_from_epoch_5(numbering: &crate::numbering::Numbering) {
        let (epoch_from, epoch_shift) = crate::numbering::next_shift(5, 0);
        numbering.with_era(
            "orders",
            2,
            &[(0, 99, 0)],
            crate::numbering::Era {
                side: crate::numbering::Side::Target,
                upstream_from: 100,
                client_from: 100,
                epoch_shift,
                epoch_from,
            },
        );
    }
}
