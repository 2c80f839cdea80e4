//! The operator's control socket: a Unix socket (mode 0600) speaking
//! newline-delimited JSON, one request and one response per line.
//! `klink ctl` is its client ([`client`]).
//!
//! A request that cannot be parsed, names an unknown command, topic, group
//! or cluster gets `{"ok":false,"error":...}` and changes nothing.
//!
//! About 680 lines: the commands, their replies and the socket that
//! serves them are one protocol, read together.

pub mod audit;
pub mod client;
mod token;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::cutover::{Cutover, Promotion, Selection, Topics};
use crate::error::{Error, Kind, Result};
use crate::mirror::{Mirrors, PartitionMirror};
use crate::route::{RouteTable, Routes};
use crate::upstream::security::Secret;

/// Runs `promote`, `rollback` or `commit` of `what`.
async fn cutover_command(
    cutover: &Cutover,
    name: &str,
    what: &Selection,
    routes: &RouteTable,
    mirrors: &Mirrors,
) -> Reply {
    let moved = match name {
        "promote" => cutover.promote(what).await,
        "rollback" => cutover.rollback(what).await,
        _ => {
            return match cutover.commit(what).await {
                Ok(changed) => Reply {
                    warning: (!changed).then(|| "committed already".to_string()),
                    ..Reply::done(status(&routes.snapshot(), mirrors))
                },
                Err(e) => Reply::failed(e.context),
            };
        }
    };
    crate::metrics::metrics().cutover_ended(name, what, &moved);
    match moved {
        Ok(promotion) => Reply {
            promotion: Some(promotion),
            ..Reply::done(status(&routes.snapshot(), mirrors))
        },
        Err(e) => Reply::failed(e.context),
    }
}

/// Longest request line accepted; commands are a few hundred bytes.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    Status {},
    Route {
        topic: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        writes: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reads: Option<String>,
    },
    RouteGroup {
        group: String,
        to: String,
    },
    /// A topic's mirror, per partition.
    Mirror {
        topic: String,
    },
    /// One partition's offset map.
    Offsets {
        topic: String,
        partition: i32,
    },
    /// Move a mirroring topic's (or every topic of a link's) reads and
    /// writes to its target.
    Promote {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<String>,
        /// Groups outside the link that move with the topics (and with
        /// the link from then on).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<String>,
    },
    /// Move a promoted topic's (or every topic of a link's) reads and
    /// writes back to its source.
    Rollback {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<String>,
        /// Groups outside the link that move with the topics (and with
        /// the link from then on).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<String>,
    },
    /// End a promoted topic's (or every topic of a link's) migration.
    Commit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        link: Option<String>,
    },
}

