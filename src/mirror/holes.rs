//! Holes in a source's offsets: wait for them, or take them for gaps.

use std::time::{Duration, Instant};

use super::committed::Walked;

/// How long a hole in the source's offsets is fetched again before it
/// counts as a gap.
const HOLE_WAIT: Duration = Duration::from_secs(1);

/// The batches from `position` up to the first hole in their offsets,
/// unless that hole has stood since `HOLE_WAIT` ago; and the hole still
/// waited on, with when it was first seen. tansu can answer a fetch with a
/// batch missing below later ones while its write is still under way
/// (README quirks): copying past it would leave it behind for good. A
/// hole that stays (a batch compacted away) becomes a gap in the map.
pub(super) fn up_to_a_hole(
    walked: Vec<Walked>,
    position: i64,
    seen: Option<(i64, Instant)>,
    now: Instant,
) -> (Vec<Walked>, Option<(i64, Instant)>) {
    let mut expected = position;
    for (index, batch) in walked.iter().enumerate() {
        if batch.base_offset > expected {
            let since = match seen {
                Some((at, since)) if at == expected => since,
                _ => now,
            };
            if now.duration_since(since) < HOLE_WAIT {
                return (
                    walked.into_iter().take(index).collect(),
                    Some((expected, since)),
                );
            }
        }
        expected = expected.max(batch.last_offset + 1);
    }
    (walked, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, last: i64) -> Walked {
        Walked {
            bytes: 0..0,
            base_offset: base,
            last_offset: last,
            records: i32::try_from(last - base + 1).expect("small"),
            copy: true,
            control: false,
        }
    }

    fn bases(walked: &[Walked]) -> Vec<i64> {
        walked.iter().map(|w| w.base_offset).collect()
    }

    #[test]
    fn a_hole_in_the_source_offsets_is_fetched_again_before_it_counts_as_a_gap() {
        let t0 = Instant::now();
        let fetched = || vec![batch(10, 10), batch(12, 12), batch(13, 14)];
        // 11 is missing: copy up to it, wait for it.
        let (kept, hole) = up_to_a_hole(fetched(), 10, None, t0);
        assert_eq!(bases(&kept), vec![10]);
        assert_eq!(hole, Some((11, t0)));
        // Still missing a moment later: still waited on, since t0.
        let (kept, hole) = up_to_a_hole(fetched()[1..].to_vec(), 11, hole, t0 + HOLE_WAIT / 2);
        assert!(kept.is_empty());
        assert_eq!(hole, Some((11, t0)));
        // It arrived: no hole.
        let (kept, hole) = up_to_a_hole(vec![batch(11, 11), batch(12, 12)], 11, hole, t0);
        assert_eq!(bases(&kept), vec![11, 12]);
        assert_eq!(hole, None);
        // It never arrives: after HOLE_WAIT the rest is copied.
        let (kept, hole) =
            up_to_a_hole(fetched()[1..].to_vec(), 11, Some((11, t0)), t0 + HOLE_WAIT);
        assert_eq!(bases(&kept), vec![12, 13]);
        assert_eq!(hole, None);
        // A fetch starting inside the batch at the position is no hole.
        let (kept, _) = up_to_a_hole(vec![batch(8, 12), batch(13, 13)], 10, None, t0);
        assert_eq!(bases(&kept), vec![8, 13]);
    }
}
