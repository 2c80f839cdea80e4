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
//!
//! Identities and placements are journaled (`producer_journal`) before the
//! batch goes upstream, so a klink killed and restarted sends a client's
//! retry under the identity and sequence its first try had.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::in_doubt::{BatchKey, InDoubt};
use super::producer_journal::{ClientKey, Entry, Journal, SpaceState};
use crate::error::Result;

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
    /// Transactional ids whose transactions run away from the default
    /// cluster, and where: journaled so that a transaction open there when
    /// klink restarts still ends there.
    pins: HashMap<String, Arc<str>>,
    /// Where every change above is written before it is used (none in
    /// unit tests and while replaying).
    journal: Option<(Journal, PathBuf)>,
}

fn client_key(client: &ClientProducer) -> ClientKey {
    (
        client.issuer.to_string(),
        client.identity.producer_id,
        client.identity.epoch,
    )
}

fn client_of((issuer, producer_id, epoch): &ClientKey) -> ClientProducer {
    ClientProducer {
        issuer: Arc::from(issuer.as_str()),
        identity: Identity {
            producer_id: *producer_id,
            epoch: *epoch,
        },
    }
}

impl Inner {
    fn journal(&mut self, entry: Entry) {
        let Some((journal, _)) = &mut self.journal else {
            return;
        };
        if journal.append(&entry) {
            self.compact();
        }
    }

    /// The journal rewritten as things stand.
    fn compact(&mut self) {
        let Some((_, dir)) = &self.journal else {
            return;
        };
        let dir = dir.clone();
        match Journal::rewrite(&dir, &self.entries()) {
            Ok(journal) => self.journal = Some((journal, dir)),
            Err(e) => {
                tracing::error!(error = %e, "producer journal not compacted; it keeps growing")
            }
        }
    }

    fn entries(&self) -> Vec<Entry> {
        let mut entries = Vec::new();
        for ((client, cluster), issued) in &self.mapped {
            entries.push(Entry::Mapped {
                client: client_key(client),
                cluster: cluster.to_string(),
                issued: (issued.producer_id, issued.epoch),
            });
        }
        for (transactional_id, cluster) in &self.pins {
            entries.push(Entry::Pinned {
                transactional_id: transactional_id.clone(),
                cluster: Some(cluster.to_string()),
            });
        }
        for ((client, topic, partition), spaces) in &self.spaces {
            for (cluster, space) in spaces {
                entries.push(Entry::Space {
                    client: client_key(client),
                    topic: topic.clone(),
                    partition: *partition,
                    cluster: cluster.to_string(),
                    space: SpaceState {
                        floor: space.floor,
                        identity_end: space.identity_end,
                        sent: space
                            .sent
                            .iter()
                            .map(|s| (s.client_sequence, s.start, s.count, s.refused))
                            .collect(),
                    },
                });
            }
        }
        entries
    }
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
    /// The remaps journaled in `dir` (empty the first time), journaling
    /// from now on.
    pub fn open(dir: &Path) -> Result<ProducerIds> {
        let ids = ProducerIds::default();
        for entry in Journal::read(dir)? {
            ids.replay(entry);
        }
        let mut inner = ids.lock();
        if !inner.mapped.is_empty() || !inner.spaces.is_empty() {
            ids.any_remapped.store(true, Ordering::Relaxed);
        }
        let journal = Journal::rewrite(dir, &inner.entries())?;
        inner.journal = Some((journal, dir.to_path_buf()));
        drop(inner);
        Ok(ids)
    }

    fn replay(&self, entry: Entry) {
        match entry {
            Entry::Mapped {
                client,
                cluster,
                issued: (producer_id, epoch),
            } => {
                let issued = Identity { producer_id, epoch };
                self.set_mapped(&client_of(&client), &Arc::from(cluster.as_str()), issued);
            }
            Entry::Placed {
                client,
                topic,
                partition,
                cluster,
                client_sequence,
                count,
            } => {
                let cluster = Arc::from(cluster.as_str());
                let client = client_of(&client);
                self.place(&client, &cluster, &topic, partition, client_sequence, count);
            }
            Entry::Refused {
                client,
                topic,
                partition,
                cluster,
                client_sequence,
                sequence,
            } => {
                let placement = Placement {
                    client: client_of(&client),
                    cluster: Arc::from(cluster.as_str()),
                    topic,
                    partition,
                    client_sequence,
                    sequence,
                };
                self.settle(&placement, Outcome::Refused);
            }
            Entry::Pinned {
                transactional_id,
                cluster,
            } => {
                let cluster = cluster.map(|c| Arc::from(c.as_str()));
                self.pin_transactions(&transactional_id, cluster.as_ref());
            }
            Entry::Space {
                client,
                topic,
                partition,
                cluster,
                space,
            } => {
                let restored = Space {
                    floor: space.floor,
                    identity_end: space.identity_end,
                    sent: space
                        .sent
                        .into_iter()
                        .map(|(client_sequence, start, count, refused)| Sent {
                            client_sequence,
                            start,
                            count,
                            refused,
                        })
                        .collect(),
                };
                self.lock()
                    .spaces
                    .entry((client_of(&client), topic, partition))
                    .or_default()
                    .insert(Arc::from(cluster.as_str()), restored);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether some client's batches have ever been sent under another
    /// identity or sequence than their own.
    pub fn any_remapped(&self) -> bool {
        self.any_remapped.load(Ordering::Relaxed)
    }

    /// The cluster `transactional_id`'s transactions run on, when not the
    /// default one.
    pub fn transactions_pinned(&self, transactional_id: &str) -> Option<Arc<str>> {
        self.lock().pins.get(transactional_id).cloned()
    }

    /// Whether any transactional id runs away from the default cluster:
    /// until one does, transactional requests need not be read.
    pub fn any_transactions_pinned(&self) -> bool {
        !self.lock().pins.is_empty()
    }

    /// Moves `transactional_id`'s transactions to `cluster` (`None`: back
    /// to the default cluster), journaled before it is used.
    pub fn pin_transactions(&self, transactional_id: &str, cluster: Option<&Arc<str>>) {
        let mut inner = self.lock();
        let changed = match cluster {
            Some(cluster) => {
                inner
                    .pins
                    .insert(transactional_id.to_string(), cluster.clone())
                    .as_ref()
                    != Some(cluster)
            }
            None => inner.pins.remove(transactional_id).is_some(),
        };
        if changed {
            inner.journal(Entry::Pinned {
                transactional_id: transactional_id.to_string(),
                cluster: cluster.map(|c| c.to_string()),
            });
        }
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
        let mut inner = self.lock();
        let key = (client.clone(), cluster.clone());
        if let Some(first) = inner.mapped.get(&key) {
            return *first;
        }
        inner.mapped.insert(key, issued);
        inner.journal(Entry::Mapped {
            client: client_key(client),
            cluster: cluster.to_string(),
            issued: (issued.producer_id, issued.epoch),
        });
        issued
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
        // Written before the batch goes: a retry after a crash finds it.
        inner.journal(Entry::Placed {
            client: client_key(client),
            topic: topic.to_string(),
            partition,
            cluster: cluster.to_string(),
            client_sequence,
            count,
        });
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
                if outcome == Outcome::Refused {
                    inner.journal(Entry::Refused {
                        client: client_key(&placement.client),
                        topic: placement.topic.clone(),
                        partition: placement.partition,
                        cluster: placement.cluster.to_string(),
                        client_sequence: placement.client_sequence,
                        sequence: placement.sequence,
                    });
                }
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
#[path = "producers_tests.rs"]
mod tests;
