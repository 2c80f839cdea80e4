//! Producer identities across clusters (DESIGN trap 8).
//!
//! Every client producer id comes from one cluster: InitProducerId is pinned
//! to the default cluster (the one the bootstrap address names), so a client
//! id is only ever compared with ids of that cluster. When a partition's
//! writes go elsewhere, its batches must carry an id that cluster issued, or
//! the broker refuses them: klink asks that cluster for an id of its own per
//! client identity. Ids klink holds never reach a client and never share a
//! map with client ids, so two clusters issuing the same numbers cannot be
//! confused.
//!
//! Sequences: each (client identity, cluster, partition) has a sequence
//! space of its own that continues wherever the partition's writes went in
//! between, so writes may flip back and forth any number of times without
//! the broker seeing a gap or a restart. A batch is placed in its cluster's
//! space when it is first sent there; a retry of it (same client base
//! sequence) keeps its place; a batch the cluster certainly refused gives
//! its place back. The issuing cluster's space starts as the identity (the
//! client talks to it with its own sequences) and only becomes a space of
//! its own once the partition's writes have been elsewhere.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::in_doubt::{BatchKey, InDoubt};

/// Kafka sequences wrap to 0 after `i32::MAX`: they count modulo 2^31.
const SEQUENCE_MODULUS: i64 = 1 << 31;
/// Recent batches remembered per space: enough to recognise the retries of
/// every batch a client may have in flight (Kafka caps idempotent producers
/// at 5 requests in flight per connection).
const REMEMBERED_BATCHES: usize = 32;

/// A producer identity as the cluster that issued it knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    pub producer_id: i64,
    pub epoch: i16,
}

/// A client's producer identity, with the cluster whose id space it is in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientProducer {
    pub issuer: Arc<str>,
    pub identity: Identity,
}

/// Where one batch goes in its cluster's sequence space, kept so that its
/// outcome can be reported with [`ProducerIds::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub client: ClientProducer,
    pub cluster: Arc<str>,
    pub topic: String,
    pub partition: i32,
    pub client_sequence: i32,
    /// The base sequence the batch carries on `cluster`.
    pub sequence: i32,
}

/// What became of a placed batch, as far as klink can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The cluster took it (or may have: no answer came back). Its place
    /// stays taken: assuming otherwise could make the next batch look like
    /// a duplicate to the broker, which would drop it while answering
    /// success.
    Kept,
    /// The cluster certainly did not take it: its place is given back.
    Refused,
}

#[derive(Debug, Clone)]
struct Sent {
    client_sequence: i32,
    /// Unwrapped: position in the space, counted from its start.
    start: i64,
    count: i64,
    refused: bool,
}

#[derive(Debug, Default)]
struct Space {
    /// Where the oldest remembered batch started (or the space's end when
    /// none is remembered): batches before it all count as taken.
    floor: i64,
    sent: VecDeque<Sent>,
    /// The issuer's space only: where the client's own sequences ended when
    /// the writes first left. A retry from before that point was sent with
    /// the client's sequence, so it goes again with it and the broker
    /// deduplicates it.
    identity_end: Option<i64>,
}

/// How far before `identity_end` a batch counts as a retry of one sent
/// with the client's own sequence (far more than a client has in flight).
const IDENTITY_RETRY_WINDOW: i64 = 1 << 20;

impl Space {
    fn starting_at(position: i64) -> Space {
        Space {
            floor: position,
            sent: VecDeque::new(),
            identity_end: Some(position),
        }
    }

    fn is_identity_retry(&self, client_sequence: i32) -> bool {
        self.identity_end.is_some_and(|end| {
            let behind = (end - i64::from(client_sequence)).rem_euclid(SEQUENCE_MODULUS);
            0 < behind && behind <= IDENTITY_RETRY_WINDOW
        })
    }

    /// The next free place: after every batch not known to be refused.
    fn end(&self) -> i64 {
        self.sent
            .iter()
            .filter(|s| !s.refused)
            .map(|s| s.start + s.count)
            .fold(self.floor, i64::max)
    }

    fn place(&mut self, client_sequence: i32, count: i64) -> i64 {
        if let Some(sent) = self
            .sent
            .iter()
            .find(|s| s.client_sequence == client_sequence && !s.refused)
        {
            return sent.start;
        }
        self.sent.retain(|s| s.client_sequence != client_sequence);
        let start = self.end();
        self.sent.push_back(Sent {
            client_sequence,
            start,
            count,
            refused: false,
        });
        while self.sent.len() > REMEMBERED_BATCHES {
            if let Some(oldest) = self.sent.pop_front()
                && !oldest.refused
            {
                self.floor = self.floor.max(oldest.start + oldest.count);
            }
        }
        start
    }

