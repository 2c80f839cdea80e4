//! Virtual brokers: the addresses klink hands out. Each stands for one
//! upstream broker of one cluster and keeps its node id and port across
//! restarts, because clients cache both and reconnect to them.
//!
//! The registry never binds sockets itself; it decides identities, persists
//! them through [`crate::state`] before anyone may see them, and reports
//! which ones are new so the proxy can start listening on their ports.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::error::{Error, Kind, Result};
use crate::state::{StateStore, VirtualBrokerRecord};

/// One klink address standing for one upstream broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualBroker {
    pub id: i32,
    pub port: u16,
    pub cluster: Arc<str>,
    pub upstream_id: i32,
}

/// An upstream broker as a cluster announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamBroker {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
}

impl UpstreamBroker {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The brokers a Metadata response announces.
    pub fn all_in(response: &kafka_protocol::messages::MetadataResponse) -> Vec<UpstreamBroker> {
        response
            .brokers
            .iter()
            .map(|b| UpstreamBroker {
                node_id: b.node_id.0,
                host: b.host.to_string(),
                port: b.port,
            })
            .collect()
    }
}

#[derive(Default)]
struct Inner {
    by_upstream: HashMap<(Arc<str>, i32), VirtualBroker>,
    by_virtual: HashMap<i32, VirtualBroker>,
    addresses: HashMap<(Arc<str>, i32), String>,
    /// Each cluster's brokers (upstream ids) as its last whole broker list
    /// (Metadata, DescribeCluster) named them.
    members: HashMap<Arc<str>, Vec<i32>>,
}

pub struct BrokerRegistry {
    advertised_host: String,
    ports_start: u16,
    state: Arc<StateStore>,
    /// A std lock: reads are map lookups on the response path and writes are
    /// rare (a broker appearing); nothing awaits while holding it.
    inner: RwLock<Inner>,
    /// Held while new brokers are given ids and persisted.
    allocating: tokio::sync::Mutex<()>,
}

impl BrokerRegistry {
    /// Loads the identities persisted in `state`.
    pub fn load(state: Arc<StateStore>, advertised_host: String, ports_start: u16) -> Self {
        let mut inner = Inner::default();
        for record in state.snapshot().virtual_brokers {
            let broker = VirtualBroker {
                id: record.virtual_id,
                port: record.port,
                cluster: Arc::from(record.cluster.as_str()),
                upstream_id: record.upstream_node_id,
            };
            inner
                .by_upstream
                .insert((broker.cluster.clone(), broker.upstream_id), broker.clone());
            inner.by_virtual.insert(broker.id, broker);
        }
        BrokerRegistry {
            advertised_host,
            ports_start,
            state,
            inner: RwLock::new(inner),
            allocating: tokio::sync::Mutex::new(()),
        }
    }

    pub fn advertised_host(&self) -> &str {
        &self.advertised_host
    }

    /// Every virtual broker known, in id order.
    pub fn all(&self) -> Vec<VirtualBroker> {
        let mut all: Vec<_> = self.read().by_virtual.values().cloned().collect();
        all.sort_by_key(|b| b.id);
        all
    }

    pub fn by_upstream(&self, cluster: &str, upstream_id: i32) -> Option<VirtualBroker> {
        let inner = self.read();
        inner
            .by_upstream
            .get(&(Arc::from(cluster), upstream_id))
            .cloned()
    }

    pub fn by_virtual(&self, virtual_id: i32) -> Option<VirtualBroker> {
        self.read().by_virtual.get(&virtual_id).cloned()
    }

