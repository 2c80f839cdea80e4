//! Mirrors running for linked topics, from `klink proxy`.
//!
//! Each topic of a link with `mirror = true` gets a task: it waits for the
//! topic on the source, creates the mirror topic on the target (same
//! partition count, the source's non-default topic configs) unless a topic
//! of that name is already there and is not klink's (then it refuses and
//! says so in `status`), persists the mirror and moves the topic to
//! `mirroring`, and runs one copier per partition. A copier that fails
//! (cluster down, topic gone, target refusing) reports why and retries
//! with capped exponential backoff; nothing here stops the proxy.
//!
//! Just over 600 lines: a topic's life (prepare, copiers in the direction
//! its state asks for, their restarts) reads best in one place.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::{CreateTopicsRequest, DescribeConfigsRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio_util::sync::CancellationToken;

use super::bypass::{BypassWatch, ForwardedWrites};
use super::copier::{CopyConfig, Origin, PartitionCopier};
use super::offset_map::{Direction, OffsetMap};
use super::report::{Mirrors, PartitionMirror};
use super::requests::log_bounds;
use super::sender::SenderPool;
use crate::client::{Client, ClientConfig, broker_error};
use crate::config::{Config, LinkConfig, StartPosition};
use crate::error::{Error, Kind, Result};
use crate::numbering::Numbering;
use crate::route::{RouteTable, TopicState};
use crate::state::{MirrorRecord, StateStore};
use crate::upstream::security::Security;

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// DescribeConfigs resource type and config source of a topic's own configs.
const TOPIC_RESOURCE: i8 = 2;
const DYNAMIC_TOPIC_CONFIG: i8 = 1;

/// Everything a topic's mirror task needs.
#[derive(Clone)]
struct Job {
    link: LinkConfig,
    topic: String,
    source: ClientConfig,
    target: Arc<TargetStreams>,
    /// The Produce streams to the source, for the reverse mirror.
    back: Arc<TargetStreams>,
    maps: PathBuf,
    routes: Arc<RouteTable>,
    state: Arc<StateStore>,
    mirrors: Arc<Mirrors>,
    forwarded: Arc<ForwardedWrites>,
    numbering: Arc<Numbering>,
    shutdown: CancellationToken,
}

/// What every mirror writing to one target cluster shares: one client (one
/// connection per broker) and one Produce stream per broker, so that the
/// batches of all its topics' partitions go out together.
struct TargetStreams {
    config: ClientConfig,
    client: tokio::sync::OnceCell<Client>,
    pool: Arc<SenderPool>,
}

impl TargetStreams {
    /// The shared client, connected on first use (and again after a failed
    /// first try).
    async fn client(&self) -> Result<Client> {
        self.client
            .get_or_try_init(|| Client::connect(self.config.clone()))
            .await
            .cloned()
    }
}

