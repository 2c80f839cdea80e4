//! The client connection limit: past it, klink closes a new connection at
//! once and says so in its log (once a second at most, with a count),
//! instead of running out of file descriptors for everyone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// File descriptors kept for what is not a client connection.
const RESERVED_FDS: usize = 2048;
/// When the open-file limit cannot be read.
const FALLBACK_LIMIT: usize = 1024;

pub struct ConnectionLimit {
    open: AtomicUsize,
    max: usize,
    /// Refusals not yet logged, and the second of the last log line.
    refused: AtomicU64,
    logged_at: AtomicU64,
}

/// One open client connection; dropping it frees its place.
pub struct Admitted(Arc<ConnectionLimit>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimit {
    pub fn new(configured: Option<usize>) -> Arc<ConnectionLimit> {
        let max = configured.unwrap_or_else(|| {
            open_files_limit()
                .unwrap_or(FALLBACK_LIMIT)
                .saturating_sub(RESERVED_FDS)
                .max(64)
        });
        Arc::new(ConnectionLimit {
            open: AtomicUsize::new(0),
            max,
            refused: AtomicU64::new(0),
            logged_at: AtomicU64::new(0),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more connection, or `None` (logged) at the limit.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            });
        if taken.is_ok() {
            return Some(Admitted(self.clone()));
        }
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.logged_at.load(Ordering::Relaxed);
        if now != last
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.refused.fetch_sub(refused, Ordering::Relaxed);
            tracing::warn!(
                max_client_connections = self.max,
                refused,
                "refusing client connections: at max_client_connections"
            );
        }
        None
    }
}

/// The soft limit on open files, from /proc (Linux).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_up_to_the_limit_and_given_back_on_drop() {
        let limit = ConnectionLimit::new(Some(2));
        let a = limit.admit().expect("first");
        let _b = limit.admit().expect("second");
        assert!(limit.admit().is_none(), "third refused");
        assert!(limit.admit().is_none());
        drop(a);
        assert!(limit.admit().is_some(), "a place was freed");
    }

    #[test]
    fn the_default_leaves_room_below_the_open_file_limit() {
        let limit = ConnectionLimit::new(None);
        let fds = open_files_limit().expect("linux has /proc/self/limits");
        assert_eq!(limit.max(), fds.saturating_sub(RESERVED_FDS).max(64));
    }
}
