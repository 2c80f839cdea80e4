//! klink in front of clusters that want a login and TLS: a SCRAM-SHA-512
//! source (SASL_PLAINTEXT) and a SCRAM-SHA-256 target behind TLS
//! (SASL_SSL, socat terminating TLS in front of tansu, which has no TLS
//! listener). Clients speak plaintext to klink and never log in: klink
//! logs in as its own user, and keeps doing so past the brokers' 60 s
//! login sessions.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cutover::{orders_member, started, started_command};
use crate::cutover_clients::kafkajs_producer;
use crate::harness::{Broker, Klink, KlinkOptions, Process, free_port, socat_bin, wait_for_port};
use crate::mirror::wait_caught_up;

const SOURCE_PASSWORD: &str = "source-pw-7f3a9c";
const TARGET_PASSWORD: &str = "target-pw-2b8e41";

/// A throwaway CA and a certificate for 127.0.0.1 signed by it, as PEM
/// files in `dir`: (ca, cert, key).
pub(crate) fn throwaway_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let issued = throwaway_pki(dir);
    (issued.ca, issued.cert, issued.key)
}

/// PEM files a throwaway CA issued.
pub(crate) struct Pki {
    pub ca: PathBuf,
    /// For 127.0.0.1 and localhost (a server's).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client's, for TLS client authentication.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

pub(crate) fn throwaway_pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, SanType,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "klink test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
        .expect("ca certificate");
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca).expect("certificate");
    let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "klink test client");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_key = KeyPair::generate().expect("client key");
    let client_cert = client_params
        .signed_by(&client_key, &ca)
        .expect("client certificate");
    let pki = Pki {
        ca: dir.join("ca.pem"),
        cert: dir.join("broker.pem"),
        key: dir.join("broker.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    };
    std::fs::write(&pki.ca, ca.pem()).expect("write ca");
    std::fs::write(&pki.cert, cert.pem()).expect("write cert");
    std::fs::write(&pki.key, key.serialize_pem()).expect("write key");
    std::fs::write(&pki.client_cert, client_cert.pem()).expect("write client cert");
    std::fs::write(&pki.client_key, client_key.serialize_pem()).expect("write client key");
    pki
}

/// socat terminating TLS on `port` in front of `upstream`.
pub(crate) fn tls_terminator(
    port: u16,
    upstream: u16,
    cert: &Path,
    key: &Path,
    dir: &Path,
) -> Process {
    let mut command = Command::new(socat_bin());
    command.arg(format!(
        "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
        cert.display(),
        key.display()
    ));
    command.arg(format!("TCP:127.0.0.1:{upstream}"));
    let process = Process::spawn("socat", command, dir.join("socat.log"));
    wait_for_port(([127, 0, 0, 1], port).into(), Duration::from_secs(10));
    process
}

/// The `[clusters.*]` lines of a SCRAM source and a TLS + SCRAM target.
fn secured_clusters(tls_port: u16, ca: &Path, password_file: &Path) -> String {
    format!(
        "security_protocol = \"SASL_PLAINTEXT\"\n\
         sasl = {{ mechanism = \"SCRAM-SHA-512\", username = \"migrator\", password_env = \"KLINK_TEST_SOURCE_PASSWORD\" }}\n\
         [clusters.target]\nbootstrap = \"127.0.0.1:{tls_port}\"\n\
         security_protocol = \"SASL_SSL\"\n\
         sasl = {{ mechanism = \"SCRAM-SHA-256\", username = \"migrator\", password_file = \"{}\" }}\n\
         tls = {{ ca_file = \"{}\" }}\n",
        password_file.display(),
        ca.display(),
    )
}

#[test]
fn klink_logs_in_to_a_scram_source_and_a_tls_scram_target_across_a_flip_and_session_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = throwaway_ca(dir.path());
    let source = Broker::start_scram(
        "secured-source",
        &[("migrator", SOURCE_PASSWORD, "scram512")],
        None,
    );
    let tls_port = free_port();
    let target = Broker::start_scram(
        "secured-target",
        &[("migrator", TARGET_PASSWORD, "scram256")],
        Some(tls_port),
    );
    let _tls = tls_terminator(tls_port, target.addr.port(), &cert, &key, dir.path());
    let password_file = dir.path().join("target-password");
    std::fs::write(&password_file, format!("{TARGET_PASSWORD}\n")).expect("password file");
    let mut klink = Klink::start_with(
        &source,
        KlinkOptions {
            source_extra: secured_clusters(tls_port, &ca, &password_file),
            env: vec![("KLINK_TEST_SOURCE_PASSWORD".into(), SOURCE_PASSWORD.into())],
            extra_config: "[[links]]\nid = \"move\"\nsource = \"source\"\ntarget = \"target\"\n\
                 topics = [\"orders\"]\ngroups = [\"secured\"]\n"
                .into(),
            ..Default::default()
        },
    );
    let bootstrap = klink.bootstrap_str();
    crate::routing::py(&[
        "create",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--partitions",
        "3",
    ]);
    wait_caught_up(&klink, "orders");

    // More than the brokers' 60 s login session, a promotion in the middle.
    let began = Instant::now();
    let (consumer, consumer_lines) = orders_member(&bootstrap, "secured", "72");
    let (producer, producer_lines) = started(&[
        "kp-ledger",
        "--bootstrap",
        &bootstrap,
        "--topic",
        "orders",
        "--seconds",
        "66",
        "--pace",
        "20",
    ]);
    let (js, js_lines) = started_command(kafkajs_producer(&bootstrap, "66", "20"));
    std::thread::sleep(Duration::from_secs(30));
    let (code, stdout, stderr) = klink.ctl(&["promote", "orders"]);
    assert!(
        code.success(),
        "promote: {stdout}{stderr}\n{}",
        klink.process.log_text()
    );
    let produced =
        crate::cutover_clients::report(producer, producer_lines, "kafka-python producer");
    let produced_js = crate::cutover_clients::report(js, js_lines, "kafkajs producer");
    let consumed =
        crate::cutover_clients::report(consumer, consumer_lines, "confluent-kafka group member");
    assert!(
        began.elapsed() > Duration::from_secs(65),
        "past the login sessions"
    );
    let mut acked = Vec::new();
    for (name, report) in [("kp", &produced), ("kafkajs", &produced_js)] {
        assert_eq!(report["failed"], 0, "{name}: {}", report["errors"]);
        let mine = report["acked"].as_array().cloned().unwrap_or_default();
        assert!(mine.len() > 1000, "{name} acknowledged {}", mine.len());
        acked.extend(mine.iter().map(|a| format!("{name}:{}", a[2])));
    }
    let seen: std::collections::HashSet<&str> = consumed["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let missed: Vec<&String> = acked
        .iter()
        .filter(|v| !seen.contains(v.as_str()))
        .collect();
    assert!(
        missed.is_empty(),
        "the group missed {} of {}: {:?}\n{}",
        missed.len(),
        acked.len(),
        &missed[..missed.len().min(5)],
        consumed["errors"]
    );
    // Read through klink: after the promotion, from the target.
    let on_target: std::collections::HashSet<String> =
        crate::flips::dump_records(&bootstrap, "orders")
            .into_values()
            .flatten()
            .map(|(_, v)| v)
            .collect();
    for value in &acked {
        assert!(on_target.contains(value), "{value} is not on the target");
    }
    let log = klink.process.log_text();
    assert!(klink.process.is_running(), "klink kept running");
    for password in [SOURCE_PASSWORD, TARGET_PASSWORD] {
        assert!(!log.contains(password), "a password in klink's log");
    }
    assert!(
        !log.contains("refused klink's login"),
        "a login was refused:\n{log}"
    );
    // Both clusters announced their login sessions, and the target, which
    // carried every request after the flip, never cut a connection under
    // requests when a login ran out: klink renewed them in time. (The
    // source closes the connection of the LeaveGroup klink sends for the
    // link's group after a flip, logins or not: a tansu quirk, README.)
    assert_eq!(
        log.matches("the cluster's logins expire").count(),
        2,
        "{log}"
    );
    assert!(
        log.contains("login about to expire: a new connection"),
        "no connection was renewed in {:?}:\n{log}",
        began.elapsed()
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("upstream broker unreachable") && l.contains("cluster=target")),
        "the target dropped klink:\n{log}"
    );
}

