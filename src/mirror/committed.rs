//! Which fetched batches a mirror copies (DESIGN trap 12): what a
//! read_committed consumer would see, as whole batches. Control batches
//! (transaction markers) and the batches of aborted transactions take
//! source offsets but are not copied; they become gaps in the offset map.
//!
//! The rule is the Java consumer's: walking batches in offset order, a
//! producer joins the aborted set when the walk reaches the first offset of
//! one of its aborted transactions (as the Fetch response lists them), its
//! transactional batches are dropped while it is in the set, and the
//! transaction's marker (a control batch of that producer) takes it out.

use std::collections::HashSet;
use std::ops::Range;

use crate::batch::BatchHeader;
use crate::client::AbortedTransaction;
use crate::wire::CursorError;

/// One batch of a fetched run, and whether the mirror copies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walked {
    /// Where the batch sits in the records blob.
    pub bytes: Range<usize>,
    pub base_offset: i64,
    pub last_offset: i64,
    pub records: i32,
    pub copy: bool,
    /// A transaction marker: written by the transaction coordinator, not
    /// by a producer.
    pub control: bool,
}

/// The whole batches of `records` (a cut-off last one is left out), each
/// marked copied or dropped. `aborted` is the response's list for this
/// partition, in any order.
pub fn walk(records: &[u8], aborted: &[AbortedTransaction]) -> Result<Vec<Walked>, CursorError> {
    let mut pending: Vec<AbortedTransaction> = aborted.to_vec();
    pending.sort_by_key(|a| std::cmp::Reverse(a.first_offset));
    let mut aborting: HashSet<i64> = HashSet::new();
    let mut walked = Vec::new();
    let mut start = 0;
    while let Some(header) = BatchHeader::parse(&records[start..])? {
        let base_offset = header.base_offset;
        while pending
            .last()
            .is_some_and(|a| a.first_offset <= header.last_offset())
        {
            if let Some(a) = pending.pop() {
                aborting.insert(a.producer_id);
            }
        }
        let copy = if header.is_control() {
            aborting.remove(&header.producer_id);
            false
        } else {
            !(header.is_transactional() && aborting.contains(&header.producer_id))
        };
        walked.push(Walked {
            bytes: start..start + header.total_len,
            base_offset,
            last_offset: header.last_offset(),
            records: header.record_count,
            copy,
            control: header.is_control(),
        });
        start += header.total_len;
    }
    Ok(walked)
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    use super::*;

    /// One batch of `count` records at `base`: plain (`producer` -1),
    /// idempotent, transactional, or a transaction marker.
    pub fn batch(
        base: i64,
        count: i32,
        producer: i64,
        transactional: bool,
        control: bool,
    ) -> Bytes {
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional,
                control,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: producer,
                producer_epoch: if producer < 0 { -1 } else { 0 },
                timestamp_type: TimestampType::Creation,
                offset: base + i64::from(i),
                // The encoder starts a new batch where offset - sequence
                // changes; a plain batch's base sequence is -1.
                sequence: if producer < 0 { i - 1 } else { i },
                timestamp: 1_700_000_000_000,
                // A control record's key is its version and type (0 abort,
                // 1 commit); its value is the marker's version and epoch.
                key: Some(if control {
                    Bytes::from_static(&[0, 0, 0, 0])
                } else {
                    Bytes::from(format!("k{}", base + i64::from(i)))
                }),
                value: Some(if control {
                    Bytes::from_static(&[0, 0, 0, 0, 0, 0])
                } else {
                    Bytes::from(format!("v{}", base + i64::from(i)))
                }),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
        buf.freeze()
    }

    /// The fixture: a partition's log with plain, idempotent, committed
    /// and aborted transactional batches interleaved, as Kafka writes them
    /// (offsets 0..=14). Kept in `fixtures/batches/` so other tools (fuzzing,
    /// the mirror's tests) read the same bytes; this test keeps it honest.
    pub fn mixed_log() -> Bytes {
        let parts = [
            batch(0, 2, -1, false, false),  // 0-1 plain
            batch(2, 2, 10, true, false),   // 2-3 txn of 10 (aborted below)
            batch(4, 1, 20, true, false),   // 4 txn of 20 (committed below)
            batch(5, 2, 30, false, false),  // 5-6 idempotent, no txn
            batch(7, 1, 10, true, false),   // 7 txn of 10, still aborted
            batch(8, 1, 10, false, true),   // 8 abort marker of 10
            batch(9, 1, 20, false, true),   // 9 commit marker of 20
            batch(10, 2, 10, true, false),  // 10-11 a new txn of 10, committed
            batch(12, 1, 10, false, true),  // 12 its commit marker
            batch(13, 2, -1, false, false), // 13-14 plain
        ];
        let mut log = BytesMut::new();
        for part in parts {
            log.extend_from_slice(&part);
        }
        log.freeze()
    }

    const FIXTURE: &str = "fixtures/batches/mixed-transactions.bin";

    #[test]
    fn the_fixture_is_what_the_encoder_makes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
        if std::env::var_os("KLINK_WRITE_FIXTURES").is_some() {
            std::fs::write(&path, mixed_log()).expect("write fixture");
        }
        let stored = std::fs::read(&path).expect("fixture (KLINK_WRITE_FIXTURES=1 writes it)");
        assert_eq!(stored, mixed_log().to_vec());
    }

    fn copied(walked: &[Walked]) -> Vec<(i64, i64)> {
        walked
            .iter()
            .filter(|w| w.copy)
            .map(|w| (w.base_offset, w.last_offset))
            .collect()
    }

    #[test]
    fn aborted_transactions_and_markers_are_dropped_everything_else_copied() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
        let log = std::fs::read(path).expect("fixture");
        let aborted = [AbortedTransaction {
            producer_id: 10,
            first_offset: 2,
        }];
        let walked = walk(&log, &aborted).expect("walk");
        assert_eq!(walked.len(), 10);
        assert_eq!(
            copied(&walked),
            vec![(0, 1), (4, 4), (5, 6), (10, 11), (13, 14)],
            "plain, committed txn, idempotent, the next (committed) txn of 10, plain"
        );
        // Nothing listed as aborted: only the markers go.
        let walked = walk(&log, &[]).expect("walk");
        assert_eq!(copied(&walked).len(), 7);
    }

    #[test]
    fn an_aborted_transaction_starting_in_a_later_fetch_applies_from_its_first_offset() {
        let log = mixed_log();
        let from_seven = {
            let start = walk(&log, &[])
                .expect("walk")
                .into_iter()
                .find(|w| w.base_offset == 7)
                .map(|w| w.bytes.start)
                .expect("batch at 7");
            log.slice(start..)
        };
        let aborted = [AbortedTransaction {
            producer_id: 10,
            first_offset: 7,
        }];
        assert_eq!(
            copied(&walk(&from_seven, &aborted).expect("walk")),
            vec![(10, 11), (13, 14)]
        );
    }

    #[test]
    fn a_cut_off_last_batch_is_left_for_the_next_fetch() {
        let log = mixed_log();
        let cut = log.slice(..log.len() - 3);
        let walked = walk(&cut, &[]).expect("walk");
        assert_eq!(walked.len(), 9);
        assert_eq!(walked.last().map(|w| w.base_offset), Some(12));
    }
}
