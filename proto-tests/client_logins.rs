//! Clients logging in to klink (`[proxy] sasl`) and presenting
//! certificates to it (`[proxy] tls.client_ca_file`): the clients' own
//! security settings work against klink as against a broker, and nobody
//! without credentials gets anything through.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kafka_protocol::messages::{MetadataRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use serde_json::Value;

use crate::cutover::started_command;
use crate::cutover_clients::{kafkajs_producer, ledger_js, report};
use crate::harness::{Broker, Klink, KlinkOptions, free_port, python_bin, repo_root, run_bounded};
use crate::raw::RawConn;
use crate::security::throwaway_pki;

const ALICE_PASSWORD: &str = "alice-pw-91c2e7";
const BOB_PASSWORD: &str = "bob-pw-5d0a3f";
const WRONG_PASSWORD: &str = "not-the-pw-3e77";

/// `klink user add` with the password on standard input.
fn add_user(users: &Path, name: &str, password: &str, mechanisms: &[&str]) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_klink"));
    command
        .args(["user", "--users-file"])
        .arg(users)
        .args(["add", name]);
    for m in mechanisms {
        command.args(["--mechanism", m]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("klink user add");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{password}\n").as_bytes())
        .expect("password");
    let out = child.wait_with_output().expect("klink user add");
    assert!(
        out.status.success(),
        "klink user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// routing.py with a login (and TLS when `tls` names the CA and maybe a
/// client certificate and key).
fn py_as(
    login: Option<(&str, &str, &str)>,
    tls: Option<(&Path, Option<(&PathBuf, &PathBuf)>)>,
    args: &[&str],
) -> (bool, Value, String) {
    let mut command = Command::new(python_bin());
    command
        .arg(repo_root().join("proto-tests/clients/routing.py"))
        .args(args);
    if let Some((mechanism, user, password)) = login {
        command
            .env("KLINK_CLIENT_MECHANISM", mechanism)
            .env("KLINK_CLIENT_USER", user)
            .env("KLINK_CLIENT_PASSWORD", password);
    }
    if let Some((ca, cert)) = tls {
        command.env("KLINK_CLIENT_CA", ca);
        if let Some((cert, key)) = cert {
            command
                .env("KLINK_CLIENT_CERT", cert)
                .env("KLINK_CLIENT_KEY", key);
        }
    }
    let (status, stdout, stderr) = run_bounded(command, Duration::from_secs(90));
    let report =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or(Value::Null);
    (status.success(), report, stderr)
}

fn py_ok(login: Option<(&str, &str, &str)>, args: &[&str]) -> Value {
    let (ok, report, stderr) = py_as(login, None, args);
    assert!(ok && !report.is_null(), "routing.py {args:?}: {stderr}");
    report
}

/// klink's `/metrics`, by hand: one GET over a fresh connection.
fn metrics_text(port: u16) -> String {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin listener");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: klink\r\nConnection: close\r\n\r\n")
        .expect("GET");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("metrics");
    text
}

fn login_refused(report: &Value) -> bool {
    report["ok"] == false
        && report["errors"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e.to_string().contains("Authentication failed"))
        })
}

