use super::*;

fn client(id: i64, epoch: i16) -> ClientProducer {
    ClientProducer {
        issuer: Arc::from("source"),
        identity: Identity {
            producer_id: id,
            epoch,
        },
    }
}

fn seq(ids: &ProducerIds, c: &ClientProducer, to: &Arc<str>, s: i32, n: i32) -> Option<i32> {
    ids.place(c, to, "orders", 0, s, n).map(|p| p.sequence)
}

#[test]
fn batches_to_the_issuer_go_as_they_are_until_the_writes_leave_it() {
    let ids = ProducerIds::default();
    let source: Arc<str> = Arc::from("source");
    let c = client(7, 0);
    assert_eq!(seq(&ids, &c, &source, 0, 10), None);
    assert_eq!(seq(&ids, &c, &source, 10, 10), None);
    assert!(!ids.any_remapped());
}

#[test]
fn sequences_start_at_zero_per_partition_and_retries_keep_theirs() {
    let ids = ProducerIds::default();
    let target: Arc<str> = Arc::from("target");
    let c = client(7, 0);
    assert_eq!(seq(&ids, &c, &target, 100, 5), Some(0));
    assert_eq!(seq(&ids, &c, &target, 105, 3), Some(5));
    assert_eq!(seq(&ids, &c, &target, 100, 5), Some(0), "a retry");
    assert_eq!(
        ids.place(&c, &target, "orders", 1, 40, 1)
            .map(|p| p.sequence),
        Some(0),
        "per partition"
    );
    assert_eq!(
        seq(&ids, &client(7, 1), &target, 0, 1),
        Some(0),
        "a new epoch is a new identity"
    );
}

#[test]
fn flips_back_and_forth_keep_every_space_continuous() {
    let ids = ProducerIds::default();
    let source: Arc<str> = Arc::from("source");
    let target: Arc<str> = Arc::from("target");
    let c = client(3, 2);
    // 0..100 went to the source as they were (not seen by this map).
    assert_eq!(seq(&ids, &c, &target, 100, 50), Some(0));
    // Back to the source: it last saw 99, so 150 becomes 100.
    assert_eq!(seq(&ids, &c, &source, 150, 10), Some(100));
    assert_eq!(seq(&ids, &c, &source, 160, 10), Some(110));
    // Again to the target: it continues at 50.
    assert_eq!(seq(&ids, &c, &target, 170, 5), Some(50));
    for round in 0..10 {
        let base = 175 + round * 20;
        let on_source = seq(&ids, &c, &source, base, 10).expect("placed");
        let on_target = seq(&ids, &c, &target, base + 10, 10).expect("placed");
        assert_eq!(on_source, 120 + round * 10);
        assert_eq!(on_target, 55 + round * 10);
    }
}

#[test]
fn a_retry_from_before_the_first_batch_seen_is_new_data_not_a_wrap() {
    let ids = ProducerIds::default();
    let target: Arc<str> = Arc::from("target");
    let c = client(3, 0);
    assert_eq!(seq(&ids, &c, &target, 100, 10), Some(0));
    // A batch from before the flip, retried after it, lands after: the
    // old rebasing sent it at about 2^31.
    assert_eq!(seq(&ids, &c, &target, 95, 5), Some(10));
    assert_eq!(seq(&ids, &c, &target, 110, 1), Some(15));
}

#[test]
fn a_retry_of_a_batch_the_issuer_saw_unchanged_keeps_the_clients_sequence() {
    let ids = ProducerIds::default();
    let source: Arc<str> = Arc::from("source");
    let target: Arc<str> = Arc::from("target");
    let c = client(3, 0);
    assert_eq!(seq(&ids, &c, &target, 100, 10), Some(0));
    // Batch 90 went to the source as it was, its answer was lost, and
    // the client retries it there: the source deduplicates it.
    assert_eq!(seq(&ids, &c, &source, 90, 10), Some(90));
    assert_eq!(seq(&ids, &c, &source, 110, 10), Some(100));
}

#[test]
fn sequences_wrap_at_two_to_the_31() {
    let ids = ProducerIds::default();
    let source: Arc<str> = Arc::from("source");
    let target: Arc<str> = Arc::from("target");
    let c = client(3, 0);
    // The source has seen up to i32::MAX - 1 when the writes leave it.
    assert_eq!(seq(&ids, &c, &target, i32::MAX - 1, 4), Some(0));
    let back = seq(&ids, &c, &source, 2, 4).expect("placed");
    assert_eq!(back, i32::MAX - 1, "continues where the source was");
    assert_eq!(seq(&ids, &c, &source, 6, 4), Some(2), "wrapped past 2^31");
}

