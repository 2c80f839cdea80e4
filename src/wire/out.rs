//! Writing whole frames: queued as the `Bytes` they already are and written
//! with vectored writes, so nothing is copied into a staging buffer and an
//! idle connection holds no write buffer at all.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most slices handed to one `writev`; Linux accepts 1024.
const MAX_SLICES: usize = 64;
/// Queued bytes past which `push` callers should flush before queueing more.
pub const FLUSH_AT: usize = 256 * 1024;

pub struct FrameWriter<W> {
    inner: W,
    queue: VecDeque<Bytes>,
    queued: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(inner: W) -> FrameWriter<W> {
        FrameWriter {
            inner,
            queue: VecDeque::new(),
            queued: 0,
        }
    }

    /// Queues a frame; it goes out at the next `flush`.
    pub fn push(&mut self, frame: Bytes) {
        self.queued += frame.len();
        self.queue.push_back(frame);
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        while !self.queue.is_empty() {
            let slices: Vec<IoSlice<'_>> = self
                .queue
                .iter()
                .take(MAX_SLICES)
                .map(|b| IoSlice::new(b))
                .collect();
            let mut written = self.inner.write_vectored(&slices).await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.queued -= written;
            while written > 0 {
                let Some(front) = self.queue.front_mut() else {
                    break;
                };
                if front.len() <= written {
                    written -= front.len();
                    self.queue.pop_front();
                } else {
                    front.advance(written);
                    written = 0;
                }
            }
        }
        self.inner.flush().await
    }

    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.flush().await?;
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_arrive_whole_and_in_order() {
        let (client, mut server) = tokio::io::duplex(7); // tiny: forces partial writes
        let mut writer = FrameWriter::new(client);
        let frames: Vec<Bytes> = (0..100u8)
            .map(|i| Bytes::from(vec![i; usize::from(i) + 1]))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut server, &mut got)
                .await
                .expect("read");
            got
        });
        for frame in frames {
            writer.push(frame);
        }
        writer.shutdown().await.expect("write");
        drop(writer);
        assert_eq!(reader.await.expect("reader"), expected);
    }
}
