//! Fetch responses, scanned instead of decoded: they carry the records
//! consumers read, so klink walks the structure by lengths without copying
//! or parsing a single record, notes where broker ids sit, and copies the
//! response only when one of them must change.
//!
//! Broker ids in a Fetch response: KIP-392 `preferred_read_replica` (v11+),
//! KIP-951 `current_leader` (tagged, v12+) and `node_endpoints` (top-level
//! tag 0, v16+). tansu 0.6 also sends a top-level tag 0 (an empty endpoint
//! list) at v12-v15, where Kafka defines none; klink drops such a tag.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::NodeEndpoint;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::BrokerView;
use crate::broker::UpstreamBroker;
use crate::wire::{Cursor, CursorError};

const FLEXIBLE_SINCE: i16 = 12;
const TOPIC_IDS_SINCE: i16 = 13;
const NODE_ENDPOINTS_SINCE: i16 = 16;
const NODE_ENDPOINTS_TAG: u64 = 0;
const CURRENT_LEADER_TAG: u64 = 1;

/// Where a Fetch response names brokers, found without decoding records.
#[derive(Debug, Default)]
pub struct FetchScan {
    /// Payload offsets of i32 broker ids (all >= 0 upstream ids).
    broker_ids: Vec<usize>,
    /// Payload offset of the top-level tagged fields (flexible versions).
    top_tags_at: Option<usize>,
    /// The top-level tagged fields: tag and payload range of its data.
    top_tags: Vec<(u64, usize, usize)>,
    /// Decoded KIP-951 endpoints (v16+).
    endpoints: Vec<NodeEndpoint>,
}

impl FetchScan {
    pub fn scan(payload: &[u8], version: i16) -> Result<FetchScan, CursorError> {
        let flexible = version >= FLEXIBLE_SINCE;
        let mut scan = FetchScan::default();
        let mut c = Cursor::new(payload, 0);
        c.skip(4)?; // correlation id
        if flexible {
            c.skip_tagged_fields()?; // response header v1
        }
        c.skip(4)?; // throttle_time_ms
        if version >= 7 {
            c.skip(2 + 4)?; // error_code, session_id
        }
        let topics = c.array_len(flexible)?.unwrap_or(0);
        for _ in 0..topics {
            if version >= TOPIC_IDS_SINCE {
                c.skip(16)?;
            } else {
                c.skip_string_or_bytes(flexible, 2)?;
            }
            let partitions = c.array_len(flexible)?.unwrap_or(0);
            for _ in 0..partitions {
                // partition_index, error_code, high_watermark, last_stable_offset
                c.skip(4 + 2 + 8 + 8)?;
                if version >= 5 {
                    c.skip(8)?; // log_start_offset
                }
                let aborted = c.array_len(flexible)?.unwrap_or(0);
                for _ in 0..aborted {
                    c.skip(8 + 8)?;
                    if flexible {
                        c.skip_tagged_fields()?;
                    }
                }
                if version >= 11 {
                    let at = c.position();
                    if c.i32()? >= 0 {
                        scan.broker_ids.push(at);
                    }
                }
                c.skip_string_or_bytes(flexible, 4)?; // records
                if flexible {
                    let mut leader_at = None;
                    c.tagged_fields(|tag, start, end| {
                        if tag == CURRENT_LEADER_TAG && end - start >= 4 {
                            leader_at = Some(start);
                        }
                    })?;
                    if let Some(at) = leader_at
                        && Cursor::new(payload, at).i32()? >= 0
                    {
                        scan.broker_ids.push(at);
                    }
                }
            }
            if flexible {
                c.skip_tagged_fields()?;
            }
        }
        if flexible {
            scan.top_tags_at = Some(c.position());
            let mut tags = Vec::new();
            c.tagged_fields(|tag, start, end| tags.push((tag, start, end)))?;
            scan.top_tags = tags;
            if version >= NODE_ENDPOINTS_SINCE
                && let Some((_, start, end)) =
                    scan.top_tags.iter().find(|t| t.0 == NODE_ENDPOINTS_TAG)
            {
                scan.endpoints = decode_endpoints(&payload[*start..*end], version)?;
            }
        }
        Ok(scan)
    }

    pub fn announced(&self) -> Vec<UpstreamBroker> {
        self.endpoints
            .iter()
            .map(|e| UpstreamBroker {
                node_id: e.node_id.0,
                host: e.host.to_string(),
                port: e.port,
            })
            .collect()
    }

