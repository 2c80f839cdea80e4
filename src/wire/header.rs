use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

use super::cursor::Cursor as Reader;

/// The request header fields klink reads. Everything is parsed from borrowed
/// bytes with bounds checks; nothing here allocates from a wire length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
    /// `None` when the API key is unknown to klink (then the header layout
    /// past the client id is unknown too).
    pub known_api: Option<ApiKey>,
    /// Where the body starts in the payload, when the header layout is known.
    pub body_offset: Option<usize>,
    pub client_id: Option<String>,
}

pub use super::cursor::CursorError as HeaderError;

impl RequestHeader {
    /// Parses the header at the start of a frame payload (prefix stripped).
    pub fn parse(payload: &[u8]) -> Result<RequestHeader, HeaderError> {
        let mut r = Reader::new(payload, 0);
        let api_key = r.i16()?;
        let api_version = r.i16()?;
        let correlation_id = r.i32()?;
        let known_api = ApiKey::try_from(api_key).ok();
        if known_api.is_none() {
            // Nothing past the correlation id can be trusted to follow any
            // layout; the caller only needs to know the key is unknown.
            return Ok(RequestHeader {
                api_key,
                api_version,
                correlation_id,
                known_api,
                body_offset: None,
                client_id: None,
            });
        }
        // Every header version from v1 on carries a classic nullable client id
        // (never a compact string, even in flexible versions).
        let client_id_len = r.i16()?;
        let client_id = match client_id_len {
            -1 => None,
            n if n < 0 => return Err(HeaderError("negative client id length")),
            n => Some(String::from_utf8_lossy(r.take(n as usize)?).into_owned()),
        };
        let mut body_offset = None;
        if let Some(api) = known_api
            && api.valid_versions().min <= api_version
            && api_version <= api.valid_versions().max
        {
            if api.request_header_version(api_version) >= 2 {
                r.skip_tagged_fields()?;
            }
            body_offset = Some(r.position());
        }
        Ok(RequestHeader {
            api_key,
            api_version,
            correlation_id,
            known_api,
            body_offset,
            client_id,
        })
    }

