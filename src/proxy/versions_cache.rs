//! Each cluster's ApiVersions answer, as klink last got it.
//!
//! A cluster that is down when a client connects is left out of the
//! ApiVersions answer and asked again later (at most every
//! [`RETRY_AFTER`], so many clients connecting to a klink whose cluster
//! is down do not each try to reach it). An answer is asked again after
//! [`REFRESH_AFTER`]: brokers are upgraded under a running klink.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;

use crate::error::Result;
use crate::versions::UpstreamVersions;

pub const REFRESH_AFTER: Duration = Duration::from_secs(600);
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Entry {
    known: Option<(UpstreamVersions, Instant)>,
    failed_at: Option<Instant>,
}

#[derive(Default)]
pub struct VersionsCache {
    /// A std mutex: copied in and out, never held across an await.
    entry: Mutex<Entry>,
    /// Held while asking, so concurrent askers share one answer.
    asking: tokio::sync::Mutex<()>,
}

impl VersionsCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entry> {
        self.entry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the cluster takes `version` of `api`: false only when its
    /// answer (however old) is known and leaves that version or the API out.
    pub fn supports(&self, api: ApiKey, version: i16) -> bool {
        self.lock().known.as_ref().is_none_or(|(known, _)| {
            known
                .apis
                .get(&(api as i16))
                .is_some_and(|range| range.min <= version && version <= range.max)
        })
    }

    /// The cluster's versions, asking it (with `ask`) when klink has none
    /// or they are old, unless it failed a moment ago. An old answer is
    /// kept when asking again fails.
    pub async fn get<F, Fut>(&self, ask: F) -> Result<Option<UpstreamVersions>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<UpstreamVersions>>,
    {
        if let Some(ready) = self.ready() {
            return Ok(ready);
        }
        let _turn = self.asking.lock().await;
        // Someone else may have asked while this one waited.
        if let Some(ready) = self.ready() {
            return Ok(ready);
        }
        match ask().await {
            Ok(versions) => {
                let mut entry = self.lock();
                entry.known = Some((versions.clone(), Instant::now()));
                entry.failed_at = None;
                Ok(Some(versions))
            }
            Err(e) => {
                let mut entry = self.lock();
                entry.failed_at = Some(Instant::now());
                match &entry.known {
                    Some((old, _)) => Ok(Some(old.clone())),
                    None => Err(e),
                }
            }
        }
    }

    /// `Some` when there is no need to ask now: a fresh answer, or a
    /// recent failure (with whatever klink knew before it).
    fn ready(&self) -> Option<Option<UpstreamVersions>> {
        let entry = self.lock();
        if let Some((versions, at)) = &entry.known
            && at.elapsed() < REFRESH_AFTER
        {
            return Some(Some(versions.clone()));
        }
        if entry.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return Some(entry.known.as_ref().map(|(v, _)| v.clone()));
        }
        None
    }

    #[cfg(test)]
    fn age(&self, by: Duration) {
        let mut entry = self.lock();
        if let Some((_, at)) = &mut entry.known {
            *at -= by;
        }
        if let Some(at) = &mut entry.failed_at {
            *at -= by;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use kafka_protocol::protocol::VersionRange;

    use super::*;
    use crate::error::{Error, Kind};

    fn versions(max: i16) -> UpstreamVersions {
        UpstreamVersions {
            apis: [(0, VersionRange { min: 0, max })].into_iter().collect(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_cluster_down_at_first_is_asked_again_but_not_per_client() {
        let cache = VersionsCache::default();
        let asked = AtomicUsize::new(0);
        let down = || async {
            asked.fetch_add(1, Ordering::SeqCst);
            Err(Error::upstream(&Arc::from("target"), Kind::Io, "refused"))
        };
        assert!(cache.get(down).await.is_err());
        // A burst of clients right after: nobody asks the dead cluster.
        for _ in 0..10 {
            let answer = cache.get(down).await.expect("no error while waiting");
            assert!(answer.is_none());
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        cache.age(RETRY_AFTER);
        let up = || async { Ok(versions(9)) };
        assert_eq!(cache.get(up).await.expect("up"), Some(versions(9)));
        let unused = || async { panic!("a fresh answer is not asked again") };
        assert_eq!(cache.get(unused).await.expect("kept"), Some(versions(9)));
    }

    #[tokio::test]
    async fn an_old_answer_is_asked_again_and_kept_if_asking_fails() {
        let cache = VersionsCache::default();
        cache
            .get(|| async { Ok(versions(9)) })
            .await
            .expect("first");
        let unused = || async { panic!("a fresh answer is not asked again") };
        assert_eq!(cache.get(unused).await.expect("cached"), Some(versions(9)));
        cache.age(REFRESH_AFTER);
        let upgraded = cache.get(|| async { Ok(versions(11)) }).await;
        assert_eq!(upgraded.expect("asked"), Some(versions(11)));
        cache.age(REFRESH_AFTER);
        let down = || async { Err(Error::upstream(&Arc::from("source"), Kind::Io, "down")) };
        assert_eq!(cache.get(down).await.expect("kept"), Some(versions(11)));
    }

    #[tokio::test]
    async fn concurrent_askers_share_one_answer() {
        let cache = Arc::new(VersionsCache::default());
        let asked = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, asked) = (cache.clone(), asked.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get(|| async {
                        asked.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(versions(9))
                    })
                    .await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.expect("task").expect("ok"), Some(versions(9)));
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn only_a_known_answer_can_say_a_version_is_unsupported() {
        let cache = VersionsCache::default();
        assert!(
            cache.supports(ApiKey::Produce, 11),
            "unknown: let it through"
        );
        let down = || async { Err(Error::upstream(&Arc::from("target"), Kind::Io, "down")) };
        assert!(cache.get(down).await.is_err());
        assert!(cache.supports(ApiKey::Produce, 11), "still unknown");
        let answer = UpstreamVersions {
            apis: [(ApiKey::Produce as i16, VersionRange { min: 3, max: 9 })]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        cache.age(RETRY_AFTER);
        cache.get(|| async { Ok(answer) }).await.expect("answer");
        assert!(cache.supports(ApiKey::Produce, 9));
        assert!(cache.supports(ApiKey::Produce, 3));
        assert!(!cache.supports(ApiKey::Produce, 11));
        assert!(!cache.supports(ApiKey::Produce, 2));
        assert!(!cache.supports(ApiKey::Fetch, 4), "an API it lacks");
    }
}
