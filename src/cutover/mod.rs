//! The cutover: promoting mirrored topics to their target under running
//! clients (DESIGN "Topic states", traps 6-10).
//!
//! Built in steps. What is here: `promote` of a topic or of every topic of
//! a link, refused for groups it would split ([`readers`]) and waiting out
//! open transactions ([`transactions`]); the fence on the topics' writes
//! and the link's groups' commits ([`fence`]); the wait for writes already
//! forwarded; the per-partition drain, each copier held at its drain end
//! (`mirror::gate`); the groups' committed offsets handed over through the
//! offset map ([`groups`]); one durable flip of reads, writes, groups and
//! state; the release. An abort at `cutover.fence_timeout_ms` sends the
//! held requests to the source; a `promoting` left by a crash mirrors
//! again on restart (`route`). `commit` ends a promoted topic.
//! Still to come (issue "Cutover"): the reverse mirror and rollback, offset
//! and epoch translation for clients where the map is not the identity.

mod fence;
mod groups;
mod readers;
mod transactions;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use fence::{CommitInFlight, Fence, Fences, Lifted, offset_commit_of, produce_topics};
pub use readers::Readers;
pub use transactions::OpenTransactions;

use crate::client::{Client, ClientConfig};
use crate::config::{Config, LinkConfig};
use crate::error::{Error, Kind, Result};
use crate::mirror::{ForwardedWrites, Mirrors, high_watermark, log_bounds};
use crate::route::{RouteTable, TopicState};

/// How often the promotion looks at writes in flight and the mirror's
/// progress while the fence stands.
const POLL: Duration = Duration::from_millis(1);

/// What a promotion did, for the operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    pub topics: Vec<String>,
    /// The topic was promoted already: nothing was done.
    pub already: bool,
    /// How long new writes were held, in milliseconds.
    pub fence_ms: f64,
    pub partitions: Vec<Drained>,
    /// Per group handed over, per topic, the offsets committed on the
    /// target.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeMap<String, BTreeMap<i32, i64>>>,
}

/// One partition's drain: the source end the mirror had to reach, and
/// when (from the fence) it did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drained {
    pub topic: String,
    pub partition: i32,
    pub source_end: i64,
    pub drained_ms: f64,
}

pub struct Cutover {
    config: Config,
    routes: Arc<RouteTable>,
    mirrors: Arc<Mirrors>,
    forwarded: Arc<ForwardedWrites>,
    fences: Arc<Fences>,
    readers: Arc<Readers>,
    transactions: Arc<OpenTransactions>,
    /// One promotion at a time: two would race on the routes they flip.
    promoting: tokio::sync::Mutex<()>,
}

impl Cutover {
    pub fn new(
        config: Config,
        routes: Arc<RouteTable>,
        mirrors: Arc<Mirrors>,
        forwarded: Arc<ForwardedWrites>,
        fences: Arc<Fences>,
        readers: Arc<Readers>,
        transactions: Arc<OpenTransactions>,
    ) -> Cutover {
        Cutover {
            config,
            routes,
            mirrors,
            forwarded,
            fences,
            readers,
            transactions,
            promoting: tokio::sync::Mutex::new(()),
        }
    }

