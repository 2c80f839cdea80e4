//! Transactions (DESIGN trap 9): which are open on which topics, which
//! topics each transactional id writes together, and the cluster each
//! one's transactions run on. A promotion must not split a transaction,
//! so it waits for those touching its topics to end, up to the fence
//! bound, and otherwise refuses, naming them. Learnt from the requests
//! klink carries: AddPartitionsToTxn opens (or extends) a transaction on
//! its topics; EndTxn ends it; InitProducerId with the same transactional
//! id aborts whatever it had open. A transaction not heard of for longer
//! than its timeout (from InitProducerId; Kafka's default 60 s otherwise)
//! is one the broker aborts itself, and no longer counts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::ProducerIds;
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
    /// Every topic each transactional id's transactions have written
    /// since klink started: topics written together must move together.
    written: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Default)]
pub struct OpenTransactions {
    /// A std mutex: map edits only, never held across an await.
    inner: Mutex<Transactions>,
}

impl Transactions {
    fn add(&mut self, id: String, topics: impl IntoIterator<Item = String>, now: Instant) {
        let topics: Vec<String> = topics.into_iter().collect();
        self.written
            .entry(id.clone())
            .or_default()
            .extend(topics.iter().cloned());
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

    /// The transaction timeout `id`'s producer asked for (Kafka's default
    /// when klink did not see its InitProducerId).
    pub fn timeout_ms(&self, id: &str) -> i32 {
        let timeout = self.lock().timeouts.get(id).copied();
        timeout.map_or(60_000, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX))
    }

    /// Where a transaction adding partitions whose writes go to `cluster`
    /// runs (DESIGN trap 9: transactions cannot span clusters). On its
    /// pin (`default` until moved) when that is `cluster`; else the
    /// transactional id moves to `cluster` if nothing else of it is open,
    /// which is how a producer's transactions follow their topics after a
    /// promotion (which never flips a topic under an open transaction).
    /// `Err(pin)` when the transaction is open on another cluster.
    /// The pins are `pins`' (journaled with the producer ids).
    pub fn place(
        &self,
        id: &str,
        topics: &[String],
        cluster: &Arc<str>,
        default: &Arc<str>,
        pins: &ProducerIds,
    ) -> Result<Arc<str>, Arc<str>> {
        let pin = pins
            .transactions_pinned(id)
            .unwrap_or_else(|| default.clone());
        if pin == *cluster {
            return Ok(pin);
        }
        let open_elsewhere = {
            let txns = self.lock();
            let timeout = txns.timeouts.get(id).copied().unwrap_or(DEFAULT_TIMEOUT);
            txns.open.get(id).is_some_and(|open| {
                open.last_heard.elapsed() < timeout
                    && open.topics.iter().any(|t| !topics.contains(t))
            })
        };
        if open_elsewhere {
            return Err(pin);
        }
        tracing::info!(transactional_id = id, from = %pin, to = %cluster, "transactions move with their topics");
        pins.pin_transactions(id, (cluster != default).then_some(cluster));
        Ok(cluster.clone())
    }

