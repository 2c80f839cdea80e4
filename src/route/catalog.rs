//! What klink knows of each cluster's topics: ids and partition leaders,
//! learned from the Metadata responses that pass through (and from klink's
//! own Metadata requests when a redirect needs a leader it has not seen),
//! plus the one topic id clients see for each topic.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use kafka_protocol::messages::MetadataResponse;
use uuid::Uuid;

use crate::error::Result;
use crate::state::{PersistedState, StateStore};

/// One topic on one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    pub id: Uuid,
    /// Upstream leader id per partition index; -1 when unknown.
    pub leaders: Vec<i32>,
}

/// A layout and when klink learned it; `None` once marked stale (a broker
/// said the leader moved), so the next lookup asks again while requests
/// keep using what klink knew.
#[derive(Debug, Clone)]
struct Known {
    layout: TopicLayout,
    learned: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    by_cluster: HashMap<Arc<str>, HashMap<String, Known>>,
    client_ids: HashMap<String, Uuid>,
    names_by_client_id: HashMap<Uuid, String>,
}

pub struct Catalog {
    /// A std lock: lookups are map reads; learning happens per Metadata
    /// response and never holds the lock across an await.
    inner: RwLock<Inner>,
    state: Arc<StateStore>,
    /// How each mirrored partition's offsets read for clients.
    pub numbering: Arc<crate::numbering::Numbering>,
}

impl Catalog {
    pub fn load(state: Arc<StateStore>) -> Catalog {
        let mut inner = Inner::default();
        let persisted = state.snapshot();
        let numbering = Arc::new(crate::numbering::Numbering::load(&persisted));
        for (topic, id) in persisted.topic_ids {
            inner.names_by_client_id.insert(id, topic.clone());
            inner.client_ids.insert(topic, id);
        }
        Catalog {
            inner: RwLock::new(inner),
            state,
            numbering,
        }
    }

    /// Whether some topic on `cluster` has an id other than the one clients
    /// see (it was first seen on another cluster): requests naming topics by
    /// id (Fetch, Produce v13+) then need translating even on the fast path.
    pub fn ids_differ_on(&self, cluster: &str) -> bool {
        let inner = self.read();
        inner.by_cluster.get(cluster).is_some_and(|topics| {
            topics.iter().any(|(name, known)| {
                inner
                    .client_ids
                    .get(name)
                    .is_some_and(|id| *id != known.layout.id)
            })
        })
    }

    /// Records what an upstream Metadata response (upstream ids) says. A
    /// topic seen for the first time keeps this cluster's id as the id
    /// clients see for its whole life through klink; it is persisted (off
    /// the async workers) before anyone can see it.
    pub async fn learn(&self, cluster: &Arc<str>, response: &MetadataResponse) -> Result<()> {
        let fresh = self.note_layouts(cluster, response);
        if fresh.is_empty() {
            return Ok(());
        }
        let winners = self
            .state
            .update_async(move |s| claim_client_ids(s, fresh))
            .await?;
        self.adopt_client_ids(winners);
        Ok(())
    }

    /// Stores the layouts a Metadata response gives and returns the topics
    /// whose client id is not known yet, with this cluster's id for them.
    fn note_layouts(&self, cluster: &Arc<str>, response: &MetadataResponse) -> Vec<(String, Uuid)> {
        let mut fresh = Vec::new();
        let mut guard = self.write();
        let inner = &mut *guard;
        let topics = inner.by_cluster.entry(cluster.clone()).or_default();
        let now = Instant::now();
        for topic in &response.topics {
            let Some(name) = topic.name.as_ref() else {
                continue;
            };
            if topic.error_code != 0 {
                continue;
            }
            let mut leaders = vec![-1; topic.partitions.len()];
            for p in &topic.partitions {
                if let Some(slot) = usize::try_from(p.partition_index)
                    .ok()
                    .and_then(|i| leaders.get_mut(i))
                {
                    *slot = p.leader_id.0;
                }
            }
            let layout = TopicLayout {
                id: topic.topic_id,
                leaders,
            };
            let known = Known {
                layout,
                learned: Some(now),
            };
            topics.insert(name.to_string(), known);
            if !topic.topic_id.is_nil() && !inner.client_ids.contains_key(name.as_str()) {
                fresh.push((name.to_string(), topic.topic_id));
            }
        }
        fresh
    }

    /// Takes the client ids the state file holds: whichever cluster's
    /// answer was persisted first is the id, in memory as on disk.
    fn adopt_client_ids(&self, persisted: Vec<(String, Uuid)>) {
        let mut inner = self.write();
        for (name, id) in persisted {
            inner.names_by_client_id.insert(id, name.clone());
            inner.client_ids.insert(name, id);
        }
    }

