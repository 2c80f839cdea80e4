//! Transactions open on topics (DESIGN trap 9): a promotion must not split
//! one, so it waits for those touching its topics to end, up to the fence
//! bound, and otherwise refuses, naming them. Learnt from the requests
//! klink carries: AddPartitionsToTxn opens (or extends) a transaction on
//! its topics; EndTxn ends it; InitProducerId with the same transactional
//! id aborts whatever it had open. A transaction not heard of for longer
//! than its timeout (from InitProducerId; Kafka's default 60 s otherwise)
//! is one the broker aborts itself, and no longer counts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, EndTxnRequest, InitProducerIdRequest, RequestHeader,
};
use kafka_protocol::protocol::Decodable;

/// Kafka's `transaction.timeout.ms` default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

struct Open {
    topics: BTreeSet<String>,
    last_heard: Instant,
}

#[derive(Default)]
struct Transactions {
    open: BTreeMap<String, Open>,
    timeouts: BTreeMap<String, Duration>,
}

#[derive(Default)]
pub struct OpenTransactions {
    /// A std mutex: map edits only, never held across an await.
    inner: Mutex<Transactions>,
}

impl Transactions {
    fn add(&mut self, id: String, topics: impl IntoIterator<Item = String>, now: Instant) {
        let open = self.open.entry(id).or_insert_with(|| Open {
            topics: BTreeSet::new(),
            last_heard: now,
        });
        open.topics.extend(topics);
        open.last_heard = now;
    }
}

impl OpenTransactions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Transactions> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes note of a transactional request; others, and requests that
    /// cannot be read, are ignored.
    pub fn observe(&self, api: ApiKey, version: i16, payload: &Bytes) {
        let mut body = payload.clone();
        if RequestHeader::decode(&mut body, api.request_header_version(version)).is_err() {
            return;
        }
        match api {
            ApiKey::AddPartitionsToTxn => {
                let Ok(r) = AddPartitionsToTxnRequest::decode(&mut body, version) else {
                    return;
                };
                let mut txns = self.lock();
                let now = Instant::now();
                if version <= 3 {
                    txns.add(
                        r.v3_and_below_transactional_id.to_string(),
                        r.v3_and_below_topics.iter().map(|t| t.name.to_string()),
                        now,
                    );
                }
                for txn in &r.transactions {
                    txns.add(
                        txn.transactional_id.to_string(),
                        txn.topics.iter().map(|t| t.name.to_string()),
                        now,
                    );
                }
            }
            ApiKey::EndTxn => {
                if let Ok(r) = EndTxnRequest::decode(&mut body, version) {
                    self.lock().open.remove(r.transactional_id.as_str());
                }
            }
            ApiKey::InitProducerId => {
                if let Ok(r) = InitProducerIdRequest::decode(&mut body, version)
                    && let Some(id) = r.transactional_id
                {
                    let mut txns = self.lock();
                    txns.open.remove(id.as_str());
                    let timeout = u64::try_from(r.transaction_timeout_ms).unwrap_or(0);
                    txns.timeouts
                        .insert(id.to_string(), Duration::from_millis(timeout));
                }
            }
            _ => {}
        }
    }

    /// The transactional ids with a transaction open on any of `topics`.
    pub fn touching(&self, topics: &[String]) -> Vec<String> {
        self.touching_at(topics, Instant::now())
    }

    fn touching_at(&self, topics: &[String], now: Instant) -> Vec<String> {
        let txns = self.lock();
        txns.open
            .iter()
            .filter(|(id, open)| {
                let timeout = txns.timeouts.get(*id).copied().unwrap_or(DEFAULT_TIMEOUT);
                now.duration_since(open.last_heard) < timeout
                    && open.topics.iter().any(|t| topics.contains(t))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::add_partitions_to_txn_request::{
        AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
    };
    use kafka_protocol::messages::{TopicName, TransactionalId};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::cutover::request_frame as frame;

    fn id(name: &str) -> TransactionalId {
        TransactionalId(StrBytes::from_string(name.to_string()))
    }

    fn topic(name: &str) -> AddPartitionsToTxnTopic {
        AddPartitionsToTxnTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.to_string())))
            .with_partitions(vec![0])
    }

    #[test]
    fn transactions_are_open_from_their_first_partition_to_their_end() {
        let open = OpenTransactions::default();
        let orders = vec!["orders".to_string()];
        // v3: one transaction per request.
        let add = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(id("billing-tx"))
            .with_v3_and_below_topics(vec![topic("orders"), topic("audit")]);
        open.observe(
            ApiKey::AddPartitionsToTxn,
            3,
            &frame(ApiKey::AddPartitionsToTxn, 3, &add),
        );
        // v4+: several per request (broker to broker, but read all the same).
        let batched = AddPartitionsToTxnRequest::default().with_transactions(vec![
            AddPartitionsToTxnTransaction::default()
                .with_transactional_id(id("other-tx"))
                .with_topics(vec![topic("payments")]),
        ]);
        open.observe(
            ApiKey::AddPartitionsToTxn,
            4,
            &frame(ApiKey::AddPartitionsToTxn, 4, &batched),
        );
        assert_eq!(open.touching(&orders), vec!["billing-tx".to_string()]);
        assert_eq!(open.touching(&["payments".to_string()]), vec!["other-tx"]);
        let end = EndTxnRequest::default().with_transactional_id(id("billing-tx"));
        open.observe(ApiKey::EndTxn, 3, &frame(ApiKey::EndTxn, 3, &end));
        assert!(open.touching(&orders).is_empty(), "committed or aborted");
        // A producer that starts over aborts what it had open.
        let init = InitProducerIdRequest::default()
            .with_transactional_id(Some(id("other-tx")))
            .with_transaction_timeout_ms(60_000);
        open.observe(
            ApiKey::InitProducerId,
            4,
            &frame(ApiKey::InitProducerId, 4, &init),
        );
        assert!(open.touching(&["payments".to_string()]).is_empty());
        // One never ended is the broker's to abort after its timeout.
        let add = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(id("stuck-tx"))
            .with_v3_and_below_topics(vec![topic("orders")]);
        open.observe(
            ApiKey::AddPartitionsToTxn,
            3,
            &frame(ApiKey::AddPartitionsToTxn, 3, &add),
        );
        assert_eq!(open.touching(&orders), vec!["stuck-tx".to_string()]);
        let later = Instant::now() + DEFAULT_TIMEOUT;
        assert!(open.touching_at(&orders, later).is_empty());
        // Garbage is ignored.
        open.observe(ApiKey::EndTxn, 3, &Bytes::from_static(b"\x00"));
    }
}