/// klink with a source that wants `username`/`password` over SCRAM-SHA-512.
fn klink_logging_in(source: &Broker, username: &str, password: &str) -> Klink {
    Klink::start_with(
        source,
        KlinkOptions {
            source_extra: format!(
                "security_protocol = \"SASL_PLAINTEXT\"\n\
                 sasl = {{ mechanism = \"SCRAM-SHA-512\", username = \"{username}\", password_env = \"KLINK_TEST_PASSWORD\" }}\n"
            ),
            env: vec![("KLINK_TEST_PASSWORD".into(), password.into())],
            ..Default::default()
        },
    )
}

#[test]
fn a_refused_login_is_named_in_status_and_the_log_and_no_password_shows() {
    let source = Broker::start_scram(
        "refused-source",
        &[("migrator", SOURCE_PASSWORD, "scram512")],
        None,
    );
    for (username, password, why) in [
        ("migrator", "wrong-pw-5c2d", "invalid-proof"),
        ("nobody", "any-pw-81aa", "unknown-user"),
    ] {
        let mut klink = klink_logging_in(&source, username, password);
        // A client's request makes klink connect (and log in) again.
        // (Metadata has no room for an error: klink closes the connection.)
        let mut conn = crate::raw::RawConn::connect(klink.bootstrap);
        let (_, frame) = conn.encode(
            &kafka_protocol::messages::MetadataRequest::default().with_topics(None),
            9,
        );
        conn.send_bytes(&frame);
        assert!(conn.read_frame().is_err(), "an answer without the cluster");
        let status = klink.ctl_ok(&["status"]);
        let line = status
            .lines()
            .find(|l| l.starts_with("cluster source: broker"))
            .unwrap_or_else(|| panic!("status does not name the refusing cluster:\n{status}"));
        assert!(
            line.contains(&format!(
                "refused klink's login as `{username}` (SCRAM-SHA-512)"
            )) && line.contains(why),
            "status says: {line}"
        );
        eprintln!("security: {line}");
        let log = klink.process.log_text();
        assert!(
            log.contains("refused klink's login") && log.contains(why),
            "the log does not say why:\n{log}"
        );
        let json = klink.ctl_ok(&["status", "--json"]);
        for text in [&status, &json, &log] {
            assert!(!text.contains(password), "the password shows:\n{text}");
        }
        assert!(klink.process.is_running(), "klink keeps running");
    }
}

