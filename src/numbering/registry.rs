//! Every mirrored partition's eras and live offset map, shared by the
//! sessions that translate, the copiers that extend the map and the
//! cutover that starts eras.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;

use super::{Era, Side, View};
use crate::mirror::OffsetMap;
use crate::state::PersistedState;

#[derive(Debug, Default)]
struct Partition {
    eras: Vec<Era>,
    map: Arc<OffsetMap>,
    /// Built on first use after a change, per side (source, target).
    views: [Option<Arc<View>>; 2],
}

#[derive(Debug, Clone)]
struct Clusters {
    source: Arc<str>,
    target: Arc<str>,
}

#[derive(Debug, Default)]
pub struct Numbering {
    /// Per mirrored topic, its link's two clusters.
    topics: DashMap<String, Clusters>,
    /// Per topic, per partition: looked up by `&str` under a shard read
    /// lock (sessions ask per fetched partition); written only when a
    /// partition is first seen.
    partitions: DashMap<String, HashMap<i32, Arc<RwLock<Partition>>>>,
    /// Some partition's numbering differs from a cluster's own somewhere:
    /// sessions then leave their untouched fast path (one-way: set once).
    translates: AtomicBool,
}

fn slot(side: Side) -> usize {
    match side {
        Side::Source => 0,
        Side::Target => 1,
    }
}

impl Numbering {
    /// The eras persisted at past flips.
    pub fn load(state: &PersistedState) -> Numbering {
        let numbering = Numbering::default();
        for (topic, mirror) in &state.mirrors {
            for (&partition, eras) in &mirror.eras {
                if let Ok(mut p) = numbering.partition(topic, partition).write() {
                    p.eras = eras.clone();
                    numbering.note_change(&mut p);
                }
            }
        }
        numbering
    }

    /// Names `topic`'s two clusters: only a registered topic translates.
    pub fn register(&self, topic: &str, source: Arc<str>, target: Arc<str>) {
        self.topics
            .insert(topic.to_string(), Clusters { source, target });
    }

    /// Whether any topic is mirrored (only those can need translating).
    pub fn any_mirrored(&self) -> bool {
        !self.topics.is_empty()
    }

    /// Whether clients reading the cluster a session's fast path serves
    /// (the default, the source of every link so far) may need offsets or
    /// epochs translated: once some partition's numbering has an era whose
    /// offsets or epochs differ from a cluster's.
    pub fn translates(&self) -> bool {
        self.translates.load(Ordering::Relaxed)
    }

    fn note_change(&self, p: &mut Partition) {
        p.views = [None, None];
        if self.translates() || p.eras.is_empty() {
            // Before any flip clients read the source in its own numbering.
            return;
        }
        let differs =
            p.eras.iter().any(|e| {
                e.upstream_from != e.client_from || e.epoch_shift != 0 || e.epoch_from != 0
            }) || !p.map.is_identity();
        if differs {
            tracing::info!(eras = ?p.eras, runs = ?p.map.runs(), "offsets differ between the clusters: clients' offsets are translated from now on");
            self.translates.store(true, Ordering::Relaxed);
        }
    }

    fn existing(&self, topic: &str, partition: i32) -> Option<Arc<RwLock<Partition>>> {
        self.partitions.get(topic)?.get(&partition).cloned()
    }

    fn partition(&self, topic: &str, partition: i32) -> Arc<RwLock<Partition>> {
        if let Some(found) = self.existing(topic, partition) {
            return found;
        }
        self.partitions
            .entry(topic.to_string())
            .or_default()
            .entry(partition)
            .or_default()
            .clone()
    }

    /// The copier's map after a change.
    pub fn publish_map(&self, topic: &str, partition: i32, map: &OffsetMap) {
        if let Ok(mut p) = self.partition(topic, partition).write() {
            p.map = Arc::new(map.clone());
            self.note_change(&mut p);
        }
    }

    /// A flip's new eras, after they are durable.
    pub fn publish_eras(&self, eras: &BTreeMap<String, BTreeMap<i32, Vec<Era>>>) {
        for (topic, partitions) in eras {
            for (&partition, list) in partitions {
                if let Ok(mut p) = self.partition(topic, partition).write() {
                    p.eras = list.clone();
                    self.note_change(&mut p);
                }
            }
        }
    }

    /// The eras of a partition so far.
    pub fn eras(&self, topic: &str, partition: i32) -> Vec<Era> {
        self.existing(topic, partition)
            .and_then(|p| p.read().ok().map(|p| p.eras.clone()))
            .unwrap_or_default()
    }

    /// Which side of `topic`'s link `cluster` is, if the topic is mirrored.
    pub fn side(&self, topic: &str, cluster: &str) -> Option<Side> {
        let clusters = self.topics.get(topic)?;
        if *clusters.source == *cluster {
            Some(Side::Source)
        } else if *clusters.target == *cluster {
            Some(Side::Target)
        } else {
            None
        }
    }

