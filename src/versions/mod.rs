//! Which Kafka APIs klink offers, at which versions, and the ApiVersions
//! answer built from them.
//!
//! klink answers ApiVersions itself: the intersection of what it can handle
//! and what every upstream cluster supports, so a route flip never meets a
//! version the other cluster lacks. The table is an exhaustive match over the
//! protocol crate's `ApiKey`: when the crate learns an API, klink stops
//! compiling (and the coverage test fails) until someone decides its fate.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::protocol::{Encodable, VersionRange};

use crate::wire::response_frame;

/// How klink treats requests of one API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Forwarded as the original bytes both ways: no broker address inside.
    Forward,
    /// Forwarded; the response is decoded because it names brokers.
    Rewrite,
    /// Answered by klink without asking an upstream.
    Local,
    /// Never offered to clients, with the reason.
    Refused(&'static str),
}

const INTERNAL: Handling = Handling::Refused("broker-internal API");
const SHARE: Handling =
    Handling::Refused("share groups (KIP-932) are not proxied yet: ShareFetch names brokers");
const NODE_IDS: Handling =
    Handling::Refused("its response names broker ids klink does not translate yet");

pub fn handling(api: ApiKey) -> Handling {
    use ApiKey::*;
    use Handling::*;
    match api {
        ApiVersions => Local,
        Metadata | FindCoordinator | DescribeCluster | Produce | Fetch => Rewrite,
        ListOffsets
        | OffsetCommit
        | OffsetFetch
        | JoinGroup
        | Heartbeat
        | LeaveGroup
        | SyncGroup
        | DescribeGroups
        | ListGroups
        | CreateTopics
        | DeleteTopics
        | DeleteRecords
        | InitProducerId
        | OffsetForLeaderEpoch
        | AddPartitionsToTxn
        | AddOffsetsToTxn
        | EndTxn
        | TxnOffsetCommit
        | DescribeAcls
        | CreateAcls
        | DeleteAcls
        | DescribeConfigs
        | AlterConfigs
        | AlterReplicaLogDirs
        | DescribeLogDirs
        | CreatePartitions
        | CreateDelegationToken
        | RenewDelegationToken
        | ExpireDelegationToken
        | DescribeDelegationToken
        | DeleteGroups
        | ElectLeaders
        | IncrementalAlterConfigs
        | OffsetDelete
        | DescribeClientQuotas
        | AlterClientQuotas
        | DescribeUserScramCredentials
        | AlterUserScramCredentials
        | UpdateFeatures
        | DescribeProducers
        | DescribeTransactions
        | ListTransactions
        | GetTelemetrySubscriptions
        | PushTelemetry
        | ListConfigResources => Forward,
        // Answered by klink itself when `[proxy] sasl` is set (see
        // `login_apis`), never forwarded: upstream, klink logs in as itself.
        SaslHandshake | SaslAuthenticate => Refused("klink answers logins itself"),
        DescribeTopicPartitions | ListPartitionReassignments | AlterPartitionReassignments => {
            NODE_IDS
        }
        DescribeQuorum => Refused("its response names controller addresses"),
        // KIP-848 assignments name topics by the coordinator's own ids, and
        // a group moved to another cluster would hand a client ids it has
        // never seen: not offered until klink translates them (consumers
        // use the classic protocol, which every client falls back to).
        ConsumerGroupHeartbeat | ConsumerGroupDescribe => {
            Refused("KIP-848 assignments carry topic ids klink does not translate yet")
        }
        ShareGroupHeartbeat
        | ShareGroupDescribe
        | ShareFetch
        | ShareAcknowledge
        | DescribeShareGroupOffsets
        | AlterShareGroupOffsets
        | DeleteShareGroupOffsets => SHARE,
        Vote
        | BeginQuorumEpoch
        | EndQuorumEpoch
        | AlterPartition
        | Envelope
        | FetchSnapshot
        | BrokerRegistration
        | BrokerHeartbeat
        | UnregisterBroker
        | AllocateProducerIds
        | ControllerRegistration
        | AssignReplicasToDirs
        | AddRaftVoter
        | RemoveRaftVoter
        | UpdateRaftVoter
        | WriteTxnMarkers
        | InitializeShareGroupState
        | ReadShareGroupState
        | WriteShareGroupState
        | DeleteShareGroupState
        | ReadShareGroupStateSummary => INTERNAL,
    }
}

