//! The `klink.toml` contract: what an operator writes, checked strictly.
//!
//! Unknown keys are errors and every error names the file, the line and the
//! key, because a typo in a migration config must stop klink before it
//! touches any traffic.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

mod security;

use crate::upstream::security::{Secret, Security};
pub use security::{
    ListenerSaslConfig, ListenerTlsConfig, SaslConfig, SecurityProtocol, TlsConfig, acceptor,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub clusters: BTreeMap<String, ClusterConfig>,
    #[serde(default)]
    pub links: Vec<LinkConfig>,
    #[serde(default)]
    pub cutover: CutoverConfig,
}

impl ProxyConfig {
    /// The control socket's token, read from `control_token_env`; `None`
    /// when the socket takes no token.
    pub fn control_token(&self) -> Result<Option<Secret>, String> {
        let Some(name) = &self.control_token_env else {
            return Ok(None);
        };
        match std::env::var(name) {
            Ok(token) if !token.is_empty() => Ok(Some(Secret::new(token))),
            _ => Err(format!("environment variable {name} is not set")),
        }
    }
}

/// How a promotion behaves (`[cutover]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CutoverConfig {
    /// A promotion whose fence, drain and flip take longer aborts: held
    /// writes go to the source and the topic stays mirroring.
    #[serde(default = "default_fence_timeout_ms")]
    pub fence_timeout_ms: u64,
}

impl Default for CutoverConfig {
    fn default() -> Self {
        CutoverConfig {
            fence_timeout_ms: default_fence_timeout_ms(),
        }
    }
}

fn default_fence_timeout_ms() -> u64 {
    10_000
}

/// A named migration: which topics and groups move from `source` to `target`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    pub id: String,
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub start: StartPosition,
    /// Whether klink copies the link's topics to the target (the default).
    /// `false` makes a link of routes only, changed with `klink ctl route`.
    #[serde(default = "default_mirror")]
    pub mirror: bool,
    #[serde(default)]
    pub topics: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Where the mirror starts copying a topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Bootstrap address clients use.
    pub listen: SocketAddr,
    /// Host put into every broker address klink hands out.
    pub advertised_host: String,
    /// Virtual brokers listen on consecutive ports from here.
    pub broker_ports_start: u16,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Frames above this are refused before any allocation.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: u32,
    /// Cluster whose brokers answer the bootstrap address and whose routes
    /// topics and groups take when no link names them.
    #[serde(default = "default_cluster")]
    pub default_cluster: String,
    /// The operator's control socket (`klink ctl` talks to it).
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// How long in-flight requests may take to finish on SIGTERM.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
    /// How long an upstream broker may take to answer a forwarded request
    /// before klink answers the client with a retriable error and drops
    /// that upstream connection. Keep it above clients' `fetch.max.wait.ms`.
    #[serde(default = "default_upstream_request_timeout_ms")]
    pub upstream_request_timeout_ms: u64,
    /// Where `/metrics`, `/livez`, `/readyz` and the status page `/` are
    /// served over HTTP; none when unset.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// Client connections klink keeps open at most; past it a new one is
    /// closed at once, with a log line. Default: the process's open-file
    /// limit less 2048 kept for upstream connections, listeners and files.
    #[serde(default)]
    pub max_client_connections: Option<usize>,
    /// Fetch answers one client connection may have in klink's memory at
    /// once, counted by what each Fetch asks for (its `max_bytes`): a
    /// client that reads its answers slowly stops having its fetches
    /// forwarded instead of piling answers up in klink.
    #[serde(default = "default_client_fetch_buffer_bytes")]
    pub client_fetch_buffer_bytes: u32,
    /// The environment variable holding the control socket's token: when
    /// set, `klink ctl` (reading the same variable) must send it, and a
    /// command without it or with another is refused.
    #[serde(default)]
    pub control_token_env: Option<String>,
    /// TLS for clients on the bootstrap and virtual-broker listeners.
    #[serde(default)]
    pub tls: Option<ListenerTlsConfig>,
    /// SASL logins for clients on those listeners.
    #[serde(default)]
    pub sasl: Option<ListenerSaslConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap: String,
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    #[serde(default)]
    pub sasl: Option<SaslConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The above with the password read and the certificates loaded, once
    /// `klink proxy` has resolved them ([`Config::resolve_security`]).
    #[serde(skip)]
    resolved: Option<Arc<Security>>,
}

fn default_client_fetch_buffer_bytes() -> u32 {
    // Above the 50 MiB fetch.max.bytes of the Java client and librdkafka,
    // so that one fetch of theirs always fits.
    64 * 1024 * 1024
}
fn default_mirror() -> bool {
    true
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("./klink-state")
}
fn default_control_socket() -> PathBuf {
    PathBuf::from("./klink-state/control.sock")
}
fn default_max_frame_bytes() -> u32 {
    100 * 1024 * 1024
}
fn default_cluster() -> String {
    "source".to_string()
}
fn default_shutdown_grace_ms() -> u64 {
    10_000
}
fn default_upstream_request_timeout_ms() -> u64 {
    // Kafka clients' default request.timeout.ms.
    30_000
}

