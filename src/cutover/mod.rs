//! The cutover: promoting mirrored topics to their target under running
//! clients (DESIGN "Topic states", traps 6-10).
//!
//! `promote` and `rollback` of a topic or of every topic of a link are one
//! operation in two directions ([`flip`]): refused for groups it would
//! split ([`readers`]), waiting out open transactions ([`transactions`]);
//! the fence on the topics' writes and the link's groups' commits
//! ([`fence`]); the wait for writes already forwarded; the per-partition
//! drain of the copy in that direction, each copier held at its drain end
//! (`mirror::gate`); the groups' committed offsets handed over through the
//! offset map ([`groups`]); one durable flip of reads, writes, groups,
//! state and the point both clusters agree on; the release. An abort at
//! `cutover.fence_timeout_ms` sends the held requests where they were
//! going; a `promoting` or `rolling-back` left by a crash is undone on
//! restart (`route`). While promoted, the mirror copies target -> source
//! (`mirror::runner`); `commit` stops that and ends the migration.
//! Each flip starts an era of the partition's client numbering (offsets
//! and leader epochs, `numbering`), persisted with the routes.

mod fence;
mod flip;
mod groups;
mod points;
mod readers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use fence::{CommitInFlight, Fence, Fences, Lifted, offset_commit_of, produce_topics};
pub use readers::Readers;

use crate::client::ClientConfig;
use crate::config::{Config, LinkConfig};
use crate::error::{Error, Kind, Result};
use crate::mirror::{Direction, ForwardedWrites, Mirrors};
use crate::numbering::Numbering;
use crate::route::{RouteTable, TopicState};
use crate::upstream::security::Security;

/// What a promotion or a rollback did, for the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    pub topics: Vec<String>,
    /// A rollback (target -> source), not a promotion.
    #[serde(default)]
    pub rollback: bool,
    /// The topics were there already: nothing was done.
    pub already: bool,
    /// How long new writes were held, in milliseconds.
    pub fence_ms: f64,
    pub partitions: Vec<Drained>,
    /// Per group handed over, per topic, the offsets committed on the
    /// target.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeMap<String, BTreeMap<i32, i64>>>,
}

impl Promotion {
    fn already(topics: Vec<String>, direction: Direction) -> Promotion {
        Promotion {
            topics,
            rollback: direction == Direction::Reverse,
            already: true,
            fence_ms: 0.0,
            partitions: Vec::new(),
            groups: BTreeMap::new(),
        }
    }
}

/// One partition's drain: the end (on the cluster clients wrote until the
/// flip) the mirror had to reach, and when (from the fence) it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drained {
    pub topic: String,
    pub partition: i32,
    pub end: i64,
    pub drained_ms: f64,
}

pub struct Cutover {
    config: Config,
    routes: Arc<RouteTable>,
    mirrors: Arc<Mirrors>,
    forwarded: Arc<ForwardedWrites>,
    fences: Arc<Fences>,
    readers: Arc<Readers>,
    transactions: Arc<crate::route::OpenTransactions>,
    numbering: Arc<Numbering>,
    /// One promotion at a time: two would race on the routes they flip.
    promoting: tokio::sync::Mutex<()>,
}

/// What the sessions share with the cutover about the traffic they carry:
/// writes forwarded, the fences they hold requests at, the groups reading
/// each topic, the transactions open.
pub struct Traffic {
    pub forwarded: Arc<ForwardedWrites>,
    pub fences: Arc<Fences>,
    pub readers: Arc<Readers>,
    pub transactions: Arc<crate::route::OpenTransactions>,
}

impl Cutover {
    pub fn new(
        config: Config,
        routes: Arc<RouteTable>,
        mirrors: Arc<Mirrors>,
        numbering: Arc<Numbering>,
        traffic: Traffic,
    ) -> Cutover {
        let Traffic {
            forwarded,
            fences,
            readers,
            transactions,
        } = traffic;
        Cutover {
            config,
            routes,
            mirrors,
            forwarded,
            fences,
            readers,
            transactions,
            numbering,
            promoting: tokio::sync::Mutex::new(()),
        }
    }

