//! Every request the session plans: any API klink routes, at any version
//! it offers, with any body, decoded and planned against a two-cluster
//! klink whose routes and offsets are not the identity (Produce split,
//! Fetch split and sessions, groups, admin, offsets, transactions). The
//! plan's merge then runs on answers made of the remaining bytes.
#![no_main]

#[path = "setup.rs"]
mod setup;

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;
use libfuzzer_sys::fuzz_target;

use klink::split::{Context, Destination, FetchSessions, PartAnswer, PartFailure, Plan};
use klink::wire::Frame;

/// The APIs the session plans with something other than a plain forward.
const APIS: [ApiKey; 24] = [
    ApiKey::Metadata,
    ApiKey::Produce,
    ApiKey::Fetch,
    ApiKey::ListOffsets,
    ApiKey::OffsetForLeaderEpoch,
    ApiKey::DeleteRecords,
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::DescribeGroups,
    ApiKey::DeleteGroups,
    ApiKey::OffsetDelete,
    ApiKey::ListGroups,
    ApiKey::CreateTopics,
    ApiKey::DeleteTopics,
    ApiKey::CreatePartitions,
    ApiKey::DescribeConfigs,
    ApiKey::IncrementalAlterConfigs,
    ApiKey::TxnOffsetCommit,
    ApiKey::InitProducerId,
];

fuzz_target!(|data: &[u8]| {
    let [api, version, home, cut, rest @ ..] = data else {
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
    // The request: a header klink could have parsed, then fuzzed body.
    let cut = usize::from(*cut).min(rest.len());
    let (body, answers) = rest.split_at(rest.len() - cut);
    let mut payload = BytesMut::new();
    payload.put_i16(api as i16);
    payload.put_i16(version);
    payload.put_i32(7);
    if api.request_header_version(version) >= 1 {
        payload.put_i16(-1); // no client id
    }
    if api.request_header_version(version) >= 2 {
        payload.put_u8(0); // no tagged fields
    }
    payload.extend_from_slice(body);
    let payload: Bytes = payload.freeze();

    let s = &*setup::SETUP;
    let routes = s.routes.snapshot();
    let leaders = setup::Leaders;
    let home = if home % 2 == 0 {
        Destination::Any(Arc::from("source"))
    } else {
        Destination::Broker {
            cluster: Arc::from("target"),
            upstream_id: 1,
        }
    };
    let cx = Context {
        cluster: &leaders,
        routes: &routes,
        catalog: &s.catalog,
        home: &home,
        api,
        version,
        payload: &payload,
    };
    let mut sessions = FetchSessions::default();
    let Ok(header) = klink::wire::RequestHeader::parse(&payload) else {
        return;
    };
    let acks = if api == ApiKey::Produce {
        klink::wire::produce_acks(&payload, &header).unwrap_or(1)
    } else {
        1
    };
    let Ok(plan) = s
        .runtime
        .block_on(klink::split::plan_request(&cx, acks, &mut sessions))
    else {
        return;
    };
    if let Plan::Split {
        parts,
        merge: Some(merge),
    } = plan
    {
        // Each part answered with (a length-prefixed slice of) the rest,
        // or lost: the merge must answer or fail, never panic.
        let mut chunks = answers.chunks(answers.len() / parts.len().max(1) + 1);
        let answered = parts
            .iter()
            .map(|_| match chunks.next() {
                Some(chunk) if chunk.len() % 3 != 0 => {
                    let mut framed = BytesMut::new();
                    framed.put_i32(chunk.len() as i32);
                    framed.extend_from_slice(chunk);
                    PartAnswer::Answered(Frame::from_prefixed(framed.freeze()))
                }
                _ => PartAnswer::Failed(PartFailure::Lost),
            })
            .collect();
        let _ = merge(answered);
    }
});