    /// The rewritten frame as segments that share the original's memory:
    /// unchanged stretches are slices of it, only the length prefix, the
    /// patched ids and the top-level tags are new. `None` when the original
    /// can go as it is. (Copying a megabyte of records to change four bytes
    /// cost more CPU than the rest of the fetch path together.)
    pub fn segments(
        &self,
        frame: &Bytes,
        version: i16,
        view: &BrokerView<'_>,
    ) -> Option<Vec<Bytes>> {
        let foreign_tags = version < NODE_ENDPOINTS_SINCE && !self.top_tags.is_empty();
        let rebuild_tags = !self.endpoints.is_empty() || foreign_tags;
        if self.broker_ids.is_empty() && !rebuild_tags {
            return None;
        }
        let payload = frame.slice(4..);
        let keep = match (rebuild_tags, self.top_tags_at) {
            (true, Some(at)) => at,
            _ => payload.len(),
        };
        let mut segments = Vec::with_capacity(2 * self.broker_ids.len() + 3);
        segments.push(Bytes::new()); // the length prefix, once the rest is known
        let mut ids = self.broker_ids.clone();
        ids.sort_unstable();
        let mut from = 0;
        for at in ids {
            let upstream = i32::from_be_bytes([
                payload[at],
                payload[at + 1],
                payload[at + 2],
                payload[at + 3],
            ]);
            let virtual_id = view.map_id(upstream.into()).0;
            segments.push(payload.slice(from..at));
            segments.push(Bytes::copy_from_slice(&virtual_id.to_be_bytes()));
            from = at + 4;
        }
        segments.push(payload.slice(from..keep));
        if rebuild_tags {
            let mut kept: Vec<(u64, Bytes)> = Vec::new();
            for &(tag, start, end) in &self.top_tags {
                if tag != NODE_ENDPOINTS_TAG {
                    kept.push((tag, payload.slice(start..end)));
                } else if version >= NODE_ENDPOINTS_SINCE {
                    kept.push((tag, encode_endpoints(&self.endpoints, version, view)));
                }
            }
            let mut tags = BytesMut::new();
            put_uvarint(&mut tags, kept.len() as u64);
            for (tag, data) in kept {
                put_uvarint(&mut tags, tag);
                put_uvarint(&mut tags, data.len() as u64);
                tags.put_slice(&data);
            }
            segments.push(tags.freeze());
        }
        let length: usize = segments.iter().map(Bytes::len).sum();
        segments[0] = Bytes::copy_from_slice(&(length as i32).to_be_bytes());
        Some(segments)
    }
}

fn decode_endpoints(data: &[u8], version: i16) -> Result<Vec<NodeEndpoint>, CursorError> {
    let mut c = Cursor::new(data, 0);
    let count = c.array_len(true)?.unwrap_or(0);
    let mut buf = Bytes::copy_from_slice(&data[c.position()..]);
    let mut endpoints = Vec::new();
    for _ in 0..count {
        let endpoint = NodeEndpoint::decode(&mut buf, version)
            .map_err(|_| CursorError("bad node endpoint"))?;
        endpoints.push(endpoint);
    }
    Ok(endpoints)
}

fn encode_endpoints(endpoints: &[NodeEndpoint], version: i16, view: &BrokerView<'_>) -> Bytes {
    let host = StrBytes::from_string(view.host().to_string());
    let rewritten: Vec<NodeEndpoint> = endpoints
        .iter()
        .filter_map(|e| {
            let v = view.virtual_of(e.node_id.0)?;
            Some(
                e.clone()
                    .with_node_id(v.id.into())
                    .with_host(host.clone())
                    .with_port(i32::from(v.port)),
            )
        })
        .collect();
    let mut out = BytesMut::new();
    put_uvarint(&mut out, rewritten.len() as u64 + 1);
    for e in &rewritten {
        // Encoding an endpoint we just built cannot fail; a failure would
        // only shorten the list the client sees.
        if e.encode(&mut out, version).is_err() {
            tracing::error!("encoding a node endpoint failed");
        }
    }
    out.freeze()
}