/// Starts a mirror task for every topic of every mirroring link.
pub fn spawn(
    config: &Config,
    routes: Arc<RouteTable>,
    state: Arc<StateStore>,
    forwarded: Arc<ForwardedWrites>,
    numbering: Arc<Numbering>,
    shutdown: CancellationToken,
) -> Arc<Mirrors> {
    let mirrors = Arc::new(Mirrors::default());
    let persisted = state.snapshot();
    let mut targets: BTreeMap<String, Arc<TargetStreams>> = BTreeMap::new();
    for link in config.links.iter().filter(|l| l.mirror) {
        let client = |cluster: &str, client_id: String| {
            let section = config.clusters.get(cluster);
            ClientConfig {
                name: cluster.to_string(),
                bootstrap: section.map(|c| c.bootstrap_addrs()).unwrap_or_default(),
                client_id,
                max_frame_bytes: config.proxy.max_frame_bytes,
                security: section
                    .map(|c| c.security())
                    .unwrap_or_else(Security::plaintext),
                ..Default::default()
            }
        };
        let mut streams_to = |cluster: &str| {
            targets
                .entry(cluster.to_string())
                .or_insert_with(|| {
                    Arc::new(TargetStreams {
                        config: client(cluster, format!("klink-mirror-to-{cluster}")),
                        client: tokio::sync::OnceCell::new(),
                        pool: Arc::default(),
                    })
                })
                .clone()
        };
        let target = streams_to(&link.target);
        let back = streams_to(&link.source);
        for topic in &link.topics {
            numbering.register(
                topic,
                Arc::from(link.source.as_str()),
                Arc::from(link.target.as_str()),
            );
            // Sessions translate from the first request on, before the
            // copiers have opened their maps.
            if let Some(record) = persisted.mirrors.get(topic) {
                let dir = maps_dir(&config.proxy.state_dir, &link.id);
                for &partition in record.start.keys() {
                    match OffsetMap::load(&map_path(&dir, topic, partition)) {
                        Ok(map) => numbering.publish_map(topic, partition, &map),
                        Err(e) => {
                            tracing::warn!(topic, partition, error = %e, "offset map unreadable; its copier will say more")
                        }
                    }
                }
            }
            let job = Job {
                link: link.clone(),
                topic: topic.clone(),
                source: client(&link.source, format!("klink-mirror-{}", link.id)),
                target: target.clone(),
                back: back.clone(),
                maps: maps_dir(&config.proxy.state_dir, &link.id),
                routes: routes.clone(),
                state: state.clone(),
                mirrors: mirrors.clone(),
                forwarded: forwarded.clone(),
                numbering: numbering.clone(),
                shutdown: shutdown.clone(),
            };
            mirrors.note(topic, Some("starting".into()));
            tokio::spawn(run_topic(job));
        }
    }
    mirrors
}

