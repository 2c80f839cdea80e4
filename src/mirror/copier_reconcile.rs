//! After a crash the offset map may lag the cluster written (batches
//! landed, entries not yet written). On open the copier pairs that
//! cluster's batches beyond the map, in order, with the batches the map has
//! not seen, so no batch is copied twice and none is skipped; a batch it
//! cannot pair is someone else's, and the copy stops.

use std::time::Duration;

use bytes::Bytes;

use super::{CopyConfig, PartitionCopier};
use crate::error::{Error, Kind, Result};
use crate::mirror::committed::{Walked, walk};
use crate::mirror::requests::fetch;

impl PartitionCopier {
    /// Records in the map the batches that reached the target after the
    /// last entry written (a crash between the two), pairing them in order
    /// with the source's copied batches.
    pub(super) async fn reconcile(&mut self) -> Result<()> {
        let mut adopted = 0;
        // What the written cluster holds now: no reason to wait for more
        // (tansu would hold the fetch for its whole wait).
        let now = CopyConfig {
            fetch_wait: Duration::ZERO,
            ..self.config.clone()
        };
        loop {
            let on_target = fetch(
                &self.target,
                &self.topic,
                self.partition,
                self.target_end,
                0,
                &now,
            )
            .await?;
            let target_batches = walk(&on_target.records, &[]).map_err(|e| {
                Error::upstream(self.target.cluster_name(), Kind::Protocol, e.to_string())
            })?;
            // Transaction markers are never copies (the source may hold
            // some beyond the point a reverse copy starts from).
            let target_batches: Vec<Walked> = target_batches
                .into_iter()
                .filter(|b| b.base_offset >= self.target_end && !b.control)
                .collect();
            if target_batches.is_empty() {
                break;
            }
            for landed in target_batches {
                let (source, source_bytes) = self.next_copied_source_batch().await?;
                let landed_bytes = on_target.records.slice(landed.bytes.clone());
                if source.records != landed.records || !same_records(&source_bytes, &landed_bytes) {
                    return Err(Error::klink(
                        Kind::Protocol,
                        format!(
                            "{}/{}: the batch at {} on {} holds {} records, the next to copy \
                             ({}..={}) {} or other ones: it was written by someone else",
                            self.topic,
                            self.partition,
                            landed.base_offset,
                            self.target.cluster_name(),
                            landed.records,
                            source.base_offset,
                            source.last_offset,
                            source.records
                        ),
                    ));
                }
                self.log.append_copied(
                    self.direction,
                    source.base_offset,
                    source.last_offset,
                    landed.base_offset,
                )?;
                self.set_position(source.last_offset + 1);
                self.target_end = landed.last_offset + 1;
                adopted += 1;
            }
        }
        if adopted > 0 {
            self.publish_map();
            self.log.sync()?;
            tracing::info!(topic = %self.topic, partition = self.partition, batches = adopted, "mirror: adopted batches the target had beyond the offset map");
        }
        Ok(())
    }

    /// The next source batch from `position` on that the mirror copies;
    /// dropped batches on the way move `position` past them.
    async fn next_copied_source_batch(&mut self) -> Result<(Walked, Bytes)> {
        for _ in 0..1000 {
            let fetched = fetch(
                &self.source,
                &self.topic,
                self.partition,
                self.position,
                1,
                &self.config,
            )
            .await?;
            let walked = walk(&fetched.records, &fetched.aborted).map_err(|e| {
                Error::upstream(self.source.cluster_name(), Kind::Protocol, e.to_string())
            })?;
            let from = self.position;
            let walked: Vec<Walked> = walked
                .into_iter()
                .filter(|b| b.last_offset >= from)
                .collect();
            // A hole here would pair the target's batch with the wrong
            // source batch: fetched again, as in `step`.
            let walked = self.up_to_a_hole(walked);
            if walked.is_empty() && self.hole.is_some() {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            // Cut as `step` cuts them: the copies are of the cut batches.
            let (records, walked) = self.cut_at_holes(&fetched.records, walked)?;
            for batch in walked {
                if batch.copy {
                    let bytes = records.slice(batch.bytes.clone());
                    return Ok((batch, bytes));
                }
                self.set_position(batch.last_offset + 1);
            }
        }
        Err(Error::klink(
            Kind::Protocol,
            format!(
                "{}/{}: the target holds batches the source has not (yet) shown",
                self.topic, self.partition
            ),
        ))
    }
}

/// Whether two batches carry the same records: everything the CRC covers
/// but the producer id, epoch and base sequence (which a copy rewrites).
/// Pairs a batch found on the cluster written with the one it copies, so
/// that a stranger's batch of the same size is never taken for a copy.
fn same_records(a: &[u8], b: &[u8]) -> bool {
    // v2 batch: attributes at 21, producer id at 43, records count at 57.
    const KEPT_BEFORE: std::ops::Range<usize> = 23..43;
    const KEPT_FROM: usize = 57;
    a.len() == b.len()
        && a.get(KEPT_BEFORE) == b.get(KEPT_BEFORE)
        && a.get(KEPT_FROM..) == b.get(KEPT_FROM..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: i64, value: u8) -> Vec<u8> {
        let mut b = vec![0u8; 70];
        b[43..51].copy_from_slice(&producer_id.to_be_bytes());
        b[57..61].copy_from_slice(&1i32.to_be_bytes());
        b[69] = value;
        b
    }

    #[test]
    fn a_copy_is_known_by_its_records_whatever_its_producer() {
        assert!(
            same_records(&batch(7, 1), &batch(900, 1)),
            "rewritten producer"
        );
        assert!(!same_records(&batch(7, 1), &batch(7, 2)), "other records");
        assert!(!same_records(&batch(7, 1), &batch(7, 1)[..60]), "cut short");
        let mut later = batch(7, 1);
        later[30] = 9; // another timestamp
        assert!(!same_records(&batch(7, 1), &later));
    }
}
