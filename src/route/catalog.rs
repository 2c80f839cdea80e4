//! What klink knows of each cluster's topics: ids and partition leaders,
//! learned from the Metadata responses that pass through (and from klink's
//! own Metadata requests when a redirect needs a leader it has not seen),
//! plus the one topic id clients see for each topic.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use kafka_protocol::messages::MetadataResponse;
use uuid::Uuid;

use crate::error::Result;
use crate::state::StateStore;

/// One topic on one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    pub id: Uuid,
    /// Upstream leader id per partition index; -1 when unknown.
    pub leaders: Vec<i32>,
}

#[derive(Default)]
struct Inner {
    by_cluster: HashMap<Arc<str>, HashMap<String, TopicLayout>>,
    client_ids: HashMap<String, Uuid>,
    names_by_client_id: HashMap<Uuid, String>,
}

pub struct Catalog {
    /// A std lock: lookups are map reads; learning happens per Metadata
    /// response and never holds the lock across an await.
    inner: RwLock<Inner>,
    state: Arc<StateStore>,
}

impl Catalog {
    pub fn load(state: Arc<StateStore>) -> Catalog {
        let mut inner = Inner::default();
        for (topic, id) in state.snapshot().topic_ids {
            inner.names_by_client_id.insert(id, topic.clone());
            inner.client_ids.insert(topic, id);
        }
        Catalog {
            inner: RwLock::new(inner),
            state,
        }
    }

    /// Whether some topic on `cluster` has an id other than the one clients
    /// see (it was first seen on another cluster): requests naming topics by
    /// id (Fetch, Produce v13+) then need translating even on the fast path.
    pub fn ids_differ_on(&self, cluster: &str) -> bool {
        let inner = self.read();
        inner.by_cluster.get(cluster).is_some_and(|topics| {
            topics.iter().any(|(name, layout)| {
                inner
                    .client_ids
                    .get(name)
                    .is_some_and(|id| *id != layout.id)
            })
        })
    }

    /// Records what an upstream Metadata response (upstream ids) says. A
    /// topic seen for the first time keeps this cluster's id as the id
    /// clients see for its whole life through klink; it is persisted first.
    pub fn learn(&self, cluster: &Arc<str>, response: &MetadataResponse) -> Result<()> {
        let mut fresh = Vec::new();
        {
            let mut guard = self.write();
            let inner = &mut *guard;
            let topics = inner.by_cluster.entry(cluster.clone()).or_default();
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
                topics.insert(name.to_string(), layout);
                if !topic.topic_id.is_nil() && !inner.client_ids.contains_key(name.as_str()) {
                    fresh.push((name.to_string(), topic.topic_id));
                }
            }
        }
        if !fresh.is_empty() {
            self.state.update(|s| {
                for (name, id) in &fresh {
                    s.topic_ids.entry(name.clone()).or_insert(*id);
                }
            })?;
            let mut inner = self.write();
            for (name, id) in fresh {
                if !inner.client_ids.contains_key(&name) {
                    inner.names_by_client_id.insert(id, name.clone());
                    inner.client_ids.insert(name, id);
                }
            }
        }
        Ok(())
    }

    /// Forgets a topic on a cluster (deleted, or a leader moved) so the next
    /// lookup asks again.
    pub fn forget(&self, cluster: &str, topic: &str) {
        if let Some(topics) = self.write().by_cluster.get_mut(cluster) {
            topics.remove(topic);
        }
    }

    pub fn layout(&self, cluster: &str, topic: &str) -> Option<TopicLayout> {
        self.read().by_cluster.get(cluster)?.get(topic).cloned()
    }

    pub fn leader(&self, cluster: &str, topic: &str, partition: i32) -> Option<i32> {
        let leader = *self
            .read()
            .by_cluster
            .get(cluster)?
            .get(topic)?
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
        Some(self.read().by_cluster.get(cluster)?.get(topic)?.id)
    }

    pub fn name_by_upstream_id(&self, cluster: &str, id: &Uuid) -> Option<String> {
        let inner = self.read();
        inner
            .by_cluster
            .get(cluster)?
            .iter()
            .find(|(_, layout)| layout.id == *id)
            .map(|(name, _)| name.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }
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

    #[test]
    fn the_first_id_seen_is_the_clients_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(StateStore::open(dir.path()).expect("state"));
        let catalog = Catalog::load(state.clone());
        let source: Arc<str> = Arc::from("source");
        let target: Arc<str> = Arc::from("target");
        catalog
            .learn(&source, &metadata("orders", 1, &[5, 6]))
            .expect("learn");
        catalog
            .learn(&target, &metadata("orders", 2, &[9]))
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
}
