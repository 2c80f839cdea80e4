//! Fetch responses (v4-v12), scanned by lengths: records stay `Bytes`
//! slices of the response and no wire length sizes an allocation.

use bytes::Bytes;

use crate::wire::{Cursor, CursorError};

const FLEXIBLE_SINCE: i16 = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionResponse {
    pub topic: String,
    pub partition: i32,
    pub error_code: i16,
    pub high_watermark: i64,
    /// The end of what a read_committed consumer may read (v4+).
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    /// Transactions aborted in the fetched range, for read_committed.
    pub aborted: Vec<AbortedTransaction>,
    /// Record batches as the broker sent them; possibly a cut-off last one.
    pub records: Bytes,
}

/// An aborted transaction a Fetch response lists: its producer, and the
/// offset of its first batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTransaction {
    pub producer_id: i64,
    pub first_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchResponse {
    pub error_code: i16,
    pub partitions: Vec<PartitionResponse>,
}

/// Scans a response payload (correlation id first) at `version`.
pub fn scan(payload: &Bytes, version: i16) -> Result<FetchResponse, CursorError> {
    if !(4..=FLEXIBLE_SINCE).contains(&version) {
        return Err(CursorError("fetch response version outside 4-12"));
    }
    let flexible = version >= FLEXIBLE_SINCE;
    let mut c = Cursor::new(payload, 0);
    c.skip(4)?; // correlation id
    if flexible {
        c.skip_tagged_fields()?;
    }
    c.skip(4)?; // throttle_time_ms
    let mut error_code = 0;
    if version >= 7 {
        error_code = c.i16()?;
        c.skip(4)?; // session_id
    }
    let mut partitions = Vec::new();
    let topics = c.array_len(flexible)?.unwrap_or(0);
    for _ in 0..topics {
        let topic = string(&mut c, flexible)?;
        let count = c.array_len(flexible)?.unwrap_or(0);
        for _ in 0..count {
            let partition = c.i32()?;
            let error_code = c.i16()?;
            let high_watermark = i64(&mut c)?;
            let last_stable_offset = i64(&mut c)?;
            let log_start_offset = if version >= 5 { i64(&mut c)? } else { -1 };
            let count = c.array_len(flexible)?.unwrap_or(0);
            // Grown one read entry at a time: the count is the broker's word.
            let mut aborted = Vec::new();
            for _ in 0..count {
                aborted.push(AbortedTransaction {
                    producer_id: i64(&mut c)?,
                    first_offset: i64(&mut c)?,
                });
                if flexible {
                    c.skip_tagged_fields()?;
                }
            }
            if version >= 11 {
                c.skip(4)?; // preferred_read_replica
            }
            let records = bytes(&mut c, payload, flexible)?;
            if flexible {
                c.skip_tagged_fields()?;
            }
            partitions.push(PartitionResponse {
                topic: topic.clone(),
                partition,
                error_code,
                high_watermark,
                last_stable_offset,
                log_start_offset,
                aborted,
                records,
            });
        }
        if flexible {
            c.skip_tagged_fields()?;
        }
    }
    // Top-level tagged fields follow; nothing this client needs is there.
    Ok(FetchResponse {
        error_code,
        partitions,
    })
}

fn i64(c: &mut Cursor<'_>) -> Result<i64, CursorError> {
    let b = c.take(8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Ok(i64::from_be_bytes(a))
}

fn length(c: &mut Cursor<'_>, flexible: bool, classic_len_bytes: u8) -> Result<usize, CursorError> {
    let raw = if flexible {
        c.uvarint()?.checked_sub(1)
    } else if classic_len_bytes == 2 {
        u64::try_from(c.i16()?).ok()
    } else {
        u64::try_from(c.i32()?).ok()
    };
    match raw {
        Some(n) => c.len_from(n),
        None => Ok(0), // null
    }
}

fn string(c: &mut Cursor<'_>, flexible: bool) -> Result<String, CursorError> {
    let n = length(c, flexible, 2)?;
    let b = c.take(n)?;
    std::str::from_utf8(b)
        .map(str::to_string)
        .map_err(|_| CursorError("topic name is not UTF-8"))
}

fn bytes(c: &mut Cursor<'_>, payload: &Bytes, flexible: bool) -> Result<Bytes, CursorError> {
    let n = length(c, flexible, 4)?;
    let start = c.position();
    c.skip(n)?;
    Ok(payload.slice(start..start + n))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{FetchResponse as Typed, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;

    fn encoded(version: i16) -> Bytes {
        let partition = |i: i32, records: &'static [u8]| {
            PartitionData::default()
                .with_partition_index(i)
                .with_high_watermark(100 + i64::from(i))
                .with_last_stable_offset(90)
                .with_log_start_offset(3)
                .with_aborted_transactions(Some(vec![
                    kafka_protocol::messages::fetch_response::AbortedTransaction::default()
                        .with_producer_id(kafka_protocol::messages::ProducerId(7))
                        .with_first_offset(42),
                ]))
                .with_records(Some(Bytes::from_static(records)))
        };
        let response = Typed::default().with_responses(vec![
            FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![partition(0, b"abc"), partition(1, b"")]),
        ]);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&7i32.to_be_bytes());
        if version >= FLEXIBLE_SINCE {
            buf.extend_from_slice(&[0]); // header tagged fields
        }
        response.encode(&mut buf, version).expect("encode");
        buf.freeze()
    }

    #[test]
    fn every_version_scans_to_the_same_partitions() {
        for version in 4..=12 {
            let scanned = scan(&encoded(version), version).expect("scan");
            assert_eq!(scanned.partitions.len(), 2, "v{version}");
            let p0 = &scanned.partitions[0];
            assert_eq!((p0.topic.as_str(), p0.partition), ("t", 0));
            assert_eq!(p0.high_watermark, 100);
            assert_eq!(&p0.records[..], b"abc");
            assert_eq!(p0.log_start_offset, if version >= 5 { 3 } else { -1 });
            assert_eq!(p0.last_stable_offset, 90);
            assert_eq!(
                p0.aborted,
                vec![AbortedTransaction {
                    producer_id: 7,
                    first_offset: 42
                }]
            );
            assert_eq!(scanned.partitions[1].high_watermark, 101);
        }
    }

    #[test]
    fn truncated_or_unknown_responses_are_errors() {
        let full = encoded(12);
        for cut in 0..full.len() - 1 {
            let _ = scan(&full.slice(..cut), 12); // never panics
        }
        assert!(scan(&full.slice(..full.len() - 6), 12).is_err());
        assert!(scan(&full, 13).is_err());
    }
}
