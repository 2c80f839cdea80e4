//! Choosing a partition: by key the way the Java client does (so keyed
//! records land where a Java producer would put them), otherwise sticky.

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), in
/// wrapping i32 arithmetic as Java computes it.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java default partitioner picks for a key.
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    if partitions == 0 {
        return 0;
    }
    (murmur2(key) & 0x7fff_ffff) as usize % partitions
}

/// Records without a key stay on one partition until about a batch worth
/// of bytes went there, then move on to the next (KIP-794's uniform sticky
/// partitioner, with round robin instead of a random pick so that load
/// spreads evenly and runs repeat).
#[derive(Debug, Default)]
pub(crate) struct Sticky {
    current: usize,
    bytes_here: usize,
}

impl Sticky {
    pub fn next(&mut self, partitions: usize, record_bytes: usize, batch_size: usize) -> usize {
        if partitions == 0 {
            return 0;
        }
        if self.bytes_here >= batch_size {
            self.current = (self.current + 1) % partitions;
            self.bytes_here = 0;
        }
        self.current %= partitions;
        self.bytes_here += record_bytes;
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_java() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn keys_map_like_the_java_partitioner() {
        // toPositive(-973932308) % 3 == 1173551340 % 3 == 0
        assert_eq!(partition_for_key(b"21", 3), 1_173_551_340 % 3);
        assert_eq!(partition_for_key(b"abc", 7), 479_470_107 % 7);
        assert_eq!(partition_for_key(b"abc", 0), 0);
    }

    #[test]
    fn sticky_moves_on_after_a_batch_worth_of_bytes() {
        let mut sticky = Sticky::default();
        let picks: Vec<usize> = (0..9).map(|_| sticky.next(3, 100, 300)).collect();
        assert_eq!(picks, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(sticky.next(3, 100, 300), 0);
        // fewer partitions than before (metadata changed): still in range
        let mut sticky = Sticky {
            current: 5,
            bytes_here: 0,
        };
        assert!(sticky.next(2, 1, 10) < 2);
    }
}
