//! The mirror: linked topics copied source -> target, byte for byte, with an
//! exact offset map (DESIGN traps 7, 12, 13).
//!
//! Built in steps. What is here:
//! - [`committed`]: which fetched batches are copied (what a read_committed
//!   consumer sees, as whole batches; transaction markers and aborted
//!   batches become gaps);
//! - [`offset_map`]: the per-partition map of source to target offsets,
//!   kept in an append-only file that a crash can only cut short;
//! - [`copier`]: one partition copied exactly once, with reconciliation
//!   after a crash.
//!
//! - [`report`]: what the mirrors report to `klink ctl`, and their gates;
//! - [`runner`]: copiers for every topic of a mirroring link, started by
//!   `klink proxy`: mirror topic creation, refusal of a target topic that
//!   is not klink's, retries with backoff, what `status`/`mirror` show;
//! - [`sender`]: one Produce stream per target broker for a topic's
//!   partitions;
//! - [`bypass`]: records written to a mirroring topic's source without
//!   klink, found by the copier from where klink's own writes landed.

pub mod bypass;
pub mod committed;
pub mod compacted;
pub mod copier;
pub mod gate;
mod holes;
pub mod offset_map;
pub mod report;
mod requests;
pub mod runner;
pub mod sender;

pub use bypass::{BypassWatch, ForwardedWrites, SentWrites};
pub use copier::{CopyConfig, Origin, PartitionCopier, Progress};
pub use requests::{high_watermarks, log_bounds};

pub use committed::{Walked, walk};
pub use offset_map::{Direction, Mapped, OffsetLog, OffsetMap, Run};
pub use report::{Mirrors, PartitionMirror, TopicMirror};
pub use sender::SenderPool;