    /// The topics a flip moves (one topic, or every topic of a link) and
    /// their link, whose groups are the config's, those an earlier
    /// `--group` joined to it, and this one's `--group`s (joined to the
    /// link from now on: the way back takes them too). A named group must
    /// be where the topics are now.
    fn resolve(&self, what: &Selection, direction: Direction) -> Result<(LinkConfig, Vec<String>)> {
        let (mut link, topics) = self.resolve_topics(&what.topics)?;
        if !what.groups.is_empty() {
            let now_at = match direction {
                Direction::Forward => &link.source,
                Direction::Reverse => &link.target,
            };
            self.routes.join_groups(&link.id, &what.groups, now_at)?;
        }
        let routes = self.routes.snapshot();
        for (group, route) in routes.groups() {
            if route.link.as_deref() == Some(link.id.as_str())
                && !link.groups.iter().any(|g| g == group)
            {
                link.groups.push(group.to_string());
            }
        }
        Ok((link, topics))
    }

    fn resolve_topics(&self, what: &Topics) -> Result<(LinkConfig, Vec<String>)> {
        match what {
            Topics::Topic(topic) => Ok((self.link_of(topic)?, vec![topic.clone()])),
            Topics::Link(id) => {
                let link = self
                    .config
                    .links
                    .iter()
                    .find(|l| &l.id == id && l.mirror)
                    .cloned()
                    .ok_or_else(|| {
                        Error::client(Kind::Config, format!("no mirroring link `{id}`"))
                    })?;
                let topics = link.topics.clone();
                Ok((link, topics))
            }
        }
    }

    /// Moves the topics' reads and writes (and their link's groups) to the
    /// link's target once the mirror holds everything written to the
    /// source: `mirroring -> promoting -> promoted`, all of them under one
    /// fence and in one durable flip; or back to `mirroring` with nothing
    /// lost if that takes longer than the fence bound.
    pub async fn promote(&self, what: &Selection) -> Result<Promotion> {
        let _one = self.promoting.lock().await;
        let (link, topics) = self.resolve(what, Direction::Forward)?;
        if self.already(&link, &topics, Direction::Forward)? {
            return Ok(Promotion::already(topics, Direction::Forward));
        }
        self.flip(&link, topics, Direction::Forward).await
    }

    /// The way back: moves promoted topics' reads and writes (and their
    /// link's groups) to the source once the reverse mirror holds
    /// everything written to the target: `promoted -> rolling-back ->
    /// mirroring`, the forward mirror then going on from there.
    pub async fn rollback(&self, what: &Selection) -> Result<Promotion> {
        let _one = self.promoting.lock().await;
        let (link, topics) = self.resolve(what, Direction::Reverse)?;
        if self.already(&link, &topics, Direction::Reverse)? {
            return Ok(Promotion::already(topics, Direction::Reverse));
        }
        self.flip(&link, topics, Direction::Reverse).await
    }

    /// Whether every topic is where `direction` takes it already; an
    /// error when some cannot go (or some are there and some not).
    fn already(&self, link: &LinkConfig, topics: &[String], direction: Direction) -> Result<bool> {
        let routes = self.routes.snapshot();
        let (from_state, there, there_cluster, verb) = match direction {
            Direction::Forward => (
                TopicState::Mirroring,
                TopicState::Promoted,
                &link.target,
                "promoted",
            ),
            Direction::Reverse => (
                TopicState::Promoted,
                TopicState::Mirroring,
                &link.source,
                "rolled back",
            ),
        };
        let mut arrived = 0;
        for topic in topics {
            let route = routes.topic(topic).ok_or_else(|| unknown_topic(topic))?;
            let state = route.state;
            if state == from_state {
                continue;
            }
            let is_there = *route.writes == **there_cluster
                && (state == there
                    || (direction == Direction::Forward && state == TopicState::Committed));
            if is_there {
                arrived += 1;
                continue;
            }
            let why = match (direction, state) {
                (Direction::Reverse, TopicState::Committed) => format!(
                    "`{topic}` is committed: its way back (the reverse mirror) was dropped, \
                     it cannot be rolled back"
                ),
                (Direction::Forward, _) => format!(
                    "`{topic}` is {}: only a mirroring topic can be promoted",
                    state.as_str()
                ),
                (Direction::Reverse, _) => format!(
                    "`{topic}` is {}: only a promoted topic can be rolled back",
                    state.as_str()
                ),
            };
            return Err(Error::client(Kind::Config, why));
        }
        match arrived {
            0 => Ok(false),
            n if n == topics.len() => Ok(true),
            _ => Err(Error::client(
                Kind::Config,
                format!(
                    "some of these topics are {verb} and some are not: take the others one by one"
                ),
            )),
        }
    }

