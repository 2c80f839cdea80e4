//! klink: a Kafka wire-protocol proxy for moving workloads between clusters
//! without restarting clients.
//!
//! # Layout
//!
//! A request reads top to bottom through these modules:
//!
//! - [`wire`]: framing and the header fields routing needs; never allocates
//!   from an unchecked wire length.
//! - [`proxy`]: listeners, one session per client connection, pipelining
//!   with responses in request order, graceful shutdown.
//! - [`versions`]: which APIs klink offers and the ApiVersions answer.
//! - [`upstream`]: connections to upstream brokers and cluster discovery.
//! - [`broker`]: virtual brokers, the klink addresses that stand for
//!   upstream brokers, with ids and ports that survive restarts.
//! - [`rewrite`]: responses that name brokers, rewritten to virtual brokers.
//! - [`state`]: the durable state file (write, fsync, rename).
//! - [`config`]: the `klink.toml` contract.
//! - [`batch`]: record batch headers: producer fields and the CRC-32C.
//! - [`route`]: the route table and what klink knows of each cluster.
//! - [`split`]: requests routed by topic or group, split and merged.
//! - [`control`]: the control socket and `klink ctl`.
//! - [`client`]: klink's own Kafka client (metadata, producer, fetcher).
//! - [`mirror`]: copying linked topics source -> target with an offset map.
//! - [`perf`]: `klink perf`, load generators speaking the Java perf tools' flags.
//! - [`error`]: errors that know their origin and whether to retry.
//! - [`metrics`]: counters and histograms for Prometheus, lock-free on the
//!   request path.
//! - [`admin`]: the admin listener: `/metrics`, probes, the status page.

pub mod admin;
pub mod batch;
pub mod broker;
pub mod client;
pub mod config;
pub mod control;
pub mod cutover;
pub mod error;
pub mod metrics;
pub mod mirror;
pub mod numbering;
pub mod perf;
pub mod proxy;
pub mod rewrite;
pub mod route;
pub mod sasl;
pub mod split;
pub mod state;
pub mod upstream;
pub mod versions;
pub mod wire;
