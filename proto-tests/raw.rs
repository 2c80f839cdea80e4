//! A raw Kafka protocol client: typed requests encoded with the
//! kafka-protocol crate, or any bytes at all, over one TCP connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

pub struct RawConn {
    pub stream: TcpStream,
    next_correlation_id: i32,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        RawConn {
            stream,
            next_correlation_id: 1,
        }
    }

    /// Encodes a request frame without sending it; returns its correlation id.
    pub fn encode<R: Request>(&mut self, request: &R, version: i16) -> (i32, Bytes) {
        let api = ApiKey::try_from(R::KEY).expect("known key");
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id += 1;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("proto-test")))
            .encode(&mut buf, api.request_header_version(version))
            .expect("encode header");
        request.encode(&mut buf, version).expect("encode body");
        let length = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&length.to_be_bytes());
        (correlation_id, buf.freeze())
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one response frame's payload (header and body).
    pub fn read_frame(&mut self) -> std::io::Result<Bytes> {
        let mut length = [0u8; 4];
        self.stream.read_exact(&mut length)?;
        let length = i32::from_be_bytes(length);
        assert!((0..64 << 20).contains(&length), "response length {length}");
        let mut payload = vec![0u8; length as usize];
        self.stream.read_exact(&mut payload)?;
        Ok(Bytes::from(payload))
    }

    /// Decodes a response payload, checking its correlation id.
    pub fn decode<R: Request>(payload: Bytes, version: i16, correlation_id: i32) -> R::Response {
        let api = ApiKey::try_from(R::KEY).expect("known key");
        let mut buf = payload;
        let header = ResponseHeader::decode(&mut buf, api.response_header_version(version))
            .expect("decode header");
        assert_eq!(
            header.correlation_id, correlation_id,
            "responses in request order"
        );
        R::Response::decode(&mut buf, version).expect("decode body")
    }

    /// Sends a request and reads its response.
    pub fn call<R: Request>(&mut self, request: &R, version: i16) -> R::Response {
        let (correlation_id, frame) = self.encode(request, version);
        self.send_bytes(&frame);
        let payload = self.read_frame().expect("read response");
        RawConn::decode::<R>(payload, version, correlation_id)
    }

    /// True when the peer closed the connection (EOF or reset) within 5 s.
    pub fn closed_by_peer(&mut self) -> bool {
        self.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return true,
                Ok(_) => continue, // a response to an earlier request
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    return false;
                }
                Err(_) => return true,
            }
        }
    }
}
