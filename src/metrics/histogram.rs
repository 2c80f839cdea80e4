//! A latency histogram of atomics: observing is two relaxed additions.
//! (prometheus-client's own histogram takes a lock per observation.)

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds in microseconds: 0.5 ms to 30 s, wide enough for a fetch
/// that waits its `max_wait_ms` and a fence that hits its timeout.
const BOUNDS_MICROS: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

#[derive(Debug)]
pub struct Histogram {
    /// Per bound, observations at or under it and over the one before;
    /// the last counts those over every bound.
    counts: [AtomicU64; BOUNDS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS.partition_point(|bound| *bound < micros);
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }
}

/// Several histograms (one per shard) read as one: per bucket, its upper
/// bound in seconds and the observations in it alone (not cumulative: the
/// text encoder adds them up, as Prometheus' `le` buckets want), with the
/// sum and the count.
pub struct Snapshot {
    pub sum_seconds: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

impl Snapshot {
    pub fn of<'a>(histograms: impl IntoIterator<Item = &'a Histogram>) -> Snapshot {
        let mut counts = [0u64; BOUNDS_MICROS.len() + 1];
        let mut sum_micros = 0u64;
        for h in histograms {
            for (total, count) in counts.iter_mut().zip(&h.counts) {
                *total += count.load(Relaxed);
            }
            sum_micros = sum_micros.saturating_add(h.sum_micros.load(Relaxed));
        }
        let buckets = counts
            .iter()
            .enumerate()
            .map(|(i, count)| {
                let bound = BOUNDS_MICROS
                    .get(i)
                    .map_or(f64::INFINITY, |b| *b as f64 / 1e6);
                (bound, *count)
            })
            .collect();
        Snapshot {
            sum_seconds: sum_micros as f64 / 1e6,
            count: counts.iter().sum(),
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_buckets_across_histograms() {
        let (a, b) = (Histogram::default(), Histogram::default());
        a.observe(Duration::from_micros(400));
        a.observe(Duration::from_micros(500));
        b.observe(Duration::from_millis(20));
        b.observe(Duration::from_secs(60));
        let s = Snapshot::of([&a, &b]);
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.0005, 2), "a bound is inclusive");
        assert_eq!(s.buckets[4], (0.01, 0));
        assert_eq!(s.buckets[5], (0.025, 1));
        assert_eq!(s.buckets[14], (30.0, 0));
        assert_eq!(s.buckets[15], (f64::INFINITY, 1));
        let counted: u64 = s.buckets.iter().map(|(_, n)| n).sum();
        assert_eq!(counted, s.count);
        assert!((s.sum_seconds - 60.0209).abs() < 1e-9, "{}", s.sum_seconds);
    }
}
