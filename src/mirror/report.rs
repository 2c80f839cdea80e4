//! What the mirrors report, read by the control socket (`klink ctl
//! status` and `mirror`), and the copy gates a flip shares with them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::gate::CopyGate;
use super::offset_map::{Direction, Run};

/// One partition's mirror, as `klink ctl mirror` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartitionMirror {
    pub partition: i32,
    /// The source's high watermark at the last fetch.
    pub source_end: i64,
    /// Source offsets below this are copied (or were gaps).
    pub mirrored_to: i64,
    pub target_end: i64,
    pub lag: i64,
    pub records_per_sec: f64,
    pub last_error: Option<String>,
    /// Records found on the source that no write through klink explains
    /// (DESIGN trap 13), since klink started.
    #[serde(default)]
    pub bypassed: i64,
    /// Whether such records were found in the last minute.
    #[serde(default)]
    pub bypass_active: bool,
    #[serde(skip)]
    pub bypass_last_seen: Option<Instant>,
    /// The copy runs target -> source (the topic is promoted): the
    /// figures above are then the target's (read) and the source's
    /// (written).
    #[serde(default)]
    pub reverse: bool,

    /// The offset map (source ranges -> target ranges).
    #[serde(skip)]
    pub runs: Vec<Run>,
}

/// One topic's mirror.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicMirror {
    /// Why the topic is not (yet) mirroring, when it is not.
    pub note: Option<String>,
    pub partitions: BTreeMap<i32, PartitionMirror>,
    /// How many partitions the mirror copies.
    pub expected: usize,
}

impl TopicMirror {
    /// Records left to copy, once every partition has reported.
    pub fn lag(&self) -> Option<i64> {
        (self.expected > 0 && self.partitions.len() == self.expected)
            .then(|| self.partitions.values().map(|p| p.lag).sum())
    }
}

/// What every mirror reports, read by the control socket.
#[derive(Default)]
pub struct Mirrors {
    topics: Mutex<BTreeMap<String, TopicMirror>>,
    /// Per partition and direction, where its copier stands and where a
    /// promotion (forward) or a rollback (reverse) stops it.
    gates: Mutex<BTreeMap<(String, i32, bool), Arc<CopyGate>>>,
}

impl Mirrors {
    fn with<T>(&self, edit: impl FnOnce(&mut BTreeMap<String, TopicMirror>) -> T) -> T {
        edit(&mut self.topics.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn topic(&self, topic: &str) -> Option<TopicMirror> {
        self.with(|t| t.get(topic).cloned())
    }

    /// The partition's copy gate for `direction` (the same across copier
    /// restarts).
    pub fn gate(&self, topic: &str, partition: i32, direction: Direction) -> Arc<CopyGate> {
        self.gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((
                topic.to_string(),
                partition,
                direction == Direction::Reverse,
            ))
            .or_default()
            .clone()
    }

    pub(super) fn note(&self, topic: &str, note: Option<String>) {
        self.with(|t| t.entry(topic.to_string()).or_default().note = note);
    }

    pub(super) fn expect(&self, topic: &str, partitions: usize) {
        self.with(|t| t.entry(topic.to_string()).or_default().expected = partitions);
    }

    pub(super) fn partition(&self, topic: &str, partition: PartitionMirror) {
        self.with(|t| {
            t.entry(topic.to_string())
                .or_default()
                .partitions
                .insert(partition.partition, partition)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_has_a_lag_only_once_every_partition_reported() {
        let mirrors = Mirrors::default();
        assert_eq!(mirrors.topic("orders"), None);
        mirrors.expect("orders", 2);
        let report = |partition, lag| PartitionMirror {
            partition,
            lag,
            ..Default::default()
        };
        mirrors.partition("orders", report(0, 0));
        assert_eq!(mirrors.topic("orders").and_then(|t| t.lag()), None);
        mirrors.partition("orders", report(1, 7));
        assert_eq!(mirrors.topic("orders").and_then(|t| t.lag()), Some(7));
    }
}
