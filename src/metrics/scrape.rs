//! One `/metrics` answer: the counters of [`super::Metrics`], and the state
//! figures read when scraped, in the Prometheus text format written by
//! prometheus-client.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::histogram::Snapshot;
use super::{API_SLOTS, CLUSTER_SLOTS, Metrics, api_name, metrics};
use crate::mirror::Mirrors;
use crate::route::RouteTable;

/// What a scrape reads besides the counters.
#[derive(Clone)]
pub struct State {
    pub routes: Arc<RouteTable>,
    pub mirrors: Arc<Mirrors>,
    /// Per configured cluster: whether it answered klink's last probe.
    pub clusters_up: Vec<(Arc<str>, bool)>,
    pub virtual_brokers: usize,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

/// The text of one scrape.
pub fn render(state: State) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(state)));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error leaves what was
    // written, which a scraper reports as a parse error.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Scrape(State);

type Labels = Vec<(&'static str, String)>;

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, u64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, f64>(&value, None)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, i64)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        metric.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels, Snapshot)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, s) in series {
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(s.sum_seconds, s.count, &s.buckets, None)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let m = metrics();
        events(m, &mut encoder)?;
        state(&self.0, &mut encoder)
    }
}

/// The counted figures: connections, requests, bytes, latencies, cutovers.
fn events(m: &Metrics, e: &mut DescriptorEncoder) -> std::fmt::Result {
    let clusters: Vec<Arc<str>> = m.read_clusters().clone();
    gauge(
        e,
        "klink_client_connections",
        "Client connections open",
        [(
            vec![],
            m.connections_open
                .load(std::sync::atomic::Ordering::Relaxed),
        )],
    )?;
    counter(
        e,
        "klink_client_connections_opened",
        "Client connections accepted",
        [(vec![], m.sum(|s| &s.connections))],
    )?;
    counter(
        e,
        "klink_client_bytes",
        "Bytes klink received from and sent to clients",
        [
            (
                vec![("direction", "in".into())],
                m.sum(|s| &s.client_bytes_in),
            ),
            (
                vec![("direction", "out".into())],
                m.sum(|s| &s.client_bytes_out),
            ),
        ],
    )?;
    let used_apis: Vec<usize> = (0..API_SLOTS)
        .filter(|&api| m.sum(|s| &s.requests[api]) > 0)
        .collect();
    counter(
        e,
        "klink_requests",
        "Requests clients sent, by API",
        used_apis
            .iter()
            .map(|&api| (vec![("api", api_name(api))], m.sum(|s| &s.requests[api]))),
    )?;
    histogram(
        e,
        "klink_request_duration_seconds",
        "From a client request's arrival to its answer's write, by API",
        used_apis.iter().map(|&api| {
            (
                vec![("api", api_name(api))],
                Snapshot::of(m.shards.iter().map(|s| &s.request_latency[api])),
            )
        }),
    )?;
    let per_cluster_api = |pick: fn(&super::Shard) -> &[std::sync::atomic::AtomicU64]| {
        let mut series = Vec::new();
        for (slot, cluster) in clusters.iter().enumerate().take(CLUSTER_SLOTS) {
            for api in 0..API_SLOTS {
                let n = m.sum(|s| &pick(s)[slot * API_SLOTS + api]);
                if n > 0 {
                    series.push((
                        vec![("cluster", cluster.to_string()), ("api", api_name(api))],
                        n,
                    ));
                }
            }
        }
        series
    };
    counter(
        e,
        "klink_upstream_requests",
        "Requests klink sent to a cluster (for clients, the mirror and cutovers), by API",
        per_cluster_api(|s| &s.upstream_requests),
    )?;
    counter(
        e,
        "klink_upstream_errors",
        "Requests sent to a cluster that got no answer (timeout, connection lost), by API",
        per_cluster_api(|s| &s.upstream_errors),
    )?;
    let upstreams = || clusters.iter().enumerate().skip(1);
    counter(
        e,
        "klink_upstream_bytes",
        "Bytes klink sent to and received from a cluster",
        upstreams().flat_map(|(slot, c)| {
            [
                (
                    vec![("cluster", c.to_string()), ("direction", "out".into())],
                    m.sum(|s| &s.upstream_bytes_out[slot]),
                ),
                (
                    vec![("cluster", c.to_string()), ("direction", "in".into())],
                    m.sum(|s| &s.upstream_bytes_in[slot]),
                ),
            ]
        }),
    )?;
    histogram(
        e,
        "klink_upstream_request_duration_seconds",
        "From a request's queueing toward a cluster to its answer",
        upstreams().map(|(slot, c)| {
            (
                vec![("cluster", c.to_string())],
                Snapshot::of(m.shards.iter().map(|s| &s.upstream_latency[slot])),
            )
        }),
    )?;
    counter(
        e,
        "klink_cutovers",
        "Promotions and rollbacks, by result (failed: refused or aborted)",
        ["promote", "rollback"]
            .iter()
            .enumerate()
            .flat_map(|(i, command)| {
                ["ok", "failed"].iter().enumerate().map(move |(j, result)| {
                    (
                        vec![
                            ("command", command.to_string()),
                            ("result", result.to_string()),
                        ],
                        m.cutovers[i][j].load(std::sync::atomic::Ordering::Relaxed),
                    )
                })
            }),
    )?;
    counter(
        e,
        "klink_client_logins",
        "Clients' SASL logins to klink, by result (refused: wrong credentials or out of order)",
        ["ok", "refused"].iter().enumerate().map(|(i, result)| {
            (
                vec![("result", result.to_string())],
                m.logins[i].load(std::sync::atomic::Ordering::Relaxed),
            )
        }),
    )?;
    histogram(
        e,
        "klink_fence_duration_seconds",
        "How long a promotion or rollback held new writes",
        [(vec![], Snapshot::of([&m.fence]))],
    )?;
    histogram(
        e,
        "klink_drain_duration_seconds",
        "How long each partition took to mirror up to its end under a fence",
        [(vec![], Snapshot::of([&m.drain]))],
    )
}

