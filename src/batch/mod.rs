//! Record batches (magic v2) as klink touches them: the header fields that
//! identify the producer, and the CRC-32C that covers them. Records stay
//! bytes; nothing here decompresses or decodes a record.
//!
//! The mirror writes to the target under klink's own producer id, and after
//! a cutover a client's batches reach the target under a target-issued id;
//! both rewrite exactly these fields (DESIGN.md, traps 8 and 12).

use std::ops::Range;

use crate::wire::{Cursor, CursorError};

// Byte offsets inside a v2 record batch (KIP-98 layout).
const BATCH_LENGTH: usize = 8;
const MAGIC: usize = 16;
const CRC: usize = 17;
/// The CRC covers everything from the attributes to the end of the batch.
const CRC_FROM: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORD_COUNT: usize = 57;
/// Header size: every field before the first record.
pub const HEADER_LEN: usize = 61;
/// The part of a batch before `batchLength` counts: base offset and length.
const LOG_OVERHEAD: usize = 12;

/// The header fields of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub last_offset_delta: i32,
    pub attributes: i16,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// Where each whole batch sits in a records blob (as a Produce or Fetch
/// carries it). A truncated last batch, which Fetch responses may end with,
/// is left out.
pub fn batches(records: &[u8]) -> Result<Vec<Range<usize>>, CursorError> {
    let mut ranges = Vec::new();
    let mut start = 0;
    while records.len() - start >= LOG_OVERHEAD {
        let length = Cursor::new(records, start + BATCH_LENGTH).i32()?;
        let length = usize::try_from(length).map_err(|_| CursorError("negative batch length"))?;
        let end = start
            .checked_add(LOG_OVERHEAD + length)
            .ok_or(CursorError("batch length overflow"))?;
        if end > records.len() {
            break;
        }
        ranges.push(start..end);
        start = end;
    }
    Ok(ranges)
}

/// Reads a batch header, refusing anything but magic v2.
pub fn header(batch: &[u8]) -> Result<BatchHeader, CursorError> {
    if batch.len() < HEADER_LEN {
        return Err(CursorError("batch shorter than its header"));
    }
    if batch[MAGIC] != 2 {
        return Err(CursorError("not a magic v2 record batch"));
    }
    let i64_at = |at: usize| -> Result<i64, CursorError> {
        let b = batch.get(at..at + 8).ok_or(CursorError("short batch"))?;
        Ok(i64::from_be_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    };
    Ok(BatchHeader {
        base_offset: i64_at(0)?,
        last_offset_delta: Cursor::new(batch, LAST_OFFSET_DELTA).i32()?,
        attributes: Cursor::new(batch, CRC_FROM).i16()?,
        producer_id: i64_at(PRODUCER_ID)?,
        producer_epoch: Cursor::new(batch, PRODUCER_EPOCH).i16()?,
        base_sequence: Cursor::new(batch, BASE_SEQUENCE).i32()?,
        record_count: Cursor::new(batch, RECORD_COUNT).i32()?,
    })
}

/// Whether the stored CRC-32C matches the batch.
pub fn crc_ok(batch: &[u8]) -> bool {
    batch.len() >= HEADER_LEN
        && u32::from_be_bytes([batch[CRC], batch[CRC + 1], batch[CRC + 2], batch[CRC + 3]])
            == crc32c::crc32c(&batch[CRC_FROM..])
}

/// Puts a batch under another producer identity and recomputes its CRC.
pub fn rewrite_producer(
    batch: &mut [u8],
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
) -> Result<(), CursorError> {
    header(batch)?;
    batch[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&producer_epoch.to_be_bytes());
    batch[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_FROM..]);
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
        let mut lying = vec![0u8; 12];
        lying[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(batches(&lying).is_err());
        assert!(!crc_ok(&[0; 4]));
    }
}
