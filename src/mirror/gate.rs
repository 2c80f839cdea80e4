//! Where a partition's copier stands, and where a promotion stops it.
//!
//! A promotion flips a topic's routes once the mirror holds the source up
//! to a drain end, and from that moment clients write the target: no batch
//! beyond the end may reach it. The copier counts a batch as in flight
//! before it checks the limit, and the promotion sets the limit before it
//! looks at what is in flight, so every batch either is counted or sees the
//! limit (both sides use sequentially consistent atomics).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use tokio::sync::Notify;

#[derive(Debug)]
pub struct CopyGate {
    limit: AtomicI64,
    /// A flip holds clients' writes until this copy reaches its drain end:
    /// the copier fetches without waiting (set at the fence, before the
    /// end is known; cleared with the limit).
    hurried: AtomicBool,
    /// Told when a flip starts: a copier waiting out a long fetch fetches
    /// again at once.
    drain: Notify,
    /// Where copying continues on the source; -1 while no copier is open.
    copied_to: AtomicI64,
    /// Batches handed to the target and not answered (or given up) yet.
    in_flight: AtomicI64,
}

impl Default for CopyGate {
    fn default() -> Self {
        CopyGate {
            limit: AtomicI64::new(i64::MAX),
            hurried: AtomicBool::new(false),
            drain: Notify::new(),
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
        self.hurry();
    }

    /// A flip has fenced the writes and waits on this copy.
    pub fn hurry(&self) {
        self.hurried.store(true, Ordering::SeqCst);
        self.drain.notify_waiters();
    }

    /// Whether a flip is draining this copy (a limit comes with it).
    pub fn draining(&self) -> bool {
        self.hurried.load(Ordering::SeqCst)
    }

    /// Resolves at the next [`CopyGate::hurry`]; enable it before looking
    /// at [`CopyGate::draining`] so that none is missed.
    pub fn drain_started(&self) -> tokio::sync::futures::Notified<'_> {
        self.drain.notified()
    }

    pub fn lift(&self) {
        self.limit.store(i64::MAX, Ordering::SeqCst);
        self.hurried.store(false, Ordering::SeqCst);
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

    #[tokio::test]
    async fn a_copier_waiting_on_a_fetch_hears_the_drain_start() {
        let gate = Arc::new(CopyGate::default());
        let started = gate.drain_started();
        tokio::pin!(started);
        started.as_mut().enable();
        assert!(!gate.draining());
        let setter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.hurry() })
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), started)
            .await
            .expect("told");
        setter.await.expect("setter");
        assert!(gate.draining());
        assert_eq!(gate.limit(), i64::MAX, "no end known yet");
        gate.set_limit(7);
        gate.lift();
        assert!(!gate.draining());
    }
}
