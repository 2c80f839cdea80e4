//! The offsets and leader epochs clients see (DESIGN traps 7 and 6). A
//! partition behind klink keeps one numbering for its life, whichever
//! cluster serves it: the source's until the first flip, then continued
//! across every flip. Epochs are in [`epochs`]; offsets below.
//!
//! The numbering is a list of eras. Each flip starts one: from the sync
//! point on, the cluster flipped to holds the partition's new records (they
//! are native there), and the client offset of its first new record is the
//! client offset where the previous era ended. Every other record on a
//! cluster is a copy of a record native to the other cluster, and the
//! offset map (`mirror::OffsetMap`, kept by the copiers in source -> target
//! terms) says which. So for one cluster the client numbering is a sorted
//! list of segments (native eras, and copies of the other cluster's eras)
//! of consecutive upstream offsets with consecutive client offsets
//! ([`View`]). Where every segment has the same offsets on both sides (an
//! `earliest` link over a topic that starts at 0, no gaps), the view is the
//! identity and klink leaves requests and answers as they are; otherwise
//! the data path translates through it (`split::fetch`, `split::offsets`,
//! `split::groups`).
//!
//! A copy that the map does not list yet is not shown: a fetch answer stops
//! before it and the high watermark stays below it, until the copier has
//! recorded it (milliseconds later). Records on a cluster that are neither
//! native there nor known copies (someone wrote behind klink's back: the
//! bypass warning) have no client offset and are skipped.

mod batches;
mod epochs;
mod registry;

pub use batches::renumber;
pub use epochs::{Epochs, next_era_epochs, next_shift};
pub use registry::Numbering;

use serde::{Deserialize, Serialize};

use crate::mirror::OffsetMap;

/// Which of a link's two clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Source,
    Target,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Source => Side::Target,
            Side::Target => Side::Source,
        }
    }
}

/// From `upstream_from` on `side`, that cluster's records are the
/// partition's new ones, numbered for clients from `client_from`; its
/// leader epochs are the client's plus `epoch_shift`, from `epoch_from` on
/// ([`Epochs`]; both 0 in state written before epochs were translated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Era {
    pub side: Side,
    pub upstream_from: i64,
    pub client_from: i64,
    #[serde(default)]
    pub epoch_shift: i32,
    #[serde(default)]
    pub epoch_from: i32,
}

/// Before any flip: the source's own numbering.
const FIRST_ERA: Era = Era {
    side: Side::Source,
    upstream_from: 0,
    client_from: 0,
    epoch_shift: 0,
    epoch_from: 0,
};

/// Consecutive upstream offsets `[upstream_start, upstream_end)` that are
/// client offsets from `client_start` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    upstream_start: i64,
    upstream_end: i64,
    client_start: i64,
}

impl Segment {
    fn client_end(&self) -> i64 {
        self.client_start
            .saturating_add(self.upstream_end - self.upstream_start)
    }
}

/// Where a fetched batch goes in the client's numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPlace {
    /// Its base offset becomes this.
    At(i64),
    /// Not a record of the partition's numbering: left out.
    Skip,
    /// Not recorded yet (a copy in progress): it and everything after
    /// wait for a later fetch.
    NotYet,
}

/// Where a client's fetch position is on one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    At(i64),
    /// Before anything this cluster holds of the partition.
    Below,
}

/// One cluster's records of one partition, in the client's numbering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    segments: Vec<Segment>,
    identity: bool,
    epochs: Epochs,
}

impl View {
    /// `eras` in the order the flips made them (the first era, the source
    /// from 0, is implied); `map` the partition's offset map.
    pub fn build(eras: &[Era], map: &OffsetMap, side: Side) -> View {
        let mut all = Vec::with_capacity(eras.len() + 1);
        all.push(FIRST_ERA);
        all.extend(eras.iter().copied());
        let native = |wanted: Side| {
            let mut ranges = Vec::new();
            for (i, era) in all.iter().enumerate() {
                let len = match all.get(i + 1) {
                    Some(next) => (next.client_from - era.client_from).max(0),
                    None => i64::MAX - era.upstream_from.max(0),
                };
                if era.side == wanted && len > 0 {
                    ranges.push(Segment {
                        upstream_start: era.upstream_from,
                        upstream_end: era.upstream_from.saturating_add(len),
                        client_start: era.client_from,
                    });
                }
            }
            ranges
        };
        let mut segments = native(side);
        // Copies of the other cluster's native records, through the map.
        for theirs in native(side.other()) {
            for run in map.runs() {
                let (their_start, their_end, ours_start) = match side {
                    Side::Target => (run.source_start, run.source_end, run.target_start),
                    Side::Source => (run.target_start, run.target_end(), run.source_start),
                };
                let lo = their_start.max(theirs.upstream_start);
                let hi = their_end.min(theirs.upstream_end);
                if lo < hi {
                    segments.push(Segment {
                        upstream_start: ours_start + (lo - their_start),
                        upstream_end: ours_start + (hi - their_start),
                        client_start: theirs.client_start + (lo - theirs.upstream_start),
                    });
                }
            }
        }
        segments.sort_by_key(|s| s.upstream_start);
        // The cluster's own era (the last on its side); a target that never
        // had one shows its own epochs.
        let own = all.iter().rev().find(|e| e.side == side);
        let epochs = Epochs::new(
            own.map_or(0, |e| e.epoch_shift),
            own.map_or(0, |e| e.epoch_from),
            all.iter().map(|e| (e.epoch_from, e.client_from)).collect(),
        );
        let identity =
            epochs.is_identity() && segments.iter().all(|s| s.upstream_start == s.client_start);
        View {
            segments,
            identity,
            epochs,
        }
    }

