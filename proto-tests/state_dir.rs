//! A state directory that cannot be written at a route change: the disk
//! is full, or the file system is read-only. The change is refused with
//! the reason, the routes stay as they were, and klink keeps serving; once
//! the directory is writable again the same change goes through.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::cutover::migration;
use crate::harness::Klink;
use crate::routing::py;

/// Each topic's state and routes, as `status --json` shows them.
fn routes(klink: &Klink) -> Value {
    let status: Value =
        serde_json::from_str(&klink.ctl_ok(&["status", "--json"])).expect("status json");
    Value::Array(
        status["topics"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| serde_json::json!([t["topic"], t["state"], t["writes"], t["reads"]]))
            .collect(),
    )
}

/// Produces `count` records through klink and asserts each was delivered.
fn produce_through(klink: &Klink, topic: &str, prefix: &str, count: usize) {
    let report = py(&[
        "produce",
        "--bootstrap",
        &klink.bootstrap_str(),
        "--topic",
        topic,
        "--count",
        &count.to_string(),
        "--prefix",
        prefix,
    ]);
    assert_eq!(report["delivered"], count, "{report}");
}

/// The next state file klink writes goes to `/dev/full`: its write fails
/// with the kernel's ENOSPC, as on a full disk. klink removes the temp
/// file after a failed write, so this lasts one attempt.
fn fill_the_disk_once(state_dir: &Path) {
    let tmp = state_dir.join("klink-state.json.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink("/dev/full", &tmp).expect("symlink the temp file to /dev/full");
}

/// `state_dir` made read-only until dropped: bind-mounted read-only on
/// itself when the test runs as root (root writes through permissions),
/// else its permissions taken away.
struct ReadOnly {
    dir: PathBuf,
    mounted: bool,
}

impl ReadOnly {
    fn make(dir: &Path) -> ReadOnly {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        if root {
            let shown = dir.display().to_string();
            let run = |args: &[&str]| {
                let out = Command::new("mount")
                    .args(args)
                    .output()
                    .expect("run mount");
                assert!(
                    out.status.success(),
                    "mount {args:?}: {} (running as root, this test makes the state \
                     directory read-only with a bind mount; it needs CAP_SYS_ADMIN)",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            run(&["--bind", &shown, &shown]);
            let guard = ReadOnly {
                dir: dir.to_path_buf(),
                mounted: true,
            };
            run(&["-o", "remount,bind,ro", &shown]);
            guard
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))
                .expect("chmod the state directory");
            ReadOnly {
                dir: dir.to_path_buf(),
                mounted: false,
            }
        }
    }
}

impl ReadOnly {
    /// What the kernel answers a write.
    fn reason(&self) -> &'static str {
        if self.mounted {
            "Read-only file system"
        } else {
            "Permission denied"
        }
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn a_full_or_read_only_state_dir_refuses_the_route_change_and_klink_keeps_serving() {
    // `orders` mirrored (for a promotion), `payments` routed by hand.
    let (source, _target, mut klink) = migration(
        "state-dir",
        "[[links]]\nid = \"side\"\nsource = \"source\"\ntarget = \"target\"\n\
         mirror = false\ntopics = [\"payments\"]\n",
    );
    let before = routes(&klink);
    let refused = |command: &[&str], reason: &str| {
        let (code, stdout, stderr) = klink.ctl(command);
        assert!(
            !code.success(),
            "{command:?} went through: {stdout}{stderr}"
        );
        assert!(
            stderr.contains(reason) && stderr.contains("klink-state.json"),
            "{command:?} refused without saying why ({reason}): {stderr}"
        );
        eprintln!("state_dir: {command:?} refused: {}", stderr.trim());
        assert_eq!(
            routes(&klink),
            before,
            "routes changed by a refused {command:?}"
        );
    };

    // A full disk, at a plain route change and at a promotion.
    fill_the_disk_once(&klink.state_dir);
    refused(
        &[
            "route", "payments", "--writes", "target", "--reads", "target",
        ],
        "No space left on device",
    );
    produce_through(&klink, "payments", "full-", 20);
    fill_the_disk_once(&klink.state_dir);
    refused(&["promote", "orders"], "No space left on device");
    // The promotion's fence is lifted: writes to the topic go on.
    produce_through(&klink, "orders", "after-full-", 20);

    // A read-only file system.
    {
        let read_only = ReadOnly::make(&klink.state_dir);
        refused(
            &[
                "route", "payments", "--writes", "target", "--reads", "target",
            ],
            read_only.reason(),
        );
        produce_through(&klink, "payments", "read-only-", 20);
        produce_through(&klink, "orders", "read-only-", 20);
    }

    // Writable again: the same changes go through.
    klink.ctl_ok(&[
        "route", "payments", "--writes", "target", "--reads", "target",
    ]);
    klink.ctl_ok(&["promote", "orders"]);
    let after = routes(&klink);
    assert_ne!(after, before);
    produce_through(&klink, "orders", "promoted-", 20);
    let on_source = crate::flips::dump(&source, "payments");
    let written: usize = on_source
        .values()
        .flatten()
        .filter(|v| v.starts_with("full-") || v.starts_with("read-only-"))
        .count();
    assert_eq!(written, 40, "payments written while the state was stuck");
    assert!(klink.process.is_running(), "klink kept running");
}
