use super::*;

fn map(runs: &[(i64, i64, i64)]) -> OffsetMap {
    let mut map = OffsetMap::default();
    for &(source_base, source_last, target_base) in runs {
        map.append(source_base, source_last, target_base)
            .expect("runs in order");
    }
    map
}

fn era(side: Side, upstream_from: i64, client_from: i64) -> Era {
    Era {
        side,
        upstream_from,
        client_from,
        epoch_shift: 0,
        epoch_from: 0,
    }
}

#[test]
fn an_earliest_link_from_zero_is_the_identity_on_both_sides() {
    let copied = map(&[(0, 9, 0), (10, 19, 10)]);
    assert!(View::build(&[], &copied, Side::Source).is_identity());
    assert!(View::build(&[], &copied, Side::Target).is_identity());
    // Promoted at 20 on both: still the identity, new records included.
    let eras = [era(Side::Target, 20, 20)];
    assert!(View::build(&eras, &copied, Side::Target).is_identity());
}

#[test]
fn a_latest_link_reads_the_target_in_source_offsets() {
    // The source held 0..100 when the link started; copies from 100 on
    // landed at 0 on the target.
    let copied = map(&[(100, 149, 0)]);
    let target = View::build(&[], &copied, Side::Target);
    assert!(!target.is_identity());
    assert_eq!(target.to_client(0), Some(100));
    assert_eq!(target.to_client(49), Some(149));
    assert_eq!(target.place_batch(10, 19), BatchPlace::At(110));
    // Written on the target but not in the map yet: not shown yet.
    assert_eq!(target.place_batch(50, 59), BatchPlace::NotYet);
    assert_eq!(target.end_to_client(60), 150);
    assert_eq!(target.start_to_client(0), 100);
    assert_eq!(target.from_client(120), Position::At(20));
    assert_eq!(target.from_client(150), Position::At(50));
    assert_eq!(target.from_client(99), Position::Below);
    // The source itself is its own numbering.
    assert!(View::build(&[], &copied, Side::Source).is_identity());
}

#[test]
fn after_a_promotion_new_target_records_continue_the_source_numbering() {
    let copied = map(&[(100, 149, 0)]);
    let eras = [era(Side::Target, 50, 150)];
    let target = View::build(&eras, &copied, Side::Target);
    assert_eq!(target.place_batch(50, 54), BatchPlace::At(150));
    assert_eq!(target.place_batch(1000, 1001), BatchPlace::At(1100));
    assert_eq!(target.end_to_client(1002), 1102);
    assert_eq!(target.from_client(1100), Position::At(1000));
    // The reverse mirror copies the new records back: 50.. -> source 150..
    let both = map(&[(100, 149, 0), (150, 159, 50)]);
    let source = View::build(&eras, &both, Side::Source);
    assert!(source.is_identity(), "{source:?}");
}

#[test]
fn a_gap_on_the_target_keeps_the_meaning_of_every_offset_after_a_rollback() {
    // Promoted at [150 -> 50]; the target then held 50..60 (new), a
    // transaction marker at 60 the reverse copy could not write, and
    // 61..70. The source got 150..160 and 160..169 (one short).
    let runs = map(&[(100, 149, 0), (150, 159, 50), (160, 168, 61)]);
    let promoted = [era(Side::Target, 50, 150)];
    let target = View::build(&promoted, &runs, Side::Target);
    assert_eq!(target.to_client(61), Some(161));
    // Rolled back at [169 -> 70]: client 170 is the next new record.
    let eras = [era(Side::Target, 50, 150), era(Side::Source, 169, 170)];
    let source = View::build(&eras, &runs, Side::Source);
    assert!(!source.is_identity());
    // The copies on the source keep the numbers clients read them by.
    assert_eq!(source.to_client(160), Some(161));
    assert_eq!(source.to_client(168), Some(169));
    // New source records after the rollback.
    assert_eq!(source.to_client(169), Some(170));
    assert_eq!(source.from_client(161), Position::At(160));
    assert_eq!(source.from_client(170), Position::At(169));
    // The marker's number has no record on the source: the next one.
    assert_eq!(source.from_client(160), Position::At(160));
    assert_eq!(source.end_to_client(169), 170);
    // The first era stays as it was.
    assert_eq!(source.to_client(120), Some(120));
    assert_eq!(source.place_batch(140, 149), BatchPlace::At(140));
}

#[test]
fn records_nobody_copied_are_skipped_not_shown() {
    // Target 0..9 copies source 100..109; 10..14 written behind klink's
    // back; 15.. copies 110..
    let runs = map(&[(100, 109, 0), (110, 119, 15)]);
    let target = View::build(&[], &runs, Side::Target);
    assert_eq!(target.place_batch(10, 14), BatchPlace::Skip);
    assert_eq!(target.place_batch(15, 19), BatchPlace::At(110));
    assert_eq!(target.end_to_client(12), 110);
    assert_eq!(target.start_to_client(12), 110);
    // A batch that straddles a segment's end is not one klink copied.
    assert_eq!(target.place_batch(8, 11), BatchPlace::Skip);
}

#[test]
fn an_empty_map_before_a_latest_link_copies_anything() {
    let target = View::build(&[], &OffsetMap::default(), Side::Target);
    assert!(target.is_identity());
    assert_eq!(target.place_batch(0, 3), BatchPlace::NotYet);
}

#[test]
fn offsets_at_the_ends_of_the_range_do_not_overflow() {
    let copied = map(&[(100, 149, 0)]);
    let eras = [era(Side::Target, 50, 150)];
    let target = View::build(&eras, &copied, Side::Target);
    for extreme in [i64::MIN, -1, i64::MAX] {
        let _ = target.from_client(extreme);
        let _ = target.commit_position(extreme);
        let _ = target.committed_to_client(extreme);
        let _ = target.start_to_client(extreme);
        let _ = target.end_to_client(extreme);
        let _ = target.to_client(extreme);
        let _ = target.place_batch(extreme, extreme);
    }
    assert_eq!(target.from_client(i64::MAX), Position::At(i64::MAX - 100));
}

#[test]
fn a_compacted_sources_records_keep_their_offsets_on_the_target() {
    // Source batch 10..=19 kept records 10, 12, 13 and 17 after compaction;
    // the mirror copied it cut into batches of consecutive records, which
    // landed at 100, 101..=102 and 103 (`mirror::compacted`).
    let copied = map(&[(10, 10, 100), (12, 13, 101), (17, 17, 103)]);
    let target = View::build(&[], &copied, Side::Target);
    assert_eq!(target.place_batch(100, 100), BatchPlace::At(10));
    assert_eq!(target.place_batch(101, 102), BatchPlace::At(12));
    assert_eq!(target.place_batch(103, 103), BatchPlace::At(17));
    assert_eq!(target.to_client(102), Some(13));
    // Promoted at the source's end, 20 (18 and 19 were compacted away).
    let eras = [era(Side::Target, 104, 20)];
    let target = View::build(&eras, &copied, Side::Target);
    assert_eq!(target.place_batch(104, 105), BatchPlace::At(20));
    // A consumer at 11 or 18 (offsets compaction removed) reads on.
    assert_eq!(target.from_client(11), Position::At(101));
    assert_eq!(target.from_client(18), Position::At(104));
    assert_eq!(target.end_to_client(104), 20);
}
