//! Transactional requests (DESIGN trap 9): a transaction runs on one
//! cluster, the one its partitions' writes go to, and a transactional id
//! moves to another cluster only between its transactions (a promotion
//! never flips a topic under an open transaction, so after one the next
//! transaction simply starts where its topics now are).
//!
//! Client producer ids all come from the default cluster (InitProducerId
//! is pinned there, trap 8). A transaction that runs elsewhere runs under
//! an identity that cluster's transaction coordinator issued klink for the
//! same transactional id; klink puts that identity into AddPartitionsToTxn,
//! AddOffsetsToTxn, TxnOffsetCommit, EndTxn and the transactional batches
//! (`produce::reidentify`), and the client never sees it.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, ApiKey, EndTxnRequest, EndTxnResponse, ProducerId, RequestHeader,
    TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::Decodable;

use super::groups::toward;
use super::{Cluster, Context, Merge, PartAnswer, Plan, encode_response, only_answer};
use crate::error::Result;
use crate::route::{ClientProducer, Identity};

/// Retriable everywhere: clients look their coordinator up again and retry.
const COORDINATOR_NOT_AVAILABLE: i16 = ResponseError::CoordinatorNotAvailable.code();
const INVALID_TXN_STATE: i16 = ResponseError::InvalidTxnState.code();
const CONCURRENT_TRANSACTIONS: i16 = ResponseError::ConcurrentTransactions.code();
/// KIP-890's EndTxn v5 answers with a new epoch klink would have to follow.
const ENDTXN_NEW_EPOCH_SINCE: i16 = 5;

pub async fn plan_transactional<C: Cluster>(cx: &Context<'_, C>) -> Result<Plan> {
    let default = cx.routes.default_cluster().clone();
    let Some(transactions) = cx.cluster.transactions() else {
        return home_plan(cx, &default);
    };
    match cx.api {
        // v4+ is brokers' own batched form.
        ApiKey::AddPartitionsToTxn if cx.version <= 3 => {
            add_partitions(cx, transactions, &default).await
        }
        ApiKey::AddOffsetsToTxn | ApiKey::EndTxn | ApiKey::TxnOffsetCommit
            if cx
                .cluster
                .producers()
                .is_some_and(|p| p.any_transactions_pinned()) =>
        {
            let Some((id, identity)) = identity_of(cx)? else {
                return home_plan(cx, &default);
            };
            let pinned = cx
                .cluster
                .producers()
                .and_then(|p| p.transactions_pinned(&id));
            match pinned {
                Some(pin) if pin != default => away(cx, &pin, &id, identity, &default).await,
                _ => home_plan(cx, &default),
            }
        }
        _ => home_plan(cx, &default),
    }
}

/// klink's answer to an AddPartitionsToTxn naming a topic `fenced` says a
/// promotion holds: CONCURRENT_TRANSACTIONS, which clients retry after a
/// short backoff, by then where the topic's writes went. A transaction
/// opening under the fence would be split by the flip. `None` when no
/// topic it names is fenced (or it cannot be read: the broker will say).
pub fn refused_while_fenced(
    version: i16,
    payload: &Bytes,
    fenced: impl Fn(&str) -> bool,
) -> Option<Bytes> {
    if version > 3 {
        return None;
    }
    let api = ApiKey::AddPartitionsToTxn;
    let mut body = payload.clone();
    let header = RequestHeader::decode(&mut body, api.request_header_version(version)).ok()?;
    let request = AddPartitionsToTxnRequest::decode(&mut body, version).ok()?;
    if !request
        .v3_and_below_topics
        .iter()
        .any(|t| fenced(t.name.as_str()))
    {
        return None;
    }
    let response = every_partition(&request, CONCURRENT_TRANSACTIONS);
    encode_response(api, version, header.correlation_id, &response).ok()
}

