//! klink's own figures, for Prometheus (`/metrics` on the admin listener).
//!
//! The request path only adds to relaxed atomics in the shard of the worker
//! thread it runs on: no lock, no allocation, and no cache line two cores
//! keep taking from each other. A scrape sums the shards. Figures that are
//! state rather than events (routes, mirror lag, bypasses, whether a
//! cluster answers) are read from that state when scraped ([`scrape`]).

mod histogram;
pub mod scrape;

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::Duration;

pub use histogram::Histogram;

/// Clusters klink keeps figures for; slot 0 is klink itself (answers it
/// made without an upstream). More clusters than this share the last slot.
pub const CLUSTER_SLOTS: usize = 8;
/// Kafka API keys with figures of their own; higher keys share the last.
const API_SLOTS: usize = 96;
/// Enough for the cores of the machines klink runs on; more threads share.
const SHARDS: usize = 16;

/// The process's figures.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);
    &METRICS
}

/// One thread's counters, aligned so that no two shards share a cache line.
#[repr(align(128))]
struct Shard {
    connections: AtomicU64,
    client_bytes_in: AtomicU64,
    client_bytes_out: AtomicU64,
    /// Per API key: requests clients sent.
    requests: Box<[AtomicU64]>,
    /// Per API key: time from a request's arrival to its answer's write.
    request_latency: Box<[Histogram]>,
    /// Per cluster slot and API key: requests sent upstream, and those
    /// that got no answer (timeout, connection lost).
    upstream_requests: Box<[AtomicU64]>,
    upstream_errors: Box<[AtomicU64]>,
    /// Per cluster slot.
    upstream_latency: Box<[Histogram]>,
    upstream_bytes_out: Box<[AtomicU64]>,
    upstream_bytes_in: Box<[AtomicU64]>,
}

impl Default for Shard {
    fn default() -> Self {
        let counters = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        let histograms = |n: usize| (0..n).map(|_| Histogram::default()).collect();
        Shard {
            connections: AtomicU64::new(0),
            client_bytes_in: AtomicU64::new(0),
            client_bytes_out: AtomicU64::new(0),
            requests: counters(API_SLOTS),
            request_latency: histograms(API_SLOTS),
            upstream_requests: counters(CLUSTER_SLOTS * API_SLOTS),
            upstream_errors: counters(CLUSTER_SLOTS * API_SLOTS),
            upstream_latency: histograms(CLUSTER_SLOTS),
            upstream_bytes_out: counters(CLUSTER_SLOTS),
            upstream_bytes_in: counters(CLUSTER_SLOTS),
        }
    }
}

/// What one promotion or rollback took; kept for the status page.
#[derive(Debug, Clone)]
pub struct CutoverRecord {
    pub at: std::time::SystemTime,
    pub command: &'static str,
    pub topics: Vec<String>,
    pub ok: bool,
    pub fence_ms: f64,
    pub detail: String,
}

/// Cutovers kept for the status page.
const CUTOVERS_KEPT: usize = 20;

pub struct Metrics {
    /// Cluster names by slot; slot 0 is "klink".
    clusters: RwLock<Vec<Arc<str>>>,
    shards: Box<[Shard]>,
    connections_open: AtomicI64,
    fence: Histogram,
    drain: Histogram,
    /// Per command (promote, rollback) and result (ok, aborted).
    cutovers: [[AtomicU64; 2]; 2],
    /// Client logins to klink: accepted, refused.
    logins: [AtomicU64; 2],
    recent_cutovers: Mutex<std::collections::VecDeque<CutoverRecord>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            clusters: RwLock::new(vec![Arc::from("klink")]),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            connections_open: AtomicI64::new(0),
            fence: Histogram::default(),
            drain: Histogram::default(),
            cutovers: Default::default(),
            logins: Default::default(),
            recent_cutovers: Mutex::default(),
        }
    }
}

/// The slot figures of one cluster go to; resolved once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterSlot(usize);

impl ClusterSlot {
    /// Answers klink made itself.
    pub const KLINK: ClusterSlot = ClusterSlot(0);
}

fn api_slot(api_key: i16) -> usize {
    usize::try_from(api_key).map_or(API_SLOTS - 1, |k| k.min(API_SLOTS - 1))
}

impl Metrics {
    fn shard(&self) -> &Shard {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        let index = MINE.with(|mine| {
            if mine.get() == usize::MAX {
                mine.set(NEXT.fetch_add(1, Relaxed) % SHARDS);
            }
            mine.get()
        });
        &self.shards[index]
    }

    /// The slot of `cluster`, given one the first time it is seen.
    pub fn cluster_slot(&self, cluster: &str) -> ClusterSlot {
        if let Some(i) = self.read_clusters().iter().position(|c| &**c == cluster) {
            return ClusterSlot(i);
        }
        let mut clusters = self.clusters.write().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = clusters.iter().position(|c| &**c == cluster) {
            return ClusterSlot(i);
        }
        if clusters.len() < CLUSTER_SLOTS {
            clusters.push(Arc::from(cluster));
        }
        ClusterSlot(clusters.len() - 1)
    }

