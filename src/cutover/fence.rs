//! The fence a promotion raises around its topics: new Produce requests
//! for them wait inside klink (not answered, not failed) until it lifts,
//! and then go wherever the routes point by then.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Default)]
pub struct Fences {
    /// A std mutex: map edits only, never held across an await.
    raised: Mutex<HashMap<String, watch::Receiver<()>>>,
    /// How many topics are fenced: sessions look at the map only then.
    count: AtomicUsize,
}

/// A raised fence; dropping it lifts the fence and wakes every waiter.
pub struct Fence {
    fences: Arc<Fences>,
    topics: Vec<String>,
    _lift: watch::Sender<()>,
}

impl Fences {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<()>>> {
        self.raised.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fences `topics` until the returned fence is dropped.
    pub fn raise(self: &Arc<Self>, topics: &[String]) -> Fence {
        let (lift, lifted) = watch::channel(());
        let mut raised = self.lock();
        for topic in topics {
            if raised.insert(topic.clone(), lifted.clone()).is_none() {
                self.count.fetch_add(1, Ordering::SeqCst);
            }
        }
        Fence {
            fences: self.clone(),
            topics: topics.to_vec(),
            _lift: lift,
        }
    }

    /// Whether any topic is fenced (one atomic load: the hot path's check).
    pub fn any(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }

    /// The fences `topics` are behind, to wait on.
    pub fn holding<'a>(&self, topics: impl IntoIterator<Item = &'a str>) -> Vec<Lifted> {
        let raised = self.lock();
        topics
            .into_iter()
            .filter_map(|t| raised.get(t).cloned())
            .map(Lifted)
            .collect()
    }
}

/// Resolves once its fence lifts.
pub struct Lifted(watch::Receiver<()>);

impl Lifted {
    pub async fn wait(mut self) {
        // The sender is dropped when the fence lifts: changed() then errs.
        while self.0.changed().await.is_ok() {}
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        let mut raised = self.fences.lock();
        for topic in &self.topics {
            if raised.remove(topic).is_some() {
                self.fences.count.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// The topics a Produce request writes, by name (ids resolved with
/// `name_of_id`); empty when the request cannot be read (the session's
/// routing refuses it later).
pub fn produce_topics(
    version: i16,
    payload: &bytes::Bytes,
    name_of_id: impl Fn(&uuid::Uuid) -> Option<String>,
) -> Vec<String> {
    use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader};
    use kafka_protocol::protocol::Decodable;
    let mut body = payload.clone();
    let decoded = RequestHeader::decode(&mut body, ApiKey::Produce.request_header_version(version))
        .and_then(|_| ProduceRequest::decode(&mut body, version));
    let Ok(request) = decoded else {
        return Vec::new();
    };
    request
        .topic_data
        .iter()
        .filter_map(|t| {
            if version >= 13 {
                name_of_id(&t.topic_id)
            } else {
                Some(t.name.to_string())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fence_holds_its_topics_until_dropped() {
        let fences = Arc::new(Fences::default());
        assert!(!fences.any());
        let fence = fences.raise(&["orders".to_string()]);
        assert!(fences.any());
        assert!(fences.holding(["payments"]).is_empty());
        let mut held = fences.holding(["payments", "orders"]);
        assert_eq!(held.len(), 1);
        let waiter = tokio::spawn(held.remove(0).wait());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "held while the fence stands");
        drop(fence);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("released")
            .expect("task");
        assert!(!fences.any());
        assert!(fences.holding(["orders"]).is_empty());
    }
}