    /// Remembers `brokers` as the whole of `cluster` (an answer that lists
    /// every broker, not one coordinator or leader).
    pub fn note_members(&self, cluster: &Arc<str>, brokers: &[UpstreamBroker]) {
        let mut ids: Vec<i32> = brokers.iter().map(|b| b.node_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if self.read().members.get(cluster) == Some(&ids) {
            return;
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.members.insert(cluster.clone(), ids);
    }

    /// The virtual brokers of every cluster but `cluster`, as each one's
    /// last whole broker list named them, in id order.
    ///
    /// Every answer that lists brokers lists these too: clients see one
    /// cluster whose brokers do not come and go with the routes. kafkajs,
    /// for one, disconnects and forgets a broker a Metadata answer leaves
    /// out, then cannot reach the group coordinator it still holds.
    pub fn others(&self, cluster: &str) -> Vec<VirtualBroker> {
        let inner = self.read();
        let mut others: Vec<VirtualBroker> = inner
            .members
            .iter()
            .filter(|(c, _)| &***c != cluster)
            .flat_map(|(c, ids)| {
                ids.iter()
                    .filter_map(|id| inner.by_upstream.get(&(c.clone(), *id)).cloned())
            })
            .collect();
        others.sort_by_key(|b| b.id);
        others
    }

    /// The `host:port` the upstream broker behind `broker` was last announced at.
    pub fn upstream_address(&self, broker: &VirtualBroker) -> Option<String> {
        let inner = self.read();
        inner
            .addresses
            .get(&(broker.cluster.clone(), broker.upstream_id))
            .cloned()
    }

    /// Records the brokers a cluster announced. Brokers seen for the first
    /// time get an id and a port, persisted (off the async workers) before
    /// anyone can look them up; they are returned so their listeners can
    /// start before any client learns them.
    pub async fn observe(
        &self,
        cluster: &Arc<str>,
        brokers: &[UpstreamBroker],
    ) -> Result<Vec<VirtualBroker>> {
        if !self.note_addresses(cluster, brokers) {
            return Ok(Vec::new());
        }
        // New brokers: one allocation at a time, so two sessions seeing the
        // same new broker agree on its id.
        let _turn = self.allocating.lock().await;
        let unknown: Vec<i32> = {
            let inner = self.read();
            let mut nodes: Vec<i32> = brokers
                .iter()
                .map(|b| b.node_id)
                .filter(|id| !inner.by_upstream.contains_key(&(cluster.clone(), *id)))
                .collect();
            nodes.dedup();
            nodes
        };
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        // Allocated inside the state update, from the state file itself: a
        // record written by an earlier call that was dropped before it
        // reached memory is found and kept, never allocated twice.
        let (name, ports_start) = (cluster.to_string(), self.ports_start);
        let records = self
            .state
            .update_async(move |s| allocate(&mut s.virtual_brokers, &name, &unknown, ports_start))
            .await??;
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut fresh = Vec::new();
        for record in records {
            let broker = VirtualBroker {
                id: record.virtual_id,
                port: record.port,
                cluster: cluster.clone(),
                upstream_id: record.upstream_node_id,
            };
            if inner
                .by_upstream
                .contains_key(&(cluster.clone(), broker.upstream_id))
            {
                continue;
            }
            inner
                .by_upstream
                .insert((cluster.clone(), broker.upstream_id), broker.clone());
            inner.by_virtual.insert(broker.id, broker.clone());
            tracing::info!(
                cluster = %broker.cluster, upstream_id = broker.upstream_id, virtual_id = broker.id,
                port = broker.port, "new virtual broker"
            );
            fresh.push(broker);
        }
        Ok(fresh)
    }

    /// Remembers where each announced broker is now; whether some broker
    /// has no virtual broker yet.
    fn note_addresses(&self, cluster: &Arc<str>, brokers: &[UpstreamBroker]) -> bool {
        {
            let inner = self.read();
            let all_known = brokers.iter().all(|b| {
                let key = (cluster.clone(), b.node_id);
                inner.by_upstream.contains_key(&key)
                    && inner.addresses.get(&key).is_some_and(|a| *a == b.address())
            });
            if all_known {
                return false;
            }
        }
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        for b in brokers {
            inner
                .addresses
                .insert((cluster.clone(), b.node_id), b.address());
        }
        brokers.iter().any(|b| {
            !inner
                .by_upstream
                .contains_key(&(cluster.clone(), b.node_id))
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The records of `nodes` of `cluster`: the ones the state already holds,
/// and new ones (next id, first free port) for the rest, added to it.
fn allocate(
    records: &mut Vec<VirtualBrokerRecord>,
    cluster: &str,
    nodes: &[i32],
    ports_start: u16,
) -> Result<Vec<VirtualBrokerRecord>> {
    let mut out = Vec::with_capacity(nodes.len());
    for &node in nodes {
        if let Some(known) = records
            .iter()
            .find(|r| r.cluster == cluster && r.upstream_node_id == node)
        {
            out.push(known.clone());
            continue;
        }
        let id = records.iter().map(|r| r.virtual_id).max().unwrap_or(0) + 1;
        let port = (ports_start..=u16::MAX)
            .find(|p| records.iter().all(|r| r.port != *p))
            .ok_or_else(|| Error::klink(Kind::Config, "no free virtual broker port left"))?;
        let record = VirtualBrokerRecord {
            cluster: cluster.to_string(),
            upstream_node_id: node,
            virtual_id: id,
            port,
        };
        records.push(record.clone());
        out.push(record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(id: i32, port: i32) -> UpstreamBroker {
        UpstreamBroker {
            node_id: id,
            host: "127.0.0.1".into(),
            port,
        }
    }

    #[tokio::test]
    async fn other_clusters_are_their_last_whole_broker_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(StateStore::open(dir.path()).expect("state"));
        let registry = BrokerRegistry::load(state, "127.0.0.1".into(), 9100);
        let source: Arc<str> = Arc::from("source");
        let target: Arc<str> = Arc::from("target");
        let both = [upstream(1, 29092), upstream(2, 29093)];
        registry
            .observe(&source, &[upstream(1, 19092)])
            .await
            .expect("observe");
        registry.observe(&target, &both).await.expect("observe");
        // Seen (as a coordinator, say) but never listed whole: not shown.
        assert!(registry.others("source").is_empty());
        registry.note_members(&target, &both);
        registry.note_members(&source, &[upstream(1, 19092)]);
        let ids = |brokers: Vec<VirtualBroker>| brokers.iter().map(|b| b.id).collect::<Vec<_>>();
        assert_eq!(ids(registry.others("source")), vec![2, 3]);
        assert_eq!(ids(registry.others("target")), vec![1]);
        // A broker that left its cluster's list leaves the others' too.
        registry.note_members(&target, &[upstream(2, 29093)]);
        assert_eq!(ids(registry.others("source")), vec![3]);
    }

    #[tokio::test]
    async fn ids_and_ports_are_allocated_once_and_survive_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(StateStore::open(dir.path()).expect("state"));
        let registry = BrokerRegistry::load(state, "127.0.0.1".into(), 9100);
        let source: Arc<str> = Arc::from("source");
        let target: Arc<str> = Arc::from("target");
        let fresh = registry
            .observe(&source, &[upstream(1, 19092), upstream(2, 19093)])
            .await
            .expect("observe");
        assert_eq!(
            fresh.iter().map(|b| (b.id, b.port)).collect::<Vec<_>>(),
            vec![(1, 9100), (2, 9101)]
        );
        // Same node ids in another cluster are other brokers.
        let fresh = registry
            .observe(&target, &[upstream(1, 29092)])
            .await
            .expect("observe");
        assert_eq!((fresh[0].id, fresh[0].port), (3, 9102));
        // Seen again: nothing new, but a moved address is remembered.
        assert!(
            registry
                .observe(&source, &[upstream(1, 19999)])
                .await
                .expect("observe")
                .is_empty()
        );
        let b1 = registry.by_upstream("source", 1).expect("known");
        assert_eq!(
            registry.upstream_address(&b1).as_deref(),
            Some("127.0.0.1:19999")
        );

        let state = Arc::new(StateStore::open(dir.path()).expect("state"));
        let reloaded = BrokerRegistry::load(state, "127.0.0.1".into(), 9100);
        assert_eq!(reloaded.all(), registry.all());
        let fresh = reloaded
            .observe(&source, &[upstream(7, 19094)])
            .await
            .expect("observe");
        assert_eq!((fresh[0].id, fresh[0].port), (4, 9103));
    }

    #[tokio::test]
    async fn a_broker_persisted_by_a_dropped_call_keeps_its_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = Arc::new(StateStore::open(dir.path()).expect("state"));
        let registry = BrokerRegistry::load(state.clone(), "127.0.0.1".into(), 9100);
        let source: Arc<str> = Arc::from("source");
        // An earlier observe persisted broker 1 and was dropped before it
        // reached memory.
        state
            .update(|s| {
                s.virtual_brokers.push(VirtualBrokerRecord {
                    cluster: "source".into(),
                    upstream_node_id: 1,
                    virtual_id: 1,
                    port: 9100,
                })
            })
            .expect("persist");
        let fresh = registry
            .observe(&source, &[upstream(1, 19092), upstream(2, 19093)])
            .await
            .expect("observe");
        assert_eq!(
            fresh
                .iter()
                .map(|b| (b.upstream_id, b.id, b.port))
                .collect::<Vec<_>>(),
            vec![(1, 1, 9100), (2, 2, 9101)],
            "broker 1 keeps the id and port on disk; broker 2 gets the next"
        );
        assert_eq!(
            state.snapshot().virtual_brokers.len(),
            2,
            "no second record"
        );
    }
}