    /// Forgets a topic on a cluster (deleted) so the next lookup asks again.
    pub fn forget(&self, cluster: &str, topic: &str) {
        if let Some(topics) = self.write().by_cluster.get_mut(cluster) {
            topics.remove(topic);
        }
    }

    /// Makes the next freshness check for a topic fail (a broker said its
    /// leader moved) while its layout stays usable until klink learns anew.
    pub fn mark_stale(&self, cluster: &str, topic: &str) {
        if let Some(known) = self
            .write()
            .by_cluster
            .get_mut(cluster)
            .and_then(|topics| topics.get_mut(topic))
        {
            known.learned = None;
        }
    }

    /// Whether klink learned the topic's layout on `cluster` within `max_age`
    /// and nothing has said it moved since.
    pub fn is_fresh(&self, cluster: &str, topic: &str, max_age: Duration) -> bool {
        self.read()
            .by_cluster
            .get(cluster)
            .and_then(|topics| topics.get(topic))
            .and_then(|known| known.learned)
            .is_some_and(|at| at.elapsed() <= max_age)
    }

    /// The topics among `topics` that klink must ask `cluster` about.
    pub fn missing_or_stale(
        &self,
        cluster: &str,
        topics: &[String],
        max_age: Duration,
    ) -> Vec<String> {
        topics
            .iter()
            .filter(|topic| !self.is_fresh(cluster, topic, max_age))
            .cloned()
            .collect()
    }

    pub fn layout(&self, cluster: &str, topic: &str) -> Option<TopicLayout> {
        let inner = self.read();
        Some(inner.by_cluster.get(cluster)?.get(topic)?.layout.clone())
    }

    pub fn leader(&self, cluster: &str, topic: &str, partition: i32) -> Option<i32> {
        let leader = *self
            .read()
            .by_cluster
            .get(cluster)?
            .get(topic)?
            .layout
            .leaders
            .get(usize::try_from(partition).ok()?)?;
        (leader >= 0).then_some(leader)
    }

    /// The id clients see for `topic`.
    pub fn client_id(&self, topic: &str) -> Option<Uuid> {
        self.read().client_ids.get(topic).copied()
    }

    pub fn name_by_client_id(&self, id: &Uuid) -> Option<String> {
        self.read().names_by_client_id.get(id).cloned()
    }

    /// The id `cluster` knows `topic` by.
    pub fn upstream_id(&self, cluster: &str, topic: &str) -> Option<Uuid> {
        Some(self.read().by_cluster.get(cluster)?.get(topic)?.layout.id)
    }

