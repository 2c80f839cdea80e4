//! Metadata, merged: each topic comes from the cluster its read route
//! names. The broker list holds the virtual brokers of every cluster
//! (each answer's rewrite adds the other clusters' brokers, see
//! `rewrite::metadata`), so a client sees one cluster whatever the routes.

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
    // The names asked, once resolved; `None`: all topics.
    let mut asked_names: Option<std::collections::HashSet<String>> = None;
    match &request.topics {
        None => {
            let mut clusters = cx.routes.read_clusters();
            clusters.retain(|c| *c != home_cluster);
            asks.push((home_cluster.clone(), None));
            asks.extend(clusters.into_iter().map(|c| (c, None)));
        }
        Some(topics) => {
            let mut names = std::collections::HashSet::new();
            let mut unnamed = false;
            // The home cluster is asked even for no topics: its answer
            // carries the controller and cluster id clients keep seeing.
            asks.push((home_cluster.clone(), Some(Vec::new())));
            for topic in topics {
                // A topic asked by id (v10+) is routed by the name klink
                // knows for it; an id klink never showed a client is the
                // client's own cluster's business.
                let name = match &topic.name {
                    Some(name) => Some(name.to_string()),
                    None => cx.catalog.name_by_client_id(&topic.topic_id),
                };
                let cluster = name.as_ref().map_or_else(
                    || home_cluster.clone(),
                    |name| cx.routes.reads(name).clone(),
                );
                match name {
                    Some(name) => {
                        names.insert(name);
                    }
                    // The answer names it; klink cannot tell it from extras.
                    None => unnamed = true,
                }
                match asks.iter_mut().find(|(c, _)| *c == cluster) {
                    Some((_, Some(list))) => list.push(topic.clone()),
                    _ => asks.push((cluster, Some(vec![topic.clone()]))),
                }
            }
            if !unnamed {
                asked_names = Some(names);
            }
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
            // Each topic only from the cluster serving its reads, and only
            // if asked, even when a cluster answers more than it was asked
            // (tansu 0.6 answers an empty topic list with every topic).
            response.topics.retain(|t| {
                t.name.as_ref().is_some_and(|n| {
                    routes.reads(n.as_str()) == cluster
                        && asked_names.as_ref().is_none_or(|a| a.contains(n.as_str()))
                })
            });
            match &mut merged {
                None => merged = Some(response),
                Some(m) => {
                    // Each answer lists every cluster's brokers; only the
                    // broker's own cluster knows its rack.
                    for broker in response.brokers {
                        match m.brokers.iter_mut().find(|b| b.node_id == broker.node_id) {
                            Some(known) if known.rack.is_none() => *known = broker,
                            Some(_) => {}
                            None => m.brokers.push(broker),
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{ApiKey, BrokerId, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use super::super::test_support::{FixedLeaders, frame_of, routes};
    use super::super::{PartAnswer, Plan};
    use super::*;

    const VERSION: i16 = 9;

    fn request(topics: &[&str]) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(VERSION)
            .with_correlation_id(5)
            .encode(&mut buf, ApiKey::Metadata.request_header_version(VERSION))
            .expect("header");
        MetadataRequest::default()
            .with_topics(Some(
                topics
                    .iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
                    })
                    .collect(),
            ))
            .encode(&mut buf, VERSION)
            .expect("body");
        buf.split_off(4).freeze()
    }

    /// An answer naming these (already virtual) brokers with their racks,
    /// and these topics, with as many partitions as brokers named.
    fn answer(brokers: &[(i32, Option<&str>)], topics: &[&str]) -> PartAnswer {
        let response = MetadataResponse::default()
            .with_brokers(
                brokers
                    .iter()
                    .map(|(id, rack)| {
                        MetadataResponseBroker::default()
                            .with_node_id(BrokerId(*id))
                            .with_host(StrBytes::from_static_str("127.0.0.1"))
                            .with_port(9100 + id)
                            .with_rack(rack.map(|r| StrBytes::from_string(r.to_string())))
                    })
                    .collect(),
            )
            .with_topics(
                topics
                    .iter()
                    .map(|t| {
                        MetadataResponseTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.to_string()))))
                            .with_partitions(vec![Default::default(); brokers.len()])
                    })
                    .collect(),
            );
        PartAnswer::Answered(frame_of(
            encode_response(ApiKey::Metadata, VERSION, 5, &response).expect("encode"),
        ))
    }

    /// The plan for a client asking, through a source broker, for `orders`.
    async fn plan_orders_from_source(
        table: &crate::route::RouteTable,
        dir: &std::path::Path,
    ) -> Plan {
        let catalog = Arc::new(crate::route::Catalog::load(Arc::new(
            crate::state::StateStore::open(dir).expect("state"),
        )));
        let routes = table.snapshot();
        let leaders = FixedLeaders(HashMap::new());
        let home = Destination::Any(Arc::from("source"));
        let payload = request(&["orders"]);
        let cx = Context {
            cluster: &leaders,
            routes: &routes,
            catalog: &catalog,
            home: &home,
            api: ApiKey::Metadata,
            version: VERSION,
            payload: &payload,
        };
        plan_metadata(&cx).await.expect("plan")
    }

    #[tokio::test]
    async fn topics_come_from_their_read_cluster_and_only_if_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let table = routes(dir.path());
        table
            .route_topic("orders", None, Some("target"))
            .expect("route");
        let Plan::Split { parts, merge } = plan_orders_from_source(&table, dir.path()).await else {
            panic!("orders is read from the target: the target is asked too");
        };
        let asked: Vec<&str> = parts
            .iter()
            .map(|p| match &p.destination {
                Destination::Any(c) => &**c,
                Destination::Broker { cluster, .. } => &**cluster,
            })
            .collect();
        assert_eq!(asked, vec!["source", "target"]);
        // tansu answers an empty topic list with every topic: `payments`
        // (read from the source, but not asked) stays out, and `orders`
        // comes from the target. Each answer lists both clusters' brokers;
        // the target's own answer knows its broker's rack.
        let merged = (merge.expect("merge"))(vec![
            answer(&[(1, Some("r1")), (2, None)], &["orders", "payments"]),
            answer(
                &[(2, Some("r2")), (1, None), (3, None)],
                &["orders", "payments"],
            ),
        ])
        .expect("merge");
        let merged: MetadataResponse =
            decode_response(ApiKey::Metadata, VERSION, &frame_of(merged)).expect("decode");
        let brokers: Vec<(i32, Option<String>)> = merged
            .brokers
            .iter()
            .map(|b| (b.node_id.0, b.rack.as_ref().map(|r| r.to_string())))
            .collect();
        assert_eq!(
            brokers,
            vec![
                (1, Some("r1".to_string())),
                (2, Some("r2".to_string())),
                (3, None)
            ]
        );
        let topics: Vec<String> = merged
            .topics
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
            .collect();
        assert_eq!(topics, vec!["orders".to_string()]);
        // Which of the two `orders` came through: the target's (the second
        // answer's topics carry partition counts to tell them apart).
        assert_eq!(merged.topics[0].partitions.len(), 3);
    }

    #[tokio::test]
    async fn one_cluster_routes_forward_metadata_as_it_came() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::config::Config::parse(
            std::path::Path::new("klink.toml"),
            "[proxy]\nlisten = \"127.0.0.1:9092\"\nadvertised_host = \"127.0.0.1\"\nbroker_ports_start = 9100\n\
             [clusters.source]\nbootstrap = \"127.0.0.1:1\"\n",
        )
        .expect("config");
        let table = crate::route::RouteTable::load(
            &config,
            Arc::new(crate::state::StateStore::open(dir.path()).expect("state")),
        )
        .expect("routes");
        assert!(matches!(
            plan_orders_from_source(&table, dir.path()).await,
            Plan::Forward(_)
        ));
    }
}