    fn read_clusters(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<str>>> {
        self.clusters.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Relaxed);
        self.shard().connections.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Relaxed);
    }

    /// A client request arrived (`bytes` with its length prefix).
    pub fn client_request(&self, api_key: i16, bytes: usize) {
        let shard = self.shard();
        shard.requests[api_slot(api_key)].fetch_add(1, Relaxed);
        shard.client_bytes_in.fetch_add(bytes as u64, Relaxed);
    }

    /// An answer went back to the client, `took` after its request came.
    pub fn client_answer(&self, api_key: i16, bytes: usize, took: Duration) {
        let shard = self.shard();
        shard.request_latency[api_slot(api_key)].observe(took);
        shard.client_bytes_out.fetch_add(bytes as u64, Relaxed);
    }

    /// klink sent a request upstream.
    pub fn upstream_request(&self, slot: ClusterSlot, api_key: i16, bytes: usize) {
        let shard = self.shard();
        shard.upstream_requests[slot.0 * API_SLOTS + api_slot(api_key)].fetch_add(1, Relaxed);
        shard.upstream_bytes_out[slot.0].fetch_add(bytes as u64, Relaxed);
    }

    /// An upstream answered, `took` after the request was queued to it.
    pub fn upstream_answer(&self, slot: ClusterSlot, bytes: usize, took: Duration) {
        let shard = self.shard();
        shard.upstream_latency[slot.0].observe(took);
        shard.upstream_bytes_in[slot.0].fetch_add(bytes as u64, Relaxed);
    }

    /// A client's login to klink ended (`[proxy] sasl`).
    pub fn client_login(&self, accepted: bool) {
        self.logins[usize::from(!accepted)].fetch_add(1, Relaxed);
    }

    /// A request sent upstream got no answer.
    pub fn upstream_error(&self, slot: ClusterSlot, api_key: i16) {
        self.shard().upstream_errors[slot.0 * API_SLOTS + api_slot(api_key)].fetch_add(1, Relaxed);
    }

    /// A promotion or rollback ended: its fence, each partition's drain.
    pub fn cutover(&self, record: CutoverRecord, drains_ms: &[f64]) {
        let command = usize::from(record.command == "rollback");
        self.cutovers[command][usize::from(!record.ok)].fetch_add(1, Relaxed);
        if record.ok {
            self.fence
                .observe(Duration::from_secs_f64(record.fence_ms.max(0.0) / 1000.0));
            for ms in drains_ms {
                self.drain
                    .observe(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
            }
        }
        let mut recent = self
            .recent_cutovers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if recent.len() == CUTOVERS_KEPT {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    /// Records how a promotion or rollback (`command`) of `what` ended.
    pub fn cutover_ended(
        &self,
        command: &str,
        what: &crate::cutover::Selection,
        result: &crate::error::Result<crate::cutover::Promotion>,
    ) {
        let command = if command == "rollback" {
            "rollback"
        } else {
            "promote"
        };
        let at = std::time::SystemTime::now();
        match result {
            Ok(promotion) if promotion.already => {}
            Ok(promotion) => {
                let drains: Vec<f64> = promotion.partitions.iter().map(|p| p.drained_ms).collect();
                let record = CutoverRecord {
                    at,
                    command,
                    topics: promotion.topics.clone(),
                    ok: true,
                    fence_ms: promotion.fence_ms,
                    detail: format!("{} partitions drained", drains.len()),
                };
                self.cutover(record, &drains);
            }
            Err(e) => {
                let record = CutoverRecord {
                    at,
                    command,
                    topics: what.topic_names(),
                    ok: false,
                    fence_ms: 0.0,
                    detail: e.context.clone(),
                };
                self.cutover(record, &[]);
            }
        }
    }

    /// The last promotions and rollbacks, newest last.
    pub fn recent_cutovers(&self) -> Vec<CutoverRecord> {
        self.recent_cutovers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn sum(&self, pick: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| pick(s).load(Relaxed)).sum()
    }
}

/// The name clients and dashboards know an API key by.
fn api_name(api_key: usize) -> String {
    if api_key == API_SLOTS - 1 {
        return "Other".to_string();
    }
    i16::try_from(api_key)
        .ok()
        .and_then(|k| kafka_protocol::messages::ApiKey::try_from(k).ok())
        .map_or_else(|| format!("Api{api_key}"), |k| format!("{k:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_add_to_their_own_shards_and_a_scrape_sums_them() {
        let metrics = Metrics::default();
        let source = metrics.cluster_slot("source");
        assert_eq!(metrics.cluster_slot("source"), source);
        assert_ne!(source, ClusterSlot::KLINK);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        metrics.client_request(0, 100);
                        metrics.upstream_request(source, 0, 100);
                    }
                });
            }
        });
        assert_eq!(metrics.sum(|s| &s.requests[0]), 4000);
        assert_eq!(metrics.sum(|s| &s.client_bytes_in), 400_000);
        assert_eq!(
            metrics.sum(|s| &s.upstream_requests[source.0 * API_SLOTS]),
            4000
        );
    }

    #[test]
    fn clusters_past_the_slots_share_the_last_and_odd_keys_share_one() {
        let metrics = Metrics::default();
        let slots: Vec<_> = (0..CLUSTER_SLOTS + 2)
            .map(|i| metrics.cluster_slot(&format!("c{i}")))
            .collect();
        assert_eq!(slots[CLUSTER_SLOTS - 2], ClusterSlot(CLUSTER_SLOTS - 1));
        assert_eq!(slots[CLUSTER_SLOTS + 1], ClusterSlot(CLUSTER_SLOTS - 1));
        assert_eq!(api_slot(-1), API_SLOTS - 1);
        assert_eq!(api_slot(5000), API_SLOTS - 1);
        assert_eq!(api_name(0), "Produce");
        assert_eq!(api_name(API_SLOTS - 1), "Other");
    }
}
