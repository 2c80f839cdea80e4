//! The mirror: linked topics copied source -> target, byte for byte, with an
//! exact offset map (DESIGN traps 7, 12, 13).
//!
//! Built in steps. What is here:
//! - [`committed`]: which fetched batches are copied (what a read_committed
//!   consumer sees, as whole batches; transaction markers and aborted
//!   batches become gaps);
//! - [`offset_map`]: the per-partition map of source to target offsets,
//!   kept in an append-only file that a crash can only cut short.
//!
//! Still to come (issue "Mirror"): the copy loop per partition on top of
//! `client` and `batch`, mirror topic creation, restart reconciliation,
//! lag, bypass detection and `klink ctl mirror` / `offsets`.

pub mod committed;
pub mod offset_map;

pub use committed::{Walked, walk};
pub use offset_map::{Mapped, OffsetLog, OffsetMap, Run};
