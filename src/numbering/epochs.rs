//! Leader epochs as clients see them (DESIGN trap 6). A client drops
//! metadata whose leader epoch is below one it has seen, and takes a
//! fetched batch's epoch as the one to validate its position with later;
//! so across flips the epochs it sees must never go back, and an epoch it
//! saw before a flip must never be read as the new cluster's own.
//!
//! Each era therefore carries a shift: the cluster's epochs plus the shift
//! are the client's. A flip chooses the smallest shift (never negative)
//! that puts the cluster flipped to at or above the highest epoch clients
//! were shown (`Era::after`), and notes that first client epoch
//! (`epoch_from`). Client epochs below it were shown in earlier eras:
//! klink does not send them upstream (a request carries -1, "no check"),
//! and answers OffsetForLeaderEpoch for them itself with the end of the
//! era they belong to, which is at or after any position a client could
//! hold with that epoch, so nobody is truncated.

use super::Era;

/// One cluster's epochs of one partition, for clients.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Epochs {
    /// Added to the cluster's epochs.
    shift: i32,
    /// The first client epoch of the cluster's era; lower ones are older.
    from: i32,
    /// Every era's first client epoch and first client offset, in order.
    starts: Vec<(i32, i64)>,
}

/// The first client epoch and the shift of the era a flip starts, after
/// `eras` (the first, implied era is the source's own), from a cluster
/// whose leader epoch is `left_epoch` now to one at `to_epoch` (-1: none
/// known).
pub fn next_era_epochs(eras: &[Era], left_epoch: i32, to_epoch: i32) -> (i32, i32) {
    // The highest epoch shown: the cluster left's now, or its era's first.
    let (from, shift) = eras
        .last()
        .map_or((0, 0), |e| (e.epoch_from, e.epoch_shift));
    let shown = if left_epoch < 0 {
        from
    } else {
        from.max(left_epoch.saturating_add(shift))
    };
    next_shift(shown, to_epoch)
}

/// The first client epoch and the shift of an era that starts on a
/// cluster whose leader epoch is `to_epoch`, when clients were shown up to
/// `shown` so far.
pub fn next_shift(shown: i32, to_epoch: i32) -> (i32, i32) {
    let to_epoch = to_epoch.max(0);
    let shift = shown.saturating_sub(to_epoch).max(0);
    (to_epoch.saturating_add(shift), shift)
}

impl Epochs {
    pub(super) fn new(shift: i32, from: i32, starts: Vec<(i32, i64)>) -> Epochs {
        Epochs {
            shift,
            from,
            starts,
        }
    }

    /// Nothing to translate: the cluster's epochs are the client's and no
    /// earlier era showed clients an epoch this cluster may also have.
    pub fn is_identity(&self) -> bool {
        self.shift == 0 && self.from == 0
    }

    /// The shift this cluster's epochs take.
    pub fn shift(&self) -> i32 {
        self.shift
    }

    /// An epoch from the cluster (metadata, a batch, an answer) for the
    /// client; "unknown" (-1) stays.
    pub fn to_client(&self, epoch: i32) -> i32 {
        if epoch < 0 {
            epoch
        } else {
            epoch.saturating_add(self.shift)
        }
    }

    /// A client's epoch for the cluster, or -1 (no check) when the client
    /// saw it in an earlier era: the cluster never had it.
    pub fn to_upstream(&self, epoch: i32) -> i32 {
        if epoch < self.from {
            -1
        } else {
            epoch.saturating_sub(self.shift).max(-1)
        }
    }

