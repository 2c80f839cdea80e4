//! Topic administration follows the cluster that owns each topic's writes:
//! a topic is created, deleted, grown and configured where it is written.
//! Resources that are not topics (brokers, ...) go where the client sent them.

use std::sync::Arc;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::{Cluster, Context, Destination, Part, Plan, decode_response, encode_response};
use crate::error::Result;

/// DescribeConfigs / AlterConfigs resource type for topics.
const TOPIC_RESOURCE: i8 = 2;

pub async fn plan_admin<C: Cluster>(cx: &Context<'_, C>) -> Result<Plan> {
    match cx.api {
        ApiKey::CreateTopics => split_list(
            cx,
            |r: &mut CreateTopicsRequest| &mut r.topics,
            |t| Some(t.name.to_string()),
            |r: &mut CreateTopicsResponse| (&mut r.topics, &mut r.throttle_time_ms),
        ),
        ApiKey::DeleteTopics if cx.version >= 6 => split_list(
            cx,
            |r: &mut DeleteTopicsRequest| &mut r.topics,
            |t| match &t.name {
                Some(name) => Some(name.to_string()),
                None => cx.catalog.name_by_client_id(&t.topic_id),
            },
            |r: &mut DeleteTopicsResponse| (&mut r.responses, &mut r.throttle_time_ms),
        ),
        ApiKey::DeleteTopics => split_list(
            cx,
            |r: &mut DeleteTopicsRequest| &mut r.topic_names,
            |t| Some(t.to_string()),
            |r: &mut DeleteTopicsResponse| (&mut r.responses, &mut r.throttle_time_ms),
        ),
        ApiKey::CreatePartitions => split_list(
            cx,
            |r: &mut CreatePartitionsRequest| &mut r.topics,
            |t| Some(t.name.to_string()),
            |r: &mut CreatePartitionsResponse| (&mut r.results, &mut r.throttle_time_ms),
        ),
        ApiKey::DescribeConfigs => split_list(
            cx,
            |r: &mut DescribeConfigsRequest| &mut r.resources,
            |r| (r.resource_type == TOPIC_RESOURCE).then(|| r.resource_name.to_string()),
            |r: &mut DescribeConfigsResponse| (&mut r.results, &mut r.throttle_time_ms),
        ),
        ApiKey::AlterConfigs => split_list(
            cx,
            |r: &mut AlterConfigsRequest| &mut r.resources,
            |r| (r.resource_type == TOPIC_RESOURCE).then(|| r.resource_name.to_string()),
            |r: &mut AlterConfigsResponse| (&mut r.responses, &mut r.throttle_time_ms),
        ),
        ApiKey::IncrementalAlterConfigs => split_list(
            cx,
            |r: &mut IncrementalAlterConfigsRequest| &mut r.resources,
            |r| (r.resource_type == TOPIC_RESOURCE).then(|| r.resource_name.to_string()),
            |r: &mut IncrementalAlterConfigsResponse| (&mut r.responses, &mut r.throttle_time_ms),
        ),
        _ => Ok(Plan::Forward(cx.home.clone())),
    }
}

/// Splits a request made of a list of items by the cluster each item's
/// topic is written on, and concatenates the answers' result lists.
fn split_list<C, Req, Resp, Item, Res>(
    cx: &Context<'_, C>,
    items: fn(&mut Req) -> &mut Vec<Item>,
    topic_of: impl Fn(&Item) -> Option<String>,
    results: fn(&mut Resp) -> (&mut Vec<Res>, &mut i32),
) -> Result<Plan>
where
    C: Cluster,
    Req: Decodable + Encodable + Clone,
    Resp: Decodable + Encodable + Default + Send + 'static,
    Item: Clone,
    Res: Send + 'static,
{
    let (header, mut request): (_, Req) = cx.decode()?;
    let home = cx.home.cluster().clone();
    let mut by_cluster: Vec<(Arc<str>, Vec<Item>)> = Vec::new();
    for item in items(&mut request).iter() {
        let cluster = topic_of(item).map_or_else(|| home.clone(), |t| cx.routes.writes(&t).clone());
        match by_cluster.iter_mut().find(|(c, _)| *c == cluster) {
            Some((_, list)) => list.push(item.clone()),
            None => by_cluster.push((cluster, vec![item.clone()])),
        }
    }
    let toward = |cluster: &Arc<str>| {
        if *cluster == home {
            cx.home.clone()
        } else {
            Destination::Any(cluster.clone())
        }
    };
    if by_cluster.len() <= 1 {
        let cluster = by_cluster
            .first()
            .map_or_else(|| home.clone(), |(c, _)| c.clone());
        return Ok(Plan::Forward(toward(&cluster)));
    }
    let mut parts = Vec::with_capacity(by_cluster.len());
    for (cluster, list) in by_cluster {
        let mut sub = request.clone();
        *items(&mut sub) = list;
        parts.push(Part {
            destination: toward(&cluster),
            frame: cx.encode_request(&header, &sub)?,
            expects_response: true,
        });
    }
    let (api, version, correlation_id) = (cx.api, cx.version, header.correlation_id);
    let merge = Box::new(move |answers: Vec<super::PartAnswer>| {
        let frames = super::all_answered(answers)?;
        let mut merged = Resp::default();
        for frame in &frames {
            let mut response: Resp = decode_response(api, version, frame)?;
            let (list, throttle) = results(&mut response);
            let throttle = *throttle;
            let list = std::mem::take(list);
            let (into, max_throttle) = results(&mut merged);
            into.extend(list);
            *max_throttle = (*max_throttle).max(throttle);
        }
        encode_response(api, version, correlation_id, &merged)
    });
    Ok(Plan::Split {
        parts,
        merge: Some(merge),
    })
}
