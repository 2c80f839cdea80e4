//! What a producer handle and its sender task share: the settings, the
//! batches being filled, the counters. Both sides import this module and
//! neither imports the other, so the sender only cares that batches are
//! ready, not how they were made.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::records::Compression;
use tokio::sync::{Notify, Semaphore};

use super::Client;
use super::accumulator::Accumulator;
use super::partitioner::Sticky;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// acks=0: nothing is awaited; a record counts as delivered once written.
    None,
    /// acks=1: the leader wrote it.
    Leader,
    /// acks=all (-1): every in-sync replica has it.
    All,
}

impl Acks {
    pub fn code(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// The producer settings, named after the Java client's.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// `linger.ms`: how long a batch that is not full waits for more records.
    pub linger: Duration,
    /// `batch.size`: bytes at which a batch is sent without waiting.
    pub batch_size: usize,
    pub compression: Compression,
    /// `max.in.flight.requests.per.connection`.
    pub max_in_flight: usize,
    /// `buffer.memory`: record bytes waiting or in flight before `send` waits.
    pub buffer_memory: usize,
    /// `retries`: attempts after the first for a retriable error.
    pub retries: u32,
    pub retry_backoff: Duration,
    /// `delivery.timeout.ms`: a batch older than this fails.
    pub delivery_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::All,
            // Kafka 4.0's default; 0 before.
            linger: Duration::from_millis(5),
            batch_size: 16 * 1024,
            compression: Compression::None,
            max_in_flight: 5,
            buffer_memory: 32 * 1024 * 1024,
            retries: 10,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(120),
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub batches: AtomicU64,
    pub records: AtomicU64,
    pub batch_bytes: AtomicU64,
    pub retries: AtomicU64,
    pub failed_batches: AtomicU64,
    pub request_latency_total_us: AtomicU64,
}

pub(crate) struct State {
    pub acc: Accumulator,
    pub sticky: HashMap<Arc<str>, Sticky>,
}

/// What the producer handle and its sender task share.
pub(crate) struct Shared {
    pub client: Client,
    pub config: ProducerConfig,
    pub state: Mutex<State>,
    /// Wakes the sender: a batch opened or filled, a flush, metadata arrived.
    pub wake: Notify,
    /// Signalled when the last outstanding batch completed.
    pub idle: Notify,
    pub buffer: Semaphore,
    pub closing: AtomicBool,
    pub counters: Counters,
}

impl Shared {
    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic elsewhere mid-update of plain
        // bookkeeping; carrying on beats losing every record in it.
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Bookkeeping once a batch is done for good.
    pub fn finished(&self, reserved: usize) {
        self.buffer.add_permits(reserved);
        let mut state = self.state();
        state.acc.outstanding = state.acc.outstanding.saturating_sub(1);
        if state.acc.outstanding == 0 {
            self.idle.notify_waiters();
        }
    }
}