async fn run_topic(job: Job) {
    let mut backoff = BACKOFF_MIN;
    let (source, target, record) = loop {
        let prepared = tokio::select! {
            _ = job.shutdown.cancelled() => return,
            prepared = prepare(&job) => prepared,
        };
        match prepared {
            Ok(Some(ready)) => break ready,
            Ok(None) => return, // refused, and said so
            Err(e) => {
                job.mirrors
                    .note(&job.topic, Some(format!("waiting: {}", e.context)));
                tracing::debug!(topic = %job.topic, error = %e, "mirror not started yet");
                if sleep_or_shutdown(&job.shutdown, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    };
    job.mirrors.note(&job.topic, None);
    job.mirrors.expect(&job.topic, record.start.len());
    // The reverse mirror reads the target on connections of its own: its
    // fetches wait for records, and would delay the forward copies' calls.
    let clients = Clients {
        source,
        target,
        target_reader: Arc::default(),
    };
    for (partition, start) in record.start {
        tokio::spawn(run_partition(
            job.clone(),
            clients.clone(),
            partition,
            start,
        ));
    }
}

/// A topic's connections, shared by its partitions' copiers.
#[derive(Clone)]
struct Clients {
    source: Client,
    target: Client,
    target_reader: Arc<tokio::sync::OnceCell<Client>>,
}

/// Where the offset maps of `link`'s partitions are kept.
pub fn maps_dir(state_dir: &std::path::Path, link: &str) -> PathBuf {
    state_dir.join("mirror").join(link)
}

/// The offset map file of one partition.
pub fn map_path(maps: &std::path::Path, topic: &str, partition: i32) -> PathBuf {
    maps.join(format!("{topic}-{partition}.map"))
}

/// Which way the topic is copied now, if at all.
fn direction_now(job: &Job) -> Option<Direction> {
    let state = job.routes.snapshot().topic(&job.topic)?.state;
    if state.copies_forward() {
        Some(Direction::Forward)
    } else if state.copied() {
        Some(Direction::Reverse)
    } else {
        None
    }
}

/// Opens the partition's copier for `direction`: from the link's start,
/// or from the point both clusters agreed on at the last flip.
async fn open_copier(
    job: &Job,
    clients: &Clients,
    partition: i32,
    start: i64,
    direction: Direction,
) -> Result<PartitionCopier> {
    let synced = job
        .state
        .snapshot()
        .mirrors
        .get(&job.topic)
        .and_then(|m| m.synced.get(&partition).copied());
    let (origin, from, to, pool, watched) = match direction {
        Direction::Forward => (
            match synced {
                Some([source, target]) => Origin {
                    direction,
                    from: source,
                    to: Some(target),
                },
                None => Origin::forward(start),
            },
            clients.source.clone(),
            clients.target.clone(),
            job.target.pool.clone(),
            &job.link.source,
        ),
        Direction::Reverse => {
            let [source, target] = synced.ok_or_else(|| {
                Error::klink(
                    Kind::Config,
                    format!(
                        "{}/{partition} is promoted but the state file has no point where both \
                         clusters held the same records: no reverse mirror",
                        job.topic
                    ),
                )
            })?;
            let reader = clients
                .target_reader
                .get_or_try_init(|| Client::connect(job.target.config.clone()))
                .await?
                .clone();
            (
                Origin {
                    direction,
                    from: target,
                    to: Some(source),
                },
                reader,
                job.back.client().await?,
                job.back.pool.clone(),
                &job.link.target,
            )
        }
    };
    let copier = PartitionCopier::open(
        from,
        to,
        &job.topic,
        partition,
        &map_path(&job.maps, &job.topic, partition),
        origin,
        CopyConfig::default(),
    )
    .await?;
    Ok(copier
        .with_numbering(job.numbering.clone())
        .with_pool(pool)
        .with_gate(job.mirrors.gate(&job.topic, partition, direction))
        .with_bypass_watch(BypassWatch::new(
            job.forwarded.clone(),
            job.routes.clone(),
            Arc::from(watched.as_str()),
            &job.topic,
            partition,
        )))
}

/// Makes the mirror topic (once) and returns the clients and the record;
/// `None` when the target's topic is someone else's.
async fn prepare(job: &Job) -> Result<Option<(Client, Client, MirrorRecord)>> {
    let source = Client::connect(job.source.clone()).await?;
    let target = job.target.client().await?;
    let meta = source.topic(&job.topic).await?;
    let configs = topic_configs(&source, &job.topic, &meta).await?;
    let partitions = meta.partitions.len();
    if let Some(record) = job.state.snapshot().mirrors.get(&job.topic).cloned() {
        // Ours: made before, or recorded just before a crash kept klink
        // from making it.
        create_topic(&target, &job.topic, partitions, configs).await?;
        ensure_mirroring(job).await?;
        return Ok(Some((source, target, record)));
    }
    // Asked by name: Kafka answers an empty topic list with no topics.
    let known = target
        .refresh_metadata()
        .await?
        .topics
        .contains_key(&job.topic)
        || target.topic_exists(&job.topic).await?;
    if known {
        refuse(job);
        return Ok(None);
    }
    let mut start = BTreeMap::new();
    for p in &meta.partitions {
        let (log_start, log_end) = log_bounds(&source, &job.topic, p.partition).await?;
        let at = match job.link.start {
            StartPosition::Earliest => log_start,
            StartPosition::Latest => log_end,
        };
        start.insert(p.partition, at);
    }
    let record = MirrorRecord {
        link: job.link.id.clone(),
        start,
        synced: BTreeMap::new(),
        eras: BTreeMap::new(),
    };
    // Recorded before the topic is made: a crash in between leaves a
    // record whose topic klink makes on restart, never a topic of klink's
    // that it would take for someone else's.
    let topic = job.topic.clone();
    let saved = record.clone();
    job.state
        .update_async(move |s| {
            s.mirrors.insert(topic, saved);
        })
        .await?;
    if !create_topic(&target, &job.topic, partitions, configs).await? {
        // Made by someone else between the check and now: not ours.
        let topic = job.topic.clone();
        job.state
            .update_async(move |s| {
                s.mirrors.remove(&topic);
            })
            .await?;
        refuse(job);
        return Ok(None);
    }
    ensure_mirroring(job).await?;
    tracing::info!(topic = %job.topic, link = %job.link.id, partitions = record.start.len(), "mirror topic created; mirroring");
    Ok(Some((source, target, record)))
}

fn refuse(job: &Job) {
    let why = format!(
        "refused: `{}` already exists on {} and is not a mirror topic klink created; \
         delete it there or take the topic out of link `{}`",
        job.topic, job.link.target, job.link.id
    );
    tracing::warn!(topic = %job.topic, "{why}");
    job.mirrors.note(&job.topic, Some(why));
}

async fn ensure_mirroring(job: &Job) -> Result<()> {
    let state = job.routes.snapshot().topic(&job.topic).map(|r| r.state);
    if state == Some(TopicState::Source) {
        let routes = job.routes.clone();
        let topic = job.topic.clone();
        tokio::task::spawn_blocking(move || routes.set_state(&topic, TopicState::Mirroring))
            .await
            .map_err(|e| Error::klink(Kind::Io, format!("state change failed: {e}")))??;
    }
    Ok(())
}

/// The source topic's own (non-default) configs, to give the mirror topic.
async fn topic_configs(
    source: &Client,
    topic: &str,
    meta: &crate::client::TopicMeta,
) -> Result<Vec<(String, String)>> {
    let leader = meta.partitions.first().map(|p| p.leader).unwrap_or(-1);
    let conn = source.broker_conn(leader).await?;
    let request = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(TOPIC_RESOURCE)
            .with_resource_name(StrBytes::from_string(topic.to_string())),
    ]);
    let response = source.call(&conn, request, 1).await?;
    let mut configs = Vec::new();
    for result in response.results {
        if result.error_code != 0 {
            return Err(broker_error(
                source.cluster_name(),
                result.error_code,
                "DescribeConfigs",
            ));
        }
        for c in result.configs {
            if c.config_source == DYNAMIC_TOPIC_CONFIG
                && let Some(value) = c.value
            {
                configs.push((c.name.to_string(), value.to_string()));
            }
        }
    }
    Ok(configs)
}

/// Creates the mirror topic; `false` when a topic of that name exists.
async fn create_topic(
    target: &Client,
    topic: &str,
    partitions: usize,
    configs: Vec<(String, String)>,
) -> Result<bool> {
    let brokers = target.metadata().brokers.len().max(1);
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(30_000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_num_partitions(i32::try_from(partitions).unwrap_or(i32::MAX))
                // As many replicas as the target has brokers, up to 3.
                .with_replication_factor(i16::try_from(brokers.min(3)).unwrap_or(1))
                .with_configs(
                    configs
                        .into_iter()
                        .map(|(name, value)| {
                            CreatableTopicConfig::default()
                                .with_name(StrBytes::from_string(name))
                                .with_value(Some(StrBytes::from_string(value)))
                        })
                        .collect(),
                ),
        ]);
    let any_broker = target
        .metadata()
        .brokers
        .keys()
        .next()
        .copied()
        .ok_or_else(|| {
            Error::upstream(
                target.cluster_name(),
                Kind::Protocol,
                "the target names no broker",
            )
        })?;
    let conn = target.broker_conn(any_broker).await?;
    let response = target.call(&conn, request, 4).await?;
    let mut created = true;
    for t in response.topics {
        match t.error_code {
            0 => {}
            code if code == ResponseError::TopicAlreadyExists.code() => created = false,
            code => return Err(broker_error(target.cluster_name(), code, "CreateTopics")),
        }
    }
    // The topic's leaders, before the copiers ask for them.
    target.topic(topic).await?;
    Ok(created)
}

