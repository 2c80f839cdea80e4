//! Frame splitting and request headers: any bytes a client or an upstream
//! sends, in any chunking, split into frames (or refused), and every
//! request frame's header parsed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

use klink::wire::{FrameCodec, RequestHeader};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size: frames that straddle reads.
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    for mut codec in [
        FrameCodec::requests(1 << 20),
        FrameCodec::responses(1 << 20),
    ] {
        let mut buf = BytesMut::new();
        'feed: for piece in rest.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let _ = RequestHeader::parse(&frame.payload());
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }
});