impl Command {
    /// The topics a cutover command names, and the command's name.
    fn selection(&self) -> Option<(&'static str, std::result::Result<Selection, String>)> {
        let (name, topic, link, groups) = match self {
            Command::Promote {
                topic,
                link,
                groups,
            } => ("promote", topic, link, groups.as_slice()),
            Command::Rollback {
                topic,
                link,
                groups,
            } => ("rollback", topic, link, groups.as_slice()),
            Command::Commit { topic, link } => ("commit", topic, link, &[][..]),
            _ => return None,
        };
        let what = match (topic, link) {
            (Some(topic), None) => Ok(Topics::Topic(topic.clone())),
            (None, Some(link)) => Ok(Topics::Link(link.clone())),
            _ => Err(format!("{name} takes a topic or --link, not both")),
        };
        let selection = what.map(|topics| Selection {
            topics,
            groups: groups.to_vec(),
        });
        Some((name, selection))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicStatus {
    pub topic: String,
    pub link: Option<String>,
    pub state: String,
    pub writes: String,
    pub reads: String,
    /// Records the mirror still has to copy; `None` while no mirror runs.
    pub lag: Option<i64>,
    /// Whether every partition has the same offsets on both clusters
    /// (`identical`: clients could one day bypass klink) or not
    /// (`translated`: klink keeps the source's offsets for clients);
    /// `None` while no mirror has reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<String>,
    /// Why the topic is not mirroring when its link says it should.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What the operator should look at: records written to the source
    /// without klink (a producer a cutover would leave behind).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub group: String,
    pub link: Option<String>,
    pub route: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub topics: Vec<TopicStatus>,
    pub groups: Vec<GroupStatus>,
    /// Brokers klink cannot reach (refused, down, or refusing its login).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<crate::upstream::Unreachable>,
}

/// One partition's offset map, as `klink ctl offsets` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffsetsStatus {
    pub topic: String,
    pub partition: i32,
    /// Source ranges [start, end) and the target offset each starts at.
    pub runs: Vec<OffsetRun>,
    /// Same offsets on both clusters: clients could one day read the
    /// target directly.
    pub identity: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OffsetRun {
    pub source_start: i64,
    pub source_end: i64,
    pub target_start: i64,
    pub target_end: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Done, with something the operator should know (a state change
    /// whose directory fsync failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Vec<PartitionMirror>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsets: Option<OffsetsStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
}

impl Reply {
    fn failed(error: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(error.into()),
            warning: None,
            status: None,
            mirror: None,
            offsets: None,
            promotion: None,
        }
    }

    fn done(status: Status) -> Reply {
        Reply {
            ok: true,
            error: None,
            warning: None,
            status: Some(status),
            mirror: None,
            offsets: None,
            promotion: None,
        }
    }
}

pub fn status(routes: &Routes, mirrors: &Mirrors) -> Status {
    Status {
        topics: routes
            .topics()
            .into_iter()
            .map(|(name, r)| {
                let mirror = mirrors.topic(name);
                TopicStatus {
                    topic: name.to_string(),
                    link: r.link.clone(),
                    state: r.state.as_str().to_string(),
                    writes: r.writes.to_string(),
                    reads: r.reads.to_string(),
                    lag: mirror.as_ref().and_then(|m| m.lag()),
                    offsets: mirror.as_ref().and_then(offsets_word),
                    warnings: mirror.as_ref().map(bypass_warnings).unwrap_or_default(),
                    note: mirror.and_then(|m| m.note),
                }
            })
            .collect(),
        groups: routes
            .groups()
            .into_iter()
            .map(|(name, g)| GroupStatus {
                group: name.to_string(),
                link: g.link.clone(),
                route: g.cluster.to_string(),
            })
            .collect(),
        unreachable: crate::upstream::outages().unreachable(),
    }
}

fn offsets_word(mirror: &crate::mirror::TopicMirror) -> Option<String> {
    if mirror.partitions.is_empty() {
        return None;
    }
    let identical = mirror
        .partitions
        .values()
        .flat_map(|p| &p.runs)
        .all(|r| r.source_start == r.target_start);
    Some(if identical { "identical" } else { "translated" }.to_string())
}

fn bypass_warnings(mirror: &crate::mirror::TopicMirror) -> Vec<String> {
    mirror
        .partitions
        .values()
        .filter(|p| p.bypassed > 0)
        .map(|p| {
            format!(
                "bypass: partition {}: {} records written to the source without klink{}",
                p.partition,
                p.bypassed,
                if p.bypass_active {
                    " (in the last minute)"
                } else {
                    " (none in the last minute)"
                }
            )
        })
        .collect()
}

/// Carries out one request line.
pub fn handle(routes: &RouteTable, mirrors: &Mirrors, line: &str) -> Reply {
    let command: Command = match serde_json::from_str(line) {
        Ok(c) => c,
        Err(e) => return Reply::failed(format!("bad request: {e}")),
    };
    // Ok carries the warning of the change this command made, if any.
    let done = match command {
        Command::Status {} => Ok(None),
        Command::Route {
            topic,
            writes,
            reads,
        } => {
            if writes.is_none() && reads.is_none() {
                Err(Error::client(
                    Kind::Config,
                    "route needs --writes and/or --reads",
                ))
            } else {
                routes
                    .route_topic_applied(&topic, writes.as_deref(), reads.as_deref())
                    .map(|applied| {
                        let r = &applied.value;
                        tracing::info!(%topic, writes = %r.writes, reads = %r.reads, "topic routed");
                        applied.warning
                    })
            }
        }
        Command::RouteGroup { group, to } => {
            routes.route_group_applied(&group, &to).map(|applied| {
                let route = &applied.value.cluster;
                tracing::info!(%group, %route, "group routed");
                applied.warning
            })
        }
        Command::Mirror { topic } => return mirror(routes, mirrors, &topic),
        Command::Offsets { topic, partition } => return offsets(mirrors, &topic, partition),
        Command::Promote { .. } | Command::Rollback { .. } | Command::Commit { .. } => {
            return Reply::failed("cutover commands run on the control socket's async path");
        }
    };
    match done {
        Ok(warning) => Reply {
            warning,
            ..Reply::done(status(&routes.snapshot(), mirrors))
        },
        Err(e) => Reply::failed(e.context),
    }
}

fn mirror(routes: &RouteTable, mirrors: &Mirrors, topic: &str) -> Reply {
    if routes.snapshot().topic(topic).is_none() {
        return Reply::failed(format!("unknown topic `{topic}`: no link names it"));
    }
    let Some(found) = mirrors.topic(topic) else {
        return Reply::failed(format!(
            "`{topic}` is not mirrored: its link has mirror = false"
        ));
    };
    if let Some(note) = found.note
        && found.partitions.is_empty()
    {
        return Reply::failed(format!("`{topic}` is not mirroring: {note}"));
    }
    Reply {
        mirror: Some(found.partitions.into_values().collect()),
        ..Reply::done(status(&routes.snapshot(), mirrors))
    }
}

fn offsets(mirrors: &Mirrors, topic: &str, partition: i32) -> Reply {
    let Some(p) = mirrors
        .topic(topic)
        .and_then(|t| t.partitions.get(&partition).cloned())
    else {
        return Reply::failed(format!("no mirror of {topic}/{partition}"));
    };
    let runs: Vec<OffsetRun> = p
        .runs
        .iter()
        .map(|r| OffsetRun {
            source_start: r.source_start,
            source_end: r.source_end,
            target_start: r.target_start,
            target_end: r.target_end(),
        })
        .collect();
    let identity = runs.iter().all(|r| r.source_start == r.target_start);
    Reply {
        ok: true,
        error: None,
        warning: None,
        status: None,
        mirror: None,
        promotion: None,
        offsets: Some(OffsetsStatus {
            topic: topic.to_string(),
            partition,
            runs,
            identity,
        }),
    }
}

/// Binds the control socket; refuses when another klink is serving it.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(Error::klink(
                Kind::Config,
                format!(
                    "control socket {} is in use: is another klink running?",
                    path.display()
                ),
            ));
        }
        // Left over from a klink that did not shut down cleanly.
        let _ = std::fs::remove_file(path);
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::klink(Kind::Config, format!("creating {}: {e}", dir.display())))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        Error::klink(
            Kind::Config,
            format!("control socket {}: {e}", path.display()),
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::klink(Kind::Config, format!("chmod 0600 {}: {e}", path.display())))?;
    Ok(listener)
}

