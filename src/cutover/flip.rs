//! One flip of a set of topics between their link's two clusters: a
//! promotion (source -> target) or a rollback (target -> source), the same
//! steps in either direction. Clients write the cluster the flip leaves
//! ("from") until the fence; the copy in the flip's direction drains it
//! into the cluster the flip goes to ("to").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::points::{LeaderEpochs, SyncPoints, leader_epochs, sync_points};
use super::{Cutover, Drained, Promotion, groups, names};
use crate::client::Client;
use crate::config::LinkConfig;
use crate::error::{Error, Kind, Result};
use crate::mirror::runner::{map_path, maps_dir};
use crate::mirror::{Direction, OffsetMap, Run, high_watermarks, log_bounds};
use crate::numbering::{Era, Side, next_era_epochs};
use crate::route::{FlipPoint, TopicState};

/// How often a flip looks at writes in flight and the copy's progress
/// while the fence stands.
const POLL: Duration = Duration::from_millis(1);

/// The states a flip goes through: before, during, after.
fn states(direction: Direction) -> (TopicState, TopicState, TopicState) {
    match direction {
        Direction::Forward => (
            TopicState::Mirroring,
            TopicState::Promoting,
            TopicState::Promoted,
        ),
        Direction::Reverse => (
            TopicState::Promoted,
            TopicState::RollingBack,
            TopicState::Mirroring,
        ),
    }
}

fn word(direction: Direction) -> &'static str {
    match direction {
        Direction::Forward => "promotion",
        Direction::Reverse => "rollback",
    }
}

