use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// One Kafka frame, length prefix included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// Wraps bytes that already start with a correct length prefix.
    pub fn from_prefixed(bytes: Bytes) -> Frame {
        Frame { bytes }
    }

    /// The whole frame as it goes on the wire.
    pub fn wire_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The frame without its length prefix (header and body).
    pub fn payload(&self) -> Bytes {
        self.bytes.slice(4..)
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.len() <= 4
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} exceeds the limit of {1} bytes")]
    TooLarge(i64, u32),
    #[error("negative frame length {0}")]
    Negative(i32),
    #[error("frame of {0} bytes is too short to hold a header of {1}")]
    TooShort(i32, u32),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into frames. `min_payload` is the smallest payload
/// that can hold the header this side expects (requests: api key, version,
/// correlation id and client id length; responses: correlation id).
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_payload: u32,
    min_payload: u32,
    /// Reserve a whole frame as soon as its length is known. Upstream
    /// responses (fetches of a megabyte and more) then land in one buffer
    /// without being copied on every growth; client frames grow in bounded
    /// steps so a client announcing a huge frame and stalling costs little.
    reserve_whole: bool,
}

/// Large enough that bulk transfers need few reallocations, small enough that
/// a slow client announcing a huge frame cannot make klink reserve it.
const READ_RESERVE_STEP: usize = 64 * 1024;

impl FrameCodec {
    pub const REQUEST_MIN_PAYLOAD: u32 = 10;
    pub const RESPONSE_MIN_PAYLOAD: u32 = 4;

    pub fn requests(max_payload: u32) -> FrameCodec {
        FrameCodec {
            max_payload,
            min_payload: Self::REQUEST_MIN_PAYLOAD,
            reserve_whole: false,
        }
    }

    pub fn responses(max_payload: u32) -> FrameCodec {
        FrameCodec {
            max_payload,
            min_payload: Self::RESPONSE_MIN_PAYLOAD,
            reserve_whole: true,
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let length = i32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if length < 0 {
            return Err(FrameError::Negative(length));
        }
        if length as u32 > self.max_payload {
            return Err(FrameError::TooLarge(length as i64, self.max_payload));
        }
        if (length as u32) < self.min_payload {
            return Err(FrameError::TooShort(length, self.min_payload));
        }
        let total = 4 + length as usize;
        if src.len() < total {
            // Grow toward the frame in bounded steps: the limit above was
            // checked, but a peer that never sends the rest costs us little.
            let missing = total - src.len();
            src.reserve(if self.reserve_whole {
                missing
            } else {
                missing.min(READ_RESERVE_STEP)
            });
            return Ok(None);
        }
        Ok(Some(Frame {
            bytes: src.split_to(total).freeze(),
        }))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => {
                let had = buf.remaining();
                buf.clear();
                Err(FrameError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("connection closed mid-frame with {had} bytes buffered"),
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> FrameCodec {
        FrameCodec::requests(1024)
    }

    #[test]
    fn waits_for_a_whole_frame_then_splits_it() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&12i32.to_be_bytes());
        buf.extend_from_slice(&[1; 6]);
        assert!(codec().decode(&mut buf).expect("ok").is_none());
        buf.extend_from_slice(&[2; 6]);
        buf.extend_from_slice(&[9, 9]); // start of the next frame
        let frame = codec().decode(&mut buf).expect("ok").expect("frame");
        assert_eq!(frame.len(), 16);
        assert_eq!(&frame.payload()[..], &[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
        assert_eq!(&buf[..], &[9, 9]);
    }

    #[test]
    fn refuses_huge_negative_and_short_lengths_before_allocating() {
        for (length, expect) in [(i32::MAX, "exceeds"), (-5, "negative"), (3, "too short")] {
            let mut buf = BytesMut::from(&length.to_be_bytes()[..]);
            let before = buf.capacity();
            let err = codec().decode(&mut buf).expect_err("refused");
            assert!(err.to_string().contains(expect), "{err}");
            assert_eq!(buf.capacity(), before, "no allocation for a refused length");
        }
    }

    #[test]
    fn reserves_in_bounded_steps() {
        let mut codec = FrameCodec::requests(u32::MAX >> 1);
        let mut buf = BytesMut::from(&(100_000_000i32).to_be_bytes()[..]);
        assert!(codec.decode(&mut buf).expect("ok").is_none());
        assert!(buf.capacity() <= READ_RESERVE_STEP + 64);
    }

    #[test]
    fn responses_reserve_the_whole_frame_at_once() {
        let mut codec = FrameCodec::responses(1 << 30);
        let mut buf = BytesMut::from(&(10_000_000i32).to_be_bytes()[..]);
        assert!(codec.decode(&mut buf).expect("ok").is_none());
        assert!(buf.capacity() >= 10_000_004);
    }

    #[test]
    fn eof_mid_frame_is_an_error() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 20, 1, 2][..]);
        assert!(codec().decode_eof(&mut buf).is_err());
        assert!(
            codec()
                .decode_eof(&mut BytesMut::new())
                .expect("ok")
                .is_none()
        );
    }
}