#[test]
fn the_control_socket_refuses_a_wrong_or_missing_token_and_changes_nothing() {
    let (source, target) = (Broker::start("token-source"), Broker::start("token-target"));
    let klink = Klink::start_with(
        &source,
        KlinkOptions {
            clusters: vec![("target".into(), target.addr)],
            extra_proxy: "control_token_env = \"KLINK_TEST_TOKEN\"\n".into(),
            extra_config: "[[links]]\nid = \"m\"\nsource = \"source\"\ntarget = \"target\"\n\
                 mirror = false\ntopics = [\"orders\"]\n"
                .into(),
            env: vec![("KLINK_TEST_TOKEN".into(), "token-e41f0a".into())],
            ..Default::default()
        },
    );
    let before = klink.ctl_ok(&["status", "--json"]);
    let ctl_with = |token: Option<&str>, args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_klink"));
        command
            .args(["ctl", "--config"])
            .arg(&klink.config)
            .args(args)
            .env_remove("KLINK_TEST_TOKEN");
        if let Some(token) = token {
            command.env("KLINK_TEST_TOKEN", token);
        }
        crate::harness::run_bounded(command, Duration::from_secs(30))
    };
    let route = ["route", "orders", "--writes", "target", "--reads", "target"];
    let (code, stdout, stderr) = ctl_with(Some("token-wrong"), &route);
    assert!(!code.success(), "a wrong token went through: {stdout}");
    assert!(
        stderr.contains("control token is missing or wrong"),
        "{stderr}"
    );
    let (code, _, stderr) = ctl_with(None, &route);
    assert_eq!(code.code(), Some(2), "{stderr}");
    assert!(stderr.contains("KLINK_TEST_TOKEN"), "{stderr}");
    // Nothing changed, and the refusal is in the audit log.
    assert_eq!(klink.ctl_ok(&["status", "--json"]), before);
    let log = klink.process.log_text();
    assert!(
        log.contains("control command refused: token missing or wrong"),
        "{log}"
    );
    klink.ctl_ok(&route);
    assert_ne!(
        klink.ctl_ok(&["status", "--json"]),
        before,
        "the right token works"
    );
}