impl Cutover {
    /// Fences the topics' writes and the link's groups' commits, drains
    /// the copy in `direction`, hands the groups over, flips routes and
    /// state durably, and releases; or, past the fence bound, puts the
    /// topics back as they were and releases the held requests where they
    /// were going. Nothing is lost or written twice either way.
    pub(super) async fn flip(
        &self,
        link: &LinkConfig,
        topics: Vec<String>,
        direction: Direction,
    ) -> Result<Promotion> {
        let (from_cluster, to_cluster) = match direction {
            Direction::Forward => (&link.source, &link.target),
            Direction::Reverse => (&link.target, &link.source),
        };
        let (before, during, after) = states(direction);
        let routes = self.routes.snapshot();
        let stays =
            |t: &str| !topics.iter().any(|m| m == t) && **routes.writes(t) == **from_cluster;
        let refusal = match self.readers.refusal(&topics, &link.groups) {
            Some(why) => Some(why),
            None => self.transactions.refusal(&topics, stays),
        };
        if let Some(why) = refusal {
            return Err(Error::client(
                Kind::Config,
                format!("{} of {} refused: {why}", word(direction), names(&topics)),
            ));
        }
        let mut partitions: BTreeMap<String, Vec<i32>> = BTreeMap::new();
        // A mirror that is starting (klink just restarted, or the copy just
        // turned round) gets until the fence bound, all waits together, to
        // report and to open every copier.
        let bound = Duration::from_millis(self.config.cutover.fence_timeout_ms);
        let asked_at = Instant::now();
        for topic in &topics {
            let mut mirror = self.mirrors.topic(topic).unwrap_or_default();
            while mirror.lag().is_none() && asked_at.elapsed() < bound {
                tokio::time::sleep(Duration::from_millis(20)).await;
                mirror = self.mirrors.topic(topic).unwrap_or_default();
            }
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
        // Every copier in this direction open before the fence: one that
        // turned round at the last flip may still be opening, and writes
        // should not wait for that. (Past the bound the drain goes on and
        // reads such a partition's end on its own.)
        while asked_at.elapsed() < bound
            && partitions.iter().any(|(topic, parts)| {
                parts
                    .iter()
                    .any(|&p| self.mirrors.gate(topic, p, direction).copied_to() < 0)
            })
        {
            tokio::time::sleep(POLL).await;
        }
        self.wait_for_transactions(&topics).await?;
        // Connected before the fence: it should hold writes only for the
        // drain itself.
        let from = Client::connect(self.client_config(link, from_cluster)).await?;
        // Layouts known before the fence: no Metadata round trip under it.
        for topic in &topics {
            from.topic(topic).await?;
        }
        // Awaited under the fence (a cluster that cannot be reached is no
        // place to send the writes, and aborts), opened meanwhile.
        let to_connecting = {
            let (config, topics) = (self.client_config(link, to_cluster), topics.clone());
            tokio::spawn(async move {
                let to = Client::connect(config).await?;
                for topic in &topics {
                    to.topic(topic).await?;
                }
                Ok::<_, Error>(to)
            })
        };

        for topic in &topics {
            self.set_state(topic, during).await?;
        }
        let fence = self.fences.raise(&topics, &link.groups);
        let fenced_at = Instant::now();
        // The copiers stop waiting on long fetches now, while the drain
        // reads where the copy must reach.
        for (topic, parts) in &partitions {
            for &partition in parts {
                self.mirrors.gate(topic, partition, direction).hurry();
            }
        }
        let bound = Duration::from_millis(self.config.cutover.fence_timeout_ms);
        let drained = tokio::time::timeout(bound, async {
            // A transaction that opened between the wait above and the
            // fence (no new one opens under it) would be split: abort.
            let opened = self.transactions.touching(&topics);
            if !opened.is_empty() {
                return Err(Error::client(
                    Kind::Config,
                    format!(
                        "a transaction opened on {} as the fence went up: {}; ask again",
                        names(&topics),
                        names(&opened)
                    ),
                ));
            }
            let mut drained = Vec::new();
            for (topic, parts) in &partitions {
                drained.extend(
                    self.drain(from_cluster, topic, parts, &from, direction, fenced_at)
                        .await?,
                );
            }
            let drained_at = fenced_at.elapsed();
            let to = to_connecting
                .await
                .map_err(|e| Error::klink(Kind::Io, format!("connecting {to_cluster}: {e}")))??;
            let maps = self.maps(link, &partitions)?;
            // Both read the cluster gone to, neither changes what the
            // other reads: side by side.
            let (groups, synced) = tokio::try_join!(
                self.hand_over(link, &partitions, &maps, direction, &from, &to),
                sync_points(&to, &drained, &maps, direction)
            )?;
            let epochs = leader_epochs(&from, &to, &partitions).await?;
            let synced = self.with_eras(synced, direction, &epochs);
            tracing::debug!(
                drain_ms = drained_at.as_secs_f64() * 1000.0,
                hand_over_ms = (fenced_at.elapsed() - drained_at).as_secs_f64() * 1000.0,
                "{}: drained and handed over",
                word(direction)
            );
            Ok::<_, Error>((drained, groups, synced))
        })
        .await;
        let failure = match drained {
            Ok(Ok((drained_partitions, groups, synced))) => {
                let eras: BTreeMap<String, BTreeMap<i32, Vec<Era>>> = synced
                    .iter()
                    .map(|(topic, points)| {
                        let eras = points.iter().map(|(&p, point)| (p, point.eras.clone()));
                        (topic.clone(), eras.collect())
                    })
                    .collect();
                let (routes, moving, moved_to, moved) = (
                    self.routes.clone(),
                    topics.clone(),
                    to_cluster.clone(),
                    link.groups.clone(),
                );
                let persisting = Instant::now();
                let flipped = tokio::task::spawn_blocking(move || {
                    routes.move_topics(&moving, &moved, &moved_to, after, &synced)
                })
                .await
                .map_err(|e| Error::klink(Kind::Io, format!("flip failed: {e}")))
                .and_then(|flipped| flipped);
                match flipped {
                    Ok(()) => {
                        let persist_ms = persisting.elapsed().as_secs_f64() * 1000.0;
                        // Before the release: the held writes land in the
                        // new era.
                        self.numbering.publish_eras(&eras);
                        // Released under the new routes.
                        drop(fence);
                        // The copy the other way starts from the synced
                        // point; this direction's limits stay: a copier
                        // step that looked at the state before the flip
                        // must still stop at the drain end.
                        let other = match direction {
                            Direction::Forward => Direction::Reverse,
                            Direction::Reverse => Direction::Forward,
                        };
                        self.lift_limits(&partitions, other);
                        let fence_ms = fenced_at.elapsed().as_secs_f64() * 1000.0;
                        self.forget_members(link, &from).await;
                        tracing::info!(topics = %names(&topics), fence_ms, persist_ms, to = %to_cluster, "{} done", word(direction));
                        return Ok(Promotion {
                            topics,
                            rollback: direction == Direction::Reverse,
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
        // Back as it was before the held writes go, where they were going.
        let mut restored = Ok(());
        for topic in &topics {
            restored = restored.and(self.set_state(topic, before).await);
        }
        self.lift_limits(&partitions, direction);
        drop(fence);
        tracing::warn!(topics = %names(&topics), error = %failure, "{} aborted; the topics stay {}", word(direction), before.as_str());
        let mut error = Error::klink(
            failure.kind,
            format!(
                "{} of {} aborted: {}; held writes went to {from_cluster}, the topics stay {}",
                word(direction),
                names(&topics),
                failure.context,
                before.as_str()
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

    /// Waits until every write klink forwarded to `from_cluster` is
    /// answered, then until the copy in `direction` has copied each
    /// partition up to that cluster's end after them.
    async fn drain(
        &self,
        from_cluster: &str,
        topic: &str,
        partitions: &[i32],
        from: &Client,
        direction: Direction,
        fenced_at: Instant,
    ) -> Result<Vec<Drained>> {
        while self.forwarded.unanswered(from_cluster, topic) > 0 {
            tokio::time::sleep(POLL).await;
        }
        let answered_at = fenced_at.elapsed();
        // Every partition's end in one request: they are read while writes
        // wait. A copier that has not opened yet has no position to read
        // from: its partition's bounds are asked on their own.
        let mut at: BTreeMap<i32, i64> = BTreeMap::new();
        let mut opening = Vec::new();
        for &partition in partitions {
            // Read once: a copier that stops meanwhile marks its gate -1.
            match self.mirrors.gate(topic, partition, direction).copied_to() {
                copied_to if copied_to >= 0 => {
                    at.insert(partition, copied_to);
                }
                _ => opening.push(partition),
            }
        }
        let bounds = opening.iter().map(|&partition| async move {
            Ok::<_, Error>((partition, log_bounds(from, topic, partition).await?.1))
        });
        let (mut ends, opened) = tokio::try_join!(
            async {
                if at.is_empty() {
                    Ok(BTreeMap::new())
                } else {
                    high_watermarks(from, topic, &at).await
                }
            },
            futures::future::try_join_all(bounds)
        )?;
        ends.extend(opened);
        // Every answered write is in, even one answered before the cluster's
        // high watermark covered it (acks=1 on a replicated cluster).
        for (partition, answered_end) in self.forwarded.answered_ends(from_cluster, topic) {
            if let Some(end) = ends.get_mut(&partition)
                && answered_end > *end
            {
                tracing::debug!(
                    topic,
                    partition,
                    high_watermark = *end,
                    answered_end,
                    "drain: answered writes reach past the high watermark"
                );
                *end = answered_end;
            }
        }
        // The copy stops at these ends: an acks=0 write landing after
        // them must not reach the other cluster once clients write there.
        for (&partition, &end) in &ends {
            self.mirrors
                .gate(topic, partition, direction)
                .set_limit(end);
        }
        tracing::debug!(
            topic,
            answered_ms = answered_at.as_secs_f64() * 1000.0,
            ends_ms = fenced_at.elapsed().as_secs_f64() * 1000.0,
            "{}: writes answered, ends read",
            word(direction)
        );
        let mut drained: Vec<Drained> = Vec::with_capacity(ends.len());
        while drained.len() < ends.len() {
            for (&partition, &end) in &ends {
                if drained.iter().any(|d| d.partition == partition) {
                    continue;
                }
                if self
                    .mirrors
                    .gate(topic, partition, direction)
                    .drained_to(end)
                {
                    drained.push(Drained {
                        topic: topic.to_string(),
                        partition,
                        end,
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

    /// The topics' offset maps as the copiers have written them (read from
    /// their files: everything the drain waited for is in them).
    fn maps(
        &self,
        link: &LinkConfig,
        partitions: &BTreeMap<String, Vec<i32>>,
    ) -> Result<BTreeMap<String, BTreeMap<i32, OffsetMap>>> {
        let dir = maps_dir(&self.config.proxy.state_dir, &link.id);
        let mut maps = BTreeMap::new();
        for (topic, parts) in partitions {
            let mut per_partition = BTreeMap::new();
            for &partition in parts {
                let map = OffsetMap::load(&map_path(&dir, topic, partition))?;
                per_partition.insert(partition, map);
            }
            maps.insert(topic.clone(), per_partition);
        }
        Ok(maps)
    }

    /// Writes the link's groups' committed offsets for the topics on the
    /// cluster the flip goes to, translated through the offset map. Their
    /// commits are held by the fence, so what is read here is final.
    async fn hand_over(
        &self,
        link: &LinkConfig,
        partitions: &BTreeMap<String, Vec<i32>>,
        maps: &BTreeMap<String, BTreeMap<i32, OffsetMap>>,
        direction: Direction,
        from: &Client,
        to: &Client,
    ) -> Result<BTreeMap<String, BTreeMap<String, BTreeMap<i32, i64>>>> {
        let mut handed = BTreeMap::new();
        for group in &link.groups {
            // Commits that passed before the fence rose land first.
            while self.fences.commits_in_flight(group) > 0 {
                tokio::time::sleep(POLL).await;
            }
            let mut per_topic = BTreeMap::new();
            for (topic, parts) in partitions {
                let runs: BTreeMap<i32, Vec<Run>> = maps
                    .get(topic)
                    .into_iter()
                    .flatten()
                    .map(|(&p, map)| {
                        let runs = match direction {
                            Direction::Forward => map.runs().to_vec(),
                            Direction::Reverse => map.reversed(),
                        };
                        (p, runs)
                    })
                    .collect();
                let committed = groups::fetch_committed(from, group, topic, parts).await?;
                let translated = groups::translate_all(&runs, &committed)?;
                groups::commit(to, group, topic, &translated).await?;
                per_topic.insert(topic.clone(), translated);
            }
            handed.insert(group.clone(), per_topic);
        }
        Ok(handed)
    }

    /// Takes the link's groups' members off the cluster just left (see
    /// `groups::remove_members`). After the flip, outside the fence: a
    /// failure costs a slower rebalance on a later flip back, not a
    /// record, and is logged.
    async fn forget_members(&self, link: &LinkConfig, left: &Client) {
        for group in &link.groups {
            match groups::remove_members(left, group).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(group, members = n, cluster = %left.cluster_name(), "stale group members removed from the cluster left")
                }
                Err(e) => {
                    tracing::warn!(group, cluster = %left.cluster_name(), error = %e, "could not remove the group's members from the cluster left; a flip back may wait for their sessions to expire")
                }
            }
        }
    }

    /// Each partition's eras with the one this flip starts: from the sync
    /// point on the cluster flipped to, numbered where the client
    /// numbering of the cluster left ends, with leader epochs that start
    /// at or above the highest one clients were shown (`numbering::Epochs`).
    fn with_eras(
        &self,
        synced: SyncPoints,
        direction: Direction,
        epochs: &LeaderEpochs,
    ) -> BTreeMap<String, BTreeMap<i32, FlipPoint>> {
        let (left, gone_to) = match direction {
            Direction::Forward => (Side::Source, Side::Target),
            Direction::Reverse => (Side::Target, Side::Source),
        };
        synced
            .into_iter()
            .map(|(topic, points)| {
                let points = points
                    .into_iter()
                    .map(|(partition, [source, target])| {
                        let (left_end, to_start) = match direction {
                            Direction::Forward => (source, target),
                            Direction::Reverse => (target, source),
                        };
                        let client_from = self
                            .numbering
                            .view_of(&topic, partition, left)
                            .end_to_client(left_end);
                        let (left_epoch, to_epoch) = epochs
                            .get(&(topic.clone(), partition))
                            .copied()
                            .unwrap_or((-1, -1));
                        let mut eras = self.numbering.eras(&topic, partition);
                        let (epoch_from, epoch_shift) =
                            next_era_epochs(&eras, left_epoch, to_epoch);
                        eras.push(Era {
                            side: gone_to,
                            upstream_from: to_start,
                            client_from,
                            epoch_shift,
                            epoch_from,
                        });
                        let point = FlipPoint {
                            synced: [source, target],
                            eras,
                        };
                        (partition, point)
                    })
                    .collect();
                (topic, points)
            })
            .collect()
    }

    fn lift_limits(&self, partitions: &BTreeMap<String, Vec<i32>>, direction: Direction) {
        for (topic, parts) in partitions {
            for &partition in parts {
                self.mirrors.gate(topic, partition, direction).lift();
            }
        }
    }
}