    fn settle(&mut self, client_sequence: i32, start: i64, outcome: Outcome) {
        if outcome == Outcome::Refused
            && let Some(sent) = self
                .sent
                .iter_mut()
                .find(|s| s.client_sequence == client_sequence && s.start == start)
        {
            sent.refused = true;
        }
    }
}

type PartitionKey = (ClientProducer, String, i32);

#[derive(Default)]
struct Inner {
    /// Client identity on a cluster -> the identity that cluster issued klink.
    mapped: HashMap<(ClientProducer, Arc<str>), Identity>,
    /// Per client identity and partition, each cluster's sequence space.
    spaces: HashMap<PartitionKey, HashMap<Arc<str>, Space>>,
}

#[derive(Default)]
pub struct ProducerIds {
    /// A std mutex: map lookups only, never held across an await.
    inner: Mutex<Inner>,
    /// Set once any partition's writes left its producer's issuing cluster
    /// or a batch's answer was lost: from then on Produce requests cannot
    /// take the undecoded fast path, since a batch returning to its issuer
    /// may need its sequence moved, and a retry may need to go where its
    /// first try went rather than where the route points.
    any_remapped: AtomicBool,
    doubts: InDoubt,
}

impl ProducerIds {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether some client's batches have ever been sent under another
    /// identity or sequence than their own.
    pub fn any_remapped(&self) -> bool {
        self.any_remapped.load(Ordering::Relaxed)
    }

    /// The identity `cluster` issued klink for `client`, if asked before.
    pub fn mapped(&self, client: &ClientProducer, cluster: &Arc<str>) -> Option<Identity> {
        if *cluster == client.issuer {
            return Some(client.identity);
        }
        self.lock()
            .mapped
            .get(&(client.clone(), cluster.clone()))
            .copied()
    }

    /// Records the identity `cluster` issued klink for `client`; the first
    /// one recorded wins, so concurrent askers agree.
    pub fn set_mapped(
        &self,
        client: &ClientProducer,
        cluster: &Arc<str>,
        issued: Identity,
    ) -> Identity {
        *self
            .lock()
            .mapped
            .entry((client.clone(), cluster.clone()))
            .or_insert(issued)
    }

    /// Where a batch of `count` records with the client's base sequence
    /// goes on `cluster`; `None` when it goes as it is (to its issuer, and
    /// the partition's writes have never been elsewhere).
    pub fn place(
        &self,
        client: &ClientProducer,
        cluster: &Arc<str>,
        topic: &str,
        partition: i32,
        client_sequence: i32,
        count: i32,
    ) -> Option<Placement> {
        let mut inner = self.lock();
        let key = (client.clone(), topic.to_string(), partition);
        let to_issuer = *cluster == client.issuer;
        if to_issuer && !inner.spaces.contains_key(&key) {
            return None;
        }
        self.any_remapped.store(true, Ordering::Relaxed);
        let spaces = inner.spaces.entry(key).or_default();
        // The issuer saw this client's own sequences up to here.
        spaces
            .entry(client.issuer.clone())
            .or_insert_with(|| Space::starting_at(i64::from(client_sequence)));
        let space = spaces.entry(cluster.clone()).or_default();
        let start = if space.is_identity_retry(client_sequence) {
            i64::from(client_sequence)
        } else {
            space.place(client_sequence, i64::from(count.max(0)))
        };
        Some(Placement {
            client: client.clone(),
            cluster: cluster.clone(),
            topic: topic.to_string(),
            partition,
            client_sequence,
            sequence: wrap(start),
        })
    }

    /// Records that `cluster` may hold `batch`: it was sent there and its
    /// answer was lost.
    pub fn lost(&self, batch: BatchKey, cluster: Arc<str>) {
        self.any_remapped.store(true, Ordering::Relaxed);
        self.doubts.lost(batch, cluster);
    }

    /// The cluster a retry of `batch` must go to, whatever the route says.
    pub fn held_by(&self, batch: &BatchKey) -> Option<Arc<str>> {
        self.doubts.held_by(batch)
    }

    /// `cluster` answered for `batch`.
    pub fn answered(&self, batch: &BatchKey, cluster: &str) {
        self.doubts.answered(batch, cluster);
    }

