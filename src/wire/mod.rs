//! Kafka framing and the few header fields routing needs.
//!
//! What this module must never do: allocate or reserve from a length read off
//! the wire before that length passed the `max_frame_bytes` check, or panic on
//! any input. Frames keep their 4-byte length prefix so forwarding one is a
//! single write of the bytes as they arrived.

mod cursor;
mod frame;
mod header;
mod out;

pub use cursor::{Cursor, CursorError};
pub use frame::{Frame, FrameCodec, FrameError};
pub use header::{RequestHeader, fetch_max_bytes, produce_acks, produce_acks_at, response_frame};
pub use out::{FLUSH_AT, FrameWriter};
