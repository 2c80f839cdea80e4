//! Error answers klink gives for a whole request it could not get answered
//! (the upstream connection failed, timed out, or the cluster lacks the
//! version), so a client sees a retriable Kafka error where the API has a
//! place for one, instead of a closed connection that makes a
//! non-idempotent producer resend what may already be written.
//!
//! APIs without such a place (Metadata, admin calls) get `None`: the
//! session then closes the connection, which clients treat as a network
//! error and retry.

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::groups::{group_error, group_ids};
use super::{PartFailure, encode_response};

/// Fetch v13 and Produce v13 name topics by id.
const TOPIC_IDS_SINCE: i16 = 13;
/// FindCoordinator v4 batches keys.
const FIND_COORDINATOR_BATCHED_SINCE: i16 = 4;

/// The whole response frame answering `payload` (a request's header and
/// body) with errors that say `failure`, where the API has room for them.
pub fn error_response(
    api: ApiKey,
    version: i16,
    payload: &Bytes,
    failure: PartFailure,
) -> Option<Bytes> {
    let codes = Codes::for_failure(failure);
    let mut body = payload.clone();
    let header = RequestHeader::decode(&mut body, api.request_header_version(version)).ok()?;
    let id = header.correlation_id;
    let respond = |response: &dyn ErasedEncode| response.frame(api, version, id);
    match api {
        ApiKey::Produce => {
            let request = ProduceRequest::decode(&mut body, version).ok()?;
            let by_id = version >= TOPIC_IDS_SINCE;
            let topics = request
                .topic_data
                .iter()
                .map(|t| {
                    let topic = TopicProduceResponse::default().with_partition_responses(
                        t.partition_data
                            .iter()
                            .map(|p| {
                                PartitionProduceResponse::default()
                                    .with_index(p.index)
                                    .with_error_code(codes.produce)
                                    .with_base_offset(-1)
                            })
                            .collect(),
                    );
                    if by_id {
                        topic.with_topic_id(t.topic_id)
                    } else {
                        topic.with_name(t.name.clone())
                    }
                })
                .collect();
            respond(&ProduceResponse::default().with_responses(topics))
        }
        ApiKey::Fetch => {
            let request = FetchRequest::decode(&mut body, version).ok()?;
            let mut response = FetchResponse::default().with_session_id(0);
            if request.session_epoch > 0 {
                // The session's partitions are not all listed: the client
                // must start a new session with a full fetch.
                response.error_code = ResponseError::FetchSessionIdNotFound.code();
            } else {
                let by_id = version >= TOPIC_IDS_SINCE;
                response.responses = request
                    .topics
                    .iter()
                    .map(|t| {
                        let topic = fetch_response::FetchableTopicResponse::default()
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        fetch_response::PartitionData::default()
                                            .with_partition_index(p.partition)
                                            .with_error_code(codes.read)
                                            .with_high_watermark(-1)
                                    })
                                    .collect(),
                            );
                        if by_id {
                            topic.with_topic_id(t.topic_id)
                        } else {
                            topic.with_topic(t.topic.clone())
                        }
                    })
                    .collect();
            }
            respond(&response)
        }
        ApiKey::ListOffsets => {
            let request = ListOffsetsRequest::decode(&mut body, version).ok()?;
            let topics = request
                .topics
                .iter()
                .map(|t| {
                    ListOffsetsTopicResponse::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    ListOffsetsPartitionResponse::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(codes.read)
                                        .with_offset(-1)
                                        .with_timestamp(-1)
                                })
                                .collect(),
                        )
                })
                .collect();
            respond(&ListOffsetsResponse::default().with_topics(topics))
        }
        ApiKey::FindCoordinator => {
            let request = FindCoordinatorRequest::decode(&mut body, version).ok()?;
            let mut response = FindCoordinatorResponse::default();
            if version < FIND_COORDINATOR_BATCHED_SINCE {
                response.error_code = codes.group;
                response.node_id = BrokerId(-1);
                response.port = -1;
            } else {
                response.coordinators = request
                    .coordinator_keys
                    .iter()
                    .map(|key| {
                        Coordinator::default()
                            .with_key(key.clone())
                            .with_node_id(BrokerId(-1))
                            .with_port(-1)
                            .with_error_code(codes.group)
                    })
                    .collect();
            }
            respond(&response)
        }
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::OffsetDelete
        | ApiKey::DescribeGroups
        | ApiKey::DeleteGroups
        | ApiKey::ConsumerGroupHeartbeat => {
            // The answers klink gives a group request routed elsewhere,
            // with another code.
            let groups = group_ids(api, version, payload).ok()?;
            group_error(api, version, payload, id, &groups, codes.group).ok()
        }
        ApiKey::InitProducerId => respond(
            &InitProducerIdResponse::default()
                .with_error_code(codes.group)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        ),
        _ => None,
    }
}

/// The codes one failure becomes, per kind of API.
struct Codes {
    /// Produce: whether the records may have been written matters.
    produce: i16,
    /// Fetch and ListOffsets: consumers retry after a metadata refresh.
    read: i16,
    /// Coordinator APIs: the client looks for its coordinator again.
    group: i16,
}