#[test]
fn a_refused_batch_gives_its_place_back_and_a_lost_one_keeps_it() {
    let ids = ProducerIds::default();
    let target: Arc<str> = Arc::from("target");
    let c = client(3, 0);
    let a = ids.place(&c, &target, "orders", 0, 0, 10).expect("a");
    let b = ids.place(&c, &target, "orders", 0, 10, 10).expect("b");
    assert_eq!((a.sequence, b.sequence), (0, 10));
    // b refused (e.g. NOT_LEADER at a flip) and retried elsewhere; the
    // next batch to the target takes b's place, not one after it.
    ids.settle(&b, Outcome::Refused);
    assert_eq!(seq(&ids, &c, &target, 20, 5), Some(10));
    // A batch whose answer never came keeps its place.
    let d = ids.place(&c, &target, "orders", 0, 25, 5).expect("d");
    ids.settle(&d, Outcome::Kept);
    assert_eq!(seq(&ids, &c, &target, 30, 1), Some(20));
    // A refused batch retried to the same cluster gets a place again.
    let e = ids.place(&c, &target, "orders", 0, 31, 2).expect("e");
    ids.settle(&e, Outcome::Refused);
    assert_eq!(seq(&ids, &c, &target, 31, 2), Some(21));
}

#[test]
fn ids_from_two_clusters_never_meet() {
    // Both clusters issue id 0 first: the client's 0 from the source and
    // klink's 0 from the target are different identities.
    let ids = ProducerIds::default();
    let target: Arc<str> = Arc::from("target");
    let c = client(0, 0);
    assert_eq!(
        ids.set_mapped(
            &c,
            &target,
            Identity {
                producer_id: 0,
                epoch: 0
            }
        )
        .producer_id,
        0
    );
    assert_eq!(
        ids.mapped(&c, &Arc::from("source")),
        Some(c.identity),
        "on its issuer a client keeps its own id"
    );
    assert_eq!(seq(&ids, &c, &target, 40, 1), Some(0));
    assert_eq!(seq(&ids, &c, &target, 41, 1), Some(1));
    // A second client with klink's number gets its own mapping.
    let other = client(5, 0);
    assert_eq!(ids.mapped(&other, &target), None);
}

#[test]
fn error_codes_say_whether_a_batch_was_taken() {
    assert_eq!(outcome_of(0), Outcome::Kept);
    assert_eq!(outcome_of(46), Outcome::Kept, "duplicate sequence");
    assert_eq!(outcome_of(7), Outcome::Kept, "request timed out");
    assert_eq!(outcome_of(6), Outcome::Refused, "not leader");
    assert_eq!(outcome_of(45), Outcome::Refused, "out of order");
}

#[test]
fn remaps_come_back_from_the_journal_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target: Arc<str> = Arc::from("target");
    let c = client(7, 0);
    {
        let ids = ProducerIds::open(dir.path()).expect("open");
        ids.set_mapped(
            &c,
            &target,
            Identity {
                producer_id: 40,
                epoch: 0,
            },
        );
        assert_eq!(seq(&ids, &c, &target, 100, 5), Some(0));
        assert_eq!(seq(&ids, &c, &target, 105, 3), Some(5));
        let refused = ids.place(&c, &target, "orders", 0, 108, 2).expect("placed");
        ids.settle(&refused, Outcome::Refused);
        // Dropped without a word, as kill -9 would.
    }
    let ids = ProducerIds::open(dir.path()).expect("reopen");
    assert!(ids.any_remapped());
    assert_eq!(
        ids.mapped(&c, &target).map(|i| i.producer_id),
        Some(40),
        "the identity the target issued"
    );
    assert_eq!(
        seq(&ids, &c, &target, 105, 3),
        Some(5),
        "a retry keeps its place"
    );
    assert_eq!(
        seq(&ids, &c, &target, 108, 2),
        Some(8),
        "the refused place is free"
    );
    // Reopened again (the journal was rewritten whole at open): the same.
    drop(ids);
    let ids = ProducerIds::open(dir.path()).expect("reopen twice");
    assert_eq!(seq(&ids, &c, &target, 100, 5), Some(0));
    assert_eq!(seq(&ids, &c, &target, 110, 1), Some(10));
}

#[test]
fn where_transactions_run_comes_back_from_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target: Arc<str> = Arc::from("target");
    {
        let ids = ProducerIds::open(dir.path()).expect("open");
        ids.pin_transactions("moved", Some(&target));
        ids.pin_transactions("back", Some(&target));
        ids.pin_transactions("back", None);
    }
    let ids = ProducerIds::open(dir.path()).expect("reopen");
    assert_eq!(ids.transactions_pinned("moved"), Some(target.clone()));
    assert_eq!(ids.transactions_pinned("back"), None);
    drop(ids);
    let ids = ProducerIds::open(dir.path()).expect("reopen twice");
    assert_eq!(ids.transactions_pinned("moved"), Some(target));
}
