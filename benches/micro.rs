//! Micro benchmarks of klink's per-request work, on frames captured from
//! librdkafka talking to tansu (fixtures/frames, made by
//! scripts/capture-fixtures.py):
//!
//!   cargo bench --bench micro
//!
//! Each prints time per operation; the end-to-end ratios against a direct
//! connection and an L4 relay come from benches/e2e.sh.

use std::path::Path;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, RequestHeader};
use kafka_protocol::protocol::Decodable;
use tokio_util::codec::Decoder;

use klink::batch;
use klink::broker::{BrokerRegistry, UpstreamBroker};
use klink::config::Config;
use klink::rewrite::{BrokerView, Rewrite};
use klink::route::{Catalog, RouteTable};
use klink::split::{self, Context, Destination, Plan};
use klink::state::StateStore;
use klink::wire::{Frame, FrameCodec, RequestHeader as KlinkHeader, produce_acks};

fn fixture(name: &str) -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/frames")
        .join(name);
    Bytes::from(
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (run scripts/capture-fixtures.py)", path.display())
        }),
    )
}

/// Leaders for the split benchmark: partition p is led by broker 10 + p.
struct Leaders;

impl split::Cluster for Leaders {
    async fn leader(&self, _cluster: &Arc<str>, _topic: &str, partition: i32) -> Option<i32> {
        Some(10 + partition)
    }
}

struct World {
    _dir: tempfile::TempDir,
    routes: RouteTable,
    catalog: Arc<Catalog>,
    registry: BrokerRegistry,
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::parse(
        Path::new("bench.toml"),
        "[proxy]\nlisten = \"127.0.0.1:9092\"\nadvertised_host = \"127.0.0.1\"\nbroker_ports_start = 9100\n\
         [clusters.source]\nbootstrap = \"127.0.0.1:1\"\n[clusters.target]\nbootstrap = \"127.0.0.1:2\"\n\
         [[links]]\nid = \"bench\"\nsource = \"source\"\ntarget = \"target\"\ntopics = [\"bench-0\", \"bench-1\", \"bench-2\"]\n",
    )
    .expect("config");
    let state = Arc::new(StateStore::open(dir.path()).expect("state"));
    let routes = RouteTable::load(&config, state.clone()).expect("routes");
    let catalog = Arc::new(Catalog::load(state.clone()));
    let registry = BrokerRegistry::load(state, "127.0.0.1".into(), 9100);
    let source: Arc<str> = Arc::from("source");
    let brokers = [UpstreamBroker {
        node_id: 111,
        host: "127.0.0.1".into(),
        port: 19092,
    }];
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(registry.observe(&source, &brokers))
        .expect("observe");
    World {
        _dir: dir,
        routes,
        catalog,
        registry,
    }
}

fn frame_decode(c: &mut Criterion) {
    let produce = fixture("produce-v10-request.bin");
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(produce.len() as u64));
    group.bench_function("decode produce request", |b| {
        let mut codec = FrameCodec::requests(100 << 20);
        b.iter(|| {
            let mut buf = BytesMut::from(&produce[..]);
            codec.decode(&mut buf).expect("frame").expect("whole")
        })
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let world = world();
    let produce = fixture("produce-v10-request.bin");
    let payload = produce.slice(4..);
    let mut group = c.benchmark_group("routing");
    group.bench_function("decision on the fast path (header, acks, routes)", |b| {
        b.iter(|| {
            let header = KlinkHeader::parse(&payload).expect("header");
            let acks = produce_acks(&payload, &header).expect("acks");
            let routes = world.routes.snapshot();
            (acks, routes.all_default())
        })
    });
    for topic in ["bench-0", "bench-1", "bench-2"] {
        world
            .routes
            .route_topic(topic, Some("target"), None)
            .expect("route");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let home = Destination::Broker {
        cluster: Arc::from("source"),
        upstream_id: 111,
    };
    let routes = world.routes.snapshot();
    let cx = Context {
        cluster: &Leaders,
        routes: &routes,
        catalog: &world.catalog,
        home: &home,
        api: ApiKey::Produce,
        version: 10,
        payload: &payload,
    };
    group.bench_function("produce split across clusters (plan)", |b| {
        b.iter(|| {
            runtime
                .block_on(split::plan_produce(&cx, -1))
                .expect("plan")
        })
    });
    group.bench_function("produce split and merge", |b| {
        b.iter(|| {
            let Plan::Split { parts, merge } = runtime
                .block_on(split::plan_produce(&cx, -1))
                .expect("plan")
            else {
                panic!("mixed routes split");
            };
            let answers = parts
                .iter()
                .map(|part| split::PartAnswer::Answered(answer(part)))
                .collect();
            (merge.expect("merge"))(answers).expect("merged")
        })
    });
    group.finish();
}

/// What a broker would answer to one part of a split Produce.
fn answer(part: &split::Part) -> Frame {
    let mut payload = part.frame.slice(4..);
    let _ = RequestHeader::decode(&mut payload, ApiKey::Produce.request_header_version(10))
        .expect("header");
    let request = ProduceRequest::decode(&mut payload, 10).expect("request");
    let response = ProduceResponse::default().with_responses(
        request
            .topic_data
            .iter()
            .map(|t| {
                TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(
                        t.partition_data
                            .iter()
                            .map(|p| PartitionProduceResponse::default().with_index(p.index))
                            .collect(),
                    )
            })
            .collect(),
    );
    Frame::from_prefixed(split::encode_response(ApiKey::Produce, 10, 1, &response).expect("encode"))
}

fn rewrites(c: &mut Criterion) {
    let world = world();
    let view = BrokerView {
        registry: &world.registry,
        cluster: "source",
        catalog: Some(&*world.catalog),
        cluster_id: Some("bench"),
    };
    let metadata = Frame::from_prefixed(fixture("metadata-v12-response.bin"));
    let fetch = Frame::from_prefixed(fixture("fetch-v16-response.bin"));
    let mut group = c.benchmark_group("rewrite");
    group.bench_function("metadata response", |b| {
        b.iter(|| {
            let rewrite = Rewrite::decode(ApiKey::Metadata, 12, metadata.clone())
                .expect("decode")
                .expect("rewritten");
            rewrite.apply(&view).expect("apply")
        })
    });
    group.throughput(Throughput::Bytes(fetch.len() as u64));
    group.bench_function("fetch response scan", |b| {
        b.iter(|| {
            let rewrite = Rewrite::decode(ApiKey::Fetch, 16, fetch.clone())
                .expect("scan")
                .expect("inspected");
            rewrite.apply(&view).expect("apply")
        })
    });
    group.finish();
}

fn batches(c: &mut Criterion) {
    let produce = fixture("produce-v10-request.bin");
    let mut payload = produce.slice(4..);
    let _ = RequestHeader::decode(&mut payload, ApiKey::Produce.request_header_version(10))
        .expect("header");
    let request = ProduceRequest::decode(&mut payload, 10).expect("request");
    let records = request.topic_data[0].partition_data[0]
        .records
        .clone()
        .expect("records");
    let first = batch::batches(&records).expect("batches")[0].clone();
    let original = records.slice(first);
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Bytes(original.len() as u64));
    group.bench_function("rewrite producer id and CRC-32C", |b| {
        let mut batch = original.to_vec();
        let mut epoch = 0i16;
        b.iter(|| {
            epoch = epoch.wrapping_add(1);
            batch::rewrite_producer(&mut batch, 4242, epoch, 0).expect("rewrite")
        })
    });
    group.finish();
}

criterion_group!(benches, frame_decode, routing, rewrites, batches);
criterion_main!(benches);
