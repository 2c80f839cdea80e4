//! Which upstream brokers are down, so that an outage is logged once when
//! it starts and once when it ends, however many connections and requests
//! fail in between: during a broker restart every client session retries
//! every few hundred milliseconds, and a line per attempt would bury the
//! one line an operator needs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::error::Error;

/// A broker: its cluster's name and its address.
type BrokerKey = (Arc<str>, Arc<str>);

/// Brokers klink could not reach.
#[derive(Default)]
pub struct Outages {
    down: Mutex<HashMap<BrokerKey, Down>>,
}

struct Down {
    since: Instant,
    /// Failed connects and broken connections since the first one.
    failures: u64,
    /// What the last one said.
    error: String,
}

/// A broker klink cannot reach, as `klink ctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unreachable {
    pub cluster: String,
    pub broker: String,
    /// Seconds since the first failure.
    pub for_s: u64,
    pub failures: u64,
    pub error: String,
}

/// The process's outages: sessions, the mirror and klink's own requests
/// all meet the same brokers.
pub fn outages() -> &'static Outages {
    static OUTAGES: OnceLock<Outages> = OnceLock::new();
    OUTAGES.get_or_init(Outages::default)
}

impl Outages {
    /// A connect to `addr` failed, or a connection to it broke with answers
    /// owed. The first failure of an outage is logged (warn); the rest are
    /// counted. Returns the error marked as logged.
    pub fn failed(&self, cluster: &Arc<str>, addr: &Arc<str>, error: Error) -> Error {
        let first = {
            let mut down = self.lock();
            let entry = down.entry((cluster.clone(), addr.clone())).or_insert(Down {
                since: Instant::now(),
                failures: 0,
                error: String::new(),
            });
            entry.failures += 1;
            entry.error = error.to_string();
            entry.failures == 1
        };
        if first {
            tracing::warn!(%cluster, %addr, error = %error,
                "upstream broker unreachable; requests to it fail with a retriable error until it is back (logged once)");
        } else {
            tracing::debug!(%cluster, %addr, error = %error, "upstream broker still unreachable");
        }
        error.logged()
    }

    /// `addr` answered on a connection: ends its outage, if it had one.
    pub fn reached(&self, cluster: &Arc<str>, addr: &Arc<str>) {
        let ended = {
            let mut down = self.lock();
            if down.is_empty() {
                return;
            }
            down.remove(&(cluster.clone(), addr.clone()))
        };
        if let Some(Down {
            since, failures, ..
        }) = ended
        {
            tracing::info!(%cluster, %addr, down_ms = since.elapsed().as_millis() as u64, failures,
                "upstream broker reachable again");
        }
    }

    /// The brokers klink cannot reach now, and why.
    pub fn unreachable(&self) -> Vec<Unreachable> {
        let mut down: Vec<Unreachable> = self
            .lock()
            .iter()
            .map(|((cluster, broker), down)| Unreachable {
                cluster: cluster.to_string(),
                broker: broker.to_string(),
                for_s: down.since.elapsed().as_secs(),
                failures: down.failures,
                error: down.error.clone(),
            })
            .collect();
        down.sort_by(|a, b| (&a.cluster, &a.broker).cmp(&(&b.cluster, &b.broker)));
        down
    }

    /// Whether klink last failed to reach `addr`.
    pub fn is_down(&self, cluster: &Arc<str>, addr: &Arc<str>) -> bool {
        self.lock().contains_key(&(cluster.clone(), addr.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BrokerKey, Down>> {
        // The map holds no invariant a panicking holder could break.
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    #[test]
    fn an_outage_starts_once_counts_its_failures_and_ends_on_the_first_success() {
        let outages = Outages::default();
        let cluster: Arc<str> = Arc::from("source");
        let addr: Arc<str> = Arc::from("127.0.0.1:1");
        let other: Arc<str> = Arc::from("127.0.0.1:2");
        let refused = || Error::upstream(&cluster, Kind::Io, "connect refused");
        assert!(!refused().logged);
        let first = outages.failed(&cluster, &addr, refused());
        assert!(first.logged, "passed on as already logged");
        assert!(first.retriable);
        outages.failed(&cluster, &addr, refused());
        assert_eq!(outages.lock()[&(cluster.clone(), addr.clone())].failures, 2);
        assert!(outages.is_down(&cluster, &addr));
        assert!(!outages.is_down(&cluster, &other));
        let shown = outages.unreachable();
        assert_eq!(shown.len(), 1);
        assert_eq!(
            (
                shown[0].cluster.as_str(),
                shown[0].broker.as_str(),
                shown[0].failures
            ),
            ("source", "127.0.0.1:1", 2)
        );
        assert!(shown[0].error.contains("connect refused"), "{shown:?}");
        outages.reached(&cluster, &other);
        assert!(outages.is_down(&cluster, &addr), "another broker's success");
        outages.reached(&cluster, &addr);
        assert!(!outages.is_down(&cluster, &addr));
        outages.failed(&cluster, &addr, refused());
        assert_eq!(
            outages.lock()[&(cluster.clone(), addr.clone())].failures,
            1,
            "a new outage counts from one"
        );
    }
}
