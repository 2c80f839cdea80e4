//! Where a partition's copier stands, and where a promotion stops it.
//!
//! A promotion flips a topic's routes once the mirror holds the source up
//! to a drain end, and from that moment clients write the target: no batch
//! beyond the end may reach it. The copier counts a batch as in flight
//! before it checks the limit, and the promotion sets the limit before it
//! looks at what is in flight, so every batch either is counted or sees the
//! limit (both sides use sequentially consistent atomics).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug)]
pub struct CopyGate {
    limit: AtomicI64,
    /// Where copying continues on the source; -1 before the copier opened.
    copied_to: AtomicI64,
    /// Batches handed to the target and not answered (or given up) yet.
    in_flight: AtomicI64,
}

impl Default for CopyGate {
    fn default() -> Self {
        CopyGate {
            limit: AtomicI64::new(i64::MAX),
            copied_to: AtomicI64::new(-1),
            in_flight: AtomicI64::new(0),
        }
    }
}

/// One batch on its way to the target; dropping it ends its count.
#[derive(Debug)]
pub struct InFlight(Arc<CopyGate>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CopyGate {
    /// Source offsets from `end` on are not copied until [`CopyGate::lift`].
    pub fn set_limit(&self, end: i64) {
        self.limit.store(end, Ordering::SeqCst);
    }

    pub fn lift(&self) {
        self.limit.store(i64::MAX, Ordering::SeqCst);
    }

    pub fn limit(&self) -> i64 {
        self.limit.load(Ordering::SeqCst)
    }

    /// Where copying continues on the source; -1 before the copier opened.
    pub fn copied_to(&self) -> i64 {
        self.copied_to.load(Ordering::SeqCst)
    }

    pub fn note_position(&self, position: i64) {
        self.copied_to.store(position, Ordering::SeqCst);
    }

    /// Counts a batch ending at `last_offset` as in flight, unless it lies
    /// beyond the limit (`None`: do not send it).
    pub fn admit(self: &Arc<Self>, last_offset: i64) -> Option<InFlight> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let ticket = InFlight(self.clone());
        (last_offset < self.limit()).then_some(ticket)
    }

    /// Everything below `end` is copied and nothing is on its way: with
    /// the limit at `end`, nothing more reaches the target.
    pub fn drained_to(&self, end: i64) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && self.copied_to.load(Ordering::SeqCst) >= end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_copier_drains_and_sends_nothing_beyond() {
        let gate = Arc::new(CopyGate::default());
        gate.note_position(10);
        let first = gate.admit(10).expect("below any limit");
        gate.set_limit(12);
        assert!(!gate.drained_to(12), "a batch in flight");
        assert!(gate.admit(12).is_none(), "beyond the limit");
        drop(first);
        gate.note_position(11);
        assert!(!gate.drained_to(12), "not copied to the end yet");
        let second = gate.admit(11).expect("below the limit");
        gate.note_position(12);
        drop(second);
        assert!(gate.drained_to(12));
        gate.lift();
        assert!(gate.admit(500).is_some());
    }
}
