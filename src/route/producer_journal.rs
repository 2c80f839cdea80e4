//! The producer-id remaps on disk, so that a klink killed with `kill -9`
//! and restarted still sends a client's retry under the identity and at the
//! sequence its first try had, and the broker deduplicates it.
//!
//! An append-only file of JSON lines, written (not fsynced: a killed
//! process loses nothing the kernel has) before the batch it describes
//! goes upstream: every identity a cluster issued klink, every batch
//! placed in a sequence space, every placement given back. Replaying the
//! lines through the same code rebuilds the same spaces. Past
//! [`COMPACT_AFTER`] lines the file is rewritten as the spaces stand (a
//! few lines per producer and partition), so it stays small.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Kind, Result};

/// Lines appended before the file is rewritten whole.
const COMPACT_AFTER: usize = 100_000;

/// A client identity on the wire of the journal: issuing cluster, id, epoch.
pub type ClientKey = (String, i64, i16);

/// A sequence space as it stands: floor, where the client's own sequences
/// ended on its issuer, and the remembered batches as `[client sequence,
/// start, count, refused]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceState {
    pub floor: i64,
    pub identity_end: Option<i64>,
    pub sent: Vec<(i32, i64, i64, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "e", rename_all = "kebab-case")]
pub enum Entry {
    /// `cluster` issued klink `issued` for `client`.
    Mapped {
        client: ClientKey,
        cluster: String,
        issued: (i64, i16),
    },
    /// A batch placed in `cluster`'s space for the client and partition.
    Placed {
        client: ClientKey,
        topic: String,
        partition: i32,
        cluster: String,
        client_sequence: i32,
        count: i32,
    },
    /// A placed batch the cluster certainly refused: its place is free.
    Refused {
        client: ClientKey,
        topic: String,
        partition: i32,
        cluster: String,
        client_sequence: i32,
        sequence: i32,
    },
    /// A transactional id's transactions run on `cluster` from its next
    /// one (`None`: the default cluster again).
    Pinned {
        transactional_id: String,
        cluster: Option<String>,
    },
    /// A whole space, as a compaction wrote it.
    Space {
        client: ClientKey,
        topic: String,
        partition: i32,
        cluster: String,
        space: SpaceState,
    },
}

pub struct Journal {
    path: PathBuf,
    file: File,
    lines: usize,
    /// The first write error, logged once: durability is lost, not service.
    failed: bool,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::klink(Kind::Io, format!("{what} {}: {e}", path.display()))
}

impl Journal {
    /// The entries in `dir`'s journal (a torn last line is dropped).
    pub fn read(dir: &Path) -> Result<Vec<Entry>> {
        let path = dir.join("producers.journal");
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("opening", &path, e)),
        };
        let mut entries = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line.map_err(|e| io("reading", &path, e))?;
            match serde_json::from_str(&line) {
                Ok(entry) => entries.push(entry),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "producer journal: a torn or bad line, and what follows it, dropped");
                    break;
                }
            }
        }
        Ok(entries)
    }

    /// Starts the journal in `dir` afresh with `entries` (the state as it
    /// stands), replacing the old file in one rename.
    pub fn rewrite(dir: &Path, entries: &[Entry]) -> Result<Journal> {
        let path = dir.join("producers.journal");
        let fresh = dir.join("producers.journal.new");
        let mut file = File::create(&fresh).map_err(|e| io("creating", &fresh, e))?;
        let mut text = String::new();
        for entry in entries {
            text.push_str(&serde_json::to_string(entry).unwrap_or_default());
            text.push('\n');
        }
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| io("writing", &fresh, e))?;
        std::fs::rename(&fresh, &path).map_err(|e| io("renaming", &fresh, e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io("opening", &path, e))?;
        Ok(Journal {
            path,
            file,
            lines: entries.len(),
            failed: false,
        })
    }

    /// Appends one entry; true when the file is due for a rewrite.
    pub fn append(&mut self, entry: &Entry) -> bool {
        let mut line = serde_json::to_string(entry).unwrap_or_default();
        line.push('\n');
        if let Err(e) = self.file.write_all(line.as_bytes())
            && !self.failed
        {
            self.failed = true;
            tracing::error!(file = %self.path.display(), error = %e, "producer journal not written: a retry after a klink crash may be written twice");
        }
        self.lines += 1;
        self.lines > COMPACT_AFTER
    }
}
