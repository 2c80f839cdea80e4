use std::path::Path;

use super::*;

fn config() -> Config {
    Config::parse(
        Path::new("klink.toml"),
        r#"
[proxy]
listen = "127.0.0.1:9092"
advertised_host = "127.0.0.1"
broker_ports_start = 9100
[clusters.source]
bootstrap = "127.0.0.1:19092"
[clusters.target]
bootstrap = "127.0.0.1:29092"
[[links]]
id = "move"
source = "source"
target = "target"
topics = ["orders", "payments"]
groups = ["billing"]
"#,
    )
    .expect("config")
}

/// The route table of `config()` as the state in `dir` has it (a restart
/// reads it again).
fn load(dir: &std::path::Path) -> RouteTable {
    let state = Arc::new(StateStore::open(dir).expect("state"));
    RouteTable::load(&config(), state).expect("load")
}

#[test]
fn a_promotion_cut_short_by_a_crash_leaves_the_old_routes_and_a_flip_the_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let load = || load(dir.path());
    let table = load();
    table
        .set_state("orders", TopicState::Promoting)
        .expect("promoting");
    // klink dies here: on restart the topic mirrors again, on the
    // source.
    let routes = load().snapshot();
    let orders = routes.topic("orders").expect("orders");
    assert_eq!(orders.state, TopicState::Mirroring);
    assert_eq!((&*orders.writes, &*orders.reads), ("source", "source"));
    assert!(routes.any_mirroring());
    // The flip moves routes, groups and state in one change.
    let table = load();
    table
        .move_topics(
            &["orders".to_string()],
            &["billing".to_string()],
            "target",
            TopicState::Promoted,
            &BTreeMap::new(),
        )
        .expect("flip");
    let routes = load().snapshot();
    let orders = routes.topic("orders").expect("orders");
    assert_eq!(orders.state, TopicState::Promoted);
    assert_eq!((&*orders.writes, &*orders.reads), ("target", "target"));
    assert_eq!(&**routes.group("billing"), "target");
    assert!(
        table
            .move_topics(
                &["payments".to_string()],
                &["nobody".to_string()],
                "target",
                TopicState::Promoted,
                &BTreeMap::new(),
            )
            .is_err(),
        "an unknown group changes nothing"
    );
}

#[test]
fn a_group_named_at_a_promotion_joins_the_link_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let load = || load(dir.path());
    let table = load();
    table
        .join_groups("move", &["audit".to_string()], "source")
        .expect("joined");
    // Again: already the link's, nothing to say.
    table
        .join_groups("move", &["audit".to_string()], "source")
        .expect("joined again");
    let routes = load().snapshot();
    let audit = routes.groups().get("audit").map(|g| (*g).clone());
    assert_eq!(audit.as_ref().and_then(|g| g.link.as_deref()), Some("move"));
    assert_eq!(&**routes.group("audit"), "source");
    // Not where the topics are: refused, nothing changes.
    let refused = table
        .join_groups("move", &["elsewhere".to_string()], "target")
        .expect_err("coordinated by the source");
    assert!(
        refused.context.contains("coordinated by `source`"),
        "{refused:?}"
    );
    assert!(!load().snapshot().groups().contains_key("elsewhere"));
    let refused = table
        .join_groups("other", &["billing".to_string()], "source")
        .expect_err("billing is move's");
    assert!(
        refused.context.contains("belongs to link `move`"),
        "{refused:?}"
    );
}

#[test]
fn link_topics_start_on_the_source_and_flips_persist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = Arc::new(StateStore::open(dir.path()).expect("state"));
    let table = RouteTable::load(&config(), state).expect("load");
    let routes = table.snapshot();
    assert_eq!(&**routes.writes("orders"), "source");
    assert_eq!(&**routes.reads("unlinked"), "source");
    assert!(routes.all_default());

    table
        .route_topic("orders", Some("target"), None)
        .expect("route");
    table.route_group("billing", "target").expect("route group");
    let routes = table.snapshot();
    assert_eq!(&**routes.writes("orders"), "target");
    assert_eq!(&**routes.reads("orders"), "source");
    assert_eq!(&**routes.group("billing"), "target");
    assert!(!routes.all_default());
    assert_eq!(routes.generation, 2);

    // A restart restores the flips, whatever the config says.
    let state = Arc::new(StateStore::open(dir.path()).expect("state"));
    let reloaded = RouteTable::load(&config(), state)
        .expect("reload")
        .snapshot();
    assert_eq!(&**reloaded.writes("orders"), "target");
    assert_eq!(&**reloaded.group("billing"), "target");
    assert_eq!(reloaded.read_clusters().len(), 1);
}