fn put_uvarint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::fetch_response::{
        FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, FetchResponse, TopicName};

    use super::*;
    use crate::rewrite::Rewrite;
    use crate::rewrite::test_support::*;

    fn response(preferred: i32, leader: i32, endpoints: &[i32]) -> FetchResponse {
        FetchResponse::default()
            .with_responses(vec![
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_static_str("orders")))
                    .with_partitions(vec![
                        PartitionData::default()
                            .with_partition_index(0)
                            .with_preferred_read_replica(BrokerId(preferred))
                            .with_current_leader(
                                LeaderIdAndEpoch::default()
                                    .with_leader_id(BrokerId(leader))
                                    .with_leader_epoch(3),
                            )
                            .with_records(Some(Bytes::from_static(b"records-bytes"))),
                        PartitionData::default()
                            .with_partition_index(1)
                            .with_records(Some(Bytes::from_static(b"more-records"))),
                    ]),
            ])
            .with_node_endpoints(
                endpoints
                    .iter()
                    .map(|id| {
                        NodeEndpoint::default()
                            .with_node_id(BrokerId(*id))
                            .with_host(StrBytes::from_string(format!("10.9.9.{id}")))
                            .with_port(19092)
                    })
                    .collect(),
            )
    }

    #[test]
    fn ids_and_endpoints_become_virtual_at_every_version() {
        let range = ApiKey::Fetch.valid_versions();
        for version in 11..=range.max {
            let upstream = response(2, 1, &[1, 2]);
            let (announced, bytes) = roundtrip(ApiKey::Fetch, version, &upstream);
            assert_no_upstream_address(&bytes);
            let out: FetchResponse = decode(ApiKey::Fetch, version, bytes);
            let partition = &out.responses[0].partitions[0];
            assert_eq!(partition.preferred_read_replica, BrokerId(2), "v{version}");
            assert_eq!(partition.records.as_deref(), Some(&b"records-bytes"[..]));
            assert_eq!(
                out.responses[0].partitions[1].records.as_deref(),
                Some(&b"more-records"[..])
            );
            if version >= 12 {
                assert_eq!(partition.current_leader.leader_id, BrokerId(1));
                assert_eq!(partition.current_leader.leader_epoch, 3);
            }
            if version >= 16 {
                assert_eq!(announced.len(), 2);
                let ports: Vec<i32> = out.node_endpoints.iter().map(|e| e.port).collect();
                assert_eq!(ports, vec![9100, 9101]);
            }
        }
    }

    #[test]
    fn unknown_upstream_ids_become_minus_one() {
        let (_, bytes) = roundtrip(ApiKey::Fetch, 16, &response(7, 7, &[7]));
        let out: FetchResponse = decode(ApiKey::Fetch, 16, bytes);
        let partition = &out.responses[0].partitions[0];
        assert_eq!(partition.preferred_read_replica, BrokerId(-1));
        assert_eq!(partition.current_leader.leader_id, BrokerId(-1));
        assert!(out.node_endpoints.is_empty());
    }

    #[test]
    fn responses_without_broker_names_keep_their_bytes() {
        let (_dir, registry) = registry();
        let view = BrokerView {
            registry: &registry,
            cluster: "source",
            catalog: None,
            cluster_id: None,
        };
        for version in [11, 12, 16, 17] {
            let original = frame(ApiKey::Fetch, version, &response(-1, -1, &[]));
            let rewrite = Rewrite::decode(ApiKey::Fetch, version, original.clone())
                .expect("scan")
                .expect("fetch is inspected");
            assert_eq!(
                &rewrite.apply(&view).expect("apply"),
                original.wire_bytes(),
                "v{version}"
            );
        }
    }

    /// tansu 0.6 sends an empty top-level tag 0 at Fetch v12; Kafka defines
    /// none before v16. klink drops it, and the rest decodes unchanged.
    #[test]
    fn a_foreign_top_level_tag_before_v16_is_dropped() {
        let original = frame(ApiKey::Fetch, 12, &response(-1, -1, &[]));
        let mut bytes = original.wire_bytes().to_vec();
        let last = bytes.len() - 1;
        assert_eq!(bytes[last], 0, "no top-level tags");
        bytes.truncate(last);
        bytes.extend_from_slice(&[1, 0, 1, 1]); // one tag: 0, size 1, empty array
        let length = (bytes.len() - 4) as i32;
        bytes[..4].copy_from_slice(&length.to_be_bytes());
        let (_dir, registry) = registry();
        let view = BrokerView {
            registry: &registry,
            cluster: "source",
            catalog: None,
            cluster_id: None,
        };
        let tansu = crate::wire::Frame::from_prefixed(Bytes::from(bytes));
        let rewrite = Rewrite::decode(ApiKey::Fetch, 12, tansu)
            .expect("scan")
            .expect("inspected");
        assert_eq!(&rewrite.apply(&view).expect("apply"), original.wire_bytes());
    }

    #[test]
    fn segments_share_the_records_instead_of_copying_them() {
        let (_dir, registry) = registry();
        let view = BrokerView {
            registry: &registry,
            cluster: "source",
            catalog: None,
            cluster_id: None,
        };
        let original = frame(ApiKey::Fetch, 16, &response(2, 1, &[1]));
        let bytes = original.wire_bytes();
        let scan = FetchScan::scan(&original.payload(), 16).expect("scan");
        let segments = scan.segments(bytes, 16, &view).expect("rewritten");
        let inside = |s: &Bytes| {
            let start = bytes.as_ptr() as usize;
            (start..start + bytes.len()).contains(&(s.as_ptr() as usize))
        };
        let shared: usize = segments.iter().filter(|s| inside(s)).map(Bytes::len).sum();
        let copied: usize = segments.iter().filter(|s| !inside(s)).map(Bytes::len).sum();
        assert!(
            shared > copied,
            "records stay in the upstream frame: {shared} shared, {copied} new"
        );
        let joined: Bytes = segments.concat().into();
        let out: FetchResponse = decode(ApiKey::Fetch, 16, joined);
        assert_eq!(
            out.responses[0].partitions[0].preferred_read_replica,
            BrokerId(2)
        );
    }

    #[test]
    fn truncated_responses_are_errors() {
        let original = frame(ApiKey::Fetch, 16, &response(1, 1, &[1]));
        let payload = original.payload();
        for cut in [3, 10, payload.len() / 2, payload.len() - 1] {
            assert!(
                FetchScan::scan(&payload[..cut], 16).is_err(),
                "cut at {cut}"
            );
        }
    }
}