    pub fn name_by_upstream_id(&self, cluster: &str, id: &Uuid) -> Option<String> {
        let inner = self.read();
        inner
            .by_cluster
            .get(cluster)?
            .iter()
            .find(|(_, known)| known.layout.id == *id)
            .map(|(name, _)| name.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records each topic's id unless the state already holds one (another
/// cluster's answer got there first), and returns the id the state holds
/// for each: memory takes exactly these.
fn claim_client_ids(state: &mut PersistedState, fresh: Vec<(String, Uuid)>) -> Vec<(String, Uuid)> {
    fresh
        .into_iter()
        .map(|(name, id)| {
            let held = *state.topic_ids.entry(name.clone()).or_insert(id);
            (name, held)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::metadata_response::{
        MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;

    fn metadata(topic: &'static str, id: u128, leaders: &[i32]) -> MetadataResponse {
        MetadataResponse::default().with_topics(vec![
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str(topic))))
                .with_topic_id(Uuid::from_u128(id))
                .with_partitions(
                    leaders
                        .iter()
                        .enumerate()
                        .map(|(i, l)| {
                            MetadataResponsePartition::default()
                                .with_partition_index(i as i32)
                                .with_leader_id(BrokerId(*l))
                        })
                        .collect(),
                ),
        ])
    }

    #[tokio::test]
    async fn the_first_id_seen_is_the_clients_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(StateStore::open(dir.path()).expect("state"));
        let catalog = Catalog::load(state.clone());
        let source: Arc<str> = Arc::from("source");
        let target: Arc<str> = Arc::from("target");
        catalog
            .learn(&source, &metadata("orders", 1, &[5, 6]))
            .await
            .expect("learn");
        catalog
            .learn(&target, &metadata("orders", 2, &[9]))
            .await
            .expect("learn");
        assert_eq!(catalog.client_id("orders"), Some(Uuid::from_u128(1)));
        assert!(!catalog.ids_differ_on("source"));
        assert!(catalog.ids_differ_on("target"));
        assert_eq!(
            catalog.upstream_id("target", "orders"),
            Some(Uuid::from_u128(2))
        );
        assert_eq!(catalog.leader("source", "orders", 1), Some(6));
        assert_eq!(catalog.leader("target", "orders", 1), None);
        assert_eq!(
            catalog
                .name_by_upstream_id("target", &Uuid::from_u128(2))
                .as_deref(),
            Some("orders")
        );

        let reloaded = Catalog::load(Arc::new(StateStore::open(dir.path()).expect("state")));
        assert_eq!(reloaded.client_id("orders"), Some(Uuid::from_u128(1)));
        assert_eq!(
            reloaded.name_by_client_id(&Uuid::from_u128(1)).as_deref(),
            Some("orders")
        );
    }

    #[tokio::test]
    async fn two_clusters_racing_on_a_new_topic_agree_with_the_state_file() {
        // The old code persisted with or_insert and then inserted in memory
        // whichever writer got the lock first: source's id on disk, target's
        // in memory. Drive that interleaving by hand.
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(StateStore::open(dir.path()).expect("state"));
        let catalog = Catalog::load(state.clone());
        let source: Arc<str> = Arc::from("source");
        let target: Arc<str> = Arc::from("target");
        let from_source = catalog.note_layouts(&source, &metadata("orders", 1, &[5]));
        let from_target = catalog.note_layouts(&target, &metadata("orders", 2, &[9]));
        assert_eq!(from_source.len(), 1);
        assert_eq!(from_target.len(), 1);
        let persist = |fresh: Vec<(String, Uuid)>| {
            state
                .update(move |s| claim_client_ids(s, fresh))
                .expect("persist")
        };
        let source_won = persist(from_source);
        let target_saw = persist(from_target);
        // The target's learner reaches memory first.
        catalog.adopt_client_ids(target_saw);
        catalog.adopt_client_ids(source_won);
        let on_disk = state.snapshot().topic_ids.get("orders").copied();
        assert_eq!(on_disk, Some(Uuid::from_u128(1)));
        assert_eq!(
            catalog.client_id("orders"),
            on_disk,
            "memory agrees with disk"
        );
        let reloaded = Catalog::load(Arc::new(StateStore::open(dir.path()).expect("state")));
        assert_eq!(reloaded.client_id("orders"), on_disk, "and a restart too");
    }

    #[tokio::test]
    async fn a_layout_marked_stale_is_asked_again_but_still_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Catalog::load(Arc::new(StateStore::open(dir.path()).expect("state")));
        let target: Arc<str> = Arc::from("target");
        let max_age = Duration::from_secs(60);
        let wanted = vec!["orders".to_string(), "payments".to_string()];
        assert_eq!(catalog.missing_or_stale("target", &wanted, max_age), wanted);
        catalog
            .learn(&target, &metadata("orders", 2, &[9]))
            .await
            .expect("learn");
        assert_eq!(
            catalog.missing_or_stale("target", &wanted, max_age),
            vec!["payments".to_string()]
        );
        catalog.mark_stale("target", "orders");
        assert!(!catalog.is_fresh("target", "orders", max_age));
        assert_eq!(catalog.leader("target", "orders", 0), Some(9), "still used");
        catalog
            .learn(&target, &metadata("orders", 2, &[10]))
            .await
            .expect("learn");
        assert!(catalog.is_fresh("target", "orders", max_age));
        assert_eq!(catalog.leader("target", "orders", 0), Some(10));
    }

    #[tokio::test]
    async fn old_and_forgotten_layouts_are_asked_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = Catalog::load(Arc::new(StateStore::open(dir.path()).expect("state")));
        let source: Arc<str> = Arc::from("source");
        let wanted = vec!["orders".to_string()];
        catalog
            .learn(&source, &metadata("orders", 1, &[5]))
            .await
            .expect("learn");
        assert!(catalog.is_fresh("source", "orders", Duration::from_secs(60)));
        assert!(!catalog.is_fresh("target", "orders", Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        let max_age = Duration::from_millis(10);
        assert!(!catalog.is_fresh("source", "orders", max_age));
        assert_eq!(catalog.missing_or_stale("source", &wanted, max_age), wanted);
        assert_eq!(catalog.leader("source", "orders", 0), Some(5), "still used");

        // Marking a topic klink never learned is a no-op, not an error.
        catalog.mark_stale("source", "payments");
        catalog.mark_stale("nowhere", "orders");

        catalog.forget("source", "orders");
        assert_eq!(catalog.layout("source", "orders"), None);
        assert_eq!(catalog.leader("source", "orders", 0), None);
        let any_age = Duration::from_secs(3600);
        assert_eq!(catalog.missing_or_stale("source", &wanted, any_age), wanted);
        assert_eq!(
            catalog.client_id("orders"),
            Some(Uuid::from_u128(1)),
            "the id clients see outlives the layout"
        );
    }
}