    /// Same offsets and epochs for clients as on the cluster: nothing to
    /// translate.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// The cluster's leader epochs for clients.
    pub fn epochs(&self) -> &Epochs {
        &self.epochs
    }

    fn containing(&self, upstream: i64) -> Option<&Segment> {
        let i = self
            .segments
            .partition_point(|s| s.upstream_end <= upstream);
        self.segments
            .get(i)
            .filter(|s| s.upstream_start <= upstream)
    }

    /// The client offset of the record at `upstream`.
    pub fn to_client(&self, upstream: i64) -> Option<i64> {
        self.containing(upstream)
            .map(|s| s.client_start.saturating_add(upstream - s.upstream_start))
    }

    /// Where the batch `base..=last` goes.
    pub fn place_batch(&self, base: i64, last: i64) -> BatchPlace {
        match self.containing(base) {
            Some(s) if last < s.upstream_end => {
                BatchPlace::At(s.client_start.saturating_add(base - s.upstream_start))
            }
            // Segments hold whole batches; one that straddles is not ours.
            Some(_) => BatchPlace::Skip,
            None if self.segments.iter().any(|s| s.upstream_start > base) => BatchPlace::Skip,
            None => BatchPlace::NotYet,
        }
    }

    /// An exclusive end on the cluster (high watermark, last stable
    /// offset) as a client end: just after the last record before it that
    /// has a client offset.
    pub fn end_to_client(&self, end: i64) -> i64 {
        let i = self.segments.partition_point(|s| s.upstream_start < end);
        // The next record is known: every client offset before it (a gap
        // compaction or a marker left) is behind the end too.
        if let Some(next) = self.segments.get(i).filter(|s| s.upstream_start == end) {
            return next.client_start;
        }
        match i.checked_sub(1).and_then(|i| self.segments.get(i)) {
            Some(s) => s
                .client_start
                .saturating_add(end.min(s.upstream_end) - s.upstream_start),
            None => self.segments.first().map_or(end, |s| s.client_start),
        }
    }

    /// A first offset on the cluster (log start, an aborted transaction's
    /// first offset, a committed position) as a client offset: the first
    /// record at or after it that has one.
    pub fn start_to_client(&self, start: i64) -> i64 {
        let i = self.segments.partition_point(|s| s.upstream_end <= start);
        match self.segments.get(i) {
            Some(s) => s
                .client_start
                .saturating_add(start.max(s.upstream_start) - s.upstream_start),
            None => self.end_to_client(start),
        }
    }

    /// A client's committed position as the cluster stores it: before
    /// anything the cluster holds, its first record.
    pub fn commit_position(&self, client: i64) -> i64 {
        match self.from_client(client) {
            Position::At(upstream) => upstream,
            Position::Below => self.segments.first().map_or(client, |s| s.upstream_start),
        }
    }

    /// A committed position the cluster stores, for the client: the next
    /// record it reads, or the end of what it may read so far.
    pub fn committed_to_client(&self, upstream: i64) -> i64 {
        match self.containing(upstream) {
            Some(s) => s.client_start.saturating_add(upstream - s.upstream_start),
            None => self.start_to_client(upstream),
        }
    }

    /// A client position (fetch offset, committed offset) on the cluster.
    /// Past everything known it continues the last segment: that is where
    /// the next record will be.
    pub fn from_client(&self, client: i64) -> Position {
        let i = self.segments.partition_point(|s| s.client_end() <= client);
        let Some(s) = self.segments.get(i).or(self.segments.last()) else {
            return Position::At(client);
        };
        if client < s.client_start {
            if i == 0 {
                return Position::Below;
            }
            // Between two segments: the next record.
            return Position::At(s.upstream_start);
        }
        // Client offsets are the client's to choose: no overflow on any.
        Position::At(
            s.upstream_start
                .saturating_add(client.saturating_sub(s.client_start)),
        )
    }
}

#[cfg(test)]
mod tests;
