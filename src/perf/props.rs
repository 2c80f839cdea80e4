//! Java-style client properties: `--producer-props k=v ...`, the
//! `--producer.config` / `--consumer.config` files, and what they mean for
//! klink's client.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use kafka_protocol::records::Compression;

use crate::client::{Acks, ClientConfig, FetchConfig, ProducerConfig};

pub type Props = BTreeMap<String, String>;

/// Parses the `.properties` format (`java.util.Properties.load`): `#` and
/// `!` comments, `=`, `:` or whitespace between key and value, backslash
/// line continuations and escapes.
pub fn parse_properties(text: &str) -> Props {
    let mut props = Props::new();
    let mut logical = String::new();
    for line in text.lines() {
        let line = line.trim_start();
        if logical.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!'))
        {
            continue;
        }
        let trailing = line.chars().rev().take_while(|&c| c == '\\').count();
        if trailing % 2 == 1 {
            logical.push_str(&line[..line.len() - 1]);
            continue;
        }
        logical.push_str(line);
        let (key, value) = split_key_value(&logical);
        props.insert(unescape(key), unescape(value));
        logical.clear();
    }
    if !logical.is_empty() {
        let (key, value) = split_key_value(&logical);
        props.insert(unescape(key), unescape(value));
    }
    props
}

fn split_key_value(line: &str) -> (&str, &str) {
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '=' || c == ':' || c.is_whitespace() {
            let key = &line[..i];
            let rest = line[i..].trim_start();
            let rest = if !(c == '=' || c == ':') {
                rest.strip_prefix(['=', ':']).unwrap_or(rest).trim_start()
            } else {
                rest[c.len_utf8()..].trim_start()
            };
            return (key, rest);
        }
    }
    (line, "")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    Some(ch) => out.push(ch),
                    None => out.push_str(&hex),
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// A properties file, then `k=v` pairs over it (the pairs win, as in the
/// Java tools).
pub fn load(file: Option<&Path>, pairs: &[String]) -> Result<Props, String> {
    let mut props = match file {
        Some(path) => parse_properties(
            &std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        ),
        None => Props::new(),
    };
    for pair in pairs {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() && !v.is_empty() && !v.contains('=') => {
                props.insert(k.to_string(), v.to_string());
            }
            _ => return Err(format!("Invalid property: {pair}")),
        }
    }
    Ok(props)
}

/// Reads properties, remembering which ones were used so the rest can be
/// reported the way the Java client does.
struct Reader<'a> {
    props: &'a Props,
    used: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    fn new(props: &'a Props) -> Self {
        Reader {
            props,
            used: Vec::new(),
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a str> {
        self.used.push(key);
        self.props.get(key).map(|v| v.trim())
    }

    fn number<T: std::str::FromStr>(&mut self, key: &'static str, default: T) -> Result<T, String> {
        match self.get(key) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("Invalid value {v} for configuration {key}")),
            None => Ok(default),
        }
    }

    fn millis(&mut self, key: &'static str, default: Duration) -> Result<Duration, String> {
        let ms = self.number::<u64>(key, default.as_millis() as u64)?;
        Ok(Duration::from_millis(ms))
    }

    /// Warnings for properties nothing read, like the Java client's
    /// "was supplied but isn't a known config".
    fn unused(&self) -> Vec<String> {
        self.props
            .keys()
            .filter(|k| !self.used.contains(&k.as_str()))
            .map(|k| format!("The configuration '{k}' was supplied but isn't a known config."))
            .collect()
    }
}

fn client_config(r: &mut Reader<'_>, default_client_id: &str) -> Result<ClientConfig, String> {
    let bootstrap: Vec<String> = r
        .get("bootstrap.servers")
        .ok_or("Missing required configuration \"bootstrap.servers\"")?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if bootstrap.is_empty() {
        return Err("bootstrap.servers is empty".to_string());
    }
    let defaults = ClientConfig::default();
    Ok(ClientConfig {
        name: "kafka".to_string(),
        bootstrap,
        client_id: r.get("client.id").unwrap_or(default_client_id).to_string(),
        max_frame_bytes: defaults.max_frame_bytes,
        request_timeout: r.millis("request.timeout.ms", defaults.request_timeout)?,
        allow_auto_topic_creation: false,
        ..defaults
    })
}

/// Client and producer settings from producer properties, plus warnings.
pub fn producer_config(
    props: &Props,
) -> Result<(ClientConfig, ProducerConfig, Vec<String>), String> {
    let mut r = Reader::new(props);
    let mut client = client_config(&mut r, "perf-producer-client")?;
    client.allow_auto_topic_creation = match r.get("allow.auto.create.topics") {
        None | Some("true") => true,
        Some("false") => false,
        Some(v) => {
            return Err(format!(
                "Invalid value {v} for configuration allow.auto.create.topics"
            ));
        }
    };
    let d = ProducerConfig::default();
    let acks = match r.get("acks") {
        None | Some("all") | Some("-1") => Acks::All,
        Some("1") => Acks::Leader,
        Some("0") => Acks::None,
        Some(v) => return Err(format!("Invalid value {v} for configuration acks")),
    };
    let compression = match r.get("compression.type") {
        None | Some("none") => Compression::None,
        Some("gzip") => Compression::Gzip,
        Some("snappy") => Compression::Snappy,
        Some("lz4") => Compression::Lz4,
        Some("zstd") => Compression::Zstd,
        Some(v) => {
            return Err(format!(
                "Invalid value {v} for configuration compression.type"
            ));
        }
    };
    let mut warnings = Vec::new();
    if r.get("enable.idempotence") == Some("true") {
        warnings.push(
            "enable.idempotence=true is not supported; sending without a producer id".to_string(),
        );
    }
    let producer = ProducerConfig {
        acks,
        linger: r.millis("linger.ms", d.linger)?,
        batch_size: r.number("batch.size", d.batch_size)?,
        compression,
        max_in_flight: r
            .number("max.in.flight.requests.per.connection", d.max_in_flight)?
            .max(1),
        buffer_memory: r.number("buffer.memory", d.buffer_memory)?,
        retries: r.number("retries", d.retries)?,
        retry_backoff: r.millis("retry.backoff.ms", d.retry_backoff)?,
        delivery_timeout: r.millis("delivery.timeout.ms", d.delivery_timeout)?,
    };
    // Settings that mean nothing for a byte-array producer without a group.
    for ignored in ["key.serializer", "value.serializer"] {
        r.get(ignored);
    }
    warnings.extend(r.unused());
    Ok((client, producer, warnings))
}

