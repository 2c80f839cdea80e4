//! A partition's offset map (DESIGN trap 7): which source offsets became
//! which target offsets. The mirror appends one entry per copied batch
//! (source base..=last -> target base); offsets in between entries (a log
//! start above 0, compacted records, transaction markers, aborted batches)
//! are gaps with no target offset.
//!
//! On disk it is an append-only file of fixed-size entries, each with its
//! own CRC-32C, so appending costs one small write (and an fsync per group
//! of entries, the caller's choice) at any rate, a crash leaves at most a
//! torn last entry (cut off on load), and nothing is rewritten whole.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Kind, Result};

/// Source base, source end (exclusive), target base, CRC-32C of those.
const ENTRY_LEN: usize = 8 + 8 + 8 + 4;

/// A run of consecutive source offsets that became consecutive target
/// offsets. Adjacent batches merge into one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub source_start: i64,
    /// Exclusive.
    pub source_end: i64,
    pub target_start: i64,
}

impl Run {
    pub fn target_end(&self) -> i64 {
        self.target_start + (self.source_end - self.source_start)
    }
}

/// Which way a copy goes: source -> target while clients write the source,
/// target -> source (the reverse mirror) while a topic is promoted. Both
/// directions write one map, in source -> target terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Reverse,
}

/// Where a source offset lands on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    Exactly(i64),
    /// In a gap: nothing was copied there; the next copied record is here.
    Gap {
        next: i64,
    },
    /// Beyond what has been copied.
    NotYet,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OffsetMap {
    runs: Vec<Run>,
}

impl OffsetMap {
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }

    /// Where copying continues on the source: after the last copied batch.
    pub fn source_end(&self) -> Option<i64> {
        self.runs.last().map(|r| r.source_end)
    }

    pub fn target_end(&self) -> Option<i64> {
        self.runs.last().map(Run::target_end)
    }

    /// Records one copied batch. Batches come in source order and land in
    /// target order; anything else is a bug in the caller, refused.
    pub fn append(&mut self, source_base: i64, source_last: i64, target_base: i64) -> Result<()> {
        if source_last < source_base {
            return Err(Error::klink(
                Kind::Protocol,
                format!("offset map: batch {source_base}..={source_last} is empty"),
            ));
        }
        if let Some(last) = self.runs.last_mut() {
            if source_base < last.source_end || target_base < last.target_end() {
                return Err(Error::klink(
                    Kind::Protocol,
                    format!(
                        "offset map: batch {source_base}->{target_base} goes back before {}->{}",
                        last.source_end,
                        last.target_end()
                    ),
                ));
            }
            if source_base == last.source_end && target_base == last.target_end() {
                last.source_end = source_last + 1;
                return Ok(());
            }
        }
        self.runs.push(Run {
            source_start: source_base,
            source_end: source_last + 1,
            target_start: target_base,
        });
        Ok(())
    }

    pub fn to_target(&self, source: i64) -> Mapped {
        let index = self.runs.partition_point(|r| r.source_end <= source);
        match self.runs.get(index) {
            None => Mapped::NotYet,
            Some(run) if source >= run.source_start => {
                Mapped::Exactly(run.target_start + (source - run.source_start))
            }
            Some(run) => Mapped::Gap {
                next: run.target_start,
            },
        }
    }

    /// The map a copier keeps in `path`, read without taking it over: a
    /// promotion reads what the mirror has copied while it runs (an entry
    /// being written is not read).
    pub fn load(path: &Path) -> Result<OffsetMap> {
        read_entries(path).map(|(map, _, _)| map)
    }

    /// The same runs seen from the target: target offsets -> source
    /// offsets (what the reverse mirror and a rollback translate with).
    pub fn reversed(&self) -> Vec<Run> {
        self.runs
            .iter()
            .map(|r| Run {
                source_start: r.target_start,
                source_end: r.target_end(),
                target_start: r.source_start,
            })
            .collect()
    }

    /// Where a copy in one direction continues: the end of the runs on the
    /// side it reads from, and on the side it writes to.
    pub fn ends(&self, direction: Direction) -> Option<(i64, i64)> {
        let last = self.runs.last()?;
        Some(match direction {
            Direction::Forward => (last.source_end, last.target_end()),
            Direction::Reverse => (last.target_end(), last.source_end),
        })
    }

    /// Same offsets on both sides, from the first copied record on: the
    /// condition for clients to talk to the target directly one day.
    pub fn is_identity(&self) -> bool {
        self.runs.iter().all(|r| r.source_start == r.target_start)
    }
}

/// An offset map kept in a file.
pub struct OffsetLog {
    path: PathBuf,
    file: File,
    map: OffsetMap,
    /// Entries written since the last fsync: an idle copier syncs often
    /// and should cost nothing when there is nothing to make durable.
    unsynced: bool,
}

