//! The producer's statistics and the lines kafka-producer-perf-test prints,
//! number for number, so its output can be compared with the Java tool's.
//!
//! Percentiles come from a sorted sample of latencies, taken the way the
//! Java tool takes it (every n-th record, at most 500,000 samples, index
//! `(int) (p * size)`): the same method gives the same numbers for the same
//! run, which a histogram with its own bucketing would not, and it needs no
//! extra dependency. Latencies are kept in microseconds; the Java lines show
//! milliseconds, and `--print-metrics` shows the finer values.

use std::time::{Duration, Instant};

const MAX_SAMPLES: u64 = 500_000;
const MIB: f64 = 1024.0 * 1024.0;

pub struct Stats {
    start: Instant,
    window_start: Instant,
    reporting_interval: Duration,
    sampling: u64,
    iteration: u64,
    samples_us: Vec<u32>,
    count: u64,
    bytes: u64,
    total_us: u64,
    max_us: u32,
    window_count: u64,
    window_bytes: u64,
    window_total_us: u64,
    window_max_us: u32,
}

/// The final numbers, also for `--print-metrics` and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
    pub avg_ms: f64,
    pub max_ms: f64,
    /// 50th, 95th, 99th and 99.9th percentile, microseconds.
    pub percentiles_us: [u32; 4],
}

impl Stats {
    pub fn new(num_records: u64, start: Instant, reporting_interval: Duration) -> Stats {
        let sampling = (num_records / num_records.clamp(1, MAX_SAMPLES)).max(1);
        Stats {
            start,
            window_start: start,
            reporting_interval,
            sampling,
            iteration: 0,
            samples_us: Vec::with_capacity(
                (num_records / sampling + 1).min(MAX_SAMPLES + 1) as usize
            ),
            count: 0,
            bytes: 0,
            total_us: 0,
            max_us: 0,
            window_count: 0,
            window_bytes: 0,
            window_total_us: 0,
            window_max_us: 0,
        }
    }