/// The state figures: clusters, routes, mirror lag, bypasses.
fn state(state: &State, e: &mut DescriptorEncoder) -> std::fmt::Result {
    gauge(
        e,
        "klink_cluster_up",
        "Whether a configured cluster answered klink's last probe",
        state
            .clusters_up
            .iter()
            .map(|(c, up)| (vec![("cluster", c.to_string())], i64::from(*up))),
    )?;
    gauge(
        e,
        "klink_virtual_brokers",
        "Virtual brokers klink listens for",
        [(vec![], state.virtual_brokers as i64)],
    )?;
    let routes = state.routes.snapshot();
    gauge(
        e,
        "klink_topic_route",
        "A linked topic's state and routes (1 per topic)",
        routes.topics().into_iter().map(|(topic, r)| {
            (
                vec![
                    ("topic", topic.to_string()),
                    ("link", r.link.clone().unwrap_or_default()),
                    ("state", r.state.as_str().to_string()),
                    ("writes", r.writes.to_string()),
                    ("reads", r.reads.to_string()),
                ],
                1,
            )
        }),
    )?;
    gauge(
        e,
        "klink_group_route",
        "The cluster coordinating a linked group (1 per group)",
        routes.groups().into_iter().map(|(group, g)| {
            (
                vec![
                    ("group", group.to_string()),
                    ("cluster", g.cluster.to_string()),
                ],
                1,
            )
        }),
    )?;
    let mut lag = Vec::new();
    let mut bypassed = Vec::new();
    for topic in routes.topics().keys() {
        let Some(mirror) = state.mirrors.topic(topic) else {
            continue;
        };
        for p in mirror.partitions.values() {
            let labels = vec![
                ("topic", topic.to_string()),
                ("partition", p.partition.to_string()),
            ];
            lag.push((labels.clone(), p.lag));
            bypassed.push((labels, u64::try_from(p.bypassed).unwrap_or(0)));
        }
    }
    gauge(
        e,
        "klink_mirror_lag_records",
        "Records the mirror still has to copy, per partition",
        lag,
    )?;
    counter(
        e,
        "klink_bypassed_records",
        "Records found on a mirrored topic's source that no write through klink explains",
        bypassed,
    )
}

