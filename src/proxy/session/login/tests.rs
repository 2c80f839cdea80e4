//! The login state machine, fed encoded requests.
use super::*;
use bytes::BytesMut;
use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
use kafka_protocol::protocol::{Encodable, HeaderVersion, Request};

use crate::sasl::ClientExchange;

fn payload<R: Request + Encodable + HeaderVersion>(request: &R, version: i16) -> Bytes {
    let api = ApiKey::try_from(R::KEY).unwrap();
    let mut buf = BytesMut::new();
    WireHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(9)
        .with_client_id(Some(StrBytes::from_static_str("test")))
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    request.encode(&mut buf, version).unwrap();
    buf.freeze()
}

async fn step<R: Request + Encodable + HeaderVersion>(
    login: &mut Login,
    request: &R,
    version: i16,
) -> Step {
    let payload = payload(request, version);
    let header = RequestHeader::parse(&payload).unwrap();
    login.step(&header, &payload).await.unwrap()
}

fn answer<R: Decodable>(api: ApiKey, version: i16, frame: &Bytes) -> R {
    let mut body = frame.slice(4..);
    kafka_protocol::messages::ResponseHeader::decode(
        &mut body,
        api.response_header_version(version),
    )
    .unwrap();
    R::decode(&mut body, version).unwrap()
}

fn logins(dir: &std::path::Path, mechanisms: Vec<Mechanism>) -> Arc<ClientLogins> {
    let users_file = dir.join("users.toml");
    crate::sasl::users::add_user(
        &users_file,
        "alice",
        "pw",
        &[ScramHash::Sha256, ScramHash::Sha512],
        4096,
    )
    .unwrap();
    Arc::new(
        ClientLogins::open(&ListenerSaslConfig {
            users_file,
            mechanisms,
        })
        .unwrap(),
    )
}

fn handshake(mechanism: &'static str) -> SaslHandshakeRequest {
    SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism))
}

fn authenticate(bytes: Vec<u8>) -> SaslAuthenticateRequest {
    SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes))
}

#[tokio::test]
async fn without_logins_everything_passes_and_a_handshake_is_told_no() {
    let mut login = Login::new(None);
    assert!(!login.pending());
    assert!(matches!(
        step(&mut login, &MetadataRequest::default(), 12).await,
        Step::Pass
    ));
    let Step::Close {
        answer: Some(frame),
        ..
    } = step(&mut login, &handshake("PLAIN"), 1).await
    else {
        panic!("a handshake without [proxy] sasl closes");
    };
    let response: SaslHandshakeResponse = answer(ApiKey::SaslHandshake, 1, &frame);
    assert_eq!(response.error_code, 33);
}

#[tokio::test]
async fn a_scram_login_opens_the_connection_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut login = Login::new(Some(logins(dir.path(), vec![Mechanism::ScramSha512])));
    assert!(login.pending());
    assert!(matches!(
        step(&mut login, &ApiVersionsRequest::default(), 3).await,
        Step::Pass
    ));
    let Step::Answer(frame) = step(&mut login, &handshake("SCRAM-SHA-512"), 1).await else {
        panic!("handshake accepted");
    };
    let response: SaslHandshakeResponse = answer(ApiKey::SaslHandshake, 1, &frame);
    assert_eq!(response.error_code, 0);
    let mut client = ClientExchange::start(Mechanism::ScramSha512, "alice", "pw");
    let Step::Answer(frame) = step(&mut login, &authenticate(client.first()), 2).await else {
        panic!("server-first");
    };
    let first: SaslAuthenticateResponse = answer(ApiKey::SaslAuthenticate, 2, &frame);
    let last = client.step(&first.auth_bytes).unwrap().unwrap();
    assert!(login.pending());
    let Step::Answer(frame) = step(&mut login, &authenticate(last), 2).await else {
        panic!("server-final");
    };
    let done: SaslAuthenticateResponse = answer(ApiKey::SaslAuthenticate, 2, &frame);
    assert_eq!((done.error_code, done.session_lifetime_ms), (0, 0));
    assert_eq!(client.step(&done.auth_bytes), Ok(None), "server proved");
    assert!(!login.pending());
    assert!(matches!(
        step(&mut login, &MetadataRequest::default(), 12).await,
        Step::Pass
    ));
    let Step::Close {
        answer: Some(frame),
        ..
    } = step(&mut login, &handshake("SCRAM-SHA-512"), 1).await
    else {
        panic!("a second login closes");
    };
    let again: SaslHandshakeResponse = answer(ApiKey::SaslHandshake, 1, &frame);
    assert_eq!(again.error_code, 34, "ILLEGAL_SASL_STATE");
}

#[tokio::test]
async fn nothing_but_api_versions_passes_before_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let logins = logins(dir.path(), vec![Mechanism::ScramSha256]);
    let mut login = Login::new(Some(logins.clone()));
    assert!(matches!(
        step(&mut login, &MetadataRequest::default(), 12).await,
        Step::Close { answer: None, .. }
    ));
    // Authenticate before a handshake, a v0 handshake, a mechanism not
    // enabled: each answered with its error and closed.
    for (request, version, api, code) in [
        (None, 1, ApiKey::SaslAuthenticate, 34),
        (Some("SCRAM-SHA-256"), 0, ApiKey::SaslHandshake, 35),
        (Some("SCRAM-SHA-512"), 1, ApiKey::SaslHandshake, 33),
    ] {
        let mut login = Login::new(Some(logins.clone()));
        let step = match request {
            None => step(&mut login, &authenticate(b"n,,n=a,r=x".to_vec()), version).await,
            Some(m) => step(&mut login, &handshake(m), version).await,
        };
        let Step::Close {
            answer: Some(frame),
            ..
        } = step
        else {
            panic!("{api:?} v{version} closes");
        };
        let error = match api {
            ApiKey::SaslHandshake => {
                answer::<SaslHandshakeResponse>(api, version, &frame).error_code
            }
            _ => answer::<SaslAuthenticateResponse>(api, version, &frame).error_code,
        };
        assert_eq!(error, code, "{api:?} v{version}");
    }
}

#[tokio::test]
async fn plain_is_checked_against_the_scram_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let logins = logins(dir.path(), vec![Mechanism::Plain]);
    for (password, accepted) in [("pw", true), ("guess-7x", false)] {
        let mut login = Login::new(Some(logins.clone()));
        assert!(matches!(
            step(&mut login, &handshake("PLAIN"), 1).await,
            Step::Answer(_)
        ));
        let message = format!("\0alice\0{password}").into_bytes();
        match step(&mut login, &authenticate(message), 1).await {
            Step::Answer(frame) if accepted => {
                let r: SaslAuthenticateResponse = answer(ApiKey::SaslAuthenticate, 1, &frame);
                assert_eq!(r.error_code, 0);
                assert!(!login.pending());
            }
            Step::Close {
                answer: Some(frame),
                reason,
            } if !accepted => {
                let r: SaslAuthenticateResponse = answer(ApiKey::SaslAuthenticate, 1, &frame);
                assert_eq!(r.error_code, 58);
                assert_eq!(r.error_message.as_deref(), Some(REFUSED));
                assert!(
                    !reason.contains("guess") && reason.contains("PLAIN"),
                    "{reason}"
                );
            }
            _ => panic!("PLAIN with {password:?}"),
        }
    }
}