/// The versions klink itself can handle for an API, before any upstream
/// is consulted: everything the protocol crate can encode and decode.
pub fn klink_range(api: ApiKey) -> Option<VersionRange> {
    match handling(api) {
        Handling::Refused(_) => None,
        _ => Some(api.valid_versions()),
    }
}

/// Whether klink can carry a request of this key and version at all.
pub fn can_handle(api: ApiKey, version: i16) -> bool {
    klink_range(api).is_some_and(|r| r.min <= version && version <= r.max)
}

/// What one upstream cluster said in its ApiVersions response.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamVersions {
    pub apis: BTreeMap<i16, VersionRange>,
    pub supported_features: Vec<SupportedFeatureKey>,
    pub finalized_features: Vec<FinalizedFeatureKey>,
    pub finalized_features_epoch: i64,
}

impl UpstreamVersions {
    pub fn from_response(response: &ApiVersionsResponse) -> UpstreamVersions {
        UpstreamVersions {
            apis: response
                .api_keys
                .iter()
                .map(|a| {
                    (
                        a.api_key,
                        VersionRange {
                            min: a.min_version,
                            max: a.max_version,
                        },
                    )
                })
                .collect(),
            supported_features: response.supported_features.clone(),
            finalized_features: response.finalized_features.clone(),
            finalized_features_epoch: response.finalized_features_epoch,
        }
    }
}

/// The API list klink advertises: klink ∩ every upstream. ApiVersions itself
/// is klink's own, since klink answers it.
pub fn advertised(upstreams: &[UpstreamVersions]) -> Vec<ApiVersion> {
    ApiKey::iter()
        .filter_map(|api| {
            let mut range = klink_range(api)?;
            if handling(api) != Handling::Local {
                for upstream in upstreams {
                    range = range.intersect(upstream.apis.get(&(api as i16))?);
                }
            }
            (!range.is_empty()).then(|| {
                ApiVersion::default()
                    .with_api_key(api as i16)
                    .with_min_version(range.min)
                    .with_max_version(range.max)
            })
        })
        .collect()
}

/// The whole ApiVersions response frame for a client that asked at `version`.
/// Features are passed on from the first upstream only when every upstream
/// agrees, so a client never enables a feature one cluster lacks.
pub fn api_versions_response(
    correlation_id: i32,
    version: i16,
    upstreams: &[UpstreamVersions],
    client_logins: bool,
) -> Bytes {
    let mut apis = advertised(upstreams);
    if client_logins {
        apis.extend(login_apis());
    }
    let mut response = ApiVersionsResponse::default().with_api_keys(apis);
    if let Some(first) = upstreams.first()
        && upstreams.iter().all(|u| {
            u.finalized_features == first.finalized_features
                && u.supported_features == first.supported_features
        })
    {
        response = response
            .with_supported_features(first.supported_features.clone())
            .with_finalized_features(transactions_v1(first.finalized_features.clone()))
            .with_finalized_features_epoch(first.finalized_features_epoch);
    }
    encode_api_versions(correlation_id, version, &response)
}

/// Kafka's finalized features with `transaction.version` capped at 1.
/// Version 2 (KIP-890, on by default on Kafka 4.0 clusters) bumps the
/// producer epoch at every transaction's end (EndTxn v5): a transaction
/// klink runs on another cluster under an identity of its own could not
/// follow that. Clients seeing level 1 use EndTxn up to v4 and add their
/// partitions with AddPartitionsToTxn, which brokers with version 2 still
/// take.
fn transactions_v1(mut features: Vec<FinalizedFeatureKey>) -> Vec<FinalizedFeatureKey> {
    for feature in &mut features {
        if feature.name.as_str() == "transaction.version" && feature.min_version_level <= 1 {
            feature.max_version_level = feature.max_version_level.min(1);
        }
    }
    features
}