impl ClusterConfig {
    /// What connections to this cluster go through: plaintext until
    /// [`Config::resolve_security`] has run.
    pub fn security(&self) -> Arc<Security> {
        self.resolved.clone().unwrap_or_else(Security::plaintext)
    }

    /// The bootstrap list as separate `host:port` strings.
    pub fn bootstrap_addrs(&self) -> Vec<String> {
        self.bootstrap
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// A config problem, located for the operator: `file:line: key `k`: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let located =
            |span: Option<std::ops::Range<usize>>, key: Option<String>, message: String| {
                ConfigError {
                    file: path.to_path_buf(),
                    line: span.map(|s| line_of(text, s.start)),
                    key,
                    message,
                }
            };
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| located(e.span(), None, e.message().to_string()))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let key = (key != ".").then_some(key);
            located(inner.span(), key, inner.message().to_string())
        })?;
        config
            .validate()
            .map_err(|(section, key, message)| ConfigError {
                file: path.to_path_buf(),
                line: find_key_line(text, &section, &key),
                key: Some(if section.is_empty() {
                    key
                } else {
                    format!("{section}.{key}")
                }),
                message,
            })?;
        Ok(config)
    }

    /// Reads every cluster's password and certificates, for `klink proxy`
    /// (`klink ctl` reads the same config without them).
    pub fn resolve_security(&mut self, path: &Path) -> Result<(), ConfigError> {
        self.proxy.control_token().map_err(|message| ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: Some("proxy.control_token_env".into()),
            message,
        })?;
        for (name, cluster) in &mut self.clusters {
            let resolved = security::resolve(
                cluster.security_protocol,
                cluster.sasl.as_ref(),
                cluster.tls.as_ref(),
            )
            .map_err(|(key, message)| ConfigError {
                file: path.to_path_buf(),
                line: None,
                key: Some(format!("clusters.{name}.{key}")),
                message,
            })?;
            cluster.resolved = Some(resolved);
        }
        Ok(())
    }

    /// Checks that need more than one field; errors are (section, key, message).
    fn validate(&self) -> Result<(), (String, String, String)> {
        let err = |section: &str, key: &str, message: String| {
            Err((section.to_string(), key.to_string(), message))
        };
        if self.proxy.advertised_host.trim().is_empty() {
            return err("proxy", "advertised_host", "must not be empty".into());
        }
        if self.proxy.max_frame_bytes < 1024 {
            return err(
                "proxy",
                "max_frame_bytes",
                format!("{} is too small: at least 1024", self.proxy.max_frame_bytes),
            );
        }
        if self.proxy.max_frame_bytes > i32::MAX as u32 {
            return err(
                "proxy",
                "max_frame_bytes",
                "must fit in a Kafka int32".into(),
            );
        }
        if self.proxy.upstream_request_timeout_ms < 100 {
            return err(
                "proxy",
                "upstream_request_timeout_ms",
                format!(
                    "{} is too small: at least 100",
                    self.proxy.upstream_request_timeout_ms
                ),
            );
        }
        if self.clusters.is_empty() {
            return err("", "clusters", "at least one cluster is required".into());
        }
        for (name, cluster) in &self.clusters {
            let section = format!("clusters.{name}");
            let addrs = cluster.bootstrap_addrs();
            if addrs.is_empty() {
                return err(&section, "bootstrap", "no host:port given".into());
            }
            for addr in addrs {
                let valid = addr
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !valid {
                    return err(&section, "bootstrap", format!("`{addr}` is not host:port"));
                }
            }
            security::check(
                cluster.security_protocol,
                cluster.sasl.as_ref(),
                cluster.tls.as_ref(),
            )
            .or_else(|(key, message)| err(&section, &key, message))?;
        }
        if !self.clusters.contains_key(&self.proxy.default_cluster) {
            return err(
                "proxy",
                "default_cluster",
                format!(
                    "`{}` is not a cluster defined under [clusters]",
                    self.proxy.default_cluster
                ),
            );
        }
        let mut linked_topics = BTreeMap::new();
        let mut linked_groups = BTreeMap::new();
        let mut ids = std::collections::BTreeSet::new();
        for (index, link) in self.links.iter().enumerate() {
            let section = format!("links[{index}]");
            if link.id.is_empty()
                || !link
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return err(
                    &section,
                    "id",
                    format!(
                        "`{}`: link ids use letters, digits, '-' and '_' only",
                        link.id
                    ),
                );
            }
            if !ids.insert(link.id.clone()) {
                return err(
                    &section,
                    "id",
                    format!("link id `{}` is used twice", link.id),
                );
            }
            for (key, cluster) in [("source", &link.source), ("target", &link.target)] {
                if !self.clusters.contains_key(cluster) {
                    return err(
                        &section,
                        key,
                        format!("`{cluster}` is not a cluster defined under [clusters]"),
                    );
                }
            }
            if link.source == link.target {
                return err(
                    &section,
                    "target",
                    "source and target are the same cluster".into(),
                );
            }
            for topic in &link.topics {
                if topic.is_empty() {
                    return err(&section, "topics", "empty topic name".into());
                }
                if let Some(other) = linked_topics.insert(topic.clone(), link.id.clone()) {
                    return err(
                        &section,
                        "topics",
                        format!("topic `{topic}` is already in link `{other}`"),
                    );
                }
            }
            for group in &link.groups {
                if let Some(other) = linked_groups.insert(group.clone(), link.id.clone()) {
                    return err(
                        &section,
                        "groups",
                        format!("group `{group}` is already in link `{other}`"),
                    );
                }
            }
        }
        Ok(())
    }
}

