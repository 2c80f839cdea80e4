//! Produce requests made of ready record batches, and their answers read
//! per partition: what the producer's sender and the mirror's batch
//! streams share. Neither cares where the batches came from (records the
//! producer encoded, or a source cluster's batches as they were).

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

/// One Produce request carrying `batches` as (topic, partition, records),
/// grouped by topic in the order topics first appear. Kafka takes one batch
/// per partition per request: callers send at most one per partition.
pub fn produce_request<'a>(
    batches: impl IntoIterator<Item = (&'a str, i32, Bytes)>,
    acks: i16,
    timeout_ms: i32,
) -> ProduceRequest {
    let mut topics: Vec<TopicProduceData> = Vec::new();
    for (topic, partition, records) in batches {
        let data = PartitionProduceData::default()
            .with_index(partition)
            .with_records(Some(records));
        match topics.iter_mut().find(|t| t.name.0.as_str() == topic) {
            Some(entry) => entry.partition_data.push(data),
            None => topics.push(
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                    .with_partition_data(vec![data]),
            ),
        }
    }
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(topics)
}

/// (error code, base offset) per (topic, partition) of a Produce answer.
pub fn produce_answers(response: &ProduceResponse) -> HashMap<(&str, i32), (i16, i64)> {
    response
        .responses
        .iter()
        .flat_map(|t| {
            t.partition_responses
                .iter()
                .map(move |p| ((t.name.0.as_str(), p.index), (p.error_code, p.base_offset)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };

    #[test]
    fn batches_are_grouped_by_topic_in_first_seen_order() {
        let request = produce_request(
            [
                ("b", 0, Bytes::from_static(b"1")),
                ("a", 2, Bytes::from_static(b"2")),
                ("b", 1, Bytes::from_static(b"3")),
            ],
            -1,
            30_000,
        );
        let layout: Vec<(String, Vec<i32>)> = request
            .topic_data
            .iter()
            .map(|t| {
                (
                    t.name.0.to_string(),
                    t.partition_data.iter().map(|p| p.index).collect(),
                )
            })
            .collect();
        assert_eq!(
            layout,
            vec![("b".to_string(), vec![0, 1]), ("a".to_string(), vec![2])]
        );
        assert_eq!((request.acks, request.timeout_ms), (-1, 30_000));
    }

    #[test]
    fn answers_are_read_per_partition() {
        let response = ProduceResponse::default().with_responses(vec![
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("a")))
                .with_partition_responses(vec![
                    PartitionProduceResponse::default()
                        .with_index(3)
                        .with_error_code(6)
                        .with_base_offset(-1),
                    PartitionProduceResponse::default()
                        .with_index(4)
                        .with_base_offset(70),
                ]),
        ]);
        let answers = produce_answers(&response);
        assert_eq!(answers.get(&("a", 3)), Some(&(6, -1)));
        assert_eq!(answers.get(&("a", 4)), Some(&(0, 70)));
    }
}