/// What klink answers itself when clients log in to it (`[proxy] sasl`):
/// SaslHandshake v1 only (v0 carries the exchange in raw frames), and
/// SaslAuthenticate up to v2.
pub fn login_apis() -> [ApiVersion; 2] {
    [
        ApiVersion::default()
            .with_api_key(ApiKey::SaslHandshake as i16)
            .with_min_version(1)
            .with_max_version(1),
        ApiVersion::default()
            .with_api_key(ApiKey::SaslAuthenticate as i16)
            .with_min_version(0)
            .with_max_version(2),
    ]
}

/// The answer to an ApiVersions request at a version klink does not know:
/// a v0 body with UNSUPPORTED_VERSION and klink's own ApiVersions range, as
/// Kafka brokers do, so the client can retry at a version both know.
pub fn unsupported_api_versions_response(correlation_id: i32) -> Bytes {
    let range = ApiKey::ApiVersions.valid_versions();
    let response = ApiVersionsResponse::default()
        .with_error_code(kafka_protocol::ResponseError::UnsupportedVersion.code())
        .with_api_keys(vec![
            ApiVersion::default()
                .with_api_key(ApiKey::ApiVersions as i16)
                .with_min_version(range.min)
                .with_max_version(range.max),
        ]);
    encode_api_versions(correlation_id, 0, &response)
}