impl OffsetLog {
    /// Opens (or creates) the map in `path`, cutting off a torn last entry.
    pub fn open(path: &Path) -> Result<OffsetLog> {
        let io = |what: &str, e: std::io::Error| {
            Error::klink(Kind::Io, format!("{what} {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("creating the directory of", e))?;
        }
        let (map, good, len) = read_entries(path)?;
        if good < len {
            tracing::warn!(file = %path.display(), kept = good / ENTRY_LEN, dropped_bytes = len - good, "offset map: torn or bad tail cut off");
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| io("opening", e))?;
        file.set_len(good as u64)
            .map_err(|e| io("cutting the tail of", e))?;
        let mut log = OffsetLog {
            path: path.to_path_buf(),
            file,
            map,
            unsynced: false,
        };
        log.seek_end()?;
        Ok(log)
    }

    fn seek_end(&mut self) -> Result<()> {
        use std::io::Seek;
        self.file
            .seek(std::io::SeekFrom::End(0))
            .map(|_| ())
            .map_err(|e| Error::klink(Kind::Io, format!("seeking {}: {e}", self.path.display())))
    }

    pub fn map(&self) -> &OffsetMap {
        &self.map
    }

    /// Records a copied batch (written, not yet fsynced: see [`OffsetLog::sync`]).
    pub fn append(&mut self, source_base: i64, source_last: i64, target_base: i64) -> Result<()> {
        self.map.append(source_base, source_last, target_base)?;
        let entry = encode(source_base, source_last + 1, target_base);
        self.unsynced = true;
        self.file
            .write_all(&entry)
            .map_err(|e| Error::klink(Kind::Io, format!("writing {}: {e}", self.path.display())))
    }

    /// Records a batch copied in `direction`: `from_base..=from_last` on
    /// the cluster read, landed at `to_base` on the cluster written.
    pub fn append_copied(
        &mut self,
        direction: Direction,
        from_base: i64,
        from_last: i64,
        to_base: i64,
    ) -> Result<()> {
        match direction {
            Direction::Forward => self.append(from_base, from_last, to_base),
            Direction::Reverse => {
                self.append(to_base, to_base + (from_last - from_base), from_base)
            }
        }
    }

    /// Makes every appended entry durable.
    pub fn sync(&mut self) -> Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        self.file.sync_data().map_err(|e| {
            Error::klink(Kind::Io, format!("fsyncing {}: {e}", self.path.display()))
        })?;
        self.unsynced = false;
        Ok(())
    }
}

/// The map in `path` (empty when there is no file), how many of the
/// file's bytes hold good entries, and the file's length.
fn read_entries(path: &Path) -> Result<(OffsetMap, usize, usize)> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes)
                .map_err(|e| Error::klink(Kind::Io, format!("reading {}: {e}", path.display())))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::klink(
                Kind::Io,
                format!("opening {}: {e}", path.display()),
            ));
        }
    }
    let mut map = OffsetMap::default();
    let mut good = 0;
    for entry in bytes.chunks_exact(ENTRY_LEN) {
        let Some((base, end, target)) = decode(entry) else {
            break;
        };
        if map.append(base, end - 1, target).is_err() {
            break;
        }
        good += ENTRY_LEN;
    }
    Ok((map, good, bytes.len()))
}

fn encode(source_base: i64, source_end: i64, target_base: i64) -> [u8; ENTRY_LEN] {
    let mut entry = [0u8; ENTRY_LEN];
    entry[0..8].copy_from_slice(&source_base.to_be_bytes());
    entry[8..16].copy_from_slice(&source_end.to_be_bytes());
    entry[16..24].copy_from_slice(&target_base.to_be_bytes());
    let crc = crc32c::crc32c(&entry[..24]);
    entry[24..].copy_from_slice(&crc.to_be_bytes());
    entry
}

