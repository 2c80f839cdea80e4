//! Batches a compaction left holes in. Compaction removes records but keeps
//! each batch's base offset and last offset delta, so a batch may hold
//! fewer records than offsets, or none. A cluster written through Produce
//! numbers a batch's records one after another: copied whole, such a batch
//! would land shorter than it spans, and the offset map (runs of
//! consecutive offsets) could not say where each record went. So before a
//! copy, each such batch is cut into batches of consecutive records (same
//! records, same compression; klink's producer identity goes on later like
//! on any copy), and an empty one is not copied at all (a gap in the map,
//! like a transaction marker). Every other batch keeps its bytes.

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, RecordSet,
};

use super::committed::Walked;

/// Whether a copied batch spans more offsets than it holds records.
fn has_holes(w: &Walked) -> bool {
    w.copy && !w.control && w.last_offset - w.base_offset + 1 != i64::from(w.records)
}

/// `records` and its walk with every batch that has holes cut into
/// batches of consecutive records (an empty one marked not copied). The
/// common case, no such batch, returns them as they are.
pub fn cut_at_holes(records: &Bytes, walked: Vec<Walked>) -> Result<(Bytes, Vec<Walked>), String> {
    if !walked.iter().any(has_holes) {
        return Ok((records.clone(), walked));
    }
    let mut out = BytesMut::with_capacity(records.len());
    let mut cut = Vec::with_capacity(walked.len());
    for w in walked {
        let bytes = records
            .get(w.bytes.clone())
            .ok_or_else(|| format!("batch at {} outside the fetched records", w.base_offset))?;
        if !has_holes(&w) {
            let start = out.len();
            out.extend_from_slice(bytes);
            cut.push(Walked {
                bytes: start..out.len(),
                ..w
            });
            continue;
        }
        let mut buf = Bytes::copy_from_slice(bytes);
        let set: RecordSet = RecordBatchDecoder::decode(&mut buf)
            .map_err(|e| format!("batch at {}: {e}", w.base_offset))?;
        if set.records.is_empty() {
            cut.push(Walked { copy: false, ..w });
            continue;
        }
        let options = RecordEncodeOptions {
            version: set.version,
            compression: set.compression,
        };
        let mut copied_to = w.base_offset;
        for run in consecutive_runs(set.records) {
            let (first, last) = match (run.first(), run.last()) {
                (Some(first), Some(last)) => (first.offset, last.offset),
                _ => continue,
            };
            if first < copied_to || last > w.last_offset {
                return Err(format!(
                    "batch {}..={} holds a record at {first}..={last}",
                    w.base_offset, w.last_offset
                ));
            }
            let start = out.len();
            RecordBatchEncoder::encode(&mut out, &run, &options)
                .map_err(|e| format!("batch at {}: {e}", w.base_offset))?;
            cut.push(Walked {
                bytes: start..out.len(),
                base_offset: first,
                last_offset: last,
                records: i32::try_from(run.len()).unwrap_or(i32::MAX),
                copy: true,
                control: false,
            });
            copied_to = last + 1;
        }
        // Records removed at the batch's end: its last offsets are a gap
        // the copy steps over (nothing is sent for it).
        if copied_to <= w.last_offset {
            cut.push(Walked {
                bytes: out.len()..out.len(),
                base_offset: copied_to,
                last_offset: w.last_offset,
                records: 0,
                copy: false,
                control: false,
            });
        }
    }
    Ok((out.freeze(), cut))
}

