//! `klink ctl`: sends one command to a running klink's control socket and
//! prints the answer, as a table or as JSON.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::{Command, OffsetsStatus, Reply, Status};
use crate::mirror::PartitionMirror;

/// Sends `command` (with the control token, when klink wants one) and
/// returns the reply, or a message saying why not.
pub fn send(socket: &Path, command: &Command, token: Option<&str>) -> Result<Reply, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach klink at {}: {e} (is klink proxy running?)",
            socket.display()
        )
    })?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut line = super::token::with_token(command, token)?;
    line.push('\n');
    stream
        .write_all(line.as_bytes())
        .map_err(|e| format!("writing to {}: {e}", socket.display()))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .map_err(|e| format!("reading from {}: {e}", socket.display()))?;
    serde_json::from_str(&answer)
        .map_err(|e| format!("klink answered something unreadable ({e}): {answer}"))
}

/// What `klink ctl` prints on stderr for a reply that carries a warning:
/// the command was done (exit status 0), but not as safely as it should be.
pub fn warning_line(reply: &Reply) -> Option<String> {
    reply
        .warning
        .as_ref()
        .map(|warning| format!("klink ctl: warning: {warning}"))
}

/// The status as an operator reads it.
pub fn table(status: &Status) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 7]> = status
        .topics
        .iter()
        .map(|t| {
            [
                t.topic.clone(),
                t.link.clone().unwrap_or_else(|| "-".into()),
                t.state.clone(),
                t.writes.clone(),
                t.reads.clone(),
                t.lag.map_or_else(|| "-".into(), |l| l.to_string()),
                t.offsets.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    push_table(
        &mut out,
        [
            "TOPIC", "LINK", "STATE", "WRITES", "READS", "LAG", "OFFSETS",
        ],
        &rows,
    );
    out.push('\n');
    let rows: Vec<[String; 3]> = status
        .groups
        .iter()
        .map(|g| {
            [
                g.group.clone(),
                g.link.clone().unwrap_or_else(|| "-".into()),
                g.route.clone(),
            ]
        })
        .collect();
    push_table(&mut out, ["GROUP", "LINK", "ROUTE"], &rows);
    for t in status.topics.iter().filter(|t| t.note.is_some()) {
        out.push_str(&format!(
            "\n{}: {}\n",
            t.topic,
            t.note.as_deref().unwrap_or_default()
        ));
    }
    for t in &status.topics {
        for warning in &t.warnings {
            out.push_str(&format!("\n{}: warning: {warning}\n", t.topic));
        }
    }
    for down in &status.unreachable {
        out.push_str(&format!(
            "\ncluster {}: broker {} unreachable for {} s ({} attempts): {}\n",
            down.cluster, down.broker, down.for_s, down.failures, down.error
        ));
    }
    out
}

/// A topic's mirror, one line per partition.
pub fn mirror_table(partitions: &[PartitionMirror]) -> String {
    let rows: Vec<[String; 8]> = partitions
        .iter()
        .map(|p| {
            [
                p.partition.to_string(),
                p.source_end.to_string(),
                p.mirrored_to.to_string(),
                p.target_end.to_string(),
                p.lag.to_string(),
                format!("{:.0}", p.records_per_sec),
                p.bypassed.to_string(),
                p.last_error.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = String::new();
    push_table(
        &mut out,
        [
            "PARTITION",
            "SOURCE END",
            "MIRRORED TO",
            "TARGET END",
            "LAG",
            "RECORDS/S",
            "BYPASSED",
            "LAST ERROR",
        ],
        &rows,
    );
    out
}

/// What a promotion did: the fence, and each partition's drain.
pub fn promotion_text(promotion: &crate::cutover::Promotion) -> String {
    let topics = promotion.topics.join(", ");
    let (done, left) = if promotion.rollback {
        ("rolled back", "target")
    } else {
        ("promoted", "source")
    };
    if promotion.already {
        return format!("{topics}: {done} already\n");
    }
    let mut out = format!(
        "{done} {topics}: writes held for {:.1} ms\n",
        promotion.fence_ms
    );
    for d in &promotion.partitions {
        out.push_str(&format!(
            "  {} partition {}: mirrored to the {left}'s end {} at {:.1} ms\n",
            d.topic, d.partition, d.end, d.drained_ms
        ));
    }
    for (group, topics) in &promotion.groups {
        for (topic, offsets) in topics {
            out.push_str(&format!(
                "  group {group}: offsets of {topic} handed over: {offsets:?}\n"
            ));
        }
    }
    out
}

/// A partition's offset map, one line per run.
pub fn offsets_table(offsets: &OffsetsStatus) -> String {
    let rows: Vec<[String; 2]> = offsets
        .runs
        .iter()
        .map(|r| {
            [
                format!("{}..{}", r.source_start, r.source_end),
                format!("{}..{}", r.target_start, r.target_end),
            ]
        })
        .collect();
    let mut out = String::new();
    push_table(&mut out, ["SOURCE", "TARGET"], &rows);
    out.push_str(if offsets.identity {
        "identity: the same offsets on both clusters\n"
    } else {
        "not the identity: offsets differ between the clusters\n"
    });
    out
}

fn push_table<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{GroupStatus, TopicStatus};

    #[test]
    fn table_lines_up() {
        let status = Status {
            topics: vec![TopicStatus {
                topic: "orders".into(),
                link: Some("move".into()),
                state: "source".into(),
                writes: "target".into(),
                reads: "source".into(),
                lag: None,
                offsets: Some("translated".into()),
                note: None,
                warnings: vec![
                    "bypass: partition 1: 3 records written to the source without klink".into(),
                ],
            }],
            groups: vec![GroupStatus {
                group: "billing".into(),
                link: None,
                route: "target".into(),
            }],
            unreachable: vec![crate::upstream::Unreachable {
                cluster: "target".into(),
                broker: "10.0.0.2:9093".into(),
                for_s: 12,
                failures: 40,
                error: "target error (Auth, retriable): login refused".into(),
            }],
        };
        let text = table(&status);
        assert!(
            text.contains(
                "cluster target: broker 10.0.0.2:9093 unreachable for 12 s (40 attempts): \
                 target error (Auth, retriable): login refused"
            ),
            "{text}"
        );
        assert!(
            text.contains("TOPIC   LINK  STATE   WRITES  READS   LAG  OFFSETS"),
            "{text}"
        );
        assert!(
            text.contains("orders  move  source  target  source  -    translated"),
            "{text}"
        );
        assert!(text.contains("billing  -     target"), "{text}");
        assert!(
            text.contains("orders: warning: bypass: partition 1: 3 records"),
            "{text}"
        );
    }

    #[test]
    fn a_warning_goes_to_the_operator_only_when_there_is_one() {
        let reply: Reply =
            serde_json::from_str(r#"{"ok":true,"warning":"fsync failed","topics":[],"groups":[]}"#)
                .expect("reply");
        assert!(reply.ok);
        assert_eq!(
            warning_line(&reply).as_deref(),
            Some("klink ctl: warning: fsync failed")
        );
        let reply: Reply = serde_json::from_str(r#"{"ok":true}"#).expect("reply");
        assert_eq!(warning_line(&reply), None);
    }
}
