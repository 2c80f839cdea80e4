//! Connections to upstream brokers.
//!
//! [`UpstreamConn`] carries pipelined requests to one broker and hands back
//! each response in the order the requests were written, which is the order
//! Kafka brokers answer in. [`Cluster`] is klink's own client for the few
//! requests it makes itself (discovering brokers, learning API versions).

mod cluster;
mod conn;
mod outage;
pub mod security;

pub use cluster::Cluster;
pub use conn::{DEFAULT_REQUEST_TIMEOUT, Reply, UpstreamConn};
pub use outage::{Outages, Unreachable, outages};