    /// How `cluster`'s offsets of a partition read for clients; `None`
    /// where they are the client's own (nothing to translate).
    pub fn view(&self, topic: &str, partition: i32, cluster: &str) -> Option<Arc<View>> {
        let side = self.side(topic, cluster)?;
        // No map and no era yet: every cluster reads as its own numbering.
        let entry = self.existing(topic, partition)?;
        if let Some(view) = entry.read().ok()?.views[slot(side)].clone() {
            return (!view.is_identity()).then_some(view);
        }
        let mut p = entry.write().ok()?;
        let view = Arc::new(View::build(&p.eras, &p.map, side));
        p.views[slot(side)] = Some(view.clone());
        (!view.is_identity()).then_some(view)
    }

    /// The view of `side` whatever it is (the cutover starts eras from it).
    pub fn view_of(&self, topic: &str, partition: i32, side: Side) -> View {
        let entry = self.partition(topic, partition);
        let p = entry.read();
        match p {
            Ok(p) => View::build(&p.eras, &p.map, side),
            Err(_) => View::build(&[], &OffsetMap::default(), side),
        }
    }
}

#[cfg(test)]
impl Numbering {
    /// A test's mirrored `topic` between `source` and `target`, its
    /// partition's map of `(source_base, source_last, target_base)` runs,
    /// and one era.
    pub fn with_era(&self, topic: &str, partition: i32, runs: &[(i64, i64, i64)], era: Era) {
        self.register(topic, Arc::from("source"), Arc::from("target"));
        let mut map = OffsetMap::default();
        for &(base, last, target) in runs {
            map.append(base, last, target).expect("runs in order");
        }
        self.publish_map(topic, partition, &map);
        self.publish_eras(&BTreeMap::from([(
            topic.to_string(),
            BTreeMap::from([(partition, vec![era])]),
        )]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::MirrorRecord;

    fn latest_link_map() -> OffsetMap {
        let mut map = OffsetMap::default();
        map.append(100, 149, 0).expect("run");
        map
    }

    #[test]
    fn only_a_registered_topic_with_other_offsets_is_translated() {
        let numbering = Numbering::default();
        numbering.publish_map("orders", 0, &latest_link_map());
        assert!(
            numbering.view("orders", 0, "target").is_none(),
            "not registered"
        );
        numbering.register("orders", Arc::from("source"), Arc::from("target"));
        assert!(numbering.view("orders", 0, "source").is_none(), "its own");
        let view = numbering.view("orders", 0, "target").expect("translated");
        assert_eq!(view.to_client(0), Some(100));
        assert!(numbering.view("orders", 0, "elsewhere").is_none());
        // Reads of the source need nothing until a flip starts an era.
        assert!(!numbering.translates());
        let mut eras = BTreeMap::new();
        eras.insert(
            "orders".to_string(),
            BTreeMap::from([(
                0,
                vec![Era {
                    side: Side::Target,
                    upstream_from: 50,
                    client_from: 150,
                    epoch_shift: 0,
                    epoch_from: 0,
                }],
            )]),
        );
        numbering.publish_eras(&eras);
        assert!(numbering.translates());
        // A new map entry is seen at once.
        let mut map = latest_link_map();
        map.append(150, 159, 50).expect("run");
        numbering.publish_map("orders", 0, &map);
        let source = numbering.view_of("orders", 0, Side::Source);
        assert!(source.is_identity());
    }

    #[test]
    fn an_identity_flip_leaves_the_fast_path_alone() {
        let numbering = Numbering::default();
        numbering.register("orders", Arc::from("source"), Arc::from("target"));
        let mut map = OffsetMap::default();
        map.append(0, 99, 0).expect("run");
        numbering.publish_map("orders", 0, &map);
        numbering.publish_eras(&BTreeMap::from([(
            "orders".to_string(),
            BTreeMap::from([(
                0,
                vec![Era {
                    side: Side::Target,
                    upstream_from: 100,
                    client_from: 100,
                    epoch_shift: 0,
                    epoch_from: 0,
                }],
            )]),
        )]));
        assert!(!numbering.translates());
        assert!(numbering.view("orders", 0, "target").is_none());
    }

    #[test]
    fn eras_come_back_from_the_state_file() {
        let mut state = PersistedState::default();
        state.mirrors.insert(
            "orders".to_string(),
            MirrorRecord {
                link: "move".into(),
                start: BTreeMap::from([(0, 100)]),
                synced: BTreeMap::new(),
                eras: BTreeMap::from([(
                    0,
                    vec![Era {
                        side: Side::Target,
                        upstream_from: 50,
                        client_from: 150,
                        epoch_shift: 0,
                        epoch_from: 0,
                    }],
                )]),
            },
        );
        let numbering = Numbering::load(&state);
        assert_eq!(numbering.eras("orders", 0).len(), 1);
        assert!(numbering.translates());
    }
}
