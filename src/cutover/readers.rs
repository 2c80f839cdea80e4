//! Which consumer groups klink has seen reading which topics: from their
//! JoinGroup subscriptions and the topics of their OffsetCommit and
//! OffsetFetch requests. A promotion moves a topic's reads and its link's
//! groups; a group reading the topic that is not in the link would keep
//! its offsets on the source, and a group of the link that also reads a
//! topic staying behind would be moved away from it. Both are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolSubscription, JoinGroupRequest, OffsetFetchRequest, RequestHeader,
};
use kafka_protocol::protocol::Decodable;

#[derive(Default)]
pub struct Readers {
    /// A std mutex: set edits only, never held across an await.
    by_group: Mutex<BTreeMap<String, BTreeSet<String>>>,
}

impl Readers {
    /// Takes note that `group` reads `topics` (an OffsetCommit's, which the
    /// session decodes for its own needs and hands on).
    pub fn note(&self, group: &str, topics: impl IntoIterator<Item = String>) {
        let mut by_group = self.by_group.lock().unwrap_or_else(|p| p.into_inner());
        let seen = by_group.entry(group.to_string()).or_default();
        seen.extend(topics);
    }

    /// Takes note of the groups and topics an OffsetFetch or JoinGroup
    /// names; requests that cannot be read are left to the session to
    /// refuse.
    pub fn observe(&self, api: ApiKey, version: i16, payload: &Bytes) {
        let mut body = payload.clone();
        if RequestHeader::decode(&mut body, api.request_header_version(version)).is_err() {
            return;
        }
        match api {
            ApiKey::OffsetFetch => {
                if let Ok(r) = OffsetFetchRequest::decode(&mut body, version) {
                    let named = r.topics.iter().flatten().map(|t| t.name.to_string());
                    self.note(&r.group_id, named);
                    for g in &r.groups {
                        let named = g.topics.iter().flatten().map(|t| t.name.to_string());
                        self.note(&g.group_id, named);
                    }
                }
            }
            ApiKey::JoinGroup => {
                if let Ok(r) = JoinGroupRequest::decode(&mut body, version)
                    && r.protocol_type.as_str() == "consumer"
                {
                    for protocol in &r.protocols {
                        if let Some(topics) = subscription(&protocol.metadata) {
                            self.note(&r.group_id, topics);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Why `topics` cannot move with `groups`: groups reading them that
    /// are not among `groups`, and groups among them that read topics
    /// staying behind. `None` when nothing stands in the way.
    pub fn refusal(&self, topics: &[String], groups: &[String]) -> Option<String> {
        let by_group = self.by_group.lock().unwrap_or_else(|p| p.into_inner());
        let mut problems = Vec::new();
        for (group, read) in by_group.iter() {
            let moving: Vec<&String> = read.iter().filter(|t| topics.contains(t)).collect();
            let staying: Vec<&String> = read.iter().filter(|t| !topics.contains(t)).collect();
            let in_link = groups.contains(group);
            if !moving.is_empty() && !in_link {
                problems.push(format!(
                    "group `{group}` reads {} but is not in the link (add it to the link's groups, or name it with --group)",
                    list(&moving)
                ));
            }
            if in_link && !moving.is_empty() && !staying.is_empty() {
                problems.push(format!(
                    "group `{group}` also reads {}, which stays behind",
                    list(&staying)
                ));
            }
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }
}

fn list(topics: &[&String]) -> String {
    topics
        .iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The topics a consumer's JoinGroup metadata subscribes to.
fn subscription(metadata: &Bytes) -> Option<Vec<String>> {
    let mut bytes = metadata.clone();
    let version = i16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
    let _ = bytes.split_to(2);
    let subscription =
        ConsumerProtocolSubscription::decode(&mut bytes, version.clamp(0, 3)).ok()?;
    Some(subscription.topics.iter().map(|t| t.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic;
    use kafka_protocol::messages::{GroupId, OffsetCommitRequest, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::*;
    use crate::cutover::request_frame as frame;

    fn join(group: &str, topics: &[&str]) -> Bytes {
        let mut metadata = BytesMut::new();
        metadata.extend_from_slice(&1i16.to_be_bytes());
        ConsumerProtocolSubscription::default()
            .with_topics(
                topics
                    .iter()
                    .map(|t| StrBytes::from_string(t.to_string()))
                    .collect(),
            )
            .encode(&mut metadata, 1)
            .expect("subscription");
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(metadata.freeze()),
            ]);
        frame(ApiKey::JoinGroup, 5, &request)
    }

    fn commit(group: &str, topic: &str) -> Bytes {
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string()))),
            ]);
        frame(ApiKey::OffsetCommit, 8, &request)
    }

    #[test]
    fn a_promotion_is_refused_for_groups_it_would_split() {
        let readers = Readers::default();
        let orders = vec!["orders".to_string()];
        let billing = vec!["billing".to_string()];
        assert_eq!(readers.refusal(&orders, &billing), None);
        readers.observe(ApiKey::JoinGroup, 5, &join("billing", &["orders"]));
        assert_eq!(readers.refusal(&orders, &billing), None, "in the link");
        let (group, topics) =
            crate::cutover::offset_commit_of(8, &commit("audit", "orders")).expect("commit");
        readers.note(&group, topics);
        let refused = readers.refusal(&orders, &billing).expect("refused");
        assert!(refused.contains("group `audit` reads `orders` but is not in the link"));
        let readers = Readers::default();
        readers.observe(
            ApiKey::JoinGroup,
            5,
            &join("billing", &["orders", "payments"]),
        );
        let refused = readers.refusal(&orders, &billing).expect("refused");
        assert!(refused.contains("`billing` also reads `payments`, which stays behind"));
        // Garbage is ignored.
        readers.observe(ApiKey::JoinGroup, 5, &Bytes::from_static(b"\x00\x01"));
    }
}
