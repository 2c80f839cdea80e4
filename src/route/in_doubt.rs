//! Batches that may be on a cluster although no answer said so.
//!
//! When an upstream connection dies with a Produce in flight, klink cannot
//! tell whether the broker appended the batches; it answers the client with
//! a retriable error and the client retries the same batches. If the
//! partition's writes moved to another cluster in between, following the
//! route would write a batch the old cluster may already hold a second
//! time, and leave a hole in the old cluster's sequence space (klink counts
//! the lost batch as taken there) that an idempotent producer later meets
//! as a fatal OUT_OF_ORDER_SEQUENCE_NUMBER. So a batch whose answer was lost
//! is remembered as held by that cluster, and its retry goes back there
//! whatever the route says, until that cluster answers for it: then the
//! broker's own deduplication settles it (a duplicate is answered as
//! success, a refusal lets the next retry follow the route).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::producers::ClientProducer;

/// Batches remembered at most. A client retries a lost batch within its
/// delivery timeout, so only the latest losses matter; the bound keeps a
/// storm of lost answers from growing klink without limit.
const REMEMBERED: usize = 8192;

/// One idempotent batch as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BatchKey {
    pub client: ClientProducer,
    pub topic: String,
    pub partition: i32,
    /// The client's own base sequence: a retry carries the same.
    pub client_sequence: i32,
}

#[derive(Default)]
struct Doubts {
    /// Batch -> the cluster that may hold it, and when it was recorded.
    held: HashMap<BatchKey, (Arc<str>, u64)>,
    /// Oldest first, for the bound; entries recorded again since carry an
    /// older stamp than the map's and are skipped.
    order: VecDeque<(BatchKey, u64)>,
    next_stamp: u64,
}

#[derive(Default)]
pub struct InDoubt {
    /// A std mutex: map lookups only, never held across an await.
    inner: Mutex<Doubts>,
}

impl InDoubt {
    fn lock(&self) -> std::sync::MutexGuard<'_, Doubts> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `cluster` may hold `batch`: it was sent there and no
    /// answer came back.
    pub fn lost(&self, batch: BatchKey, cluster: Arc<str>) {
        let mut doubts = self.lock();
        let stamp = doubts.next_stamp;
        doubts.next_stamp += 1;
        doubts.held.insert(batch.clone(), (cluster, stamp));
        doubts.order.push_back((batch, stamp));
        while doubts.held.len() > REMEMBERED {
            let Some((oldest, stamp)) = doubts.order.pop_front() else {
                break;
            };
            if doubts.held.get(&oldest).is_some_and(|(_, s)| *s == stamp) {
                tracing::warn!(
                    topic = %oldest.topic,
                    partition = oldest.partition,
                    producer_id = oldest.client.identity.producer_id,
                    "too many batches with lost answers: forgetting the oldest; its retry follows the route"
                );
                doubts.held.remove(&oldest);
            }
        }
        // Entries recorded again or answered since leave stale stamps
        // behind; sweep them once they outnumber the live ones.
        if doubts.order.len() > 2 * REMEMBERED {
            let Doubts { held, order, .. } = &mut *doubts;
            order.retain(|(key, stamp)| held.get(key).is_some_and(|(_, s)| s == stamp));
        }
    }

    /// The cluster that may hold `batch`, where its retry must go.
    pub fn held_by(&self, batch: &BatchKey) -> Option<Arc<str>> {
        self.lock()
            .held
            .get(batch)
            .map(|(cluster, _)| cluster.clone())
    }

    /// `cluster` answered for `batch`: whatever it said, the doubt is over.
    pub fn answered(&self, batch: &BatchKey, cluster: &str) {
        let mut doubts = self.lock();
        if doubts
            .held
            .get(batch)
            .is_some_and(|(held_by, _)| &**held_by == cluster)
        {
            doubts.held.remove(batch);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().held.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Identity;

    fn batch(sequence: i32) -> BatchKey {
        BatchKey {
            client: ClientProducer {
                issuer: Arc::from("source"),
                identity: Identity {
                    producer_id: 4,
                    epoch: 0,
                },
            },
            topic: "orders".to_string(),
            partition: 1,
            client_sequence: sequence,
        }
    }

    #[test]
    fn a_lost_batch_is_held_by_its_cluster_until_that_cluster_answers() {
        let doubts = InDoubt::default();
        doubts.lost(batch(10), Arc::from("source"));
        assert_eq!(doubts.held_by(&batch(10)).as_deref(), Some("source"));
        assert_eq!(doubts.held_by(&batch(15)), None, "another batch");
        doubts.answered(&batch(10), "target");
        assert_eq!(
            doubts.held_by(&batch(10)).as_deref(),
            Some("source"),
            "another cluster's answer settles nothing"
        );
        doubts.answered(&batch(10), "source");
        assert_eq!(doubts.held_by(&batch(10)), None);
        assert!(doubts.is_empty());
    }

    #[test]
    fn lost_again_elsewhere_moves_the_doubt() {
        let doubts = InDoubt::default();
        doubts.lost(batch(10), Arc::from("source"));
        doubts.lost(batch(10), Arc::from("target"));
        assert_eq!(doubts.held_by(&batch(10)).as_deref(), Some("target"));
        assert_eq!(doubts.len(), 1);
    }

    #[test]
    fn the_oldest_doubts_go_first_past_the_bound() {
        let doubts = InDoubt::default();
        let total = i32::try_from(REMEMBERED).expect("small") + 10;
        for sequence in 0..total {
            doubts.lost(batch(sequence), Arc::from("source"));
        }
        // Recorded again: now among the newest.
        doubts.lost(batch(3), Arc::from("source"));
        assert_eq!(doubts.len(), REMEMBERED);
        assert_eq!(doubts.held_by(&batch(0)), None);
        assert!(doubts.held_by(&batch(3)).is_some());
        assert!(doubts.held_by(&batch(total - 1)).is_some());
    }

    #[test]
    fn answered_and_repeated_doubts_do_not_pile_up() {
        let doubts = InDoubt::default();
        doubts.lost(batch(-1), Arc::from("source"));
        for round in 0..10 * REMEMBERED {
            let sequence = i32::try_from(round % 7).expect("small");
            doubts.lost(batch(sequence), Arc::from("source"));
            if round % 2 == 0 {
                doubts.answered(&batch(sequence), "source");
            }
        }
        assert!(doubts.len() <= 8);
        assert!(doubts.lock().order.len() <= 2 * REMEMBERED + 1);
        assert!(
            doubts.held_by(&batch(-1)).is_some(),
            "the oldest live doubt stays"
        );
    }
}