/// The records in runs of consecutive offsets, each numbered so the
/// encoder makes one batch of it: sequences consecutive from 0 (a copy
/// gets its own identity and sequence anyway), -1 first where the batch
/// had no producer.
fn consecutive_runs(
    records: Vec<kafka_protocol::records::Record>,
) -> Vec<Vec<kafka_protocol::records::Record>> {
    let mut runs: Vec<Vec<kafka_protocol::records::Record>> = Vec::new();
    for record in records {
        match runs.last_mut() {
            Some(run) if run.last().is_some_and(|r| r.offset + 1 == record.offset) => {
                run.push(record)
            }
            _ => runs.push(vec![record]),
        }
    }
    for run in &mut runs {
        for (k, record) in run.iter_mut().enumerate() {
            let k = i32::try_from(k).unwrap_or(i32::MAX);
            record.sequence = if record.producer_id < 0 { k - 1 } else { k };
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::{Compression, Record, TimestampType};

    use super::*;
    use crate::mirror::committed::walk;

    /// Found by the `batches` fuzz target: a batch whose record count is
    /// a lie made kafka-protocol reserve room for it, and the process
    /// abort on the allocation (vendor/kafka-protocol/KLINK-PATCH.md).
    #[test]
    fn a_lying_record_count_fails_without_allocating_for_it() {
        let bytes = Bytes::from_static(include_bytes!(
            "../../fixtures/fuzz/batches-lying-record-count.bin"
        ));
        let walked = walk(&bytes, &[]).expect("the batch headers walk");
        // Whatever the verdict, the process is still here to give it.
        let _ = cut_at_holes(&bytes, walked);
    }

    fn record(offset: i64, producer_id: i64) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: if producer_id < 0 { -1 } else { 0 },
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: if producer_id < 0 { -1 } else { offset as i32 },
            timestamp: 1_700_000_000_000 + offset,
            key: Some(Bytes::from(format!("k{offset}"))),
            value: Some(Bytes::from(format!("v{offset}"))),
            headers: Default::default(),
        }
    }

    /// One batch of `offsets` (the first at its base) whose header claims
    /// up to `last`, as a compaction leaves it: records keep their deltas,
    /// the last offset delta stays the batch's.
    fn compacted(last: i64, offsets: &[i64], compression: Compression) -> Bytes {
        let records: Vec<Record> = offsets.iter().map(|&o| record(o, 7)).collect();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
        let delta = i32::try_from(last - offsets[0]).expect("delta");
        buf[23..27].copy_from_slice(&delta.to_be_bytes());
        let crc = crc32c::crc32c(&buf[21..]);
        buf[17..21].copy_from_slice(&crc.to_be_bytes());
        buf.freeze()
    }

    #[test]
    fn whole_batches_pass_as_they_are() {
        let log = crate::mirror::committed::tests::mixed_log();
        let walked = walk(&log, &[]).expect("walk");
        let (out, cut) = cut_at_holes(&log, walked.clone()).expect("cut");
        assert_eq!(out, log);
        assert_eq!(cut, walked);
    }

    #[test]
    fn an_empty_batch_is_a_gap() {
        let mut empty = crate::mirror::committed::tests::batch(10, 3, 7, false, false).to_vec();
        empty[57..61].copy_from_slice(&0i32.to_be_bytes()); // record count
        empty.truncate(61);
        let length = i32::try_from(empty.len() - 12).expect("length");
        empty[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&empty[21..]);
        empty[17..21].copy_from_slice(&crc.to_be_bytes());
        let empty = Bytes::from(empty);
        let walked = walk(&empty, &[]).expect("walk");
        assert_eq!((walked[0].records, walked[0].copy), (0, true));
        let (_, cut) = cut_at_holes(&empty, walked).expect("cut");
        assert_eq!(cut.len(), 1);
        assert!(!cut[0].copy, "nothing to copy: a gap in the map");
    }

    #[test]
    fn a_batch_with_holes_becomes_batches_of_consecutive_records() {
        for compression in [Compression::None, Compression::Gzip, Compression::Lz4] {
            let holey = compacted(19, &[10, 12, 13, 17], compression);
            let mut log = BytesMut::new();
            log.extend_from_slice(&crate::mirror::committed::tests::batch(
                0, 10, 7, false, false,
            ));
            log.extend_from_slice(&holey);
            let log = log.freeze();
            let walked = walk(&log, &[]).expect("walk");
            assert_eq!(
                (
                    walked[1].base_offset,
                    walked[1].last_offset,
                    walked[1].records
                ),
                (10, 19, 4)
            );
            let (out, cut) = cut_at_holes(&log, walked).expect("cut");
            let runs: Vec<(i64, i64, i32, bool)> = cut
                .iter()
                .map(|w| (w.base_offset, w.last_offset, w.records, w.copy))
                .collect();
            assert_eq!(
                runs,
                vec![
                    (0, 9, 10, true),
                    (10, 10, 1, true),
                    (12, 13, 2, true),
                    (17, 17, 1, true),
                    (18, 19, 0, false),
                ],
                "{compression:?}: the removed tail is a gap stepped over"
            );
            // The cut batches are what the walk of the new bytes finds, and
            // they hold the same records with valid CRCs.
            let again = walk(&out, &[]).expect("walk again");
            assert_eq!(again, cut[..4]);
            let mut keys = Vec::new();
            for w in &cut[1..4] {
                let bytes = &out[w.bytes.clone()];
                assert!(crate::batch::crc_ok(bytes));
                let set =
                    RecordBatchDecoder::decode(&mut Bytes::copy_from_slice(bytes)).expect("decode");
                assert_eq!(set.compression, compression);
                for r in set.records {
                    keys.push((r.offset, r.key.expect("key")));
                }
            }
            let expected: Vec<(i64, Bytes)> = [10, 12, 13, 17]
                .iter()
                .map(|&o| (o, Bytes::from(format!("k{o}"))))
                .collect();
            assert_eq!(keys, expected);
        }
    }

    #[test]
    fn garbage_in_a_batch_with_holes_is_an_error_not_a_panic() {
        let mut holey = compacted(19, &[10, 12], Compression::None).to_vec();
        let len = holey.len();
        for b in &mut holey[61..len] {
            *b = 0xff;
        }
        // A valid CRC over garbage records: the records themselves are read.
        let crc = crc32c::crc32c(&holey[21..]);
        holey[17..21].copy_from_slice(&crc.to_be_bytes());
        let holey = Bytes::from(holey);
        let walked = walk(&holey, &[]).expect("walk");
        assert!(cut_at_holes(&holey, walked).is_err());
    }
}