    /// Reports what became of a placed batch.
    pub fn settle(&self, placement: &Placement, outcome: Outcome) {
        let mut inner = self.lock();
        let key = (
            placement.client.clone(),
            placement.topic.clone(),
            placement.partition,
        );
        if let Some(space) = inner
            .spaces
            .get_mut(&key)
            .and_then(|spaces| spaces.get_mut(&placement.cluster))
        {
            // The place was handed out as start mod 2^31; find it by the
            // client sequence and that residue.
            let start = space
                .sent
                .iter()
                .find(|s| {
                    s.client_sequence == placement.client_sequence
                        && wrap(s.start) == placement.sequence
                })
                .map(|s| s.start);
            if let Some(start) = start {
                space.settle(placement.client_sequence, start, outcome);
            }
        }
    }
}

/// What a Produce answer's error code says about a batch: taken, or
/// certainly not. Errors Kafka raises after appending (a replication
/// timeout, too few replicas after the append) and duplicates count as taken.
pub fn outcome_of(error_code: i16) -> Outcome {
    use kafka_protocol::ResponseError as E;
    const KEPT: [i16; 4] = [
        0,
        E::DuplicateSequenceNumber.code(),
        E::RequestTimedOut.code(),
        E::NotEnoughReplicasAfterAppend.code(),
    ];
    if KEPT.contains(&error_code) {
        Outcome::Kept
    } else {
        Outcome::Refused
    }
}

