use super::*;

// RFC 7677 section 3.
const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_FIRST: &[u8] =
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn rfc_client() -> ScramClient {
    ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", CLIENT_NONCE)
}

fn rfc_credential() -> StoredCredential {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    StoredCredential::derive(ScramHash::Sha256, "pencil", &salt, 4096)
}

/// Runs client against server up to client-final; returns the server's
/// verdict and the client, ready for the server-final.
fn login(
    mut client: ScramClient,
    hash: ScramHash,
    credential: Option<StoredCredential>,
    tamper: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> (Result<ServerStep, SaslError>, ScramClient) {
    let mut server = ScramServer::new(hash);
    let first = server.step(&client.first(), |_| credential).unwrap();
    let ServerStep::Continue(server_first) = first else {
        panic!("expected server-first, got {first:?}");
    };
    let client_final = client.step(&server_first).unwrap().unwrap();
    (server.step(&tamper(client_final), |_| None), client)
}

#[test]
fn rfc7677_client_vector() {
    let mut client = rfc_client();
    assert_eq!(client.first(), CLIENT_FIRST);
    assert_eq!(client.step(SERVER_FIRST).unwrap().unwrap(), CLIENT_FINAL);
    assert!(!client.is_done());
    assert_eq!(client.step(SERVER_FINAL), Ok(None));
    assert!(client.is_done());
    assert!(matches!(
        client.step(SERVER_FINAL),
        Err(SaslError::OutOfOrder(_))
    ));
}

#[test]
fn rfc7677_client_rejects_tampered_server_final() {
    let mut client = rfc_client();
    client.first();
    client.step(SERVER_FIRST).unwrap();
    // One character of the signature changed, still valid base64.
    let tampered = b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
    assert_eq!(client.step(tampered), Err(SaslError::BadServerSignature));
    assert!(!client.is_done());
    assert!(client.step(SERVER_FINAL).is_err());
}

#[test]
fn client_surfaces_server_error() {
    let mut client = rfc_client();
    client.first();
    client.step(SERVER_FIRST).unwrap();
    assert_eq!(
        client.step(b"e=invalid-proof"),
        Err(SaslError::ServerRefused("invalid-proof".into()))
    );
}

#[test]
fn rfc7677_server_vector() {
    let mut server = ScramServer::new(ScramHash::Sha256);
    let first = server.server_first(
        CLIENT_FIRST,
        |u| (u == "user").then(rfc_credential),
        SERVER_NONCE,
    );
    assert_eq!(first, Ok(ServerStep::Continue(SERVER_FIRST.to_vec())));
    let done = server.step(CLIENT_FINAL, |_| None).unwrap();
    assert_eq!(
        done,
        ServerStep::Done {
            username: "user".into(),
            server_final: SERVER_FINAL.to_vec()
        }
    );
    assert!(matches!(
        server.step(CLIENT_FINAL, |_| None),
        Err(SaslError::OutOfOrder(_))
    ));
}

#[test]
fn round_trip_sha256_and_sha512() {
    for (hash, credential) in [
        (ScramHash::Sha256, rfc_credential()),
        (
            ScramHash::Sha512,
            StoredCredential::derive(ScramHash::Sha512, "pencil", b"NaCl", 4096),
        ),
    ] {
        let client = ScramClient::new(hash, "user", "pencil");
        let (verdict, mut client) = login(client, hash, Some(credential), |m| m);
        let Ok(ServerStep::Done {
            username,
            server_final,
        }) = verdict
        else {
            panic!("{hash:?}: expected success, got {verdict:?}");
        };
        assert_eq!(username, "user");
        assert_eq!(client.step(&server_final), Ok(None));
        assert!(client.is_done());
    }
}

#[test]
fn wrong_password_is_refused_with_invalid_proof() {
    let client = ScramClient::new(ScramHash::Sha256, "user", "pencil2");
    let (verdict, mut client) = login(client, ScramHash::Sha256, Some(rfc_credential()), |m| m);
    let Ok(ServerStep::Refused {
        server_final,
        reason,
    }) = verdict
    else {
        panic!("expected refusal, got {verdict:?}");
    };
    assert_eq!(server_final, b"e=invalid-proof");
    assert_eq!(reason, SaslError::InvalidProof);
    assert_eq!(
        client.step(&server_final),
        Err(SaslError::ServerRefused("invalid-proof".into()))
    );
}

#[test]
fn unknown_user_gets_plausible_server_first_then_refusal() {
    let server_first = |user: &str| {
        let mut server = ScramServer::new(ScramHash::Sha256);
        let mut client = ScramClient::with_nonce(ScramHash::Sha256, user, "pw", "abc");
        match server.step(&client.first(), |_| None) {
            Ok(ServerStep::Continue(m)) => String::from_utf8(m).unwrap(),
            other => panic!("expected server-first, got {other:?}"),
        }
    };
    let (a, b) = (server_first("ghost"), server_first("ghost"));
    let salt = |m: &str| m.split(',').nth(1).unwrap().to_string();
    assert_eq!(salt(&a), salt(&b), "fake salt must be stable per user");
    assert_ne!(salt(&a), salt(&server_first("other")));
    assert!(a.starts_with("r=abc") && a.ends_with(",i=4096"), "{a}");

    let client = ScramClient::new(ScramHash::Sha256, "ghost", "pw");
    let (verdict, _) = login(client, ScramHash::Sha256, None, |m| m);
    assert_eq!(
        verdict,
        Ok(ServerStep::Refused {
            server_final: b"e=unknown-user".to_vec(),
            reason: SaslError::UnknownUser("ghost".into()),
        })
    );
    // A credential for the other hash is no credential for this one.
    let sha512 = StoredCredential::derive(ScramHash::Sha512, "pw", b"salt", 4096);
    let client = ScramClient::new(ScramHash::Sha256, "ghost", "pw");
    let (verdict, _) = login(client, ScramHash::Sha256, Some(sha512), |m| m);
    assert!(matches!(
        verdict,
        Ok(ServerStep::Refused {
            reason: SaslError::UnknownUser(_),
            ..
        })
    ));
}

fn replace(message: Vec<u8>, from: &str, to: &str) -> Vec<u8> {
    String::from_utf8(message)
        .unwrap()
        .replacen(from, to, 1)
        .into_bytes()
}

#[test]
fn client_final_with_other_nonce_is_an_error() {
    for to in [
        ",r=zzz",
        ",r=rOprNGfwEbeRWgbNEkqO",
        ",r=rOprNGfwEbeRWgbNEkqOX",
    ] {
        let client = rfc_client();
        let (verdict, _) = login(client, ScramHash::Sha256, Some(rfc_credential()), |m| {
            let m = String::from_utf8(m).unwrap();
            let end = m.find(",p=").unwrap();
            format!("c=biws{to}{}", &m[end..]).into_bytes()
        });
        assert_eq!(verdict, Err(SaslError::NonceMismatch), "{to}");
    }
}

#[test]
fn channel_binding_other_than_biws_is_an_error() {
    for to in ["c=eSws", "c=", "c=cD10bHMtdW5pcXVlLCw="] {
        let client = rfc_client();
        let (verdict, _) = login(client, ScramHash::Sha256, Some(rfc_credential()), |m| {
            replace(m, "c=biws", to)
        });
        assert!(
            matches!(verdict, Err(SaslError::ChannelBinding(_))),
            "{to}: {verdict:?}"
        );
    }
}

#[test]
fn sha512_credential_is_deterministic_and_verifies_client_proof() {
    let derive =
        |pw: &str, salt: &[u8]| StoredCredential::derive(ScramHash::Sha512, pw, salt, 4096);
    let credential = derive("pencil", b"salt512");
    assert_eq!(credential, derive("pencil", b"salt512"));
    assert_ne!(credential.stored_key, derive("pencil", b"other").stored_key);
    assert_ne!(
        credential.stored_key,
        derive("pencil2", b"salt512").stored_key
    );
    let (salt, keys) = credential.decoded().unwrap();
    assert_eq!(
        (
            salt.as_slice(),
            keys.stored_key.len(),
            keys.server_key.len()
        ),
        (&b"salt512"[..], 64, 64)
    );

    let client = ScramClient::new(ScramHash::Sha512, "user", "pencil");
    let (verdict, mut client) = login(client, ScramHash::Sha512, Some(credential), |m| m);
    let Ok(ServerStep::Done { server_final, .. }) = verdict else {
        panic!("expected success, got {verdict:?}");
    };
    assert_eq!(client.step(&server_final), Ok(None));
}

#[test]
fn stored_credential_serializes_with_mechanism_name() {
    let credential = rfc_credential();
    let json = serde_json::to_string(&credential).unwrap();
    assert!(json.contains("\"hash\":\"SCRAM-SHA-256\""), "{json}");
    assert!(
        json.contains("\"salt\":\"W22ZaJ0SNY7soEsUEjb6gQ==\""),
        "{json}"
    );
    let back: StoredCredential = serde_json::from_str(&json).unwrap();
    assert!(back == credential);
    let shown = format!("{credential:?}");
    assert!(!shown.contains(&credential.stored_key) && !shown.contains(&credential.server_key));
}

#[test]
fn bad_stored_credential_is_an_error() {
    let breakages: [fn(&mut StoredCredential); 4] = [
        |c| c.stored_key = "AAAA".into(),
        |c| c.server_key = "not base64!".into(),
        |c| c.salt = String::new(),
        |c| c.iterations = 1000,
    ];
    for breakage in breakages {
        let mut credential = rfc_credential();
        breakage(&mut credential);
        let mut server = ScramServer::new(ScramHash::Sha256);
        let verdict = server.step(CLIENT_FIRST, |_| Some(credential));
        assert!(
            matches!(verdict, Err(SaslError::BadCredential(_))),
            "{verdict:?}"
        );
    }
}

#[test]
fn username_is_escaped_and_unescaped() {
    let credential = StoredCredential::derive(ScramHash::Sha256, "pw", b"salt", 4096);
    let mut client = ScramClient::with_nonce(ScramHash::Sha256, "a=b,c", "pw", "nonce");
    assert_eq!(client.first(), b"n,,n=a=3Db=2Cc,r=nonce");
    let mut server = ScramServer::new(ScramHash::Sha256);
    let mut asked = String::new();
    let first = server.step(&client.first(), |u| {
        asked = u.to_string();
        Some(credential)
    });
    assert_eq!(asked, "a=b,c");
    let Ok(ServerStep::Continue(server_first)) = first else {
        panic!("{first:?}")
    };
    let client_final = client.step(&server_first).unwrap().unwrap();
    let done = server.step(&client_final, |_| None).unwrap();
    assert!(matches!(done, ServerStep::Done { username, .. } if username == "a=b,c"));
    assert_eq!(unescape_username("a=3D=2C=3Db"), Ok("a=,=b".into()));
    assert!(unescape_username("a=3Eb").is_err());
    assert!(unescape_username("a=").is_err());
}

#[test]
fn malformed_server_first_is_an_error_not_a_panic() {
    let ours = "r=rOprNGfwEbeRWgbNEkqOxyz";
    let malformed = [
        format!("{ours},i=4096"),
        format!("{ours},s=QUJD,i=abc"),
        format!("{ours},s=QUJD,i=-1"),
        format!("{ours},s=QUJD"),
        format!("{ours},s=!!not base64!!,i=4096"),
        format!("{ours},s=,i=4096"),
        format!("m=ext,{ours},s=QUJD,i=4096"),
        format!("s=QUJD,{ours},i=4096"),
        "r=rOprNGfwEbeRWgbNEkqO\u{1}x,s=QUJD,i=4096".into(),
        String::new(),
        ",,,".into(),
    ];
    let cases = malformed.iter().map(|m| (m.as_bytes(), None)).chain([
        (&b"\xff\xfe"[..], None),
        (
            b"r=somebodyelse,s=QUJD,i=4096",
            Some(SaslError::NonceMismatch),
        ),
        (
            b"r=rOprNGfwEbeRWgbNEkqO,s=QUJD,i=4096",
            Some(SaslError::NonceMismatch),
        ),
        (
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=QUJD,i=0",
            Some(SaslError::WeakIterations(0)),
        ),
        (
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=QUJD,i=4095",
            Some(SaslError::WeakIterations(4095)),
        ),
        (
            b"r=rOprNGfwEbeRWgbNEkqOxyz,s=QUJD,i=4294967295",
            Some(SaslError::ExcessiveIterations(u32::MAX)),
        ),
        (
            b"e=other-error",
            Some(SaslError::ServerRefused("other-error".into())),
        ),
    ]);
    for (message, expected) in cases {
        let mut client = rfc_client();
        client.first();
        let err = client.step(message).unwrap_err();
        let shown = String::from_utf8_lossy(message);
        match expected {
            None => assert!(matches!(err, SaslError::Malformed(_)), "{shown:?}: {err:?}"),
            Some(expected) => assert_eq!(err, expected, "{shown:?}"),
        }
        assert!(
            client.step(SERVER_FIRST).is_err(),
            "a failed exchange stays failed"
        );
    }
    for garbage in [&b""[..], b"v=", b"v=!!", b"x=1", b"m=1,v=AAAA", b","] {
        let mut client = rfc_client();
        client.first();
        client.step(SERVER_FIRST).unwrap();
        assert!(client.step(garbage).is_err(), "{garbage:?}");
    }
    assert!(matches!(
        rfc_client().step(SERVER_FIRST),
        Err(SaslError::OutOfOrder(_))
    ));
}

#[test]
fn malformed_client_messages_are_errors_not_panics() {
    for garbage in [
        &b""[..],
        b"\xff",
        b"p=tls-unique,,n=user,r=abc",
        b"y,,n=user,r=abc",
        b"n,a=admin,n=user,r=abc",
        b"n,,m=x,n=user,r=abc",
        b"n,,n=,r=abc",
        b"n,,n=user",
        b"n,,n=user,r=",
        b"n,,r=abc,n=user",
        b"n,,n=us=er,r=abc",
        b"n,,n=user,r=a\x01b",
    ] {
        let mut server = ScramServer::new(ScramHash::Sha256);
        let verdict = server.step(garbage, |_| Some(rfc_credential()));
        assert!(
            verdict.is_err(),
            "{:?}: {verdict:?}",
            String::from_utf8_lossy(garbage)
        );
    }
    for garbage in [
        &b""[..],
        b"c=biws",
        b"c=biws,p=AAAA",
        b"c=biws,r=x,p=!!",
        b",p=",
        b"\xff",
    ] {
        let mut server = ScramServer::new(ScramHash::Sha256);
        server
            .server_first(CLIENT_FIRST, |_| Some(rfc_credential()), SERVER_NONCE)
            .unwrap();
        assert!(server.step(garbage, |_| None).is_err(), "{garbage:?}");
    }
    // A proof of the wrong length is a wrong proof, not a panic.
    let mut server = ScramServer::new(ScramHash::Sha256);
    server
        .server_first(CLIENT_FIRST, |_| Some(rfc_credential()), SERVER_NONCE)
        .unwrap();
    let short = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA";
    let verdict = server.step(short, |_| None);
    assert!(matches!(
        verdict,
        Ok(ServerStep::Refused {
            reason: SaslError::InvalidProof,
            ..
        })
    ));
}

#[test]
fn debug_hides_password_and_keys() {
    let mut client = ScramClient::new(ScramHash::Sha512, "bob", "hunter2-secret");
    assert!(!format!("{client:?}").contains("hunter2"));
    client.first();
    let server_first = format!("r={}xyz,s=QUJD,i=4096", client.nonce);
    client.step(server_first.as_bytes()).unwrap();
    let shown = format!("{client:?} {client:#?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("<redacted>"),
        "{shown}"
    );
    assert!(shown.contains("AwaitServerFinal"), "{shown}");
}
