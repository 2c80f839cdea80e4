//! Record batches as klink touches them: the header, read where it sits,
//! and the producer fields with the CRC-32C that covers them. Records stay
//! bytes; nothing here decompresses or decodes a record.
//!
//! Consumers (klink perf, the mirror) count records and advance offsets from
//! headers alone; the mirror writes to the target under klink's own producer
//! id, and after a cutover a client's batches reach the target under a
//! target-issued id: both rewrite exactly the producer fields (DESIGN.md,
//! traps 8 and 12).
//!
//! Magic v2 layout (KIP-98): base offset (i64, byte 0), batch length (i32,
//! 8), partition leader epoch (12), magic (16), crc (17), attributes (i16,
//! 21), last offset delta (i32, 23), first and max timestamp, producer id
//! (i64, 43), producer epoch (i16, 51), base sequence (i32, 53), record count
//! (i32, 57), records from byte 61.

use std::ops::Range;

use crate::wire::CursorError;

const BATCH_LENGTH: usize = 8;
const MAGIC: usize = 16;
const CRC: usize = 17;
/// The CRC covers everything from the attributes to the end of the batch.
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;
/// Bytes before the records of a v2 batch.
pub const V2_HEADER_LEN: usize = 61;
/// Base offset and batch length: what precedes the length's own count.
const LOG_OVERHEAD: usize = 12;
const TRANSACTIONAL_FLAG: i16 = 1 << 4;
const CONTROL_FLAG: i16 = 1 << 5;

/// The header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// The whole batch on the wire, base offset and length included.
    pub total_len: usize,
    pub magic: i8,
    pub attributes: i16,
    pub last_offset_delta: i32,
    /// -1 for batches without a producer identity (and legacy messages).
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// The header at the start of `bytes`; `Ok(None)` when the batch is
    /// not complete there (brokers cut the last batch at the size limit).
    pub fn parse(bytes: &[u8]) -> Result<Option<BatchHeader>, CursorError> {
        if bytes.len() < LOG_OVERHEAD + 5 {
            return Ok(None);
        }
        let base_offset = i64_at(bytes, 0);
        let length = i32_at(bytes, BATCH_LENGTH);
        let magic = bytes[MAGIC] as i8;
        let min_length = if magic >= 2 {
            V2_HEADER_LEN - LOG_OVERHEAD
        } else {
            // crc, magic, attributes, key and value lengths (v0)
            14
        };
        let Ok(length) = usize::try_from(length) else {
            return Err(CursorError("negative record batch length"));
        };
        if length < min_length {
            return Err(CursorError("record batch shorter than its header"));
        }
        let total_len = LOG_OVERHEAD + length;
        if bytes.len() < total_len {
            return Ok(None);
        }
        let header = if magic >= 2 {
            BatchHeader {
                base_offset,
                total_len,
                magic,
                attributes: i16::from_be_bytes([bytes[ATTRIBUTES], bytes[ATTRIBUTES + 1]]),
                last_offset_delta: i32_at(bytes, LAST_OFFSET_DELTA),
                producer_id: i64_at(bytes, PRODUCER_ID),
                producer_epoch: i16::from_be_bytes([
                    bytes[PRODUCER_EPOCH],
                    bytes[PRODUCER_EPOCH + 1],
                ]),
                base_sequence: i32_at(bytes, BASE_SEQUENCE),
                record_count: i32_at(bytes, RECORD_COUNT),
            }
        } else {
            // A legacy message: one record (or one compressed wrapper whose
            // offset is that of its last inner record).
            BatchHeader {
                base_offset,
                total_len,
                magic,
                attributes: 0,
                last_offset_delta: 0,
                producer_id: -1,
                producer_epoch: -1,
                base_sequence: -1,
                record_count: 1,
            }
        };
        Ok(Some(header))
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset
            .saturating_add(i64::from(self.last_offset_delta))
    }

    pub fn is_transactional(&self) -> bool {
        self.magic >= 2 && self.attributes & TRANSACTIONAL_FLAG != 0
    }

    /// Transaction markers: they take offsets but are no records to a consumer.
    pub fn is_control(&self) -> bool {
        self.magic >= 2 && self.attributes & CONTROL_FLAG != 0
    }
}

