//! What a flip reads from both clusters under the fence, besides the
//! drain: the partitions' leader epochs (for the era's epoch shift) and
//! the points where both clusters hold the same records.

use std::collections::BTreeMap;

use super::Drained;
use crate::client::Client;
use crate::error::{Error, Kind, Result};
use crate::mirror::{Direction, OffsetMap, high_watermarks, log_bounds};

/// Per topic, per partition: `[source, target]` offsets where both
/// clusters hold the same records.
pub(super) type SyncPoints = BTreeMap<String, BTreeMap<i32, [i64; 2]>>;

/// Per partition, the leader epoch of the cluster left and of the cluster
/// flipped to (-1 where a cluster names none).
pub(super) type LeaderEpochs = BTreeMap<(String, i32), (i32, i32)>;

/// The partitions' leader epochs on both clusters, as each announces them
/// now (neither elects a leader under the fence in a clean flip; if one
/// does, the era's epochs still only go up from what was read here).
pub(super) async fn leader_epochs(
    from: &Client,
    to: &Client,
    partitions: &BTreeMap<String, Vec<i32>>,
) -> Result<LeaderEpochs> {
    let mut epochs = LeaderEpochs::new();
    for (topic, parts) in partitions {
        let (left, gone_to) = (from.topic(topic).await?, to.topic(topic).await?);
        let epoch_of = |meta: &crate::client::TopicMeta, partition: i32| {
            meta.partitions
                .iter()
                .find(|p| p.partition == partition)
                .map_or(-1, |p| p.leader_epoch)
        };
        for &partition in parts {
            epochs.insert(
                (topic.clone(), partition),
                (epoch_of(&left, partition), epoch_of(&gone_to, partition)),
            );
        }
    }
    Ok(epochs)
}

/// Where both clusters hold the same records once the drain is done: the
/// drain end on the cluster left, the log end of the cluster gone to
/// (which holds the copies and nothing else: clients wrote elsewhere).
pub(super) async fn sync_points(
    to: &Client,
    drained: &[Drained],
    maps: &BTreeMap<String, BTreeMap<i32, OffsetMap>>,
    direction: Direction,
) -> Result<SyncPoints> {
    // Per topic: partitions with a mapped end (an offset that cluster
    // holds, or its end) in one small fetch; others on their own.
    let mut mapped: BTreeMap<&str, BTreeMap<i32, i64>> = BTreeMap::new();
    let mut unmapped: Vec<&Drained> = Vec::new();
    for d in drained {
        let mapped_end = maps
            .get(&d.topic)
            .and_then(|m| m.get(&d.partition))
            .and_then(|m| m.ends(direction))
            .map(|(_, to_end)| to_end);
        match mapped_end {
            Some(at) => {
                mapped.entry(&d.topic).or_default().insert(d.partition, at);
            }
            None => unmapped.push(d),
        }
    }
    let by_topic = mapped.into_iter().map(|(topic, at)| async move {
        let ends = high_watermarks(to, topic, &at).await?;
        Ok::<_, Error>(
            ends.into_iter()
                .map(move |(p, end)| (topic.to_string(), p, end)),
        )
    });
    let single = unmapped.into_iter().map(|d| async move {
        let end = log_bounds(to, &d.topic, d.partition).await?.1;
        Ok::<_, Error>((d.topic.clone(), d.partition, end))
    });
    let (by_topic, single) = tokio::try_join!(
        futures::future::try_join_all(by_topic),
        futures::future::try_join_all(single)
    )?;
    let ends: BTreeMap<(String, i32), i64> = by_topic
        .into_iter()
        .flatten()
        .chain(single)
        .map(|(topic, p, end)| ((topic, p), end))
        .collect();
    let mut points = SyncPoints::new();
    for d in drained {
        let to_end = *ends.get(&(d.topic.clone(), d.partition)).ok_or_else(|| {
            Error::klink(
                Kind::Protocol,
                format!("no end read for {}/{}", d.topic, d.partition),
            )
        })?;
        let point = match direction {
            Direction::Forward => [d.end, to_end],
            Direction::Reverse => [to_end, d.end],
        };
        points
            .entry(d.topic.clone())
            .or_default()
            .insert(d.partition, point);
    }
    Ok(points)
}