#[test]
fn clients_log_in_to_klink_with_scram_and_plain_and_a_wrong_password_gets_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let users = dir.path().join("users.toml");
    add_user(&users, "alice", ALICE_PASSWORD, &[]);
    add_user(&users, "bob", BOB_PASSWORD, &["SCRAM-SHA-256"]);
    let source = Broker::start("client-logins");
    let admin_port = free_port();
    let mut klink = Klink::start_with(
        &source,
        KlinkOptions {
            extra_proxy: format!(
                "admin_listen = \"127.0.0.1:{admin_port}\"\n\
                 sasl = {{ users_file = \"{}\", mechanisms = [\"SCRAM-SHA-512\", \"SCRAM-SHA-256\", \"PLAIN\"] }}\n",
                users.display()
            ),
            ..Default::default()
        },
    );
    let bootstrap = klink.bootstrap_str();
    let alice = Some(("SCRAM-SHA-512", "alice", ALICE_PASSWORD));
    let bob = Some(("SCRAM-SHA-256", "bob", BOB_PASSWORD));
    let alice_plain = Some(("PLAIN", "alice", ALICE_PASSWORD));
    let create = [
        "create",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--partitions",
        "3",
    ];
    py_ok(alice, &create);
    let produce = |login, prefix: &str| {
        py_ok(
            login,
            &[
                "produce",
                "--bootstrap",
                &bootstrap,
                "--topic",
                "orders",
                "--count",
                "100",
                "--prefix",
                prefix,
            ],
        )
    };
    assert_eq!(produce(alice, "sha512-")["delivered"], 100);
    assert_eq!(produce(bob, "sha256-")["delivered"], 100);
    assert_eq!(produce(alice_plain, "plain-")["delivered"], 100);

    // kafkajs logs in with SCRAM-SHA-256 and produces.
    let mut js = kafkajs_producer(&bootstrap, "2", "50");
    js.env("KLINK_CLIENT_MECHANISM", "SCRAM-SHA-256")
        .env("KLINK_CLIENT_USER", "bob")
        .env("KLINK_CLIENT_PASSWORD", BOB_PASSWORD);
    let (js, js_lines) = started_command(js);
    let js = report(js, js_lines, "kafkajs producer logged in");
    assert_eq!(js["failed"], 0, "{}", js["errors"]);
    let js_acked = js["acked"].as_array().map_or(0, Vec::len);
    assert!(js_acked > 50, "kafkajs acknowledged {js_acked}");

    let count = ["count", "--bootstrap", &bootstrap, "--topic", "orders"];
    let written = 300 + js_acked;
    assert_eq!(py_ok(alice, &count)["count"], written);

    // Refused: a wrong password (SCRAM and PLAIN), an unknown user, a
    // mechanism bob has no credential for, and no login at all.
    for (what, login) in [
        (
            "wrong password",
            Some(("SCRAM-SHA-512", "alice", WRONG_PASSWORD)),
        ),
        (
            "wrong PLAIN password",
            Some(("PLAIN", "alice", WRONG_PASSWORD)),
        ),
        (
            "unknown user",
            Some(("SCRAM-SHA-256", "mallory", ALICE_PASSWORD)),
        ),
        (
            "no SHA-512 credential",
            Some(("SCRAM-SHA-512", "bob", BOB_PASSWORD)),
        ),
    ] {
        let (_, report, stderr) = py_as(
            login,
            None,
            &["login", "--bootstrap", &bootstrap, "--topic", "-"],
        );
        assert!(login_refused(&report), "{what}: {report} {stderr}");
    }
    let (_, report, stderr) = py_as(
        None,
        None,
        &["login", "--bootstrap", &bootstrap, "--topic", "-"],
    );
    assert_eq!(report["ok"], false, "no login: {report} {stderr}");
    let mut js = ledger_js(&["produce", "--bootstrap", &bootstrap, "--topic", "orders"]);
    js.env("KLINK_CLIENT_MECHANISM", "SCRAM-SHA-512")
        .env("KLINK_CLIENT_USER", "alice")
        .env("KLINK_CLIENT_PASSWORD", WRONG_PASSWORD);
    let (status, stdout, stderr) = run_bounded(js, Duration::from_secs(60));
    assert!(
        !status.success() && !stdout.contains("STARTED"),
        "kafkajs with a wrong password: {stdout}"
    );
    assert!(stderr.contains("SASL"), "kafkajs's error: {stderr}");

    // On the wire: a request before the login is not forwarded (the
    // connection closes unanswered), and an unknown mechanism is refused.
    let mut raw = RawConn::connect(klink.bootstrap);
    let (_, frame) = raw.encode(&MetadataRequest::default(), 12);
    raw.send_bytes(&frame);
    assert!(raw.closed_by_peer(), "Metadata before a login was answered");
    let mut raw = RawConn::connect(klink.bootstrap);
    let answer = raw.call(
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("GSSAPI")),
        1,
    );
    assert_eq!(answer.error_code, 33, "UNSUPPORTED_SASL_MECHANISM");
    let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
    assert_eq!(offered, ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]);
    assert!(raw.closed_by_peer());

    // Nothing the refused clients sent was written.
    assert_eq!(py_ok(bob, &count)["count"], written);

    // A user removed from the file is refused at its next login, without
    // a restart.
    let (status, _, stderr) = run_bounded(
        {
            let mut c = Command::new(env!("CARGO_BIN_EXE_klink"));
            c.args(["user", "--users-file"])
                .arg(&users)
                .args(["remove", "bob"]);
            c
        },
        Duration::from_secs(30),
    );
    assert!(status.success(), "klink user remove: {stderr}");
    let (_, report, stderr) = py_as(
        bob,
        None,
        &["login", "--bootstrap", &bootstrap, "--topic", "-"],
    );
    assert!(login_refused(&report), "a removed user: {report} {stderr}");
    assert_eq!(
        py_ok(alice, &["login", "--bootstrap", &bootstrap, "--topic", "-"])["ok"],
        true
    );

    let scrape = metrics_text(admin_port);
    let logins = |result: &str| -> u64 {
        let series = format!("klink_client_logins_total{{result=\"{result}\"}} ");
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{scrape}"))
    };
    assert!(logins("ok") >= 8, "{scrape}");
    assert!(logins("refused") >= 7, "{scrape}");
    let log = klink.process.log_text();
    for password in [ALICE_PASSWORD, BOB_PASSWORD, WRONG_PASSWORD] {
        assert!(!log.contains(password), "a password in klink's log");
        assert!(
            !std::fs::read_to_string(&users)
                .unwrap_or_default()
                .contains(password)
        );
        assert!(!scrape.contains(password));
    }
    assert!(log.contains("login refused"), "{log}");
    assert!(
        log.contains("unknown user") || log.contains("no SCRAM credential"),
        "{log}"
    );
    assert!(log.contains("wrong password"), "{log}");
    assert!(klink.process.is_running());
}