    /// The topics a promotion moves: one topic, or every topic of a link.
    fn resolve(&self, what: &Promote) -> Result<(LinkConfig, Vec<String>)> {
        match what {
            Promote::Topic(topic) => Ok((self.link_of(topic)?, vec![topic.clone()])),
            Promote::Link(id) => {
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
    pub async fn promote(&self, what: &Promote) -> Result<Promotion> {
        let _one = self.promoting.lock().await;
        let (link, topics) = self.resolve(what)?;
        let routes = self.routes.snapshot();
        let mut promoted = 0;
        for topic in &topics {
            let route = routes.topic(topic).ok_or_else(|| unknown_topic(topic))?;
            match route.state {
                TopicState::Promoted | TopicState::Committed if *route.writes == *link.target => {
                    promoted += 1;
                }
                TopicState::Mirroring => {}
                other => {
                    return Err(Error::client(
                        Kind::Config,
                        format!(
                            "`{topic}` is {}: only a mirroring topic can be promoted",
                            other.as_str()
                        ),
                    ));
                }
            }
        }
        if promoted == topics.len() {
            return Ok(Promotion {
                topics,
                already: true,
                fence_ms: 0.0,
                partitions: Vec::new(),
                groups: BTreeMap::new(),
            });
        }
        if promoted > 0 {
            return Err(Error::client(
                Kind::Config,
                "some of these topics are promoted and some are not: promote the others one by one",
            ));
        }
        if let Some(why) = self.readers.refusal(&topics, &link.groups) {
            return Err(Error::client(
                Kind::Config,
                format!("promotion of {} refused: {why}", names(&topics)),
            ));
        }
        let mut partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        for topic in &topics {
            let mirror = self.mirrors.topic(topic).unwrap_or_default();
            if mirror.lag().is_none() {
                return Err(Error::client(
                    Kind::Config,
                    format!(
                        "`{topic}`'s mirror is not running yet: {}",
                        mirror
                            .note
                            .as_deref()
                            .unwrap_or("no partition has reported")
                    ),
                ));
            }
            partitions.insert(topic.clone(), mirror.partitions.keys().copied().collect());
        }
        self.wait_for_transactions(&topics).await?;
        // Connected before the fence: the fence should hold writes only
        // for the drain itself.
        let source = Client::connect(self.client_config(&link, &link.source)).await?;

        for topic in &topics {
            self.set_state(topic, TopicState::Promoting).await?;
        }
        let fence = self.fences.raise(&topics, &link.groups);
        let fenced_at = Instant::now();
        let bound = Duration::from_millis(self.config.cutover.fence_timeout_ms);
        let drained = tokio::time::timeout(bound, async {
            let mut drained = Vec::new();
            for (topic, parts) in &partitions {
                drained.extend(self.drain(&link, topic, parts, &source, fenced_at).await?);
            }
            let drained_at = fenced_at.elapsed();
            // Connected under the fence on purpose: a target that cannot be
            // reached is no place to send the writes, and aborts.
            let target = Client::connect(self.client_config(&link, &link.target)).await?;
            let groups = self.hand_over(&link, &partitions, &source, &target).await?;
            tracing::debug!(
                drain_ms = drained_at.as_secs_f64() * 1000.0,
                hand_over_ms = (fenced_at.elapsed() - drained_at).as_secs_f64() * 1000.0,
                "promotion: drained and handed over"
            );
            Ok::<_, Error>((drained, groups))
        })
        .await;
        let failure = match drained {
            Ok(Ok((drained_partitions, groups))) => {
                let (routes, moving, target, moved) = (
                    self.routes.clone(),
                    topics.clone(),
                    link.target.clone(),
                    link.groups.clone(),
                );
                let flipped = tokio::task::spawn_blocking(move || {
                    routes.move_topics(&moving, &moved, &target, TopicState::Promoted)
                })
                .await
                .map_err(|e| Error::klink(Kind::Io, format!("flip failed: {e}")))
                .and_then(|flipped| flipped);
                match flipped {
                    Ok(()) => {
                        // Released under the new routes.
                        drop(fence);
                        // The limits stay: a copier step that looked at
                        // the state before the flip must still stop at the
                        // drain end (clients now write the target).
                        let fence_ms = fenced_at.elapsed().as_secs_f64() * 1000.0;
                        tracing::info!(topics = %names(&topics), fence_ms, target = %link.target, "promoted");
                        return Ok(Promotion {
                            topics,
                            already: false,
                            fence_ms,
                            partitions: drained_partitions,
                            groups,
                        });
                    }
                    Err(e) => e,
                }
            }
            Ok(Err(e)) => e,
            Err(_) => Error::klink(
                Kind::Timeout,
                format!(
                    "the drain did not finish within cutover.fence_timeout_ms ({} ms)",
                    bound.as_millis()
                ),
            ),
        };
        // Back to mirroring before the held writes go, to the source.
        let mut restored = Ok(());
        for topic in &topics {
            restored = restored.and(self.set_state(topic, TopicState::Mirroring).await);
            self.lift_limits(topic, &partitions[topic]);
        }
        drop(fence);
        tracing::warn!(topics = %names(&topics), error = %failure, "promotion aborted; the topics stay mirroring");
        let mut error = Error::klink(
            failure.kind,
            format!(
                "promotion of {} aborted: {}; held writes went to the source, the topics stay mirroring",
                names(&topics),
                failure.context
            ),
        );
        if let Err(e) = restored {
            error.context.push_str(&format!(
                " (but a state could not be set back: {})",
                e.context
            ));
        }
        Err(error)
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
                        "promotion of {} refused: transactions stay open on them past cutover.fence_timeout_ms: {}",
                        names(topics),
                        names(&open)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ends a promoted topic's migration: `promoted -> committed`. (The way
    /// back it drops, the reverse mirror, is not built yet.) Committing a
    /// committed topic says so; any other state is refused.
    pub async fn commit(&self, topic: &str) -> Result<bool> {
        let _one = self.promoting.lock().await;
        self.link_of(topic)?;
        let state = self
            .routes
            .snapshot()
            .topic(topic)
            .map(|r| r.state)
            .ok_or_else(|| unknown_topic(topic))?;
        match state {
            TopicState::Committed => Ok(false),
            TopicState::Promoted => {
                self.set_state(topic, TopicState::Committed).await?;
                tracing::info!(topic, "committed");
                Ok(true)
            }
            other => Err(Error::client(
                Kind::Config,
                format!(
                    "`{topic}` is {}: only a promoted topic can be committed",
                    other.as_str()
                ),
            )),
        }
    }

    /// Waits until every write klink forwarded to the source is answered,
    /// then until the mirror has copied each partition up to the source's
    /// end after them.
    async fn drain(
        &self,
        link: &LinkConfig,
        topic: &str,
        partitions: &[i32],
        source: &Client,
        fenced_at: Instant,
    ) -> Result<Vec<Drained>> {
        while self.forwarded.unanswered(&link.source, topic) > 0 {
            tokio::time::sleep(POLL).await;
        }
        let answered_at = fenced_at.elapsed();
        // Every partition's end at once: they are read while writes wait.
        let reads = partitions.iter().map(|&partition| async move {
            let from = self.mirrors.gate(topic, partition).copied_to();
            let end = if from >= 0 {
                high_watermark(source, topic, partition, from).await?
            } else {
                log_bounds(source, topic, partition).await?.1
            };
            Ok::<_, Error>((partition, end))
        });
        let ends: BTreeMap<i32, i64> = futures::future::try_join_all(reads)
            .await?
            .into_iter()
            .collect();
        // The mirror copies up to these ends and no further: an acks=0
        // write landing on the source after them must not reach the target
        // once clients write there.
        for (&partition, &end) in &ends {
            self.mirrors.gate(topic, partition).set_limit(end);
        }
        tracing::debug!(
            topic,
            answered_ms = answered_at.as_secs_f64() * 1000.0,
            ends_ms = fenced_at.elapsed().as_secs_f64() * 1000.0,
            "promotion: writes answered, ends read"
        );
        let mut drained: Vec<Drained> = Vec::with_capacity(ends.len());
        while drained.len() < ends.len() {
            for (&partition, &end) in &ends {
                if drained.iter().any(|d| d.partition == partition) {
                    continue;
                }
                if self.mirrors.gate(topic, partition).drained_to(end) {
                    drained.push(Drained {
                        topic: topic.to_string(),
                        partition,
                        source_end: end,
                        drained_ms: fenced_at.elapsed().as_secs_f64() * 1000.0,
                    });
                }
            }
            if drained.len() < ends.len() {
                tokio::time::sleep(POLL).await;
            }
        }
        drained.sort_by_key(|d| d.partition);
        Ok(drained)
    }

    /// Writes the link's groups' committed offsets for the topics on the
    /// target, translated through the offset map. Their commits are held
    /// by the fence, so what is read here is final.
    async fn hand_over(
        &self,
        link: &LinkConfig,
        partitions: &BTreeMap<String, Vec<i32>>,
        source: &Client,
        target: &Client,
    ) -> Result<BTreeMap<String, BTreeMap<String, BTreeMap<i32, i64>>>> {
        let mut handed = BTreeMap::new();
        for group in &link.groups {
            // Commits that passed before the fence rose land first.
            while self.fences.commits_in_flight(group) > 0 {
                tokio::time::sleep(POLL).await;
            }
            let mut per_topic = BTreeMap::new();
            for (topic, parts) in partitions {
                let mirror = self.mirrors.topic(topic).unwrap_or_default();
                let runs: BTreeMap<i32, Vec<crate::mirror::Run>> = mirror
                    .partitions
                    .iter()
                    .map(|(p, m)| (*p, m.runs.clone()))
                    .collect();
                let committed = groups::fetch_committed(source, group, topic, parts).await?;
                let on_target = groups::translate_all(&runs, &committed)?;
                groups::commit(target, group, topic, &on_target).await?;
                per_topic.insert(topic.clone(), on_target);
            }
            handed.insert(group.clone(), per_topic);
        }
        Ok(handed)
    }

    fn lift_limits(&self, topic: &str, partitions: &[i32]) {
        for &partition in partitions {
            self.mirrors.gate(topic, partition).lift();
        }
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
            ..Default::default()
        }
    }
}

/// How the operator names what to promote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promote {
    Topic(String),
    Link(String),
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
