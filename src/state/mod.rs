//! klink's durable state: one JSON document in `state_dir`, replaced
//! atomically (write a temp file, fsync it, rename it over the old one, fsync
//! the directory) before any request sees the change it records.
//!
//! A state file that cannot be read or parsed stops klink: silently starting
//! from defaults could send a promoted topic's writes back to the source.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Kind, Result};

pub const STATE_FILE: &str = "klink-state.json";
const FORMAT_VERSION: u32 = 1;

/// Everything klink must remember across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    pub format_version: u32,
    pub virtual_brokers: Vec<VirtualBrokerRecord>,
    /// Every topic a link names, with where its writes and reads go.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicRouteRecord>,
    /// Every group a link names, with the cluster that coordinates it.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupRouteRecord>,
    /// The topic id clients see for each topic, whichever cluster serves it.
    #[serde(default)]
    pub topic_ids: BTreeMap<String, Uuid>,
    /// Mirror topics klink created on their link's target, with where on
    /// the source each partition's copy starts.
    #[serde(default)]
    pub mirrors: BTreeMap<String, MirrorRecord>,
}

/// A mirror topic klink made: a target topic of that name that is not in
/// here is someone else's, and klink will not write into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorRecord {
    pub link: String,
    /// Source offset each partition's copy starts at (fixed at the link's
    /// first start, so a restart of a `latest` link does not move it).
    pub start: BTreeMap<i32, i64>,
    /// Per partition, the last point both clusters held the same records
    /// up to, as `[source offset, target offset]`: written at every flip
    /// (promotion or rollback) once the copy that stopped had drained.
    /// The copy that starts after the flip starts there (the offset map
    /// alone cannot say where: batches it dropped, transaction markers,
    /// leave no entry).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub synced: BTreeMap<i32, [i64; 2]>,
    /// Per partition, the eras of the client numbering each flip started
    /// (`numbering`): written in the same change as the flip's routes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub eras: BTreeMap<i32, Vec<crate::numbering::Era>>,
}

/// Where a topic stands in a migration (see DESIGN.md, "Topic states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopicState {
    Source,
    Mirroring,
    Promoting,
    Promoted,
    /// Transient: a rollback's fence stands and the reverse mirror drains.
    #[serde(rename = "rolling-back")]
    RollingBack,
    Committed,
}

impl TopicState {
    /// Whether a mirror copies the topic in some direction: source ->
    /// target ([`TopicState::copies_forward`]) or target -> source.
    pub fn copied(self) -> bool {
        !matches!(self, TopicState::Source | TopicState::Committed)
    }

    /// Whether the mirror copies source -> target (clients write the
    /// source); otherwise, while copied, target -> source.
    pub fn copies_forward(self) -> bool {
        matches!(self, TopicState::Mirroring | TopicState::Promoting)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TopicState::Source => "source",
            TopicState::Mirroring => "mirroring",
            TopicState::Promoting => "promoting",
            TopicState::Promoted => "promoted",
            TopicState::RollingBack => "rolling-back",
            TopicState::Committed => "committed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicRouteRecord {
    pub link: Option<String>,
    pub state: TopicState,
    pub writes: String,
    pub reads: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRouteRecord {
    pub link: Option<String>,
    pub route: String,
}

/// One upstream broker's klink identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualBrokerRecord {
    pub cluster: String,
    pub upstream_node_id: i32,
    pub virtual_id: i32,
    pub port: u16,
}

pub struct StateStore {
    path: PathBuf,
    /// A std mutex: held only while a small file is written, never across an
    /// await, and updates must be serialized so no write is lost.
    current: Mutex<PersistedState>,
    #[cfg(test)]
    faults: Mutex<Option<Fault>>,
}

/// A change that took effect, and whether a power loss could still undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied<T> {
    pub value: T,
    /// Set when the new file was renamed into place but the fsync of its
    /// directory failed: the change is in effect (a restart reads it), but
    /// the operator should know it is not yet safe from a power loss.
    pub warning: Option<String>,
}

impl<T> Applied<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Applied<U> {
        Applied {
            value: f(self.value),
            warning: self.warning,
        }
    }
}

/// A failure to inject into the next state write (tests only).
#[cfg(test)]
#[derive(Debug, Clone)]
pub enum Fault {
    /// The temp file is written, the rename fails: nothing changes.
    BeforeRename,
    /// The rename succeeds, the directory fsync fails.
    DirectorySync,
    /// Each write meets the test at the first barrier (it has started) and
    /// waits at the second until the test lets it go on, so a test can
    /// look at who else waits for the disk meanwhile.
    Hold(Arc<(std::sync::Barrier, std::sync::Barrier)>),
}