    /// For a client epoch shown in an earlier era: the client offset where
    /// that era ended. `None` for an epoch of this cluster's era (ask the
    /// cluster) and for -1.
    pub fn earlier_end(&self, epoch: i32) -> Option<i64> {
        if epoch < 0 || epoch >= self.from {
            return None;
        }
        // The first era that started above the epoch ends the one it
        // belongs to.
        self.starts
            .iter()
            .find(|&&(from, _)| from > epoch)
            .map(|&(_, client_from)| client_from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flip_never_shows_a_lower_epoch_and_shifts_no_more_than_needed() {
        // Source at 5, new target at 0: the target reads as 5.
        assert_eq!(next_shift(5, 0), (5, 5));
        // Target already ahead: its own epochs, no shift.
        assert_eq!(next_shift(5, 7), (7, 0));
        // Both at 0 (single-broker test clusters): nothing changes.
        assert_eq!(next_shift(0, 0), (0, 0));
        // Unknown (-1) counts as 0; nothing overflows.
        assert_eq!(next_shift(3, -1), (3, 3));
        assert_eq!(next_shift(i32::MAX, 0), (i32::MAX, i32::MAX));
    }

    #[test]
    fn epochs_only_go_up_across_any_number_of_flips() {
        use crate::numbering::Side;
        let mut eras: Vec<Era> = Vec::new();
        let mut flip = |side, left_epoch, to_epoch| {
            let (epoch_from, epoch_shift) = next_era_epochs(&eras, left_epoch, to_epoch);
            eras.push(Era {
                side,
                upstream_from: 0,
                client_from: 0,
                epoch_shift,
                epoch_from,
            });
            (epoch_from, epoch_shift)
        };
        // Source at 5 -> new target at 0: shown 5 from now on.
        assert_eq!(flip(Side::Target, 5, 0), (5, 5));
        // Target at 3 (shown 8) -> source still at 5: source reads 8.
        assert_eq!(flip(Side::Source, 3, 5), (8, 3));
        // Source at 9 (shown 12) -> target at 3: target reads 12.
        assert_eq!(flip(Side::Target, 9, 3), (12, 9));
        // Target's epoch unknown at the flip: its era's first still holds.
        assert_eq!(flip(Side::Source, -1, 40), (40, 0));
        // Single-broker test clusters (every epoch 0) never shift.
        assert_eq!(next_era_epochs(&[], 0, 0), (0, 0));
    }

    #[test]
    fn epochs_translate_both_ways_and_older_ones_are_answered_by_era() {
        // Era 0 on the source (epochs 0..=5), era 1 on the target from
        // client offset 100 with shift 5: target epoch 0 is client 5.
        let epochs = Epochs::new(5, 5, vec![(0, 0), (5, 100)]);
        assert!(!epochs.is_identity());
        assert_eq!(epochs.to_client(0), 5);
        assert_eq!(epochs.to_client(2), 7);
        assert_eq!(epochs.to_client(-1), -1);
        assert_eq!(epochs.to_upstream(7), 2);
        assert_eq!(epochs.to_upstream(5), 0);
        assert_eq!(epochs.to_upstream(4), -1, "the source's epoch 4");
        assert_eq!(epochs.to_upstream(-1), -1);
        assert_eq!(epochs.earlier_end(4), Some(100));
        assert_eq!(epochs.earlier_end(0), Some(100));
        assert_eq!(epochs.earlier_end(5), None, "the target's own");
        assert_eq!(epochs.earlier_end(-1), None);
        assert_eq!(epochs.to_client(i32::MAX), i32::MAX);
        assert_eq!(epochs.to_upstream(i32::MIN), -1);
        assert!(Epochs::default().is_identity());
    }

    #[test]
    fn an_epoch_between_two_earlier_eras_ends_at_the_next_one() {
        // Source 0..=5, target from 5 at offset 100, source again from 9
        // at offset 250 (its own epoch had moved to 9 meanwhile).
        let source = Epochs::new(0, 9, vec![(0, 0), (5, 100), (9, 250)]);
        assert!(!source.is_identity(), "epochs 5..9 were the target's");
        assert_eq!(source.to_client(9), 9);
        assert_eq!(source.earlier_end(3), Some(100));
        assert_eq!(source.earlier_end(5), Some(250));
        assert_eq!(source.earlier_end(8), Some(250));
        assert_eq!(source.to_upstream(9), 9);
        assert_eq!(source.to_upstream(8), -1);
    }
}