    /// Waits, up to the fence bound, until no transaction klink carried is
    /// open on `topics`: a promotion never splits one (trap 9).
    async fn wait_for_transactions(&self, topics: &[String]) -> Result<()> {
        let bound = Duration::from_millis(self.config.cutover.fence_timeout_ms);
        let began = Instant::now();
        loop {
            let open = self.transactions.touching(topics);
            if open.is_empty() {
                return Ok(());
            }
            if began.elapsed() >= bound {
                return Err(Error::client(
                    Kind::Config,
                    format!(
                        "moving {} refused: transactions stay open on them past cutover.fence_timeout_ms: {}",
                        names(topics),
                        names(&open)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ends promoted topics' migration: `promoted -> committed`; the
    /// reverse mirror stops and the way back is dropped. Committing a
    /// committed topic says so (`false`); any other state is refused.
    pub async fn commit(&self, what: &Selection) -> Result<bool> {
        let _one = self.promoting.lock().await;
        let (_, topics) = self.resolve_topics(&what.topics)?;
        let routes = self.routes.snapshot();
        let mut changed = false;
        for topic in &topics {
            let state = routes
                .topic(topic)
                .map(|r| r.state)
                .ok_or_else(|| unknown_topic(topic))?;
            if !matches!(state, TopicState::Committed | TopicState::Promoted) {
                return Err(Error::client(
                    Kind::Config,
                    format!(
                        "`{topic}` is {}: only a promoted topic can be committed",
                        state.as_str()
                    ),
                ));
            }
        }
        for topic in &topics {
            if routes.topic(topic).map(|r| r.state) == Some(TopicState::Promoted) {
                self.set_state(topic, TopicState::Committed).await?;
                tracing::info!(topic, "committed: the reverse mirror stops");
                changed = true;
            }
        }
        Ok(changed)
    }

    async fn set_state(&self, topic: &str, state: TopicState) -> Result<()> {
        let (routes, topic) = (self.routes.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || routes.set_state(&topic, state))
            .await
            .map_err(|e| Error::klink(Kind::Io, format!("state change failed: {e}")))?
    }

    fn link_of(&self, topic: &str) -> Result<LinkConfig> {
        self.config
            .links
            .iter()
            .find(|l| l.mirror && l.topics.iter().any(|t| t == topic))
            .cloned()
            .ok_or_else(|| unknown_topic(topic))
    }

    fn client_config(&self, link: &LinkConfig, cluster: &str) -> ClientConfig {
        ClientConfig {
            name: cluster.to_string(),
            bootstrap: self
                .config
                .clusters
                .get(cluster)
                .map(|c| c.bootstrap_addrs())
                .unwrap_or_default(),
            client_id: format!("klink-cutover-{}", link.id),
            max_frame_bytes: self.config.proxy.max_frame_bytes,
            security: self
                .config
                .clusters
                .get(cluster)
                .map(|c| c.security())
                .unwrap_or_else(Security::plaintext),
            ..Default::default()
        }
    }
}

/// What the operator moves: one topic or every topic of a link, with
/// groups outside the link that go with them (`--group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub topics: Topics,
    pub groups: Vec<String>,
}

/// One topic, or every topic of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topics {
    Topic(String),
    Link(String),
}

impl Selection {
    /// How the selection reads in a report: the topic, or `link NAME`.
    pub fn topic_names(&self) -> Vec<String> {
        match &self.topics {
            Topics::Topic(topic) => vec![topic.clone()],
            Topics::Link(link) => vec![format!("link {link}")],
        }
    }
}

fn names(topics: &[String]) -> String {
    topics
        .iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn unknown_topic(topic: &str) -> Error {
    Error::client(
        Kind::Config,
        format!("`{topic}` is not a topic of any mirroring link"),
    )
}

/// A request frame (header and body, no length prefix) as a session reads
/// it, for the tests of what klink notes from requests.
#[cfg(test)]
pub(crate) fn request_frame<R: kafka_protocol::protocol::Encodable>(
    api: kafka_protocol::messages::ApiKey,
    version: i16,
    body: &R,
) -> bytes::Bytes {
    use kafka_protocol::protocol::Encodable;
    let mut buf = bytes::BytesMut::new();
    kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .encode(&mut buf, api.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    buf.freeze()
}