// Callers check lengths first (`parse` reads only inside `total_len`).
fn i64_at(bytes: &[u8], at: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(b)
}

fn i32_at(bytes: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The header of one whole magic v2 batch (what the producer fields of
/// [`rewrite_producer`] need).
pub fn header(batch: &[u8]) -> Result<BatchHeader, CursorError> {
    let header =
        BatchHeader::parse(batch)?.ok_or(CursorError("batch shorter than its length says"))?;
    if header.magic != 2 {
        return Err(CursorError("not a magic v2 record batch"));
    }
    Ok(header)
}

/// Where each whole batch sits in a records blob (as a Produce or Fetch
/// carries it). A cut-off last batch, which Fetch responses may end with,
/// is left out.
pub fn batches(records: &[u8]) -> Result<Vec<Range<usize>>, CursorError> {
    let mut ranges = Vec::new();
    let mut start = 0;
    while let Some(header) = BatchHeader::parse(&records[start..])? {
        ranges.push(start..start + header.total_len);
        start += header.total_len;
    }
    Ok(ranges)
}

/// What a run of batches holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchScan {
    /// Bytes taken by complete batches; anything after is a cut-off batch.
    pub complete_len: usize,
    pub batches: u32,
    /// Records a consumer sees (control batches excluded).
    pub records: u64,
    /// The offset after the last complete batch, where the next fetch starts.
    pub next_offset: Option<i64>,
}

/// Walks the batches in a partition's `records` field.
pub fn scan_batches(records: &[u8]) -> Result<BatchScan, CursorError> {
    let mut scan = BatchScan::default();
    while let Some(header) = BatchHeader::parse(&records[scan.complete_len..])? {
        scan.complete_len += header.total_len;
        scan.batches += 1;
        if !header.is_control() {
            scan.records += u64::try_from(header.record_count).unwrap_or(0);
        }
        scan.next_offset = Some(header.last_offset().saturating_add(1));
    }
    Ok(scan)
}

/// Whether the stored CRC-32C matches the batch.
pub fn crc_ok(batch: &[u8]) -> bool {
    batch.len() >= V2_HEADER_LEN
        && u32::from_be_bytes([batch[CRC], batch[CRC + 1], batch[CRC + 2], batch[CRC + 3]])
            == crc32c::crc32c(&batch[ATTRIBUTES..])
}

/// Puts a batch under another producer identity and recomputes its CRC.
pub fn rewrite_producer(
    batch: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<(), CursorError> {
    let header = header(batch)?;
    let batch = &mut batch[..header.total_len];
    batch[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&producer_epoch.to_be_bytes());
    batch[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES..]);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::records::{
        Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };

    use super::*;

    /// A batch as an idempotent producer sends it, `count` records.
    pub fn idempotent_batch(count: i32, compression: Compression) -> BytesMut {
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: 4242,
                producer_epoch: 3,
                timestamp_type: TimestampType::Creation,
                offset: i64::from(i),
                sequence: 100 + i,
                timestamp: 1_700_000_000_000 + i64::from(i),
                key: Some(Bytes::from(format!("key-{i}"))),
                value: Some(Bytes::from(format!("value-{i}").repeat(8))),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
        buf
    }

    #[test]
    fn rewrite_keeps_records_and_makes_a_valid_crc() {
        for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let mut batch = idempotent_batch(5, compression);
            assert!(crc_ok(&batch));
            let before = header(&batch).expect("header");
            assert_eq!(
                (
                    before.producer_id,
                    before.producer_epoch,
                    before.base_sequence
                ),
                (4242, 3, 100)
            );
            assert_eq!(before.record_count, 5);
            assert_eq!(before.last_offset(), 4);

            rewrite_producer(&mut batch, 7, 0, 0).expect("rewrite");
            assert!(crc_ok(&batch), "CRC recomputed");
            let after = header(&batch).expect("header");
            assert_eq!(
                (after.producer_id, after.producer_epoch, after.base_sequence),
                (7, 0, 0)
            );
            // The protocol crate checks the CRC while decoding.
            let mut bytes = batch.freeze();
            let decoded = RecordBatchDecoder::decode(&mut bytes).expect("decodes with a valid CRC");
            assert_eq!(decoded.records.len(), 5);
            assert_eq!(
                decoded.records[4].sequence, 4,
                "sequences follow the new base"
            );
            assert_eq!(
                decoded.records[4].value.as_deref(),
                Some("value-4".repeat(8).as_bytes())
            );
        }
    }

    #[test]
    fn blobs_split_into_whole_batches() {
        let mut blob = idempotent_batch(2, Compression::None);
        let first = blob.len();
        blob.extend_from_slice(&idempotent_batch(3, Compression::None));
        let whole = blob.len();
        blob.extend_from_slice(&idempotent_batch(1, Compression::None)[..20]); // truncated tail
        assert_eq!(batches(&blob).expect("split"), vec![0..first, first..whole]);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(header(&[2; 10]).is_err());
        let mut v1 = idempotent_batch(1, Compression::None);
        v1[MAGIC] = 1;
        assert!(header(&v1).is_err());
        assert!(rewrite_producer(&mut v1, 1, 1, 1).is_err());
        let mut lying = vec![0u8; 20];
        lying[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(batches(&lying).is_err());
        assert!(!crc_ok(&[0; 4]));
    }

    fn batch(base_offset: i64, count: i64, compression: Compression) -> BytesMut {
        let records: Vec<Record> = (0..count)
            .map(|i| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base_offset + i,
                sequence: i as i32 - 1,
                timestamp: 1_700_000_000_000,
                key: None,
                value: Some(Bytes::from(vec![b'x'; 100])),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .expect("encode");
        buf
    }

    #[test]
    fn counts_records_and_finds_the_next_offset_without_decoding() {
        let mut bytes = batch(10, 5, Compression::None);
        bytes.extend_from_slice(&batch(15, 3, Compression::Gzip));
        let scan = scan_batches(&bytes).expect("scan");
        assert_eq!(scan.batches, 2);
        assert_eq!(scan.records, 8);
        assert_eq!(scan.next_offset, Some(18));
        assert_eq!(scan.complete_len, bytes.len());
    }

    #[test]
    fn a_cut_off_last_batch_is_left_for_the_next_fetch() {
        let first = batch(0, 4, Compression::None);
        let mut bytes = first.clone();
        bytes.extend_from_slice(&batch(4, 4, Compression::None)[..70]);
        let scan = scan_batches(&bytes).expect("scan");
        assert_eq!(scan.batches, 1);
        assert_eq!(scan.records, 4);
        assert_eq!(scan.next_offset, Some(4));
        assert_eq!(scan.complete_len, first.len());
        assert_eq!(
            scan_batches(&bytes[..5]).expect("scan"),
            BatchScan::default()
        );
    }

    #[test]
    fn control_batches_advance_but_do_not_count() {
        let mut bytes = batch(0, 1, Compression::None);
        bytes[ATTRIBUTES + 1] |= CONTROL_FLAG as u8;
        let scan = scan_batches(&bytes).expect("scan");
        assert_eq!(scan.records, 0);
        assert_eq!(scan.next_offset, Some(1));
    }

    #[test]
    fn lying_lengths_are_errors_not_panics() {
        let mut bytes = batch(0, 1, Compression::None);
        bytes[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(scan_batches(&bytes).is_err());
        bytes[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&3i32.to_be_bytes());
        assert!(scan_batches(&bytes).is_err());
        bytes[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(scan_batches(&bytes).expect("cut off").batches, 0);
    }
}
