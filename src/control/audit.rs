//! The audit trail: every control command that can change klink, who sent
//! it (the socket peer's uid and pid) and how it ended. Each is a log line
//! (target `klink::audit`) and the last ones are kept for the status page.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use super::{Command, Reply};

/// Changes kept for the status page.
const KEPT: usize = 50;

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub at: SystemTime,
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    /// The command as the socket received it (JSON, one line).
    pub command: String,
    pub ok: bool,
    /// The error, the warning, or what was done.
    pub outcome: String,
}

#[derive(Debug, Default)]
pub struct Audit {
    recent: Mutex<VecDeque<AuditEntry>>,
}

/// Whether a command can change routes or state (reads are not audited).
pub fn changes_something(command: &Command) -> bool {
    !matches!(
        command,
        Command::Status {} | Command::Mirror { .. } | Command::Offsets { .. }
    )
}

impl Audit {
    /// Logs and keeps one command's outcome.
    pub fn record(&self, peer: Peer, command: &Command, reply: &Reply) {
        let command = serde_json::to_string(command).unwrap_or_default();
        let outcome = match (&reply.error, &reply.warning, &reply.promotion) {
            (Some(error), _, _) => error.clone(),
            (None, Some(warning), _) => format!("done; {warning}"),
            (None, None, Some(p)) if p.already => "done already".to_string(),
            (None, None, Some(p)) => format!("done; writes held {:.1} ms", p.fence_ms),
            _ => "done".to_string(),
        };
        tracing::info!(
            target: "klink::audit",
            uid = ?peer.uid,
            pid = ?peer.pid,
            %command,
            ok = reply.ok,
            %outcome,
            "control command"
        );
        let entry = AuditEntry {
            at: SystemTime::now(),
            uid: peer.uid,
            pid: peer.pid,
            command,
            ok: reply.ok,
            outcome,
        };
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// The last changes, newest last.
    pub fn recent(&self) -> Vec<AuditEntry> {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// Who is at the other end of a control connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Peer {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
}

impl Peer {
    pub fn of(stream: &tokio::net::UnixStream) -> Peer {
        match stream.peer_cred() {
            Ok(cred) => Peer {
                uid: Some(cred.uid()),
                pid: cred.pid(),
            },
            Err(_) => Peer::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_kept_newest_last_and_reads_are_not_changes() {
        let audit = Audit::default();
        let peer = Peer {
            uid: Some(1000),
            pid: Some(42),
        };
        assert!(!changes_something(&Command::Status {}));
        let route = Command::RouteGroup {
            group: "billing".into(),
            to: "target".into(),
        };
        assert!(changes_something(&route));
        for i in 0..KEPT + 3 {
            let reply = if i % 2 == 0 {
                Reply::failed(format!("no {i}"))
            } else {
                Reply::done(super::super::Status {
                    topics: Vec::new(),
                    groups: Vec::new(),
                    unreachable: Vec::new(),
                })
            };
            audit.record(peer, &route, &reply);
        }
        let recent = audit.recent();
        assert_eq!(recent.len(), KEPT);
        let last = recent.last().expect("kept");
        assert_eq!(last.outcome, format!("no {}", KEPT + 2));
        assert!(!last.ok);
        assert_eq!((last.uid, last.pid), (Some(1000), Some(42)));
        assert_eq!(
            last.command,
            r#"{"cmd":"route-group","group":"billing","to":"target"}"#
        );
        assert_eq!(recent[recent.len() - 2].outcome, "done");
    }

    #[tokio::test]
    async fn a_socket_peer_is_this_process() {
        let (a, _b) = tokio::net::UnixStream::pair().expect("pair");
        let peer = Peer::of(&a);
        assert_eq!(peer.pid, Some(std::process::id() as i32));
        assert!(peer.uid.is_some());
    }
}
