//! Producer identities across clusters (DESIGN trap 8).
//!
//! An idempotent producer's id, epoch and sequences come from the cluster
//! that answered its InitProducerId. When its batches go to another cluster
//! (its topic's writes are routed there), they must carry an id that cluster
//! issued, or the broker refuses them (tansu: UNKNOWN_PRODUCER_ID). klink
//! asks that cluster for an id of its own per client identity, and rebases
//! sequences per partition so the first batch under the new id starts at 0
//! while a retried batch keeps the sequence it had: deduplication keeps
//! working and never misfires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A client's producer identity as the issuing cluster knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    pub producer_id: i64,
    pub epoch: i16,
}

#[derive(Default)]
struct Inner {
    /// Which cluster issued each client producer id klink has seen issued.
    issued_by: HashMap<i64, Arc<str>>,
    /// Client identity on a cluster -> the identity that cluster issued klink.
    mapped: HashMap<(Identity, Arc<str>), Identity>,
    /// First client sequence seen per (client identity, cluster, topic,
    /// partition): sequences there are rebased to start at 0.
    first_sequence: HashMap<(Identity, Arc<str>, String, i32), i32>,
}

#[derive(Default)]
pub struct ProducerIds {
    /// A std mutex: map lookups only, never held across an await.
    inner: Mutex<Inner>,
}

impl ProducerIds {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an InitProducerId answer that passed through klink.
    pub fn note_issued(&self, producer_id: i64, cluster: &Arc<str>) {
        if producer_id >= 0 {
            self.lock().issued_by.insert(producer_id, cluster.clone());
        }
    }

    pub fn issuer(&self, producer_id: i64) -> Option<Arc<str>> {
        self.lock().issued_by.get(&producer_id).cloned()
    }

    pub fn mapped(&self, client: Identity, cluster: &Arc<str>) -> Option<Identity> {
        self.lock().mapped.get(&(client, cluster.clone())).copied()
    }

    pub fn set_mapped(&self, client: Identity, cluster: &Arc<str>, issued: Identity) {
        let mut inner = self.lock();
        inner
            .mapped
            .entry((client, cluster.clone()))
            .or_insert(issued);
        inner.issued_by.insert(issued.producer_id, cluster.clone());
    }

    /// The sequence a batch carries on `cluster`: the client's, less the
    /// first one seen for this partition there. Sequences wrap as Kafka's do.
    pub fn rebase(
        &self,
        client: Identity,
        cluster: &Arc<str>,
        topic: &str,
        partition: i32,
        sequence: i32,
    ) -> i32 {
        let mut inner = self.lock();
        let first = *inner
            .first_sequence
            .entry((client, cluster.clone(), topic.to_string(), partition))
            .or_insert(sequence);
        sequence.wrapping_sub(first).rem_euclid(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_start_at_zero_per_partition_and_retries_keep_theirs() {
        let ids = ProducerIds::default();
        let target: Arc<str> = Arc::from("target");
        let client = Identity {
            producer_id: 7,
            epoch: 0,
        };
        assert_eq!(ids.rebase(client, &target, "orders", 0, 100), 0);
        assert_eq!(ids.rebase(client, &target, "orders", 0, 105), 5);
        assert_eq!(
            ids.rebase(client, &target, "orders", 0, 100),
            0,
            "a retry keeps its sequence"
        );
        assert_eq!(
            ids.rebase(client, &target, "orders", 1, 40),
            0,
            "per partition"
        );
        let bumped = Identity {
            producer_id: 7,
            epoch: 1,
        };
        assert_eq!(
            ids.rebase(bumped, &target, "orders", 0, 0),
            0,
            "a new epoch starts afresh"
        );
    }

    #[test]
    fn issuers_and_mappings_are_remembered() {
        let ids = ProducerIds::default();
        let source: Arc<str> = Arc::from("source");
        let target: Arc<str> = Arc::from("target");
        ids.note_issued(7, &source);
        assert_eq!(ids.issuer(7).as_deref(), Some("source"));
        let client = Identity {
            producer_id: 7,
            epoch: 0,
        };
        ids.set_mapped(
            client,
            &target,
            Identity {
                producer_id: 900,
                epoch: 0,
            },
        );
        assert_eq!(
            ids.mapped(client, &target).map(|i| i.producer_id),
            Some(900)
        );
        assert_eq!(ids.issuer(900).as_deref(), Some("target"));
        assert_eq!(ids.mapped(client, &source), None);
    }
}