/// routing.py over TLS to klink, trusting `ca`.
fn py_tls(ca: &Path, args: &[&str]) -> Value {
    let mut command = Command::new(crate::harness::python_bin());
    command
        .arg(crate::harness::repo_root().join("proto-tests/clients/routing.py"))
        .args(args)
        .env("KLINK_CLIENT_CA", ca);
    let (status, stdout, stderr) = crate::harness::run_bounded(command, Duration::from_secs(90));
    assert!(
        status.success(),
        "routing.py {args:?} over TLS failed:\n{stderr}"
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("routing.py {args:?}: {e}: {stdout}{stderr}"))
}

#[test]
fn clients_reach_klink_over_tls_and_one_without_the_ca_gets_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = throwaway_ca(dir.path());
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("dir");
    let (other_ca, _, _) = throwaway_ca(&other);
    let source = Broker::start("tls-clients");
    let mut klink = Klink::start_with(
        &source,
        KlinkOptions {
            extra_proxy: format!(
                "tls = {{ cert_file = \"{}\", key_file = \"{}\" }}\n",
                cert.display(),
                key.display()
            ),
            ..Default::default()
        },
    );
    let bootstrap = klink.bootstrap_str();
    py_tls(
        &ca,
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
    let produced = py_tls(
        &ca,
        &[
            "produce",
            "--bootstrap",
            &bootstrap,
            "--topic",
            "orders",
            "--count",
            "200",
            "--prefix",
            "ck-",
        ],
    );
    assert_eq!(produced["delivered"], 200, "{produced}");
    let mut js = kafkajs_producer(&bootstrap, "2", "50");
    js.env("KLINK_CLIENT_CA", &ca);
    let (js, js_lines) = started_command(js);
    let js = crate::cutover_clients::report(js, js_lines, "kafkajs producer over TLS");
    assert_eq!(js["failed"], 0, "{}", js["errors"]);
    let js_acked = js["acked"].as_array().map_or(0, Vec::len);
    assert!(js_acked > 50, "kafkajs acknowledged {js_acked}");
    let counted = py_tls(
        &ca,
        &["count", "--bootstrap", &bootstrap, "--topic", "orders"],
    );
    assert_eq!(counted["count"], 200 + js_acked, "read back over TLS");

    // A client that does not trust klink's CA fails its handshake; one
    // speaking plaintext to the TLS listener gets no answer.
    let mut command = Command::new(crate::harness::python_bin());
    command.args([
        "-c",
        "import socket, ssl, sys\n\
         ctx = ssl.create_default_context(cafile=sys.argv[1])\n\
         try:\n    ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(sys.argv[2]))), server_hostname='127.0.0.1')\n    print('connected')\n\
         except ssl.SSLCertVerificationError as e:\n    print('refused', e.verify_message)\n",
    ]);
    command
        .arg(&other_ca)
        .arg(klink.bootstrap.port().to_string());
    let (_, stdout, stderr) = crate::harness::run_bounded(command, Duration::from_secs(30));
    assert!(
        stdout.starts_with("refused"),
        "a client without the CA: {stdout}{stderr}"
    );
    let mut plain = crate::raw::RawConn::connect(klink.bootstrap);
    let (_, frame) = plain.encode(&kafka_protocol::messages::ApiVersionsRequest::default(), 3);
    plain.send_bytes(&frame);
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain.stream, &mut answer);
    // Nothing, or a TLS alert record (content type 21): no Kafka answer.
    assert!(
        answer.first().is_none_or(|&b| b == 21),
        "plaintext got {} bytes from a TLS listener: {:?}",
        answer.len(),
        &answer[..answer.len().min(16)]
    );
    let log = klink.process.log_text();
    assert!(log.contains("client TLS handshake failed"), "{log}");
    assert!(klink.process.is_running(), "klink kept running");
}