#[test]
fn clients_with_a_certificate_from_the_ca_and_a_login_get_through_and_others_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = throwaway_pki(dir.path());
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).expect("dir");
    let other = throwaway_pki(&other_dir);
    let users = dir.path().join("users.toml");
    add_user(&users, "alice", ALICE_PASSWORD, &[]);
    let source = Broker::start("mtls-clients");
    let mut klink = Klink::start_with(
        &source,
        KlinkOptions {
            extra_proxy: format!(
                "tls = {{ cert_file = \"{}\", key_file = \"{}\", client_ca_file = \"{}\" }}\n\
                 sasl = {{ users_file = \"{}\" }}\n",
                pki.cert.display(),
                pki.key.display(),
                pki.ca.display(),
                users.display()
            ),
            ..Default::default()
        },
    );
    let bootstrap = klink.bootstrap_str();
    let alice = Some(("SCRAM-SHA-512", "alice", ALICE_PASSWORD));
    let certified = Some((pki.ca.as_path(), Some((&pki.client_cert, &pki.client_key))));
    let run = |login, tls, args: &[&str]| {
        let (ok, report, stderr) = py_as(login, tls, args);
        assert!(ok && !report.is_null(), "routing.py {args:?}: {stderr}");
        report
    };
    run(
        alice,
        certified,
        &[
            "create",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "orders",
            "--partitions",
            "3",
        ],
    );
    let produced = run(
        alice,
        certified,
        &[
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "orders",
            "--count",
            "100",
        ],
    );
    assert_eq!(produced["delivered"], 100, "{produced}");

    // kafkajs over mTLS with a SCRAM login.
    let mut js = kafkajs_producer(&bootstrap, "2", "50");
    js.env("KLINK_CLIENT_CA", &pki.ca)
        .env("KLINK_CLIENT_CERT", &pki.client_cert)
        .env("KLINK_CLIENT_KEY", &pki.client_key)
        .env("KLINK_CLIENT_MECHANISM", "SCRAM-SHA-256")
        .env("KLINK_CLIENT_USER", "alice")
        .env("KLINK_CLIENT_PASSWORD", ALICE_PASSWORD);
    let (js, js_lines) = started_command(js);
    let js = report(js, js_lines, "kafkajs producer over mTLS");
    assert_eq!(js["failed"], 0, "{}", js["errors"]);
    let js_acked = js["acked"].as_array().map_or(0, Vec::len);
    assert!(js_acked > 50, "kafkajs acknowledged {js_acked}");
    let count = ["count", "--bootstrap", &bootstrap, "--topic", "orders"];
    assert_eq!(run(alice, certified, &count)["count"], 100 + js_acked);

    // No certificate, or one another CA signed: the handshake fails and
    // the login never starts. The right certificate with a wrong
    // password: the login is refused.
    let login = ["login", "--bootstrap", &bootstrap, "--topic", "-"];
    for (what, tls) in [
        ("no client certificate", Some((pki.ca.as_path(), None))),
        (
            "a certificate from another CA",
            Some((
                pki.ca.as_path(),
                Some((&other.client_cert, &other.client_key)),
            )),
        ),
    ] {
        let (_, report, stderr) = py_as(alice, tls, &login);
        assert_eq!(report["ok"], false, "{what}: {report} {stderr}");
    }
    let (_, report, stderr) = py_as(
        Some(("SCRAM-SHA-512", "alice", WRONG_PASSWORD)),
        certified,
        &login,
    );
    assert!(
        login_refused(&report),
        "a wrong password over mTLS: {report} {stderr}"
    );
    assert_eq!(run(alice, certified, &count)["count"], 100 + js_acked);

    let log = klink.process.log_text();
    assert!(log.contains("client TLS handshake failed"), "{log}");
    assert!(log.contains("login refused"), "{log}");
    assert!(!log.contains(ALICE_PASSWORD) && !log.contains(WRONG_PASSWORD));
    assert!(klink.process.is_running());
}
