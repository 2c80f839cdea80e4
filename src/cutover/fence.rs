//! The fence a promotion raises around its topics and groups: new Produce
//! requests for those topics, and offset commits of those groups, wait
//! inside klink (not answered, not failed) until it lifts, and then go
//! wherever the routes point by then.

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
    /// Offset commits sent upstream and not answered yet, per group: a
    /// hand-over reads a group's offsets only once none is in flight.
    commits: Mutex<HashMap<String, usize>>,
}

/// An offset commit on its way; dropped once its answer went to the
/// client (or the connection closed).
pub struct CommitInFlight {
    fences: Arc<Fences>,
    group: String,
}

impl Drop for CommitInFlight {
    fn drop(&mut self) {
        let mut commits = self
            .fences
            .commits
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = commits.get_mut(&self.group) {
            *n -= 1;
            if *n == 0 {
                commits.remove(&self.group);
            }
        }
    }
}

/// A raised fence; dropping it lifts the fence and wakes every waiter.
pub struct Fence {
    fences: Arc<Fences>,
    keys: Vec<String>,
    _lift: watch::Sender<()>,
}

// Topics and groups may share names: each has a key space of its own.
fn topic_key(topic: &str) -> String {
    format!("topic:{topic}")
}

fn group_key(group: &str) -> String {
    format!("group:{group}")
}

impl Fences {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Receiver<()>>> {
        self.raised.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fences `topics` and `groups` until the returned fence is dropped.
    pub fn raise(self: &Arc<Self>, topics: &[String], groups: &[String]) -> Fence {
        let (lift, lifted) = watch::channel(());
        let keys: Vec<String> = topics
            .iter()
            .map(|t| topic_key(t))
            .chain(groups.iter().map(|g| group_key(g)))
            .collect();
        let mut raised = self.lock();
        for key in &keys {
            if raised.insert(key.clone(), lifted.clone()).is_none() {
                self.count.fetch_add(1, Ordering::SeqCst);
            }
        }
        Fence {
            fences: self.clone(),
            keys,
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
            .filter_map(|t| raised.get(&topic_key(t)).cloned())
            .map(Lifted)
            .collect()
    }

    /// Counts an offset commit of `group` as in flight until the returned
    /// guard is dropped.
    pub fn commit_started(self: &Arc<Self>, group: &str) -> CommitInFlight {
        *self
            .commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(group.to_string())
            .or_default() += 1;
        CommitInFlight {
            fences: self.clone(),
            group: group.to_string(),
        }
    }

    /// Offset commits of `group` in flight.
    pub fn commits_in_flight(&self, group: &str) -> usize {
        self.commits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(group)
            .copied()
            .unwrap_or(0)
    }

    /// The fence `group`'s offset commits are behind, if any.
    pub fn holding_group(&self, group: &str) -> Option<Lifted> {
        self.lock().get(&group_key(group)).cloned().map(Lifted)
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
        for key in &self.keys {
            if raised.remove(key).is_some() {
                self.fences.count.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// The group an OffsetCommit request commits for, and the topics it names.
pub fn offset_commit_of(version: i16, payload: &bytes::Bytes) -> Option<(String, Vec<String>)> {
    use kafka_protocol::messages::{ApiKey, OffsetCommitRequest, RequestHeader};
    use kafka_protocol::protocol::Decodable;
    let mut body = payload.clone();
    RequestHeader::decode(
        &mut body,
        ApiKey::OffsetCommit.request_header_version(version),
    )
    .ok()?;
    let request = OffsetCommitRequest::decode(&mut body, version).ok()?;
    let topics = request.topics.iter().map(|t| t.name.to_string()).collect();
    Some((request.group_id.to_string(), topics))
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
        let fence = fences.raise(&["orders".to_string()], &["billing".to_string()]);
        assert!(fences.any());
        assert!(fences.holding(["payments", "billing"]).is_empty());
        assert!(fences.holding_group("billing").is_some());
        assert!(fences.holding_group("orders").is_none());
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