    /// Why moving `topics` would part topics some transactional id writes
    /// in its transactions (DESIGN trap 9: they must move together), or
    /// `None`. `stays` says whether a topic not moving keeps its writes
    /// where the moving ones leave from.
    pub fn refusal(&self, topics: &[String], stays: impl Fn(&str) -> bool) -> Option<String> {
        let txns = self.lock();
        let problems: Vec<String> = txns
            .written
            .iter()
            .filter(|(_, written)| written.iter().any(|t| topics.contains(t)))
            .filter_map(|(id, written)| {
                let staying: Vec<String> = written
                    .iter()
                    .filter(|t| !topics.contains(t) && stays(t))
                    .map(|t| format!("`{t}`"))
                    .collect();
                (!staying.is_empty()).then(|| {
                    format!(
                        "transactional id `{id}` also writes {} in its transactions, which stays behind (move them together, e.g. with --link)",
                        staying.join(", ")
                    )
                })
            })
            .collect();
        (!problems.is_empty()).then(|| problems.join("; "))
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

    fn frame<R: kafka_protocol::protocol::Encodable>(api: ApiKey, version: i16, body: &R) -> Bytes {
        use kafka_protocol::protocol::Encodable;
        let mut buf = bytes::BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .encode(&mut buf, api.request_header_version(version))
            .expect("header");
        body.encode(&mut buf, version).expect("body");
        buf.freeze()
    }

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

    #[test]
    fn a_transactional_id_follows_its_topics_between_transactions_only() {
        let open = OpenTransactions::default();
        let pins = ProducerIds::default();
        let (source, target): (Arc<str>, Arc<str>) = (Arc::from("source"), Arc::from("target"));
        let orders = vec!["orders".to_string()];
        let audit = vec!["audit".to_string()];
        let add = |topics: &[&str]| {
            let request = AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(id("tx"))
                .with_v3_and_below_topics(topics.iter().map(|t| topic(t)).collect());
            open.observe(
                ApiKey::AddPartitionsToTxn,
                3,
                &frame(ApiKey::AddPartitionsToTxn, 3, &request),
            );
        };
        let end = || {
            let request = EndTxnRequest::default().with_transactional_id(id("tx"));
            open.observe(ApiKey::EndTxn, 3, &frame(ApiKey::EndTxn, 3, &request));
        };
        // A transaction on the source: stays there.
        add(&["orders"]);
        assert_eq!(
            open.place("tx", &orders, &source, &source, &pins),
            Ok(source.clone())
        );
        assert_eq!(pins.transactions_pinned("tx"), None);
        end();
        // Its topic promoted: the next transaction moves to the target.
        add(&["orders"]);
        assert_eq!(
            open.place("tx", &orders, &target, &source, &pins),
            Ok(target.clone())
        );
        assert_eq!(pins.transactions_pinned("tx"), Some(target.clone()));
        // A partition of a topic left behind, in the same transaction: no.
        add(&["audit"]);
        assert_eq!(
            open.place("tx", &audit, &source, &source, &pins),
            Err(target.clone())
        );
        end();
        // Rolled back: home again, and the pin is gone.
        add(&["orders"]);
        assert_eq!(
            open.place("tx", &orders, &source, &source, &pins),
            Ok(source.clone())
        );
        assert_eq!(pins.transactions_pinned("tx"), None);
        assert_eq!(open.timeout_ms("tx"), 60_000);
    }

    #[test]
    fn topics_written_in_one_transaction_are_not_parted() {
        let open = OpenTransactions::default();
        let add = |id_: &str, topics: &[&str]| {
            let request = AddPartitionsToTxnRequest::default()
                .with_v3_and_below_transactional_id(id(id_))
                .with_v3_and_below_topics(topics.iter().map(|t| topic(t)).collect());
            open.observe(
                ApiKey::AddPartitionsToTxn,
                3,
                &frame(ApiKey::AddPartitionsToTxn, 3, &request),
            );
            let end = EndTxnRequest::default().with_transactional_id(id(id_));
            open.observe(ApiKey::EndTxn, 3, &frame(ApiKey::EndTxn, 3, &end));
        };
        add("together", &["orders", "audit"]);
        add("alone", &["payments"]);
        let everywhere = |_: &str| true;
        let refused = open
            .refusal(&["orders".to_string()], everywhere)
            .expect("refused");
        assert!(
            refused.contains("`together`") && refused.contains("`audit`"),
            "{refused}"
        );
        assert_eq!(
            open.refusal(&["orders".to_string(), "audit".to_string()], everywhere),
            None,
            "moved together"
        );
        assert_eq!(open.refusal(&["payments".to_string()], everywhere), None);
        // `audit` written elsewhere already: nothing parts.
        assert_eq!(
            open.refusal(&["orders".to_string()], |t| t != "audit"),
            None
        );
    }
}