/// Every metric name a scrape can carry (with the suffixes Prometheus
/// adds), for checking dashboards and alert rules against.
pub fn exported_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .flat_map(|(name, kind)| {
            let mut names = vec![name.clone()];
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{name}{suffix}"));
                }
            }
            names
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn empty_state() -> (tempfile::TempDir, State) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = crate::config::Config::parse(
            Path::new("klink.toml"),
            "[proxy]\nlisten = \"127.0.0.1:9092\"\nadvertised_host = \"127.0.0.1\"\nbroker_ports_start = 9100\n\
             [clusters.source]\nbootstrap = \"127.0.0.1:1\"\n[clusters.target]\nbootstrap = \"127.0.0.1:2\"\n\
             [[links]]\nid = \"m\"\nsource = \"source\"\ntarget = \"target\"\ntopics = [\"orders\"]\n",
        )
        .expect("config");
        let state = Arc::new(crate::state::StateStore::open(dir.path()).expect("state"));
        let routes = Arc::new(RouteTable::load(&config, state).expect("routes"));
        let scraped = State {
            routes,
            mirrors: Arc::default(),
            clusters_up: vec![(Arc::from("source"), true), (Arc::from("target"), false)],
            virtual_brokers: 2,
        };
        (dir, scraped)
    }

    /// `klink_...` names in `text`.
    fn named(text: &str) -> std::collections::BTreeSet<String> {
        let mut names = std::collections::BTreeSet::new();
        let mut rest = text;
        while let Some(at) = rest.find("klink_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
        names
    }

    #[test]
    fn every_family_is_exported_with_its_type_and_state_series() {
        let (_dir, state) = empty_state();
        let text = render(state);
        let names = exported_names(&text);
        for name in [
            "klink_client_connections",
            "klink_client_connections_opened_total",
            "klink_requests_total",
            "klink_request_duration_seconds_bucket",
            "klink_upstream_requests_total",
            "klink_upstream_errors_total",
            "klink_upstream_bytes_total",
            "klink_cutovers_total",
            "klink_client_logins_total",
            "klink_fence_duration_seconds_count",
            "klink_cluster_up",
            "klink_topic_route",
            "klink_mirror_lag_records",
            "klink_bypassed_records_total",
        ] {
            assert!(names.contains(name), "{name} missing from:\n{text}");
        }
        assert!(
            text.contains("klink_cluster_up{cluster=\"target\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "klink_topic_route{topic=\"orders\",link=\"m\",state=\"source\",writes=\"source\",reads=\"source\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE klink_fence_duration_seconds histogram\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative_once_and_end_at_the_count() {
        // The text encoder adds the buckets up itself: a snapshot handing
        // it cumulative counts made every `le` bucket too big (found by
        // the soak bench, whose p99 came out past every bound).
        metrics().client_request(0, 100);
        metrics().client_request(0, 100);
        metrics().client_answer(0, 100, std::time::Duration::from_micros(300));
        metrics().client_answer(0, 100, std::time::Duration::from_millis(3));
        let (_dir, state) = empty_state();
        let text = render(state);
        let series = |suffix: &str| -> Vec<f64> {
            text.lines()
                .filter(|l| {
                    l.starts_with(&format!(
                        "klink_request_duration_seconds_{suffix}{{api=\"Produce\""
                    ))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
                .collect()
        };
        let buckets = series("bucket");
        let count = series("count");
        assert_eq!(buckets.len(), 16, "{text}");
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
        assert_eq!(buckets.last(), count.first(), "+Inf is the count: {text}");
        assert!(buckets[0] >= 1.0 && buckets[0] < buckets[15], "{buckets:?}");
    }

    #[test]
    fn the_dashboard_and_alert_rules_name_only_exported_metrics() {
        let (_dir, state) = empty_state();
        let exported = exported_names(&render(state));
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops");
        let dashboard =
            std::fs::read_to_string(root.join("klink-dashboard.json")).expect("dashboard");
        let parsed: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
        let exprs: Vec<&str> = parsed["panels"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .filter_map(|t| t["expr"].as_str())
            .collect();
        assert!(exprs.len() >= 10, "the dashboard has its panels");
        let alerts = std::fs::read_to_string(root.join("klink-alerts.yml")).expect("alerts");
        let rules = alerts
            .lines()
            .filter(|l| l.trim_start().starts_with("expr:"));
        assert!(rules.count() >= 4, "the alert rules are there");
        for (file, text) in [("dashboard", exprs.join("\n")), ("alerts", alerts.clone())] {
            let names = named(&text);
            assert!(!names.is_empty());
            for name in names {
                assert!(
                    exported.contains(&name),
                    "{file} names {name}, which klink does not export"
                );
            }
        }
    }
}