    /// Reads only the correlation id, for frames whose header is otherwise
    /// unusable but which still deserve an answer.
    pub fn correlation_id_of(payload: &[u8]) -> Option<i32> {
        payload
            .get(4..8)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// The `acks` of a Produce request, read without decoding its records.
pub fn produce_acks(payload: &[u8], header: &RequestHeader) -> Result<i16, HeaderError> {
    let at = produce_acks_at(payload, header)?;
    Reader::new(payload, at).i16()
}

/// Where a Produce request's `acks` field sits in `payload` (the frame
/// without its length prefix).
pub fn produce_acks_at(payload: &[u8], header: &RequestHeader) -> Result<usize, HeaderError> {
    let offset = header.body_offset.ok_or(HeaderError("unknown layout"))?;
    let mut r = Reader::new(payload, offset);
    // transactional_id: a compact nullable string from v9 on, classic before.
    if header.api_version >= 9 {
        let len_plus_one = r.uvarint()?;
        if len_plus_one > 0 {
            r.take(usize::try_from(len_plus_one - 1).map_err(|_| HeaderError("length"))?)?;
        }
    } else {
        let len = r.i16()?;
        if len > 0 {
            r.take(len as usize)?;
        }
    }
    let at = r.position();
    r.i16()?;
    Ok(at)
}

/// The `max_bytes` a Fetch request asks for at most (v3 on), read without
/// decoding the request; `None` before v3, whose answers have no overall
/// bound, or when the request is too short to hold it.
pub fn fetch_max_bytes(payload: &[u8], header: &RequestHeader) -> Option<i32> {
    let offset = header.body_offset?;
    // replica_id (until v14; v15 moves it into a tagged field, which comes
    // after the fixed fields), max_wait_ms, min_bytes, then max_bytes.
    let skip = match header.api_version {
        ..=2 => return None,
        3..=14 => 12,
        _ => 8,
    };
    Reader::new(payload, offset + skip).i32().ok()
}

/// Builds a whole response frame (prefix, header, body).
pub fn response_frame(correlation_id: i32, header_version: i16, body: &[u8]) -> Bytes {
    let header_len = if header_version >= 1 { 5 } else { 4 };
    let mut buf = BytesMut::with_capacity(4 + header_len + body.len());
    buf.put_i32((header_len + body.len()) as i32);
    buf.put_i32(correlation_id);
    if header_version >= 1 {
        buf.put_u8(0); // no tagged fields
    }
    buf.put_slice(body);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ProduceRequest, RequestHeader as KRequestHeader};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    fn encoded(api: ApiKey, version: i16, body: &impl Encodable) -> BytesMut {
        let mut buf = BytesMut::new();
        KRequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("me")))
            .encode(&mut buf, api.request_header_version(version))
            .expect("encode header");
        body.encode(&mut buf, version).expect("encode body");
        buf
    }

    #[test]
    fn reads_a_fetch_requests_max_bytes_at_every_version() {
        use kafka_protocol::messages::FetchRequest;
        // The crate encodes Fetch from v4 on, as Kafka 4 speaks it.
        for version in 4..=17 {
            let request = FetchRequest::default()
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(7_654_321);
            let buf = encoded(ApiKey::Fetch, version, &request);
            let header = RequestHeader::parse(&buf).expect("header");
            assert_eq!(
                fetch_max_bytes(&buf, &header),
                Some(7_654_321),
                "v{version}"
            );
        }
        let buf = encoded(ApiKey::Fetch, 12, &FetchRequest::default());
        let header = RequestHeader::parse(&buf).expect("header");
        let short = &buf[..header.body_offset.expect("known layout") + 13];
        assert_eq!(fetch_max_bytes(short, &header), None, "cut short");
    }

    #[test]
    fn parses_classic_and_flexible_headers_and_produce_acks() {
        for (version, txn) in [(3, None), (8, Some("t1")), (9, None), (11, Some("txn-abc"))] {
            let request = ProduceRequest::default()
                .with_acks(-1)
                .with_transactional_id(txn.map(|t| StrBytes::from_static_str(t).into()));
            let buf = encoded(ApiKey::Produce, version, &request);
            let header = RequestHeader::parse(&buf).expect("header");
            assert_eq!(header.correlation_id, 42);
            assert_eq!(header.client_id.as_deref(), Some("me"));
            assert_eq!(produce_acks(&buf, &header), Ok(-1), "v{version}");
        }
    }

    #[test]
    fn unknown_keys_and_versions_have_no_body_offset() {
        let mut buf = BytesMut::new();
        buf.put_i16(999);
        buf.put_i16(0);
        buf.put_i32(7);
        buf.put_i16(-1);
        let header = RequestHeader::parse(&buf).expect("header");
        assert_eq!((header.known_api, header.body_offset), (None, None));
        assert_eq!(RequestHeader::correlation_id_of(&buf), Some(7));
    }

    /// Guards the patch in vendor/kafka-protocol: a decoder must not reserve
    /// memory for array lengths the bytes cannot back.
    #[test]
    fn lying_array_lengths_fail_without_allocating() {
        use kafka_protocol::messages::MetadataRequest;
        use kafka_protocol::protocol::Decodable;
        // Metadata v1 body: topics array of 2^31-1 entries, then nothing.
        let mut classic = bytes::Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff]);
        assert!(MetadataRequest::decode(&mut classic, 1).is_err());
        // Metadata v9 body: compact array whose varint says 2^32-2 entries.
        let mut compact = bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(MetadataRequest::decode(&mut compact, 9).is_err());
    }

    #[test]
    fn truncated_and_lying_headers_are_errors_not_panics() {
        let mut buf = BytesMut::new();
        buf.put_i16(0);
        buf.put_i16(9);
        buf.put_i32(1);
        buf.put_i16(30000); // client id longer than the frame
        assert!(RequestHeader::parse(&buf).is_err());
        assert!(RequestHeader::parse(&[0, 1, 2]).is_err());
        // A flexible header whose tagged-field count promises more than exists.
        let mut buf = BytesMut::new();
        buf.put_i16(0);
        buf.put_i16(9);
        buf.put_i32(1);
        buf.put_i16(-1);
        buf.put_u8(0xff);
        assert!(RequestHeader::parse(&buf).is_err());
    }
}