/// Copies one partition for as long as klink runs: source -> target while
/// clients write the source, target -> source while the topic is
/// promoted, nothing once it is committed. One copier at a time: the two
/// directions write one offset map, and the copier that starts after a
/// flip reads it anew.
async fn run_partition(job: Job, clients: Clients, partition: i32, start: i64) {
    let mut backoff = BACKOFF_MIN;
    let mut report = PartitionMirror {
        partition,
        ..Default::default()
    };
    loop {
        let Some(direction) = direction_now(&job) else {
            if sleep_or_shutdown(&job.shutdown, Duration::from_millis(100)).await {
                return;
            }
            continue;
        };
        let opening = Instant::now();
        let opened = open_copier(&job, &clients, partition, start, direction);
        let mut copier = tokio::select! {
            _ = job.shutdown.cancelled() => return,
            opened = opened => match opened {
                Ok(copier) => copier,
                Err(e) => {
                    report.last_error = Some(e.to_string());
                    job.mirrors.partition(&job.topic, report.clone());
                    crate::warn_unless_logged!(e, topic = %job.topic, partition, ?direction, error = %e, "mirror cannot start; retrying");
                    if sleep_or_shutdown(&job.shutdown, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        tracing::debug!(topic = %job.topic, partition, ?direction, open_ms = opening.elapsed().as_secs_f64() * 1000.0, at = copier.position(), "mirror copier open");
        report.reverse = direction == Direction::Reverse;
        let mut window = (Instant::now(), 0u64);
        // Until the topic's state asks for the other direction (or none):
        // a copy in the old direction would write behind the clients'
        // backs.
        while direction_now(&job) == Some(direction) {
            let stepped = tokio::select! {
                _ = job.shutdown.cancelled() => return,
                stepped = copier.step() => stepped,
            };
            match stepped {
                Ok(progress) => {
                    backoff = BACKOFF_MIN;
                    window.1 += progress.records;
                    let elapsed = window.0.elapsed();
                    if elapsed >= Duration::from_secs(1) {
                        report.records_per_sec = window.1 as f64 / elapsed.as_secs_f64();
                        window = (Instant::now(), 0);
                    }
                    report.source_end = progress.source_end;
                    report.mirrored_to = progress.position;
                    report.lag = progress.lag();
                    report.target_end = copier.target_end();
                    report.runs = copier.map().runs().to_vec();
                    report.last_error = None;
                    note_bypass(&job.topic, &mut report, progress.bypassed);
                    job.mirrors.partition(&job.topic, report.clone());
                }
                Err(e) => {
                    if report.last_error.is_none() {
                        crate::warn_unless_logged!(e, topic = %job.topic, partition, ?direction, error = %e, "mirror stopped; retrying with backoff");
                    }
                    report.last_error = Some(e.to_string());
                    job.mirrors.partition(&job.topic, report.clone());
                    if sleep_or_shutdown(&job.shutdown, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break; // reopen: reconcile with whatever the target holds now
                }
            }
        }
    }
}

/// How long without new bypassed records ends an episode: the next one is
/// logged again.
const BYPASS_EPISODE: Duration = Duration::from_secs(60);

/// Adds records found written to the source without klink; logs once per
/// episode.
fn note_bypass(topic: &str, report: &mut PartitionMirror, bypassed: i64) {
    let now = Instant::now();
    if bypassed > 0 {
        let quiet = report
            .bypass_last_seen
            .is_none_or(|at| now.duration_since(at) >= BYPASS_EPISODE);
        if quiet {
            tracing::warn!(
                topic,
                partition = report.partition,
                records = bypassed,
                "bypass: records were written to the source partition without going through klink; \
                 a cutover would leave that producer behind"
            );
        }
        report.bypassed += bypassed;
        report.bypass_last_seen = Some(now);
    }
    report.bypass_active = report
        .bypass_last_seen
        .is_some_and(|at| now.duration_since(at) < BYPASS_EPISODE);
}

/// True when klink is shutting down.
async fn sleep_or_shutdown(shutdown: &CancellationToken, pause: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(pause) => false,
    }
}