/// Client and fetch settings from consumer properties, plus warnings.
pub fn consumer_config(props: &Props) -> Result<(ClientConfig, FetchConfig, Vec<String>), String> {
    let mut r = Reader::new(props);
    let client = client_config(&mut r, "perf-consumer-client")?;
    let d = FetchConfig::default();
    let fetch = FetchConfig {
        max_wait: r.millis("fetch.max.wait.ms", d.max_wait)?,
        min_bytes: r.number("fetch.min.bytes", d.min_bytes)?,
        max_bytes: r.number("fetch.max.bytes", d.max_bytes)?,
        partition_max_bytes: r.number("max.partition.fetch.bytes", d.partition_max_bytes)?,
    };
    // A consumer without a group commits nothing and deserializes nothing.
    for ignored in [
        "group.id",
        "key.deserializer",
        "value.deserializer",
        "auto.offset.reset",
        "enable.auto.commit",
        "check.crcs",
        "receive.buffer.bytes",
    ] {
        r.get(ignored);
    }
    Ok((client, fetch, r.unused()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_files_parse_like_java() {
        let text = "# comment\n! also a comment\n\n  bootstrap.servers = 127.0.0.1:9092\n\
                    acks:all\nlinger.ms 5\nclient.id=a\\\n    b\nkey\\=with\\:seps=v=w\nempty\n\
                    unicode=\\u0041\\tx\n";
        let props = parse_properties(text);
        assert_eq!(props["bootstrap.servers"], "127.0.0.1:9092");
        assert_eq!(props["acks"], "all");
        assert_eq!(props["linger.ms"], "5");
        assert_eq!(props["client.id"], "ab");
        assert_eq!(props["key=with:seps"], "v=w");
        assert_eq!(props["empty"], "");
        assert_eq!(props["unicode"], "A\tx");
        assert_eq!(props.len(), 7);
    }

    #[test]
    fn pairs_override_the_file_and_must_be_k_eq_v() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("p.properties");
        std::fs::write(&file, "acks=1\nbatch.size=100\n").expect("write");
        let props = load(Some(&file), &["acks=0".to_string()]).expect("load");
        assert_eq!(props["acks"], "0");
        assert_eq!(props["batch.size"], "100");
        assert!(load(None, &["novalue".to_string()]).is_err());
        assert!(load(None, &["a=b=c".to_string()]).is_err());
        assert!(load(Some(&dir.path().join("missing")), &[]).is_err());
    }

    #[test]
    fn producer_props_map_to_the_client() {
        let props = load(
            None,
            &[
                "bootstrap.servers=127.0.0.1:1,127.0.0.1:2".to_string(),
                "acks=1".to_string(),
                "linger.ms=7".to_string(),
                "batch.size=65536".to_string(),
                "compression.type=zstd".to_string(),
                "max.in.flight.requests.per.connection=2".to_string(),
                "buffer.memory=1048576".to_string(),
                "frobnicate=1".to_string(),
            ],
        )
        .expect("props");
        let (client, producer, warnings) = producer_config(&props).expect("config");
        assert_eq!(client.bootstrap, ["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(client.client_id, "perf-producer-client");
        assert_eq!(producer.acks, Acks::Leader);
        assert_eq!(producer.linger, Duration::from_millis(7));
        assert_eq!(producer.batch_size, 65536);
        assert_eq!(producer.compression, Compression::Zstd);
        assert_eq!(producer.max_in_flight, 2);
        assert_eq!(producer.buffer_memory, 1 << 20);
        assert_eq!(
            warnings,
            ["The configuration 'frobnicate' was supplied but isn't a known config."]
        );
        let bad = load(None, &["bootstrap.servers=x:1".into(), "acks=2".into()]).expect("props");
        assert!(producer_config(&bad).is_err());
        assert!(
            producer_config(&Props::new()).is_err(),
            "bootstrap.servers is required"
        );
    }

    #[test]
    fn consumer_props_map_to_the_fetcher() {
        let props = parse_properties(
            "bootstrap.servers=127.0.0.1:1\nfetch.max.wait.ms=50\ngroup.id=g\nclient.id=c\n",
        );
        let (client, fetch, warnings) = consumer_config(&props).expect("config");
        assert_eq!(client.client_id, "c");
        assert_eq!(fetch.max_wait, Duration::from_millis(50));
        assert_eq!(fetch.partition_max_bytes, 1 << 20);
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}