fn encode_api_versions(correlation_id: i32, version: i16, response: &ApiVersionsResponse) -> Bytes {
    let mut body = BytesMut::new();
    // Encoding a response we built ourselves at a version the crate supports
    // cannot fail; an empty body would still be a well-formed frame for logs.
    if let Err(e) = response.encode(&mut body, version) {
        tracing::error!(error = %e, version, "encoding ApiVersions response failed");
    }
    // ApiVersions responses always use header v0, even in flexible versions,
    // so clients can parse them before they know what the broker speaks.
    response_frame(correlation_id, 0, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Decodable;
    use kafka_protocol::protocol::StrBytes;

    #[test]
    fn every_api_the_crate_knows_has_a_decision() {
        // `handling` is an exhaustive match, so a new ApiKey variant fails to
        // compile; this test also catches keys that map to nothing sensible.
        let mut offered = 0;
        for api in ApiKey::iter() {
            match handling(api) {
                Handling::Refused(reason) => assert!(!reason.is_empty(), "{api:?}"),
                _ => {
                    offered += 1;
                    let range = klink_range(api).expect("offered APIs have a range");
                    assert!(!range.is_empty(), "{api:?}");
                }
            }
        }
        assert!(
            offered >= 40,
            "klink offers the client APIs, found {offered}"
        );
        let known: Vec<i16> = (0..=i16::MAX)
            .filter(|k| ApiKey::try_from(*k).is_ok())
            .collect();
        assert_eq!(known.len(), ApiKey::iter().count(), "iter covers try_from");
    }

    fn upstream(apis: &[(ApiKey, i16, i16)]) -> UpstreamVersions {
        UpstreamVersions {
            apis: apis
                .iter()
                .map(|(a, min, max)| {
                    (
                        *a as i16,
                        VersionRange {
                            min: *min,
                            max: *max,
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn advertises_the_intersection_of_klink_and_all_upstreams() {
        let source = upstream(&[
            (ApiKey::Produce, 0, 11),
            (ApiKey::Fetch, 0, 16),
            (ApiKey::Vote, 0, 1),
        ]);
        let target = upstream(&[(ApiKey::Produce, 3, 9), (ApiKey::Metadata, 0, 12)]);
        let list = advertised(&[source, target]);
        let find = |api: ApiKey| list.iter().find(|v| v.api_key == api as i16);
        let produce = find(ApiKey::Produce).expect("produce offered");
        assert_eq!((produce.min_version, produce.max_version), (3, 9));
        assert!(find(ApiKey::Fetch).is_none(), "target lacks Fetch");
        assert!(find(ApiKey::Metadata).is_none(), "source lacks Metadata");
        assert!(find(ApiKey::Vote).is_none(), "internal APIs never offered");
        let api_versions = find(ApiKey::ApiVersions).expect("always offered");
        assert_eq!(
            api_versions.max_version,
            ApiKey::ApiVersions.valid_versions().max
        );
    }

    #[test]
    fn the_kip_848_group_protocol_is_not_offered_until_klink_translates_it() {
        let both = || {
            upstream(&[
                (ApiKey::ConsumerGroupHeartbeat, 0, 1),
                (ApiKey::ConsumerGroupDescribe, 0, 1),
                (ApiKey::JoinGroup, 0, 9),
            ])
        };
        let list = advertised(&[both(), both()]);
        let offered = |api: ApiKey| list.iter().any(|v| v.api_key == api as i16);
        assert!(!offered(ApiKey::ConsumerGroupHeartbeat));
        assert!(!offered(ApiKey::ConsumerGroupDescribe));
        assert!(offered(ApiKey::JoinGroup), "the classic protocol stays");
    }

    #[test]
    fn transaction_version_2_is_not_passed_on() {
        let feature = |name: &'static str, max: i16| {
            FinalizedFeatureKey::default()
                .with_name(StrBytes::from_static_str(name))
                .with_min_version_level(0)
                .with_max_version_level(max)
        };
        let kafka_4 = UpstreamVersions {
            finalized_features: vec![
                feature("metadata.version", 25),
                feature("transaction.version", 2),
            ],
            ..upstream(&[(ApiKey::EndTxn, 0, 5)])
        };
        let frame = api_versions_response(7, 3, &[kafka_4.clone(), kafka_4], false);
        let mut body = frame.slice(4..);
        kafka_protocol::messages::ResponseHeader::decode(&mut body, 0).unwrap();
        let response = ApiVersionsResponse::decode(&mut body, 3).unwrap();
        let levels: Vec<(&str, i16)> = response
            .finalized_features
            .iter()
            .map(|f| (f.name.as_str(), f.max_version_level))
            .collect();
        assert_eq!(
            levels,
            [("metadata.version", 25), ("transaction.version", 1)]
        );
    }

    #[test]
    fn login_apis_are_offered_only_when_clients_log_in_to_klink() {
        let sasl_broker = upstream(&[
            (ApiKey::SaslHandshake, 0, 1),
            (ApiKey::SaslAuthenticate, 0, 2),
            (ApiKey::Metadata, 0, 12),
        ]);
        let offered = |logins: bool| -> Vec<(i16, i16, i16)> {
            let frame = api_versions_response(7, 3, std::slice::from_ref(&sasl_broker), logins);
            let mut body = frame.slice(4..);
            kafka_protocol::messages::ResponseHeader::decode(&mut body, 0).unwrap();
            let response = ApiVersionsResponse::decode(&mut body, 3).unwrap();
            response
                .api_keys
                .iter()
                .filter(|a| {
                    a.api_key == ApiKey::SaslHandshake as i16
                        || a.api_key == ApiKey::SaslAuthenticate as i16
                })
                .map(|a| (a.api_key, a.min_version, a.max_version))
                .collect()
        };
        // An upstream's own SASL is klink's business, never the client's.
        assert_eq!(offered(false), vec![]);
        assert_eq!(offered(true), vec![(17, 1, 1), (36, 0, 2)]);
    }

    #[test]
    fn unknown_api_versions_version_gets_v0_unsupported() {
        let frame = unsupported_api_versions_response(77);
        assert_eq!(
            i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
            77
        );
        let mut body = frame.slice(8..);
        let response = ApiVersionsResponse::decode(&mut body, 0).expect("v0 body");
        assert_eq!(response.error_code, 35);
        assert_eq!(response.api_keys.len(), 1);
        assert_eq!(response.api_keys[0].api_key, ApiKey::ApiVersions as i16);
    }
}