impl StateStore {
    /// Opens the state in `dir`, creating the directory and an empty state
    /// when neither exists yet.
    pub fn open(dir: &Path) -> Result<StateStore> {
        fs::create_dir_all(dir).map_err(|e| {
            Error::klink(
                Kind::Config,
                format!("cannot create state_dir {}: {e}", dir.display()),
            )
        })?;
        let path = dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => parse_state(&path, &bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PersistedState {
                format_version: FORMAT_VERSION,
                ..Default::default()
            },
            Err(e) => {
                return Err(Error::klink(
                    Kind::Config,
                    format!("cannot read state file {}: {e}", path.display()),
                ));
            }
        };
        Ok(StateStore {
            path,
            current: Mutex::new(state),
            #[cfg(test)]
            faults: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn snapshot(&self) -> PersistedState {
        self.lock().clone()
    }

    /// Applies `change` and makes it durable before returning.
    pub fn update<T>(&self, change: impl FnOnce(&mut PersistedState) -> T) -> Result<T> {
        self.apply(change).map(|applied| applied.value)
    }

    /// As [`StateStore::update`], saying whether the change is safe from a
    /// power loss, for callers that answer an operator.
    ///
    /// The rename of the new file over the old one is the commit point, so
    /// the outcome is always one or the other: a failure before it leaves
    /// the old state in memory and on disk and returns the error; after it
    /// (only the directory fsync can fail there) the new state is what a
    /// restart reads, so it is applied in memory too and the call succeeds
    /// with a warning.
    pub fn apply<T>(&self, change: impl FnOnce(&mut PersistedState) -> T) -> Result<Applied<T>> {
        let mut current = self.lock();
        let mut next = current.clone();
        let value = change(&mut next);
        let mut warning = None;
        if next != *current {
            if let Durable::UnlessPowerLoss(why) = self.write_atomically(&next)? {
                let dir = self.path.parent().unwrap_or(&self.path).display();
                tracing::error!(file = %self.path.display(), error = %why, "state change applied, but fsync of directory {dir} failed: a power loss could undo it");
                warning = Some(format!(
                    "state change applied, but fsync of directory {dir} failed ({why}): a power loss could undo it"
                ));
            }
            *current = next;
        }
        Ok(Applied { value, warning })
    }

    /// As [`StateStore::update`], with the write and fsync on tokio's
    /// blocking pool: callers on the request path must not stall a worker
    /// on the disk. A change whose directory fsync failed is in effect and
    /// logged; nobody on that path could tell an operator more.
    pub async fn update_async<T: Send + 'static>(
        self: &Arc<Self>,
        change: impl FnOnce(&mut PersistedState) -> T + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.update(change))
            .await
            .map_err(|e| Error::klink(Kind::Io, format!("state write task failed: {e}")))?
    }

    #[cfg(test)]
    pub fn inject(&self, fault: Option<Fault>) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    fn write_atomically(&self, state: &PersistedState) -> Result<Durable> {
        #[cfg(test)]
        let fault = self
            .faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        #[cfg(not(test))]
        let fault: Option<()> = None;
        write_atomically(&self.path, state, fault)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PersistedState> {
        // A panic while holding the lock cannot leave a half-applied state:
        // `update` only swaps in a fully written document.
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn parse_state(path: &Path, bytes: &[u8]) -> Result<PersistedState> {
    let state: PersistedState = serde_json::from_slice(bytes).map_err(|e| {
        Error::klink(
            Kind::Config,
            format!(
                "state file {} is corrupt ({e}); klink will not start from guessed routes. \
                 Restore it from a backup, or move it away to start afresh",
                path.display()
            ),
        )
    })?;
    if state.format_version != FORMAT_VERSION {
        return Err(Error::klink(
            Kind::Config,
            format!(
                "state file {} has format version {}, this klink reads {FORMAT_VERSION}",
                path.display(),
                state.format_version
            ),
        ));
    }
    Ok(state)
}

/// Whether a written state will survive a power loss.
enum Durable {
    Yes,
    /// Renamed into place (a process crash keeps it) but the directory
    /// entry may not be on disk.
    UnlessPowerLoss(String),
}

#[cfg(test)]
type MaybeFault = Option<Fault>;
#[cfg(not(test))]
type MaybeFault = Option<()>;

fn write_atomically(path: &Path, state: &PersistedState, fault: MaybeFault) -> Result<Durable> {
    let io = |what: &str, e: std::io::Error| {
        Error::klink(Kind::Io, format!("{what} {}: {e}", path.display()))
    };
    let bytes = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::klink(Kind::Config, format!("serializing state: {e}")))?;
    let tmp = path.with_extension("json.tmp");
    let before_rename = || -> Result<()> {
        #[cfg(test)]
        if let Some(Fault::Hold(barriers)) = &fault {
            barriers.0.wait();
            barriers.1.wait();
        }
        let mut file = File::create(&tmp).map_err(|e| io("creating temp file for", e))?;
        file.write_all(&bytes).map_err(|e| io("writing", e))?;
        file.sync_all().map_err(|e| io("fsyncing", e))?;
        drop(file);
        #[cfg(test)]
        if let Some(Fault::BeforeRename) = &fault {
            let injected = std::io::Error::other("injected fault");
            return Err(io("renaming temp file onto", injected));
        }
        fs::rename(&tmp, path).map_err(|e| io("renaming temp file onto", e))
    };
    if let Err(e) = before_rename() {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let synced = match path.parent() {
        Some(dir) => File::open(dir).and_then(|d| d.sync_all()),
        None => Ok(()),
    };
    #[cfg(test)]
    let synced = match &fault {
        Some(Fault::DirectorySync) => Err(std::io::Error::other("injected fault")),
        _ => synced,
    };
    #[cfg(not(test))]
    let _ = fault;
    Ok(match synced {
        Ok(()) => Durable::Yes,
        Err(e) => Durable::UnlessPowerLoss(e.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: i32) -> VirtualBrokerRecord {
        VirtualBrokerRecord {
            cluster: "source".into(),
            upstream_node_id: id * 10,
            virtual_id: id,
            port: 9100 + id as u16,
        }
    }

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("open");
        store
            .update(|s| s.virtual_brokers.push(record(1)))
            .expect("update");
        let reopened = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(reopened.snapshot().virtual_brokers, vec![record(1)]);
        assert!(!dir.path().join("klink-state.json.tmp").exists());
    }

    #[test]
    fn corrupt_file_refuses_to_open_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(
            dir.path().join(STATE_FILE),
            b"{\"format_version\": 1, \"virt",
        )
        .expect("write");
        let err = StateStore::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("corrupt"), "{err}");
        fs::write(
            dir.path().join(STATE_FILE),
            b"{\"format_version\": 7, \"virtual_brokers\": []}",
        )
        .expect("write");
        let err = StateStore::open(dir.path()).err().expect("refused");
        assert!(err.to_string().contains("format version 7"), "{err}");
    }

    #[test]
    fn a_write_that_fails_before_the_rename_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("open");
        store
            .update(|s| s.virtual_brokers.push(record(1)))
            .expect("update");
        store.inject(Some(Fault::BeforeRename));
        assert!(store.update(|s| s.virtual_brokers.push(record(2))).is_err());
        assert_eq!(store.snapshot().virtual_brokers, vec![record(1)]);
        let reopened = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(reopened.snapshot().virtual_brokers, vec![record(1)]);
        assert!(
            !dir.path().join("klink-state.json.tmp").exists(),
            "the temp file written before the failed rename is removed"
        );
    }

    #[test]
    fn a_failed_directory_fsync_after_the_rename_applies_the_change_and_says_so() {
        // The old code returned an error and kept the old state in memory
        // while a restart would load the new file.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("open");
        store.inject(Some(Fault::DirectorySync));
        let applied = store
            .apply(|s| s.virtual_brokers.push(record(1)))
            .expect("applied");
        assert_eq!(store.snapshot().virtual_brokers, vec![record(1)]);
        let reopened = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(reopened.snapshot().virtual_brokers, vec![record(1)]);
        let warning = applied.warning.expect("a warning for the operator");
        assert!(warning.contains("power loss"), "{warning}");
        assert!(
            warning.contains(&dir.path().display().to_string()),
            "{warning}"
        );

        // The warning belongs to the change that met the failure, not to
        // whoever asks next.
        store.inject(None);
        let next = store
            .apply(|s| s.virtual_brokers.push(record(2)))
            .expect("applied");
        assert_eq!(next.warning, None);
        let unchanged = store.apply(|_| ()).expect("nothing to write");
        assert_eq!(unchanged.warning, None);
    }
}