/// An AddPartitionsToTxn answer giving every partition `code`.
fn every_partition(request: &AddPartitionsToTxnRequest, code: i16) -> AddPartitionsToTxnResponse {
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(
        request
            .v3_and_below_topics
            .iter()
            .map(|t| {
                AddPartitionsToTxnTopicResult::default()
                    .with_name(t.name.clone())
                    .with_results_by_partition(
                        t.partitions
                            .iter()
                            .map(|&p| {
                                AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_partition_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// As before transactions could move: to the default cluster.
fn home_plan<C: Cluster>(cx: &Context<'_, C>, default: &Arc<str>) -> Result<Plan> {
    let destination = toward(cx, default);
    if cx.api == ApiKey::TxnOffsetCommit {
        return super::commits::plan_txn_offset_commit(cx, destination);
    }
    Ok(Plan::Forward(destination))
}

async fn add_partitions<C: Cluster>(
    cx: &Context<'_, C>,
    transactions: &crate::route::OpenTransactions,
    default: &Arc<str>,
) -> Result<Plan> {
    let (header, request): (_, AddPartitionsToTxnRequest) = cx.decode()?;
    let id = request.v3_and_below_transactional_id.to_string();
    let topics: Vec<String> = request
        .v3_and_below_topics
        .iter()
        .map(|t| t.name.to_string())
        .collect();
    let mut clusters: Vec<Arc<str>> = topics.iter().map(|t| cx.routes.writes(t).clone()).collect();
    clusters.sort();
    clusters.dedup();
    let refuse = |code: i16| -> Result<Plan> {
        let response = every_partition(&request, code);
        Ok(Plan::Answer(encode_response(
            cx.api,
            cx.version,
            header.correlation_id,
            &response,
        )?))
    };
    let [cluster] = clusters.as_slice() else {
        if clusters.is_empty() {
            return home_plan(cx, default);
        }
        tracing::warn!(transactional_id = %id, ?topics, "one transaction adds topics whose writes go to different clusters: refused (INVALID_TXN_STATE)");
        return refuse(INVALID_TXN_STATE);
    };
    let Some(pins) = cx.cluster.producers() else {
        return home_plan(cx, default);
    };
    let pin = match transactions.place(&id, &topics, cluster, default, pins) {
        Ok(pin) => pin,
        Err(open_on) => {
            tracing::warn!(transactional_id = %id, ?topics, %open_on, "a transaction open on one cluster adds topics written on another: refused (INVALID_TXN_STATE)");
            return refuse(INVALID_TXN_STATE);
        }
    };
    if pin == *default {
        return Ok(Plan::Forward(toward(cx, default)));
    }
    let client = client_of(
        default,
        request.v3_and_below_producer_id,
        request.v3_and_below_producer_epoch,
    );
    let Some(ours) = cx
        .cluster
        .transactional_producer_on(&pin, &client, &id)
        .await
    else {
        return refuse(COORDINATOR_NOT_AVAILABLE);
    };
    let request = request
        .with_v3_and_below_producer_id(ProducerId(ours.producer_id))
        .with_v3_and_below_producer_epoch(ours.epoch);
    let frame = cx.encode_request(&header, &request)?;
    Ok(Plan::single(toward(cx, &pin), frame, as_answered()))
}

/// A request of a transaction running away from the default cluster: under
/// the identity that cluster issued klink.
async fn away<C: Cluster>(
    cx: &Context<'_, C>,
    pin: &Arc<str>,
    id: &str,
    identity: Identity,
    default: &Arc<str>,
) -> Result<Plan> {
    let client = client_of(default, ProducerId(identity.producer_id), identity.epoch);
    let ours = cx.cluster.transactional_producer_on(pin, &client, id).await;
    let destination = toward(cx, pin);
    let correlation_id = crate::wire::RequestHeader::correlation_id_of(cx.payload).unwrap_or(0);
    match cx.api {
        ApiKey::AddOffsetsToTxn => {
            let (header, request): (_, AddOffsetsToTxnRequest) = cx.decode()?;
            let Some(ours) = ours else {
                let answer =
                    AddOffsetsToTxnResponse::default().with_error_code(COORDINATOR_NOT_AVAILABLE);
                return answered(cx, correlation_id, &answer);
            };
            let request = request
                .with_producer_id(ProducerId(ours.producer_id))
                .with_producer_epoch(ours.epoch);
            let frame = cx.encode_request(&header, &request)?;
            Ok(Plan::single(destination, frame, as_answered()))
        }
        ApiKey::EndTxn => {
            let (header, request): (_, EndTxnRequest) = cx.decode()?;
            let Some(ours) = ours else {
                let answer = EndTxnResponse::default()
                    .with_error_code(COORDINATOR_NOT_AVAILABLE)
                    .with_producer_id(ProducerId(identity.producer_id))
                    .with_producer_epoch(identity.epoch);
                return answered(cx, correlation_id, &answer);
            };
            let request = request
                .with_producer_id(ProducerId(ours.producer_id))
                .with_producer_epoch(ours.epoch);
            let frame = cx.encode_request(&header, &request)?;
            if cx.version < ENDTXN_NEW_EPOCH_SINCE {
                return Ok(Plan::single(destination, frame, as_answered()));
            }
            // v5 answers carry the producer's identity: the client's own.
            let (api, version) = (cx.api, cx.version);
            let merge: Merge = Box::new(move |answers: Vec<PartAnswer>| {
                let frame = only_answer(answers)?;
                let response: EndTxnResponse = super::decode_response(api, version, &frame)?;
                let response = response
                    .with_producer_id(ProducerId(identity.producer_id))
                    .with_producer_epoch(identity.epoch);
                encode_response(api, version, correlation_id, &response)
            });
            Ok(Plan::single(destination, frame, merge))
        }
        _ => {
            let (header, mut request): (_, TxnOffsetCommitRequest) = cx.decode()?;
            let Some(ours) = ours else {
                let answer = TxnOffsetCommitResponse::default().with_topics(
                    request
                        .topics
                        .iter()
                        .map(|t| {
                            TxnOffsetCommitResponseTopic::default()
                                .with_name(t.name.clone())
                                .with_partitions(
                                    t.partitions
                                        .iter()
                                        .map(|p| {
                                            TxnOffsetCommitResponsePartition::default()
                                                .with_partition_index(p.partition_index)
                                                .with_error_code(COORDINATOR_NOT_AVAILABLE)
                                        })
                                        .collect(),
                                )
                        })
                        .collect(),
                );
                return answered(cx, correlation_id, &answer);
            };
            request.producer_id = ProducerId(ours.producer_id);
            request.producer_epoch = ours.epoch;
            super::commits::in_cluster_numbering(cx, pin, &mut request);
            let frame = cx.encode_request(&header, &request)?;
            Ok(Plan::single(destination, frame, as_answered()))
        }
    }
}

/// The transactional id and client identity of AddOffsetsToTxn, EndTxn or
/// TxnOffsetCommit.
fn identity_of<C: Cluster>(cx: &Context<'_, C>) -> Result<Option<(String, Identity)>> {
    let found = match cx.api {
        ApiKey::AddOffsetsToTxn => {
            let (_, r): (_, AddOffsetsToTxnRequest) = cx.decode()?;
            (
                r.transactional_id.to_string(),
                r.producer_id,
                r.producer_epoch,
            )
        }
        ApiKey::EndTxn => {
            let (_, r): (_, EndTxnRequest) = cx.decode()?;
            (
                r.transactional_id.to_string(),
                r.producer_id,
                r.producer_epoch,
            )
        }
        ApiKey::TxnOffsetCommit => {
            let (_, r): (_, TxnOffsetCommitRequest) = cx.decode()?;
            (
                r.transactional_id.to_string(),
                r.producer_id,
                r.producer_epoch,
            )
        }
        _ => return Ok(None),
    };
    let (id, producer_id, epoch) = found;
    Ok(Some((
        id,
        Identity {
            producer_id: producer_id.0,
            epoch,
        },
    )))
}

fn client_of(default: &Arc<str>, producer_id: ProducerId, epoch: i16) -> ClientProducer {
    ClientProducer {
        issuer: default.clone(),
        identity: Identity {
            producer_id: producer_id.0,
            epoch,
        },
    }
}

fn as_answered() -> Merge {
    Box::new(|answers: Vec<PartAnswer>| Ok(only_answer(answers)?.wire_bytes().clone()))
}

fn answered<C: Cluster, R: kafka_protocol::protocol::Encodable>(
    cx: &Context<'_, C>,
    correlation_id: i32,
    response: &R,
) -> Result<Plan> {
    let bytes: Bytes = encode_response(cx.api, cx.version, correlation_id, response)?;
    Ok(Plan::Answer(bytes))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::{RequestHeader, TopicName, TransactionalId};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    use super::*;
    use crate::route::ProducerIds;
    use crate::split::Destination;
    use crate::split::test_support::*;

    /// The target's transaction coordinator issues klink id 7000 at epoch 2.
    struct Coordinators {
        producers: Arc<ProducerIds>,
        transactions: Arc<crate::route::OpenTransactions>,
    }

    impl Cluster for Coordinators {
        async fn leader(&self, _: &Arc<str>, _: &str, _: i32) -> Option<i32> {
            Some(1)
        }

        fn producers(&self) -> Option<&Arc<ProducerIds>> {
            Some(&self.producers)
        }

        fn transactions(&self) -> Option<&Arc<crate::route::OpenTransactions>> {
            Some(&self.transactions)
        }

        async fn transactional_producer_on(
            &self,
            cluster: &Arc<str>,
            client: &ClientProducer,
            transactional_id: &str,
        ) -> Option<Identity> {
            assert_eq!(transactional_id, "tx");
            let issued = Identity {
                producer_id: 7000,
                epoch: 2,
            };
            Some(self.producers.set_mapped(client, cluster, issued))
        }
    }

    fn payload<R: Encodable>(api: ApiKey, version: i16, body: &R) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(5)
            .encode(&mut buf, api.request_header_version(version))
            .expect("header");
        body.encode(&mut buf, version).expect("body");
        buf.freeze()
    }

    fn id() -> kafka_protocol::messages::TransactionalId {
        TransactionalId(StrBytes::from_static_str("tx"))
    }

    fn add(topics: &[&'static str]) -> Bytes {
        let request = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(id())
            .with_v3_and_below_producer_id(ProducerId(4242))
            .with_v3_and_below_producer_epoch(3)
            .with_v3_and_below_topics(
                topics
                    .iter()
                    .map(|t| {
                        AddPartitionsToTxnTopic::default()
                            .with_name(TopicName(StrBytes::from_static_str(t)))
                            .with_partitions(vec![0])
                    })
                    .collect(),
            );
        payload(ApiKey::AddPartitionsToTxn, 3, &request)
    }

    fn end() -> Bytes {
        let request = EndTxnRequest::default()
            .with_transactional_id(id())
            .with_producer_id(ProducerId(4242))
            .with_producer_epoch(3)
            .with_committed(true);
        payload(ApiKey::EndTxn, 3, &request)
    }

    /// The request a one-part plan sends, decoded.
    fn sent<R: Decodable>(plan: Plan, api: ApiKey, version: i16) -> (Arc<str>, R) {
        let Plan::Split { mut parts, .. } = plan else {
            panic!("expected one part");
        };
        let part = parts.remove(0);
        let mut body = part.frame.slice(4..);
        RequestHeader::decode(&mut body, api.request_header_version(version)).expect("header");
        let cluster = part.destination.cluster().clone();
        (cluster, R::decode(&mut body, version).expect("body"))
    }

    #[tokio::test]
    async fn a_transaction_runs_where_its_topics_are_written_under_that_clusters_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = routes(dir.path());
        let catalog = Arc::new(crate::route::Catalog::load(Arc::new(
            crate::state::StateStore::open(&dir.path().join("catalog")).expect("state"),
        )));
        let cluster = Coordinators {
            producers: Arc::default(),
            transactions: Arc::default(),
        };
        let home = Destination::Any(Arc::from("source"));
        let observe_and_plan = |api: ApiKey, version: i16, payload: Bytes| {
            cluster.transactions.observe(api, version, &payload);
            let routes = table.snapshot();
            let (catalog, home, cluster) = (&catalog, &home, &cluster);
            async move {
                let cx = Context {
                    cluster,
                    routes: &routes,
                    catalog,
                    home,
                    api,
                    version,
                    payload: &payload,
                };
                plan_transactional(&cx).await.expect("plan")
            }
        };
        // Before the promotion: on the source, as the client sent it.
        let plan = observe_and_plan(ApiKey::AddPartitionsToTxn, 3, add(&["orders"])).await;
        assert!(matches!(plan, Plan::Forward(ref d) if d.cluster().as_ref() == "source"));
        let plan = observe_and_plan(ApiKey::EndTxn, 3, end()).await;
        assert!(matches!(plan, Plan::Forward(ref d) if d.cluster().as_ref() == "source"));

        // `orders` promoted: the next transaction runs on the target,
        // under the target coordinator's identity.
        table
            .route_topic("orders", Some("target"), Some("target"))
            .expect("route");
        let plan = observe_and_plan(ApiKey::AddPartitionsToTxn, 3, add(&["orders"])).await;
        let (cluster_sent, request): (_, AddPartitionsToTxnRequest) =
            sent(plan, ApiKey::AddPartitionsToTxn, 3);
        assert_eq!(cluster_sent.as_ref(), "target");
        assert_eq!(
            (
                request.v3_and_below_producer_id.0,
                request.v3_and_below_producer_epoch
            ),
            (7000, 2)
        );
        // A topic still written on the source, in the same transaction:
        // refused, as a transaction cannot span clusters.
        let plan = observe_and_plan(ApiKey::AddPartitionsToTxn, 3, add(&["audit"])).await;
        let Plan::Answer(frame) = plan else {
            panic!("answered by klink");
        };
        let response: AddPartitionsToTxnResponse =
            super::super::decode_response(ApiKey::AddPartitionsToTxn, 3, &frame_of(frame))
                .expect("decode");
        assert_eq!(
            response.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code,
            INVALID_TXN_STATE
        );
        // Its end goes to the target too, under the same identity.
        let plan = observe_and_plan(ApiKey::EndTxn, 3, end()).await;
        let (cluster_sent, request): (_, EndTxnRequest) = sent(plan, ApiKey::EndTxn, 3);
        assert_eq!(cluster_sent.as_ref(), "target");
        assert_eq!((request.producer_id.0, request.producer_epoch), (7000, 2));
        assert_eq!(
            cluster.producers.transactions_pinned("tx").as_deref(),
            Some("target")
        );

        // Rolled back: home again, as the client sent it.
        table
            .route_topic("orders", Some("source"), Some("source"))
            .expect("route");
        let plan = observe_and_plan(ApiKey::AddPartitionsToTxn, 3, add(&["orders"])).await;
        assert!(matches!(plan, Plan::Forward(ref d) if d.cluster().as_ref() == "source"));
        assert_eq!(cluster.producers.transactions_pinned("tx"), None);
    }

    #[test]
    fn no_transaction_opens_on_a_fenced_topic() {
        let fenced = |t: &str| t == "orders";
        assert_eq!(refused_while_fenced(3, &add(&["audit"]), fenced), None);
        let answer = refused_while_fenced(3, &add(&["audit", "orders"]), fenced)
            .expect("refused under the fence");
        let response: AddPartitionsToTxnResponse =
            super::super::decode_response(ApiKey::AddPartitionsToTxn, 3, &frame_of(answer))
                .expect("decode");
        let codes: Vec<i16> = response
            .results_by_topic_v3_and_below
            .iter()
            .map(|t| t.results_by_partition[0].partition_error_code)
            .collect();
        assert_eq!(codes, [CONCURRENT_TRANSACTIONS, CONCURRENT_TRANSACTIONS]);
        assert_eq!(refused_while_fenced(3, &add(&["orders"]), |_| false), None);
        assert_eq!(
            refused_while_fenced(3, &Bytes::from_static(b"\x00"), fenced),
            None
        );
    }
}