fn decode(entry: &[u8]) -> Option<(i64, i64, i64)> {
    let field = |at: usize| -> Option<i64> {
        Some(i64::from_be_bytes(entry.get(at..at + 8)?.try_into().ok()?))
    };
    let crc = u32::from_be_bytes(entry.get(24..28)?.try_into().ok()?);
    (crc32c::crc32c(entry.get(..24)?) == crc).then_some((field(0)?, field(8)?, field(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::AbortedTransaction;
    use crate::mirror::committed;

    #[test]
    fn adjacent_batches_merge_and_gaps_stay_gaps() {
        let mut map = OffsetMap::default();
        map.append(100, 104, 0).expect("append");
        map.append(105, 109, 5).expect("append");
        // 110..=111 dropped (an aborted transaction and its marker).
        map.append(112, 112, 10).expect("append");
        assert_eq!(map.runs().len(), 2);
        assert_eq!(map.to_target(100), Mapped::Exactly(0));
        assert_eq!(map.to_target(109), Mapped::Exactly(9));
        assert_eq!(map.to_target(110), Mapped::Gap { next: 10 });
        assert_eq!(map.to_target(99), Mapped::Gap { next: 0 });
        assert_eq!(map.to_target(112), Mapped::Exactly(10));
        assert_eq!(map.to_target(113), Mapped::NotYet);
        assert_eq!(map.source_end(), Some(113));
        assert_eq!(map.target_end(), Some(11));
        assert!(!map.is_identity());
        assert!(map.append(50, 60, 20).is_err(), "going back is refused");
        assert!(map.append(200, 201, 5).is_err(), "target going back too");
    }

    #[test]
    fn both_directions_write_one_map_that_reads_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("orders-0.map");
        let mut log = OffsetLog::open(&path).expect("open");
        // Mirrored: source 0..=9 -> target 0..; a marker at source 10.
        log.append_copied(Direction::Forward, 0, 9, 0)
            .expect("forward");
        // Promoted at source 11 / target 10: the reverse mirror copies the
        // target's 10..=14 to the source's 11.., then (a marker on the
        // target at 15) 16..=17 to 16.
        log.append_copied(Direction::Reverse, 10, 14, 11)
            .expect("reverse");
        log.append_copied(Direction::Reverse, 16, 17, 16)
            .expect("reverse");
        let map = log.map().clone();
        assert_eq!(map.ends(Direction::Forward), Some((18, 18)));
        assert_eq!(map.ends(Direction::Reverse), Some((18, 18)));
        assert_eq!(map.to_target(12), Mapped::Exactly(11));
        assert_eq!(map.to_target(10), Mapped::Gap { next: 10 }, "the marker");
        let back = map.reversed();
        assert_eq!(
            back,
            vec![
                Run {
                    source_start: 0,
                    source_end: 10,
                    target_start: 0
                },
                Run {
                    source_start: 10,
                    source_end: 15,
                    target_start: 11
                },
                Run {
                    source_start: 16,
                    source_end: 18,
                    target_start: 16
                },
            ]
        );
        // Read by a promotion while the copier holds the file.
        log.sync().expect("sync");
        assert_eq!(OffsetMap::load(&path).expect("load"), map);
        assert_eq!(
            OffsetMap::load(&dir.path().join("none.map")).expect("load"),
            OffsetMap::default(),
            "no file: nothing copied yet"
        );
        // A reverse copy may not go back behind what either side holds.
        assert!(log.append_copied(Direction::Reverse, 17, 17, 30).is_err());
    }

    #[test]
    fn a_map_from_offset_zero_without_gaps_is_the_identity() {
        let mut map = OffsetMap::default();
        map.append(0, 9, 0).expect("append");
        map.append(10, 19, 10).expect("append");
        assert!(map.is_identity());
        assert_eq!(map.runs().len(), 1);
    }

    #[test]
    fn the_fixtures_transactions_become_exact_gaps() {
        // Copy the fixture's committed batches to a target that starts
        // empty: each copied batch lands where the target's log ends.
        let log = committed::tests::mixed_log();
        let aborted = [AbortedTransaction {
            producer_id: 10,
            first_offset: 2,
        }];
        let mut map = OffsetMap::default();
        let mut target_end = 0;
        for batch in committed::walk(&log, &aborted).expect("walk") {
            if batch.copy {
                map.append(batch.base_offset, batch.last_offset, target_end)
                    .expect("append");
                target_end += i64::from(batch.records);
            }
        }
        assert_eq!(map.to_target(0), Mapped::Exactly(0));
        assert_eq!(map.to_target(2), Mapped::Gap { next: 2 }, "aborted");
        assert_eq!(map.to_target(4), Mapped::Exactly(2), "committed txn");
        assert_eq!(map.to_target(6), Mapped::Exactly(4));
        assert_eq!(map.to_target(8), Mapped::Gap { next: 5 }, "markers");
        assert_eq!(map.to_target(10), Mapped::Exactly(5));
        assert_eq!(map.to_target(14), Mapped::Exactly(8));
        assert_eq!(map.target_end(), Some(9));
        assert!(!map.is_identity());
    }

    #[test]
    fn the_log_survives_reopening_and_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mirror/orders/0.map");
        {
            let mut log = OffsetLog::open(&path).expect("open");
            log.append(0, 4, 0).expect("append");
            log.append(7, 9, 5).expect("append");
            log.sync().expect("sync");
        }
        // A crash in the middle of the next entry.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.extend_from_slice(&encode(10, 12, 8)[..11]);
        std::fs::write(&path, &bytes).expect("write");
        let mut log = OffsetLog::open(&path).expect("reopen");
        assert_eq!(log.map().source_end(), Some(10));
        assert_eq!(log.map().to_target(8), Mapped::Exactly(6));
        log.append(10, 11, 8).expect("append after the cut");
        log.sync().expect("sync");
        let reopened = OffsetLog::open(&path).expect("reopen");
        assert_eq!(reopened.map().source_end(), Some(12));
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            3 * ENTRY_LEN as u64
        );
        // A flipped bit ends the map there, it is not believed.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[ENTRY_LEN + 3] ^= 1;
        std::fs::write(&path, &bytes).expect("write");
        let damaged = OffsetLog::open(&path).expect("reopen");
        assert_eq!(damaged.map().source_end(), Some(5));
    }
}