pub async fn serve(
    listener: UnixListener,
    routes: Arc<RouteTable>,
    mirrors: Arc<Mirrors>,
    cutover: Arc<Cutover>,
    audit: Arc<audit::Audit>,
    token: Option<Secret>,
    shutdown: CancellationToken,
) {
    let token = token.map(Arc::new);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(
                    stream,
                    routes.clone(),
                    mirrors.clone(),
                    cutover.clone(),
                    audit.clone(),
                    token.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(
    stream: UnixStream,
    routes: Arc<RouteTable>,
    mirrors: Arc<Mirrors>,
    cutover: Arc<Cutover>,
    audit: Arc<audit::Audit>,
    token: Option<Arc<Secret>>,
) {
    let peer = audit::Peer::of(&stream);
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let read = match (&mut lines)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "control socket read failed");
                return;
            }
        };
        if read == 0 {
            return;
        }
        if line.trim().is_empty() {
            continue;
        }
        let (request, given) = token::take_token(&line);
        let refused = token
            .as_ref()
            .is_some_and(|t| !token::matches(t, given.as_deref()));
        let reply = if line.len() > MAX_LINE {
            Reply::failed(format!("request longer than {MAX_LINE} bytes"))
        } else if refused {
            tracing::warn!(?peer, "control command refused: token missing or wrong");
            Reply::failed(
                "refused: the control token is missing or wrong (klink ctl sends the one in \
                 the environment variable named by control_token_env)",
            )
        } else if let Some((name, selection)) = serde_json::from_str::<Command>(&request)
            .ok()
            .as_ref()
            .and_then(Command::selection)
        {
            // Waits on the network: async, bounded by the fence timeout.
            match selection {
                Err(e) => Reply::failed(e),
                Ok(what) => cutover_command(&cutover, name, &what, &routes, &mirrors).await,
            }
        } else {
            // Route changes write and fsync the state file: keep that off
            // the async workers.
            let (routes, mirrors) = (routes.clone(), mirrors.clone());
            let request = request.clone();
            tokio::task::spawn_blocking(move || handle(&routes, &mirrors, &request))
                .await
                .unwrap_or_else(|_| Reply::failed("klink failed while handling the request"))
        };
        if let Ok(command) = serde_json::from_str::<Command>(&request)
            && audit::changes_something(&command)
        {
            audit.record(peer, &command, &reply);
        }
        let mut out = serde_json::to_string(&reply).unwrap_or_else(|_| r#"{"ok":false}"#.into());
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
        if line.len() > MAX_LINE {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::state::StateStore;

    fn table(dir: &Path) -> RouteTable {
        table_and_state(dir).0
    }

    fn table_and_state(dir: &Path) -> (RouteTable, Arc<StateStore>) {
        let config = Config::parse(
            Path::new("klink.toml"),
            "[proxy]\nlisten = \"127.0.0.1:9092\"\nadvertised_host = \"127.0.0.1\"\nbroker_ports_start = 9100\n\
             [clusters.source]\nbootstrap = \"127.0.0.1:1\"\n[clusters.target]\nbootstrap = \"127.0.0.1:2\"\n\
             [[links]]\nid = \"m\"\nsource = \"source\"\ntarget = \"target\"\ntopics = [\"orders\"]\ngroups = [\"billing\"]\n",
        )
        .expect("config");
        let state = Arc::new(StateStore::open(dir).expect("state"));
        let routes = RouteTable::load(&config, state.clone()).expect("routes");
        (routes, state)
    }

    #[test]
    fn status_and_routes_over_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let routes = table(dir.path());
        let reply = handle(&routes, &Mirrors::default(), r#"{"cmd":"status"}"#);
        let json = serde_json::to_value(&reply).expect("json");
        assert_eq!(json["ok"], true);
        assert_eq!(json["topics"][0]["topic"], "orders");
        assert_eq!(json["topics"][0]["state"], "source");
        assert_eq!(json["topics"][0]["lag"], serde_json::Value::Null);
        assert_eq!(json["groups"][0]["route"], "source");

        let reply = handle(
            &routes,
            &Mirrors::default(),
            r#"{"cmd":"route","topic":"orders","writes":"target"}"#,
        );
        assert!(reply.ok, "{reply:?}");
        let reply = handle(
            &routes,
            &Mirrors::default(),
            r#"{"cmd":"route-group","group":"billing","to":"target"}"#,
        );
        assert!(reply.ok, "{reply:?}");
        let status = reply.status.expect("status");
        assert_eq!(status.topics[0].writes, "target");
        assert_eq!(status.topics[0].reads, "source");
        assert_eq!(status.groups[0].route, "target");
    }

    #[test]
    fn bad_requests_fail_clearly_and_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let routes = table(dir.path());
        for (line, says) in [
            ("{not json", "bad request"),
            (r#"{"cmd":"explode"}"#, "unknown variant"),
            (
                r#"{"cmd":"route","topic":"nosuch","writes":"target"}"#,
                "unknown topic",
            ),
            (
                r#"{"cmd":"route","topic":"orders","writes":"mars"}"#,
                "unknown cluster",
            ),
            (r#"{"cmd":"route","topic":"orders"}"#, "--writes"),
            (
                r#"{"cmd":"route-group","group":"billing"}"#,
                "missing field",
            ),
            (r#"{"cmd":"status","extra":1}"#, "unknown field"),
        ] {
            let reply = handle(&routes, &Mirrors::default(), line);
            assert!(!reply.ok, "{line}");
            let error = reply.error.unwrap_or_default();
            assert!(error.contains(says), "{line}: {error}");
        }
        assert_eq!(routes.snapshot().generation, 0);
    }

    #[test]
    fn a_change_whose_directory_fsync_failed_is_done_with_a_warning() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (routes, state) = table_and_state(dir.path());
        state.inject(Some(crate::state::Fault::DirectorySync));
        let line = r#"{"cmd":"route","topic":"orders","writes":"target"}"#;
        let reply = handle(&routes, &Mirrors::default(), line);
        assert!(reply.ok, "{reply:?}");
        // What `klink ctl` reads back off the socket.
        let wire = serde_json::to_string(&reply).expect("json");
        let read: Reply = serde_json::from_str(&wire).expect("reply");
        let warning = read.warning.expect("the operator is told");
        assert!(warning.contains("power loss"), "{warning}");
        assert_eq!(read.status.expect("status").topics[0].writes, "target");

        // A status right after did not make that change: no warning.
        let reply = handle(&routes, &Mirrors::default(), r#"{"cmd":"status"}"#);
        assert!(reply.ok && reply.warning.is_none(), "{reply:?}");
        state.inject(None);
        let line = r#"{"cmd":"route-group","group":"billing","to":"target"}"#;
        let reply = handle(&routes, &Mirrors::default(), line);
        assert!(reply.ok && reply.warning.is_none(), "{reply:?}");
        let json = serde_json::to_value(&reply).expect("json");
        assert!(json.get("warning").is_none(), "absent when there is none");
    }
}
