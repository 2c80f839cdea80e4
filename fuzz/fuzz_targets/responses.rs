//! Every response klink rewrites (Metadata, FindCoordinator,
//! DescribeCluster, Produce and Fetch with their KIP-951 fields, the Fetch
//! scanner and its batches' renumbering) at every version, with any body,
//! rewritten for either cluster of a two-cluster klink.
#![no_main]

#[path = "setup.rs"]
mod setup;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::ApiKey;
use libfuzzer_sys::fuzz_target;

use klink::rewrite::{BrokerView, Rewrite};
use klink::wire::Frame;

const APIS: [ApiKey; 5] = [
    ApiKey::Metadata,
    ApiKey::FindCoordinator,
    ApiKey::DescribeCluster,
    ApiKey::Produce,
    ApiKey::Fetch,
];

fuzz_target!(|data: &[u8]| {
    let [api, version, cluster, body @ ..] = data else {
        return;
    };
    // A byte that names an API (and a version) is taken as it is, so the
    // captured frames seed the corpus; any other picks one.
    let api = APIS
        .into_iter()
        .find(|a| *a as i16 == i16::from(*api))
        .unwrap_or(APIS[usize::from(*api) % APIS.len()]);
    let range = api.valid_versions();
    let version = i16::from(*version);
    let version = if (range.min..=range.max).contains(&version) {
        version
    } else {
        range.min + version % (range.max - range.min + 1).max(1)
    };
    let mut framed = BytesMut::new();
    framed.put_i32(body.len() as i32 + 4);
    framed.put_i32(7); // correlation id
    framed.extend_from_slice(body);
    let frame = Frame::from_prefixed(framed.freeze());
    let Ok(Some(rewrite)) = Rewrite::decode(api, version, frame) else {
        return;
    };
    let _ = rewrite.announced();
    let s = &*setup::SETUP;
    let view = BrokerView {
        registry: &s.registry,
        cluster: if cluster % 2 == 0 { "source" } else { "target" },
        catalog: Some(&*s.catalog),
        cluster_id: Some("fuzz"),
    };
    let _ = rewrite.apply_segments(&view);
});
