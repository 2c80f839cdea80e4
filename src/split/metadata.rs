//! Metadata, merged: each topic comes from the cluster its read route
//! names, and the broker list holds the virtual brokers of every cluster
//! that serves a topic, so a client sees one cluster whatever the routes.

use std::sync::Arc;

use kafka_protocol::messages::{MetadataRequest, MetadataResponse};

use super::{Cluster, Context, Destination, Part, Plan, decode_response, encode_response};
use crate::error::Result;

pub async fn plan_metadata<C: Cluster>(cx: &Context<'_, C>) -> Result<Plan> {
    let (header, request): (_, MetadataRequest) = cx.decode()?;
    let home_cluster = cx.home.cluster().clone();
    // Clusters to ask, home first; with the topics each is asked about
    // (`None`: all topics).
    let mut asks: Vec<(Arc<str>, Option<Vec<_>>)> = Vec::new();
    match &request.topics {
        None => {
            let mut clusters = cx.routes.read_clusters();
            clusters.retain(|c| *c != home_cluster);
            asks.push((home_cluster.clone(), None));
            asks.extend(clusters.into_iter().map(|c| (c, None)));
        }
        Some(topics) => {
            asks.push((home_cluster.clone(), Some(Vec::new())));
            for topic in topics {
                // A topic asked by id (v10+) is routed by the name klink
                // knows for it; an id klink never showed a client is the
                // client's own cluster's business.
                let name = match &topic.name {
                    Some(name) => Some(name.to_string()),
                    None => cx.catalog.name_by_client_id(&topic.topic_id),
                };
                let cluster = name.map_or_else(
                    || home_cluster.clone(),
                    |name| cx.routes.reads(&name).clone(),
                );
                match asks.iter_mut().find(|(c, _)| *c == cluster) {
                    Some((_, Some(list))) => list.push(topic.clone()),
                    _ => asks.push((cluster, Some(vec![topic.clone()]))),
                }
            }
            // The home cluster is asked even for no topics: its answer
            // carries the controller and cluster id clients keep seeing.
        }
    }
    if asks.len() == 1 {
        return Ok(Plan::Forward(cx.home.clone()));
    }
    let mut parts = Vec::with_capacity(asks.len());
    let mut clusters = Vec::with_capacity(asks.len());
    for (cluster, topics) in asks {
        let sub = request.clone().with_topics(topics.clone());
        let frame = if request.topics.is_none() {
            cx.payload_frame()
        } else {
            cx.encode_request(&header, &sub)?
        };
        let destination = if cluster == home_cluster {
            cx.home.clone()
        } else {
            Destination::Any(cluster.clone())
        };
        clusters.push(cluster);
        parts.push(Part {
            destination,
            frame,
            expects_response: true,
        });
    }
    let routes = cx.routes.clone();
    let (api, version, correlation_id) = (cx.api, cx.version, header.correlation_id);
    let merge = Box::new(move |answers: Vec<super::PartAnswer>| {
        let frames = super::all_answered(answers)?;
        let mut merged: Option<MetadataResponse> = None;
        for (frame, cluster) in frames.iter().zip(&clusters) {
            let mut response: MetadataResponse = decode_response(api, version, frame)?;
            // Each topic only from the cluster serving its reads, even when a
            // cluster answers more than it was asked (tansu 0.6 answers an
            // empty topic list with every topic).
            response.topics.retain(|t| {
                t.name
                    .as_ref()
                    .is_some_and(|n| routes.reads(n.as_str()) == cluster)
            });
            match &mut merged {
                None => merged = Some(response),
                Some(m) => {
                    for broker in response.brokers {
                        if !m.brokers.iter().any(|b| b.node_id == broker.node_id) {
                            m.brokers.push(broker);
                        }
                    }
                    m.topics.extend(response.topics);
                    m.throttle_time_ms = m.throttle_time_ms.max(response.throttle_time_ms);
                }
            }
        }
        let merged = merged.ok_or_else(|| {
            crate::error::Error::klink(
                crate::error::Kind::Protocol,
                "Metadata merge without answers",
            )
        })?;
        encode_response(api, version, correlation_id, &merged)
    });
    Ok(Plan::Split {
        parts,
        merge: Some(merge),
    })
}
