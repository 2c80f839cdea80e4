//! Fetched records in the client's numbering: each batch's base offset
//! and (v2 batches) partition leader epoch rewritten (both sit before the
//! CRC, which covers the batch from its attributes on, so nothing else
//! changes), batches with no client offset left out, and the answer cut
//! before a copy the map does not list yet.

use bytes::{Bytes, BytesMut};

use super::{BatchPlace, View};

/// Base offset (8), batch length (4): the part every record format shares.
const LOG_OVERHEAD: usize = 12;
/// Where a v2 batch keeps its partition leader epoch, its magic byte and
/// its last offset delta.
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const LAST_OFFSET_DELTA_AT: usize = 23;

fn i64_at(bytes: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn i32_at(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// `records` renumbered by `view`. A batch cut off at the end of the
/// answer (the fetch's size limit) is left out: the client fetches it
/// again whole.
pub fn renumber(view: &View, records: &Bytes) -> Bytes {
    let mut out = BytesMut::with_capacity(records.len());
    let mut at = 0;
    while let (Some(base), Some(length)) = (i64_at(records, at), i32_at(records, at + 8)) {
        let Some(end) = usize::try_from(length)
            .ok()
            .and_then(|l| (at + LOG_OVERHEAD).checked_add(l))
            .filter(|&end| end <= records.len())
        else {
            break;
        };
        let batch = &records[at..end];
        // Magic 0 and 1 entries hold one (possibly wrapped) message whose
        // offset is its last.
        let last = match batch.get(MAGIC_AT) {
            Some(2) => {
                i32_at(batch, LAST_OFFSET_DELTA_AT).map(|d| base.saturating_add(i64::from(d)))
            }
            Some(_) => Some(base),
            None => None,
        };
        let Some(last) = last else {
            break;
        };
        match view.place_batch(base, last) {
            BatchPlace::At(client_base) => {
                out.extend_from_slice(&client_base.to_be_bytes());
                let epoch = match (batch.get(MAGIC_AT), i32_at(batch, LEADER_EPOCH_AT)) {
                    (Some(2), Some(epoch)) => Some(view.epochs().to_client(epoch)),
                    _ => None,
                };
                match epoch {
                    Some(epoch) => {
                        out.extend_from_slice(&batch[8..LEADER_EPOCH_AT]);
                        out.extend_from_slice(&epoch.to_be_bytes());
                        out.extend_from_slice(&batch[LEADER_EPOCH_AT + 4..]);
                    }
                    None => out.extend_from_slice(&batch[8..]),
                }
            }
            BatchPlace::Skip => {}
            BatchPlace::NotYet => break,
        }
        at = end;
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::OffsetMap;
    use crate::numbering::Side;

    /// A v2 batch header with `records` offsets from `base` and a body.
    fn batch(base: i64, records: i32, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&base.to_be_bytes());
        let length = (49 - LOG_OVERHEAD + body.len()) as i32;
        b.extend_from_slice(&length.to_be_bytes());
        b.extend_from_slice(&7i32.to_be_bytes()); // partition leader epoch
        b.push(2); // magic
        b.extend_from_slice(&0x1234_5678u32.to_be_bytes()); // crc
        b.extend_from_slice(&0i16.to_be_bytes()); // attributes
        b.extend_from_slice(&(records - 1).to_be_bytes()); // last offset delta
        b.extend_from_slice(&[0; 49 - 27]);
        b.extend_from_slice(body);
        b
    }

    fn latest_link_view() -> View {
        let mut map = OffsetMap::default();
        map.append(100, 109, 0).expect("run");
        map.append(115, 119, 10).expect("run");
        View::build(&[], &map, Side::Target)
    }

    #[test]
    fn base_offsets_move_and_every_other_byte_stays() {
        let view = latest_link_view();
        let mut fetched = batch(0, 10, b"first");
        let second = fetched.len();
        fetched.extend(batch(10, 5, b"second"));
        let out = renumber(&view, &Bytes::from(fetched.clone()));
        assert_eq!(out.len(), fetched.len());
        assert_eq!(i64_at(&out, 0), Some(100));
        assert_eq!(&out[8..second], &fetched[8..second]);
        assert_eq!(i64_at(&out, second), Some(115));
        assert_eq!(&out[second + 8..], &fetched[second + 8..]);
    }

    #[test]
    fn the_answer_stops_before_what_the_map_does_not_list_yet() {
        let view = latest_link_view();
        let mut fetched = batch(10, 5, b"x");
        fetched.extend(batch(15, 3, b"not yet"));
        fetched.extend(batch(18, 3, b"after"));
        let out = renumber(&view, &Bytes::from(fetched));
        assert_eq!(out.len(), 50);
        assert_eq!(i64_at(&out, 0), Some(115));
    }

    #[test]
    fn a_batch_cut_off_by_the_size_limit_is_left_for_the_next_fetch() {
        let view = latest_link_view();
        let mut fetched = batch(0, 10, b"whole");
        let next = batch(10, 5, b"cut");
        fetched.extend_from_slice(&next[..20]);
        let out = renumber(&view, &Bytes::from(fetched));
        assert_eq!(out.len(), 54);
        // Garbage is no reason to panic.
        assert!(renumber(&view, &Bytes::from_static(&[0xff; 40])).is_empty());
        let mut negative = batch(0, 1, b"");
        negative[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(renumber(&view, &Bytes::from(negative)).is_empty());
    }

    #[test]
    fn epochs_move_in_a_real_brokers_batches_and_their_crcs_still_hold() {
        use kafka_protocol::messages::{FetchResponse, ResponseHeader};
        use kafka_protocol::protocol::Decodable;

        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/frames/fetch-v16-response.bin");
        let mut frame = Bytes::from(std::fs::read(path).expect("captured frame"));
        let _length = frame.split_to(4);
        ResponseHeader::decode(&mut frame, 1).expect("header");
        let response = FetchResponse::decode(&mut frame, 16).expect("fetch v16");
        // Offsets the cluster's own, epochs shifted by 5.
        let shifted = [crate::numbering::Era {
            side: Side::Source,
            upstream_from: 0,
            client_from: 0,
            epoch_shift: 5,
            epoch_from: 5,
        }];
        let view = View::build(&shifted, &OffsetMap::default(), Side::Source);
        let mut batches = 0;
        let fetched = response.responses.iter().flat_map(|t| &t.partitions);
        for records in fetched.filter_map(|p| p.records.as_ref()) {
            let out = renumber(&view, records);
            assert_eq!(out.len(), records.len());
            let mut at = 0;
            while at < out.len() {
                let length =
                    usize::try_from(i32_at(&out, at + 8).expect("length")).expect("length");
                let (theirs, ours) = (&records[at..at + 12 + length], &out[at..at + 12 + length]);
                assert_eq!(ours[..12], theirs[..12], "offset and length stay");
                let epoch = i32_at(theirs, LEADER_EPOCH_AT).expect("epoch");
                assert_eq!(i32_at(ours, LEADER_EPOCH_AT), Some(epoch + 5));
                assert_eq!(ours[LEADER_EPOCH_AT + 4..], theirs[LEADER_EPOCH_AT + 4..]);
                assert!(
                    crate::batch::crc_ok(ours),
                    "the CRC does not cover the epoch"
                );
                at += 12 + length;
                batches += 1;
            }
        }
        assert!(batches >= 1, "a batch to look at");
    }

    #[test]
    fn epochs_of_a_cluster_not_shifted_stay() {
        let view = latest_link_view();
        let out = renumber(&view, &Bytes::from(batch(0, 10, b"x")));
        assert_eq!(i32_at(&out, LEADER_EPOCH_AT), Some(7));
    }
}
