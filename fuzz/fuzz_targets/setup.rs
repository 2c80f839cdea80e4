//! What the plan and rewrite targets share: a two-cluster klink whose
//! routes and offsets are not the identity, so translations run too.
// Each target uses its part of this.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, LazyLock};

use klink::broker::{BrokerRegistry, UpstreamBroker};
use klink::config::Config;
use klink::route::{Catalog, RouteTable};
use klink::state::StateStore;

pub struct Setup {
    _dir: tempfile::TempDir,
    pub routes: RouteTable,
    pub catalog: Arc<Catalog>,
    pub registry: BrokerRegistry,
    pub runtime: tokio::runtime::Runtime,
}

pub const CONFIG: &str = "[proxy]\nlisten = \"127.0.0.1:9092\"\nadvertised_host = \"127.0.0.1\"\nbroker_ports_start = 9100\n\
     [clusters.source]\nbootstrap = \"127.0.0.1:1\"\n[clusters.target]\nbootstrap = \"127.0.0.1:2\"\n\
     [[links]]\nid = \"m\"\nsource = \"source\"\ntarget = \"target\"\ntopics = [\"orders\", \"payments\"]\ngroups = [\"billing\"]\n";

// One per process: libFuzzer runs every input in the same process.
pub static SETUP: LazyLock<Setup> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::parse(Path::new("klink.toml"), CONFIG).expect("config");
    let state = Arc::new(StateStore::open(dir.path()).expect("state"));
    let routes = RouteTable::load(&config, state.clone()).expect("routes");
    // Reads of orders and the group on the target; payments' writes too.
    routes
        .route_topic("orders", None, Some("target"))
        .expect("route");
    routes
        .route_topic("payments", Some("target"), None)
        .expect("route");
    routes
        .route_group("billing", "target")
        .expect("route group");
    let catalog = Arc::new(Catalog::load(state.clone()));
    // A `latest` link's map: the source's 100.. are the target's 0..
    catalog
        .numbering
        .register("orders", Arc::from("source"), Arc::from("target"));
    let mut map = klink::mirror::OffsetMap::default();
    map.append(100, 149, 0).expect("run");
    for partition in 0..3 {
        catalog.numbering.publish_map("orders", partition, &map);
    }
    let registry = BrokerRegistry::load(state, "127.0.0.1".into(), 9100);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for cluster in ["source", "target"] {
        let cluster: Arc<str> = Arc::from(cluster);
        let brokers: Vec<UpstreamBroker> = (1..=3)
            .map(|id| UpstreamBroker {
                node_id: id,
                host: format!("10.0.0.{id}"),
                port: 9092,
            })
            .collect();
        runtime
            .block_on(registry.observe(&cluster, &brokers))
            .expect("observe");
        registry.note_members(&cluster, &brokers);
    }
    Setup {
        _dir: dir,
        routes,
        catalog,
        registry,
        runtime,
    }
});

/// Leaders: partition p of any topic is led by broker 1 + p % 3, for the
/// first 8 partitions.
pub struct Leaders;

impl klink::split::Cluster for Leaders {
    async fn leader(&self, _cluster: &Arc<str>, _topic: &str, partition: i32) -> Option<i32> {
        (0..8).contains(&partition).then_some(1 + partition % 3)
    }
}