    /// Records one acknowledged record; returns the progress line when a
    /// reporting interval has passed.
    pub fn record(&mut self, latency: Duration, bytes: usize, now: Instant) -> Option<String> {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.count += 1;
        self.bytes += bytes as u64;
        self.total_us += u64::from(us);
        self.max_us = self.max_us.max(us);
        self.window_count += 1;
        self.window_bytes += bytes as u64;
        self.window_total_us += u64::from(us);
        self.window_max_us = self.window_max_us.max(us);
        if self.iteration.is_multiple_of(self.sampling) {
            self.samples_us.push(us);
        }
        self.iteration += 1;
        if now.duration_since(self.window_start) < self.reporting_interval {
            return None;
        }
        let line = window_line(
            self.window_count,
            self.window_bytes,
            now.duration_since(self.window_start),
            self.window_total_us,
            self.window_max_us,
        );
        self.window_start = now;
        self.window_count = 0;
        self.window_bytes = 0;
        self.window_total_us = 0;
        self.window_max_us = 0;
        Some(line)
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn summary(&mut self, now: Instant) -> Summary {
        let elapsed = now.duration_since(self.start).as_secs_f64().max(1e-9);
        self.samples_us.sort_unstable();
        let size = self.samples_us.len();
        let at = |p: f64| {
            self.samples_us
                .get(((p * size as f64) as usize).min(size.saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        Summary {
            count: self.count,
            records_per_sec: self.count as f64 / elapsed,
            mb_per_sec: self.bytes as f64 / elapsed / MIB,
            avg_ms: if self.count == 0 {
                0.0
            } else {
                self.total_us as f64 / self.count as f64 / 1000.0
            },
            max_ms: f64::from(self.max_us) / 1000.0,
            percentiles_us: [at(0.5), at(0.95), at(0.99), at(0.999)],
        }
    }
}

/// `N records sent, X records/sec (Y MB/sec), Z ms avg latency, W ms max latency.`
fn window_line(count: u64, bytes: u64, elapsed: Duration, total_us: u64, max_us: u32) -> String {
    let secs = elapsed.as_secs_f64().max(1e-9);
    format!(
        "{count} records sent, {:.1} records/sec ({:.2} MB/sec), {:.1} ms avg latency, {:.1} ms max latency.",
        count as f64 / secs,
        bytes as f64 / secs / MIB,
        total_us as f64 / count.max(1) as f64 / 1000.0,
        f64::from(max_us) / 1000.0,
    )
}

/// The Java tool's final line; its records/sec is a bare `%f` (6 decimals)
/// and its percentiles whole milliseconds.
pub fn summary_line(s: &Summary) -> String {
    let [p50, p95, p99, p999] = s.percentiles_us.map(|us| us / 1000);
    format!(
        "{} records sent, {:.6} records/sec ({:.2} MB/sec), {:.2} ms avg latency, {:.2} ms max latency, \
         {p50} ms 50th, {p95} ms 95th, {p99} ms 99th, {p999} ms 99.9th.",
        s.count, s.records_per_sec, s.mb_per_sec, s.avg_ms, s.max_ms,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_formatted_like_the_java_tool() {
        let summary = Summary {
            count: 50_000,
            records_per_sec: 24_975.024_975,
            mb_per_sec: 2.381_8,
            avg_ms: 12.346,
            max_ms: 210.0,
            percentiles_us: [3_900, 40_100, 101_999, 199_000],
        };
        assert_eq!(
            summary_line(&summary),
            "50000 records sent, 24975.024975 records/sec (2.38 MB/sec), 12.35 ms avg latency, \
             210.00 ms max latency, 3 ms 50th, 40 ms 95th, 101 ms 99th, 199 ms 99.9th."
        );
        assert_eq!(
            window_line(
                1000,
                1024 * 1024,
                Duration::from_millis(5000),
                2_500_000,
                9_000
            ),
            "1000 records sent, 200.0 records/sec (0.20 MB/sec), 2.5 ms avg latency, 9.0 ms max latency."
        );
    }

    #[test]
    fn progress_every_interval_and_percentiles_from_the_samples() {
        let t0 = Instant::now();
        let mut stats = Stats::new(1000, t0, Duration::from_secs(5));
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(i * 10);
            let line = stats.record(Duration::from_millis(i + 1), 100, now);
            // every 5 s of acks (500 records at 10 ms apart) gives a line
            assert_eq!(line.is_some(), i == 500, "{i}: {line:?}");
        }
        let s = stats.summary(t0 + Duration::from_secs(10));
        assert_eq!(s.count, 1000);
        assert!((s.records_per_sec - 100.0).abs() < 1e-9);
        assert_eq!(s.percentiles_us, [501_000, 951_000, 991_000, 1_000_000]);
        assert_eq!(s.max_ms, 1000.0);
        assert!((s.avg_ms - 500.5).abs() < 1e-9);
    }

    #[test]
    fn many_records_are_sampled() {
        let t0 = Instant::now();
        let mut stats = Stats::new(2_000_000, t0, Duration::from_secs(3600));
        for _ in 0..2_000_000 {
            stats.record(Duration::from_micros(1500), 1, t0);
        }
        assert_eq!(stats.samples_us.len(), 500_000);
        let s = stats.summary(t0 + Duration::from_secs(1));
        assert_eq!(s.percentiles_us, [1500; 4]);
        assert_eq!(summary_line(&s).split(", ").nth(4), Some("1 ms 50th"));
    }

    #[test]
    fn nothing_recorded_gives_zeros_not_a_panic() {
        let t0 = Instant::now();
        let mut stats = Stats::new(10, t0, Duration::from_secs(5));
        let s = stats.summary(t0);
        assert_eq!((s.count, s.percentiles_us), (0, [0; 4]));
    }
}