fn wrap(position: i64) -> i32 {
    // rem_euclid by 2^31 is below i32::MAX + 1: the cast is exact.
    position.rem_euclid(SEQUENCE_MODULUS) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: i64, epoch: i16) -> ClientProducer {
        ClientProducer {
            issuer: Arc::from("source"),
            identity: Identity {
                producer_id: id,
                epoch,
            },
        }
    }

    fn seq(ids: &ProducerIds, c: &ClientProducer, to: &Arc<str>, s: i32, n: i32) -> Option<i32> {
        ids.place(c, to, "orders", 0, s, n).map(|p| p.sequence)
    }

    #[test]
    fn batches_to_the_issuer_go_as_they_are_until_the_writes_leave_it() {
        let ids = ProducerIds::default();
        let source: Arc<str> = Arc::from("source");
        let c = client(7, 0);
        assert_eq!(seq(&ids, &c, &source, 0, 10), None);
        assert_eq!(seq(&ids, &c, &source, 10, 10), None);
        assert!(!ids.any_remapped());
    }

    #[test]
    fn sequences_start_at_zero_per_partition_and_retries_keep_theirs() {
        let ids = ProducerIds::default();
        let target: Arc<str> = Arc::from("target");
        let c = client(7, 0);
        assert_eq!(seq(&ids, &c, &target, 100, 5), Some(0));
        assert_eq!(seq(&ids, &c, &target, 105, 3), Some(5));
        assert_eq!(seq(&ids, &c, &target, 100, 5), Some(0), "a retry");
        assert_eq!(
            ids.place(&c, &target, "orders", 1, 40, 1)
                .map(|p| p.sequence),
            Some(0),
            "per partition"
        );
        assert_eq!(
            seq(&ids, &client(7, 1), &target, 0, 1),
            Some(0),
            "a new epoch is a new identity"
        );
    }

    #[test]
    fn flips_back_and_forth_keep_every_space_continuous() {
        let ids = ProducerIds::default();
        let source: Arc<str> = Arc::from("source");
        let target: Arc<str> = Arc::from("target");
        let c = client(3, 2);
        // 0..100 went to the source as they were (not seen by this map).
        assert_eq!(seq(&ids, &c, &target, 100, 50), Some(0));
        // Back to the source: it last saw 99, so 150 becomes 100.
        assert_eq!(seq(&ids, &c, &source, 150, 10), Some(100));
        assert_eq!(seq(&ids, &c, &source, 160, 10), Some(110));
        // Again to the target: it continues at 50.
        assert_eq!(seq(&ids, &c, &target, 170, 5), Some(50));
        for round in 0..10 {
            let base = 175 + round * 20;
            let on_source = seq(&ids, &c, &source, base, 10).expect("placed");
            let on_target = seq(&ids, &c, &target, base + 10, 10).expect("placed");
            assert_eq!(on_source, 120 + round * 10);
            assert_eq!(on_target, 55 + round * 10);
        }
    }

    #[test]
    fn a_retry_from_before_the_first_batch_seen_is_new_data_not_a_wrap() {
        let ids = ProducerIds::default();
        let target: Arc<str> = Arc::from("target");
        let c = client(3, 0);
        assert_eq!(seq(&ids, &c, &target, 100, 10), Some(0));
        // A batch from before the flip, retried after it, lands after: the
        // old rebasing sent it at about 2^31.
        assert_eq!(seq(&ids, &c, &target, 95, 5), Some(10));
        assert_eq!(seq(&ids, &c, &target, 110, 1), Some(15));
    }

    #[test]
    fn a_retry_of_a_batch_the_issuer_saw_unchanged_keeps_the_clients_sequence() {
        let ids = ProducerIds::default();
        let source: Arc<str> = Arc::from("source");
        let target: Arc<str> = Arc::from("target");
        let c = client(3, 0);
        assert_eq!(seq(&ids, &c, &target, 100, 10), Some(0));
        // Batch 90 went to the source as it was, its answer was lost, and
        // the client retries it there: the source deduplicates it.
        assert_eq!(seq(&ids, &c, &source, 90, 10), Some(90));
        assert_eq!(seq(&ids, &c, &source, 110, 10), Some(100));
    }

    #[test]
    fn sequences_wrap_at_two_to_the_31() {
        let ids = ProducerIds::default();
        let source: Arc<str> = Arc::from("source");
        let target: Arc<str> = Arc::from("target");
        let c = client(3, 0);
        // The source has seen up to i32::MAX - 1 when the writes leave it.
        assert_eq!(seq(&ids, &c, &target, i32::MAX - 1, 4), Some(0));
        let back = seq(&ids, &c, &source, 2, 4).expect("placed");
        assert_eq!(back, i32::MAX - 1, "continues where the source was");
        assert_eq!(seq(&ids, &c, &source, 6, 4), Some(2), "wrapped past 2^31");
    }

    #[test]
    fn a_refused_batch_gives_its_place_back_and_a_lost_one_keeps_it() {
        let ids = ProducerIds::default();
        let target: Arc<str> = Arc::from("target");
        let c = client(3, 0);
        let a = ids.place(&c, &target, "orders", 0, 0, 10).expect("a");
        let b = ids.place(&c, &target, "orders", 0, 10, 10).expect("b");
        assert_eq!((a.sequence, b.sequence), (0, 10));
        // b refused (e.g. NOT_LEADER at a flip) and retried elsewhere; the
        // next batch to the target takes b's place, not one after it.
        ids.settle(&b, Outcome::Refused);
        assert_eq!(seq(&ids, &c, &target, 20, 5), Some(10));
        // A batch whose answer never came keeps its place.
        let d = ids.place(&c, &target, "orders", 0, 25, 5).expect("d");
        ids.settle(&d, Outcome::Kept);
        assert_eq!(seq(&ids, &c, &target, 30, 1), Some(20));
        // A refused batch retried to the same cluster gets a place again.
        let e = ids.place(&c, &target, "orders", 0, 31, 2).expect("e");
        ids.settle(&e, Outcome::Refused);
        assert_eq!(seq(&ids, &c, &target, 31, 2), Some(21));
    }

    #[test]
    fn ids_from_two_clusters_never_meet() {
        // Both clusters issue id 0 first: the client's 0 from the source and
        // klink's 0 from the target are different identities.
        let ids = ProducerIds::default();
        let target: Arc<str> = Arc::from("target");
        let c = client(0, 0);
        assert_eq!(
            ids.set_mapped(
                &c,
                &target,
                Identity {
                    producer_id: 0,
                    epoch: 0
                }
            )
            .producer_id,
            0
        );
        assert_eq!(
            ids.mapped(&c, &Arc::from("source")),
            Some(c.identity),
            "on its issuer a client keeps its own id"
        );
        assert_eq!(seq(&ids, &c, &target, 40, 1), Some(0));
        assert_eq!(seq(&ids, &c, &target, 41, 1), Some(1));
        // A second client with klink's number gets its own mapping.
        let other = client(5, 0);
        assert_eq!(ids.mapped(&other, &target), None);
    }

    #[test]
    fn error_codes_say_whether_a_batch_was_taken() {
        assert_eq!(outcome_of(0), Outcome::Kept);
        assert_eq!(outcome_of(46), Outcome::Kept, "duplicate sequence");
        assert_eq!(outcome_of(7), Outcome::Kept, "request timed out");
        assert_eq!(outcome_of(6), Outcome::Refused, "not leader");
        assert_eq!(outcome_of(45), Outcome::Refused, "out of order");
    }
}