impl Codes {
    fn for_failure(failure: PartFailure) -> Codes {
        let unsupported = ResponseError::UnsupportedVersion.code();
        match failure {
            PartFailure::Unsupported => Codes {
                produce: unsupported,
                read: unsupported,
                group: unsupported,
            },
            PartFailure::NotSent => Codes {
                produce: ResponseError::NotLeaderOrFollower.code(),
                read: ResponseError::NotLeaderOrFollower.code(),
                group: ResponseError::CoordinatorNotAvailable.code(),
            },
            PartFailure::Lost => Codes {
                // Maybe written: the producer's own timeout says the same.
                produce: ResponseError::RequestTimedOut.code(),
                read: ResponseError::NotLeaderOrFollower.code(),
                group: ResponseError::CoordinatorNotAvailable.code(),
            },
        }
    }
}

/// Encodes any response body into a frame (a trait object, so one closure
/// serves every response type above).
trait ErasedEncode {
    fn frame(&self, api: ApiKey, version: i16, correlation_id: i32) -> Option<Bytes>;
}

impl<T: Encodable> ErasedEncode for T {
    fn frame(&self, api: ApiKey, version: i16, correlation_id: i32) -> Option<Bytes> {
        match encode_response(api, version, correlation_id, self) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::error!(?api, version, error = %e, "cannot encode an error answer");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::split::decode_response;
    use crate::wire::Frame;

    fn payload<R: Encodable>(api: ApiKey, version: i16, body: &R) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(41)
            .encode(&mut buf, api.request_header_version(version))
            .expect("header");
        body.encode(&mut buf, version).expect("body");
        buf.freeze()
    }

    fn decode<R: Decodable>(api: ApiKey, version: i16, bytes: Bytes) -> R {
        let frame = Frame::from_prefixed(bytes);
        assert_eq!(frame.payload()[..4], 41i32.to_be_bytes(), "correlation id");
        decode_response(api, version, &frame).expect("decodes")
    }

    #[test]
    fn produce_partitions_get_an_error_saying_whether_records_may_be_written() {
        let request = ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("orders")))
                    .with_partition_data(vec![
                        PartitionProduceData::default().with_index(0),
                        PartitionProduceData::default().with_index(2),
                    ]),
            ]);
        for version in [3, 9, 12] {
            let bytes = payload(ApiKey::Produce, version, &request);
            for (failure, code) in [
                (PartFailure::NotSent, 6),
                (PartFailure::Lost, 7),
                (PartFailure::Unsupported, 35),
            ] {
                let answer = error_response(ApiKey::Produce, version, &bytes, failure)
                    .expect("produce has per-partition errors");
                let response: ProduceResponse = decode(ApiKey::Produce, version, answer);
                let got: Vec<(String, i32, i16)> = response
                    .responses
                    .iter()
                    .flat_map(|t| {
                        t.partition_responses
                            .iter()
                            .map(move |p| (t.name.to_string(), p.index, p.error_code))
                    })
                    .collect();
                assert_eq!(
                    got,
                    vec![("orders".into(), 0, code), ("orders".into(), 2, code)]
                );
            }
        }
    }

    #[test]
    fn fetch_partitions_are_retried_and_incremental_sessions_restart() {
        let full = FetchRequest::default().with_topics(vec![
            fetch_request::FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(vec![
                    fetch_request::FetchPartition::default().with_partition(1),
                ]),
        ]);
        let bytes = payload(ApiKey::Fetch, 12, &full);
        let answer = error_response(ApiKey::Fetch, 12, &bytes, PartFailure::Lost).expect("fetch");
        let response: FetchResponse = decode(ApiKey::Fetch, 12, answer);
        assert_eq!(response.responses[0].partitions[0].error_code, 6);

        let incremental = full.with_session_id(5).with_session_epoch(3);
        let bytes = payload(ApiKey::Fetch, 12, &incremental);
        let answer = error_response(ApiKey::Fetch, 12, &bytes, PartFailure::Lost).expect("fetch");
        let response: FetchResponse = decode(ApiKey::Fetch, 12, answer);
        assert_eq!(
            response.error_code,
            ResponseError::FetchSessionIdNotFound.code()
        );
    }

    #[test]
    fn coordinator_apis_send_the_client_back_to_find_its_coordinator() {
        let join =
            JoinGroupRequest::default().with_group_id(GroupId(StrBytes::from_static_str("g")));
        let bytes = payload(ApiKey::JoinGroup, 5, &join);
        let answer = error_response(ApiKey::JoinGroup, 5, &bytes, PartFailure::Lost).expect("join");
        let response: JoinGroupResponse = decode(ApiKey::JoinGroup, 5, answer);
        assert_eq!(
            response.error_code,
            ResponseError::CoordinatorNotAvailable.code()
        );
        let find = FindCoordinatorRequest::default()
            .with_coordinator_keys(vec![StrBytes::from_static_str("g")]);
        let bytes = payload(ApiKey::FindCoordinator, 4, &find);
        let answer =
            error_response(ApiKey::FindCoordinator, 4, &bytes, PartFailure::NotSent).expect("find");
        let response: FindCoordinatorResponse = decode(ApiKey::FindCoordinator, 4, answer);
        assert_eq!(
            response.coordinators[0].error_code,
            ResponseError::CoordinatorNotAvailable.code()
        );
    }

    #[test]
    fn apis_without_room_for_an_error_get_none() {
        let bytes = payload(ApiKey::Metadata, 9, &MetadataRequest::default());
        assert!(error_response(ApiKey::Metadata, 9, &bytes, PartFailure::Lost).is_none());
        assert!(
            error_response(
                ApiKey::Produce,
                9,
                &Bytes::from_static(b"\0\0"),
                PartFailure::Lost
            )
            .is_none(),
            "garbage is not answered"
        );
    }
}