fn line_of(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].matches('\n').count() + 1
}

/// The line where `key` is set inside `[section]`; a plain text scan is enough
/// for the flat tables klink's config uses.
fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    let mut array_index: BTreeMap<String, usize> = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            if line.starts_with("[[") {
                // Array tables are named `name[i]` in errors.
                let next = array_index.entry(current.clone()).or_insert(0);
                current = format!("{current}[{next}]");
                *next += 1;
            }
            if section.is_empty() && current == key {
                return Some(index + 1);
            }
            continue;
        }
        if current == section
            && let Some((k, _)) = line.split_once('=')
            && k.trim().trim_matches('"') == key
        {
            return Some(index + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[proxy]
listen = "127.0.0.1:9092"
advertised_host = "127.0.0.1"
broker_ports_start = 9100
state_dir = "./klink-state"
max_frame_bytes = 104857600

[clusters.source]
bootstrap = "127.0.0.1:19092, 127.0.0.1:19093"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("klink.toml"), text)
    }

    #[test]
    fn parses_the_documented_example() {
        let config = parse(GOOD).expect("valid config");
        assert_eq!(config.proxy.broker_ports_start, 9100);
        assert_eq!(config.proxy.default_cluster, "source");
        assert_eq!(
            config.clusters["source"].bootstrap_addrs(),
            vec!["127.0.0.1:19092", "127.0.0.1:19093"]
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("state_dir", "stat_dir");
        let e = parse(&text).expect_err("unknown key");
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.to_string().starts_with("klink.toml:6"), "{e}");
        assert!(e.message.contains("stat_dir"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = GOOD.replace("broker_ports_start = 9100", "broker_ports_start = \"x\"");
        let e = parse(&text).expect_err("bad type");
        assert_eq!(e.key.as_deref(), Some("proxy.broker_ports_start"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
    }

    #[test]
    fn bad_bootstrap_and_default_cluster_are_located() {
        let text = GOOD.replace("127.0.0.1:19093", "nohostport");
        let e = parse(&text).expect_err("bad bootstrap");
        assert_eq!(e.key.as_deref(), Some("clusters.source.bootstrap"), "{e}");
        assert_eq!(e.line, Some(10), "{e}");

        let text = GOOD.replace("[proxy]\n", "[proxy]\ndefault_cluster = \"target\"\n");
        let e = parse(&text).expect_err("missing cluster");
        assert_eq!(e.key.as_deref(), Some("proxy.default_cluster"), "{e}");
        assert_eq!(e.line, Some(3), "{e}");
    }

    const LINKS: &str = r#"
[clusters.target]
bootstrap = "127.0.0.1:29092"

[[links]]
id = "orders-move"
source = "source"
target = "target"
start = "latest"
topics = ["orders", "payments"]
groups = ["billing"]
"#;

    #[test]
    fn links_parse_and_are_checked() {
        let config = parse(&format!("{GOOD}{LINKS}")).expect("valid links");
        assert_eq!(config.links[0].topics, vec!["orders", "payments"]);
        assert_eq!(config.links[0].start, StartPosition::Latest);

        let bad_id = format!("{GOOD}{}", LINKS.replace("orders-move", "orders move!"));
        let e = parse(&bad_id).expect_err("bad id");
        assert_eq!(e.key.as_deref(), Some("links[0].id"), "{e}");
        assert_eq!(e.line, Some(16), "{e}");

        let second = "\n[[links]]\nid = \"again\"\nsource = \"source\"\ntarget = \"target\"\ntopics = [\"orders\"]\n";
        let e = parse(&format!("{GOOD}{LINKS}{second}")).expect_err("topic twice");
        assert_eq!(e.key.as_deref(), Some("links[1].topics"), "{e}");
        assert_eq!(e.line, Some(27), "{e}");

        let missing = format!(
            "{GOOD}{}",
            LINKS.replace("target = \"target\"", "target = \"nowhere\"")
        );
        let e = parse(&missing).expect_err("unknown cluster");
        assert!(e.message.contains("nowhere"), "{e}");
    }

    #[test]
    fn the_shipped_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/klink.toml");
        let config = Config::load(&path).expect("fixtures/klink.toml is valid");
        assert_eq!(config.proxy.listen.port(), 9092);
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = parse("[proxy\nlisten=1").expect_err("syntax");
        assert_eq!(e.line, Some(1), "{e}");
    }
}
