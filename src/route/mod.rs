//! Routes: for each topic, the cluster its writes go to and the cluster its
//! reads come from; for each group, the cluster that coordinates it.
//!
//! The table is read on every request and changed by operators, so readers
//! take an `Arc` snapshot (one lock-free-in-practice clone) and writers
//! persist the new table before swapping it in: no request is ever released
//! under a route that is not yet durable.
//! (Tests in `tests.rs`.)

mod catalog;
mod in_doubt;
mod producer_journal;
mod producers;
mod transactions;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

pub use catalog::{Catalog, TopicLayout};
pub use in_doubt::BatchKey;
pub use producers::{ClientProducer, Identity, Outcome, Placement, ProducerIds, outcome_of};
pub use transactions::OpenTransactions;

use crate::config::Config;
use crate::error::{Error, Kind, Result};
pub use crate::state::TopicState;
use crate::state::{Applied, GroupRouteRecord, StateStore, TopicRouteRecord};

/// What a flip records for one partition (see [`RouteTable::move_topics`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlipPoint {
    /// `[source offset, target offset]` where both held the same records.
    pub synced: [i64; 2],
    pub eras: Vec<crate::numbering::Era>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute {
    pub link: Option<String>,
    pub state: TopicState,
    pub writes: Arc<str>,
    pub reads: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRoute {
    pub link: Option<String>,
    pub cluster: Arc<str>,
}

/// One consistent view of every route.
#[derive(Debug, Clone)]
pub struct Routes {
    topics: HashMap<String, TopicRoute>,
    groups: HashMap<String, GroupRoute>,
    default_cluster: Arc<str>,
    /// Bumped on every change, so sessions can tell their fetch sessions
    /// were established under older routes.
    pub generation: u64,
    /// True while every topic and group routes to the default cluster: the
    /// hot path then needs no per-topic decision at all.
    all_default: bool,
    /// True while some topic mirrors: its writes are watched for bypasses.
    any_mirroring: bool,
}

impl Routes {
    pub fn default_cluster(&self) -> &Arc<str> {
        &self.default_cluster
    }

    pub fn topic(&self, name: &str) -> Option<&TopicRoute> {
        self.topics.get(name)
    }

    pub fn writes(&self, topic: &str) -> &Arc<str> {
        self.topics
            .get(topic)
            .map_or(&self.default_cluster, |r| &r.writes)
    }

    pub fn reads(&self, topic: &str) -> &Arc<str> {
        self.topics
            .get(topic)
            .map_or(&self.default_cluster, |r| &r.reads)
    }

    pub fn group(&self, group: &str) -> &Arc<str> {
        self.groups
            .get(group)
            .map_or(&self.default_cluster, |r| &r.cluster)
    }

    /// Whether every route names the default cluster.
    pub fn all_default(&self) -> bool {
        self.all_default
    }

    /// Whether some topic is mirroring.
    pub fn any_mirroring(&self) -> bool {
        self.any_mirroring
    }

    /// Clusters that serve at least one topic's reads, default first.
    pub fn read_clusters(&self) -> Vec<Arc<str>> {
        let mut clusters = vec![self.default_cluster.clone()];
        for route in self.topics.values() {
            if !clusters.contains(&route.reads) {
                clusters.push(route.reads.clone());
            }
        }
        clusters
    }

    pub fn topics(&self) -> BTreeMap<&str, &TopicRoute> {
        self.topics.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }

    pub fn groups(&self) -> BTreeMap<&str, &GroupRoute> {
        self.groups.iter().map(|(k, v)| (k.as_str(), v)).collect()
    }

    fn refresh_all_default(&mut self) {
        let d = &self.default_cluster;
        self.all_default = self
            .topics
            .values()
            .all(|r| r.writes == *d && r.reads == *d)
            && self.groups.values().all(|g| g.cluster == *d);
        self.any_mirroring = self.topics.values().any(|r| r.state.copied());
    }
}

/// The live route table.
pub struct RouteTable {
    /// Readers (every request) take a snapshot under this lock for the
    /// time of one Arc clone; no writer holds it while touching the disk.
    current: RwLock<Arc<Routes>>,
    /// Serializes writers: each builds on the table the last one left.
    changing: Mutex<()>,
    state: Arc<StateStore>,
    clusters: Vec<Arc<str>>,
}

impl RouteTable {
    /// Builds the table from persisted routes, adding topics and groups that
    /// links name but the state does not know yet (they start on the link's
    /// source). Persisted routes always win: a restart never undoes a flip.
    pub fn load(config: &Config, state: Arc<StateStore>) -> Result<RouteTable> {
        let clusters: Vec<Arc<str>> = config
            .clusters
            .keys()
            .map(|c| Arc::from(c.as_str()))
            .collect();
        let cluster = |name: &str| -> Result<Arc<str>> {
            clusters.iter().find(|c| &***c == name).cloned().ok_or_else(|| {
                Error::klink(
                    Kind::Config,
                    format!(
                        "state file {} routes to cluster `{name}`, which the config does not define",
                        state.path().display()
                    ),
                )
            })
        };
        let persisted = state.snapshot();
        let mut topics = HashMap::new();
        for (name, r) in &persisted.topics {
            // A promotion cut short by a crash: its flip (routes and
            // `promoted` together) never happened, so the routes are the
            // old ones; the topic mirrors again and can be promoted anew.
            let state = match r.state {
                TopicState::Promoting => {
                    tracing::warn!(topic = %name, "a promotion was cut short (klink stopped during it); the topic is mirroring again");
                    TopicState::Mirroring
                }
                // Likewise: its flip back never happened.
                TopicState::RollingBack => {
                    tracing::warn!(topic = %name, "a rollback was cut short (klink stopped during it); the topic is promoted again");
                    TopicState::Promoted
                }
                other => other,
            };
            let route = TopicRoute {
                link: r.link.clone(),
                state,
                writes: cluster(&r.writes)?,
                reads: cluster(&r.reads)?,
            };
            topics.insert(name.clone(), route);
        }
        let mut groups = HashMap::new();
        for (name, g) in &persisted.groups {
            let route = GroupRoute {
                link: g.link.clone(),
                cluster: cluster(&g.route)?,
            };
            groups.insert(name.clone(), route);
        }
        for link in &config.links {
            let source = cluster(&link.source)?;
            for topic in &link.topics {
                topics.entry(topic.clone()).or_insert_with(|| TopicRoute {
                    link: Some(link.id.clone()),
                    state: TopicState::Source,
                    writes: source.clone(),
                    reads: source.clone(),
                });
            }
            for group in &link.groups {
                groups.entry(group.clone()).or_insert_with(|| GroupRoute {
                    link: Some(link.id.clone()),
                    cluster: source.clone(),
                });
            }
        }
        let mut routes = Routes {
            topics,
            groups,
            default_cluster: cluster(&config.proxy.default_cluster)?,
            generation: 0,
            all_default: true,
            any_mirroring: false,
        };
        routes.refresh_all_default();
        let table = RouteTable {
            current: RwLock::new(Arc::new(routes.clone())),
            changing: Mutex::new(()),
            state,
            clusters,
        };
        table.persist(&routes, |_| {})?;
        Ok(table)
    }

    pub fn snapshot(&self) -> Arc<Routes> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn cluster(&self, name: &str) -> Result<Arc<str>> {
        self.clusters
            .iter()
            .find(|c| &***c == name)
            .cloned()
            .ok_or_else(|| Error::client(Kind::Config, format!("unknown cluster `{name}`")))
    }

    /// Changes a topic's routes; `None` keeps that side as it is. The change
    /// is durable before it applies to any request.
    pub fn route_topic(
        &self,
        topic: &str,
        writes: Option<&str>,
        reads: Option<&str>,
    ) -> Result<TopicRoute> {
        self.route_topic_applied(topic, writes, reads)
            .map(|applied| applied.value)
    }

    /// As [`RouteTable::route_topic`], saying whether the change is safe from
    /// a power loss (for the operator who made it).
    pub fn route_topic_applied(
        &self,
        topic: &str,
        writes: Option<&str>,
        reads: Option<&str>,
    ) -> Result<Applied<TopicRoute>> {
        let writes = writes.map(|c| self.cluster(c)).transpose()?;
        let reads = reads.map(|c| self.cluster(c)).transpose()?;
        self.change(|routes| {
            let route = routes.topics.get_mut(topic).ok_or_else(|| {
                Error::client(
                    Kind::Config,
                    format!("unknown topic `{topic}`: no link names it"),
                )
            })?;
            if let Some(w) = writes {
                route.writes = w;
            }
            if let Some(r) = reads {
                route.reads = r;
            }
            Ok(route.clone())
        })
    }

    /// Moves a topic to another migration state (the mirror and the
    /// cutover drive this); durable before anyone sees it.
    pub fn set_state(&self, topic: &str, state: TopicState) -> Result<()> {
        self.change(|routes| {
            let route = routes.topics.get_mut(topic).ok_or_else(|| {
                Error::klink(
                    Kind::Config,
                    format!("unknown topic `{topic}`: no link names it"),
                )
            })?;
            route.state = state;
            Ok(())
        })
        .map(|applied| applied.value)
    }

    /// Moves topics' reads and writes, and `groups`, to `to` and the
    /// topics' state to `state` in one durable change: a crash leaves the
    /// old routes or the new, never a mix (the cutover's flip). `points`
    /// (per topic, per partition: where both clusters held the same
    /// records, and the client numbering's eras with the one the flip
    /// starts) go into the mirrors' records in the same change, so the
    /// copy that starts after the flip knows where, and clients' offsets
    /// keep their meaning.
    pub fn move_topics(
        &self,
        topics: &[String],
        groups: &[String],
        to: &str,
        state: TopicState,
        points: &BTreeMap<String, BTreeMap<i32, FlipPoint>>,
    ) -> Result<()> {
        let to = self.cluster(to)?;
        let also = |s: &mut crate::state::PersistedState| {
            for (topic, points) in points {
                if let Some(mirror) = s.mirrors.get_mut(topic) {
                    for (&partition, point) in points {
                        mirror.synced.insert(partition, point.synced);
                        mirror.eras.insert(partition, point.eras.clone());
                    }
                }
            }
        };
        self.change_with(also, |routes| {
            for group in groups {
                let route = routes.groups.get_mut(group).ok_or_else(|| {
                    Error::klink(
                        Kind::Config,
                        format!("unknown group `{group}`: no link names it"),
                    )
                })?;
                route.cluster = to.clone();
            }
            for topic in topics {
                let route = routes.topics.get_mut(topic).ok_or_else(|| {
                    Error::klink(
                        Kind::Config,
                        format!("unknown topic `{topic}`: no link names it"),
                    )
                })?;
                route.writes = to.clone();
                route.reads = to.clone();
                route.state = state;
            }
            Ok(())
        })
        .map(|applied| applied.value)
    }

    /// Joins `groups` to link `link` (a promotion's `--group`): from then
    /// on they move with its topics. Each must be coordinated by `at`
    /// (where the topics are) and belong to no other link.
    pub fn join_groups(&self, link: &str, groups: &[String], at: &str) -> Result<()> {
        let at = self.cluster(at)?;
        self.change(|routes| {
            for group in groups {
                let now = routes.group(group).clone();
                match routes.groups.get(group).and_then(|r| r.link.clone()) {
                    Some(theirs) if theirs == link => continue,
                    Some(theirs) => {
                        return Err(Error::client(
                            Kind::Config,
                            format!("group `{group}` belongs to link `{theirs}`"),
                        ));
                    }
                    None if now != at => {
                        return Err(Error::client(
                            Kind::Config,
                            format!(
                                "group `{group}` is coordinated by `{now}`, not `{at}` where the topics are"
                            ),
                        ));
                    }
                    None => {}
                }
                routes.groups.insert(
                    group.clone(),
                    GroupRoute {
                        link: Some(link.to_string()),
                        cluster: at.clone(),
                    },
                );
            }
            Ok(())
        })
        .map(|applied| applied.value)
    }

    pub fn route_group(&self, group: &str, to: &str) -> Result<GroupRoute> {
        self.route_group_applied(group, to)
            .map(|applied| applied.value)
    }

    /// As [`RouteTable::route_group`], saying whether the change is safe
    /// from a power loss.
    pub fn route_group_applied(&self, group: &str, to: &str) -> Result<Applied<GroupRoute>> {
        let to = self.cluster(to)?;
        self.change(|routes| {
            let route = routes.groups.get_mut(group).ok_or_else(|| {
                Error::client(
                    Kind::Config,
                    format!("unknown group `{group}`: no link names it"),
                )
            })?;
            route.cluster = to;
            Ok(route.clone())
        })
    }

    fn change<T>(&self, edit: impl FnOnce(&mut Routes) -> Result<T>) -> Result<Applied<T>> {
        self.change_with(|_| {}, edit)
    }

    /// As `change`, with `also` applied to the persisted state in the same
    /// write.
    fn change_with<T>(
        &self,
        also: impl FnOnce(&mut crate::state::PersistedState),
        edit: impl FnOnce(&mut Routes) -> Result<T>,
    ) -> Result<Applied<T>> {
        // Writers take turns; readers keep the old snapshot, unblocked,
        // until the new table is durable and swapped in.
        let _turn = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = (*self.snapshot()).clone();
        let value = edit(&mut next)?;
        next.generation += 1;
        next.refresh_all_default();
        let applied = self.persist(&next, also)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(applied.map(|()| value))
    }

    fn persist(
        &self,
        routes: &Routes,
        also: impl FnOnce(&mut crate::state::PersistedState),
    ) -> Result<Applied<()>> {
        self.state.apply(|s| {
            also(s);
            s.topics = routes
                .topics
                .iter()
                .map(|(name, r)| {
                    let record = TopicRouteRecord {
                        link: r.link.clone(),
                        state: r.state,
                        writes: r.writes.to_string(),
                        reads: r.reads.to_string(),
                    };
                    (name.clone(), record)
                })
                .collect();
            s.groups = routes
                .groups
                .iter()
                .map(|(name, g)| {
                    let record = GroupRouteRecord {
                        link: g.link.clone(),
                        route: g.cluster.to_string(),
                    };
                    (name.clone(), record)
                })
                .collect();
        })
    }
}

#[cfg(test)]
mod tests;