#[test]
fn bad_requests_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = Arc::new(StateStore::open(dir.path()).expect("state"));
    let table = RouteTable::load(&config(), state.clone()).expect("load");
    let before = state.snapshot();
    assert!(table.route_topic("nosuch", Some("target"), None).is_err());
    assert!(table.route_topic("orders", Some("nowhere"), None).is_err());
    assert!(table.route_group("nosuch", "target").is_err());
    assert_eq!(state.snapshot(), before);
    assert_eq!(table.snapshot().generation, 0);
}

#[test]
fn state_naming_an_unknown_cluster_refuses_to_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = Arc::new(StateStore::open(dir.path()).expect("state"));
    RouteTable::load(&config(), state.clone()).expect("load");
    state
        .update(|s| {
            if let Some(r) = s.topics.get_mut("orders") {
                r.writes = "gone".into();
            }
        })
        .expect("update");
    let err = RouteTable::load(&config(), state).err().expect("refused");
    assert!(err.to_string().contains("gone"), "{err}");
}

#[test]
fn readers_never_wait_for_a_change_being_written() {
    // The old change held the readers' lock through the fsync: the
    // snapshot below then waited for the write it is not part of.
    use std::sync::Barrier;
    use std::time::Duration;

    let dir = tempfile::tempdir().expect("tempdir");
    let state = Arc::new(StateStore::open(dir.path()).expect("state"));
    let table = Arc::new(RouteTable::load(&config(), state.clone()).expect("load"));
    let hold = Arc::new((Barrier::new(2), Barrier::new(2)));
    state.inject(Some(crate::state::Fault::Hold(hold.clone())));
    let writer = {
        let table = table.clone();
        std::thread::spawn(move || table.route_topic("orders", Some("target"), None))
    };
    // The writer is now inside the state write, and stays there.
    hold.0.wait();
    let (seen, during) = std::sync::mpsc::channel();
    let reader = {
        let table = table.clone();
        std::thread::spawn(move || {
            let _ = seen.send(table.snapshot().generation);
        })
    };
    let during = during.recv_timeout(Duration::from_secs(10));
    hold.1.wait();
    let written = writer.join().expect("writer thread");
    reader.join().expect("reader thread");
    assert_eq!(
        during,
        Ok(0),
        "a snapshot during the write returns the old table at once"
    );
    written.expect("route");
    let after = table.snapshot();
    assert_eq!(after.generation, 1);
    assert_eq!(&**after.writes("orders"), "target");
    let on_disk = StateStore::open(dir.path()).expect("reopen").snapshot();
    assert_eq!(on_disk.topics["orders"].writes, "target");
}

#[test]
fn a_route_change_reports_a_failed_directory_fsync_as_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = Arc::new(StateStore::open(dir.path()).expect("state"));
    let table = RouteTable::load(&config(), state.clone()).expect("load");
    state.inject(Some(crate::state::Fault::DirectorySync));
    let applied = table
        .route_topic_applied("orders", Some("target"), None)
        .expect("applied");
    assert_eq!(&*applied.value.writes, "target");
    assert!(applied.warning.is_some_and(|w| w.contains("power loss")));
    assert_eq!(&**table.snapshot().writes("orders"), "target");
    state.inject(None);
    let applied = table
        .route_group_applied("billing", "target")
        .expect("applied");
    assert_eq!(applied.warning, None, "the next change is not blamed");
    state.inject(Some(crate::state::Fault::BeforeRename));
    assert!(table.route_group("billing", "source").is_err());
    assert_eq!(&**table.snapshot().group("billing"), "target");
    assert_eq!(table.snapshot().generation, 2);
}
