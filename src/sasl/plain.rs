//! PLAIN (RFC 4616): one message, authzid NUL authcid NUL passwd.
//!
//! klink sends an empty authzid: Kafka brokers log in as the authcid and
//! refuse an authzid that differs from it.

use std::fmt;

use super::SaslError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Start,
    Sent,
    Done,
    Failed,
}

/// Client side of PLAIN.
pub struct PlainClient {
    username: String,
    password: String,
    state: State,
}

impl fmt::Debug for PlainClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainClient")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("state", &self.state)
            .finish()
    }
}

impl PlainClient {
    pub fn new(username: &str, password: &str) -> Self {
        PlainClient {
            username: username.to_string(),
            password: password.to_string(),
            state: State::Start,
        }
    }

    /// The whole PLAIN message. A NUL inside the username or password
    /// would shift the fields on the server, so such credentials are not
    /// sent at all (an empty message) and `step` reports why.
    pub fn first(&mut self) -> Vec<u8> {
        if self.username.contains('\0') || self.password.contains('\0') {
            self.state = State::Failed;
            return Vec::new();
        }
        if self.state == State::Start {
            self.state = State::Sent;
        }
        let mut message = Vec::with_capacity(2 + self.username.len() + self.password.len());
        message.push(0);
        message.extend_from_slice(self.username.as_bytes());
        message.push(0);
        message.extend_from_slice(self.password.as_bytes());
        message
    }

    /// The broker answers a successful PLAIN login with no bytes; anything
    /// else means the two sides disagree on the mechanism.
    pub fn step(&mut self, server: &[u8]) -> Result<Option<Vec<u8>>, SaslError> {
        match self.state {
            State::Start => Err(SaslError::OutOfOrder(
                "PLAIN answer before the message was sent",
            )),
            State::Done => Err(SaslError::OutOfOrder("PLAIN exchange already complete")),
            State::Failed => Err(SaslError::Malformed(
                "the username or password contains a NUL byte, which PLAIN cannot carry".into(),
            )),
            State::Sent if !server.is_empty() => {
                self.state = State::Failed;
                Err(SaslError::Malformed(format!(
                    "PLAIN expects an empty server answer, got {} bytes",
                    server.len()
                )))
            }
            State::Sent => {
                self.state = State::Done;
                Ok(None)
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

/// Server side of PLAIN: splits a client's message into (authzid, user,
/// password). The errors never quote the message, which holds a password.
pub fn parse_plain(message: &[u8]) -> Result<(String, String, String), SaslError> {
    let mut fields = message.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        let nuls = message.iter().filter(|&&b| b == 0).count();
        return Err(SaslError::Malformed(format!(
            "PLAIN message has {nuls} NUL separators, expected 2"
        )));
    };
    if user.is_empty() {
        return Err(SaslError::Malformed(
            "PLAIN message has an empty username".into(),
        ));
    }
    if password.is_empty() {
        return Err(SaslError::Malformed(
            "PLAIN message has an empty password".into(),
        ));
    }
    let text = |bytes: &[u8], what: &str| {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| SaslError::Malformed(format!("PLAIN {what} is not UTF-8")))
    };
    Ok((
        text(authzid, "authorization identity")?,
        text(user, "username")?,
        text(password, "password")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_is_nul_user_nul_pass() {
        let mut client = PlainClient::new("user", "pass");
        assert_eq!(client.first(), b"\0user\0pass");
        assert!(!client.is_done());
        assert_eq!(client.step(b""), Ok(None));
        assert!(client.is_done());
        assert!(client.step(b"").is_err());
    }

    #[test]
    fn step_before_first_and_unexpected_answer_are_errors() {
        let mut client = PlainClient::new("user", "pass");
        assert!(matches!(client.step(b""), Err(SaslError::OutOfOrder(_))));
        client.first();
        assert!(matches!(client.step(b"x"), Err(SaslError::Malformed(_))));
        assert!(!client.is_done());
    }

    #[test]
    fn nul_in_credentials_is_not_sent() {
        let mut client = PlainClient::new("user", "hunter2\0ss");
        assert!(client.first().is_empty());
        let err = client.step(b"").unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
        assert!(!format!("{err} {client:?}").contains("hunter2"), "{err}");
    }

    #[test]
    fn parse_plain_round_trip() {
        let mut client = PlainClient::new("alice", "s3cret pw");
        let parsed = parse_plain(&client.first()).unwrap();
        assert_eq!(
            parsed,
            (String::new(), "alice".to_string(), "s3cret pw".to_string())
        );
        assert_eq!(
            parse_plain(b"admin\0alice\0pw").unwrap(),
            ("admin".to_string(), "alice".to_string(), "pw".to_string())
        );
    }

    #[test]
    fn parse_plain_rejects_bad_framing() {
        for bad in [
            &b"user\0pass"[..],
            b"\0\0pass",
            b"\0user\0",
            b"\0a\0b\0c",
            b"",
            b"\0user\0\xff\xfe",
            b"\0\xc3\x28\0pass",
        ] {
            let err = parse_plain(bad).unwrap_err();
            assert!(matches!(err, SaslError::Malformed(_)), "{bad:?}: {err:?}");
        }
    }

    #[test]
    fn parse_plain_errors_do_not_quote_the_password() {
        for bad in [&b"\0a\0hunter2\0x"[..], b"\0\0hunter2", b"hunter2"] {
            let err = parse_plain(bad).unwrap_err();
            assert!(!format!("{err} {err:?}").contains("hunter2"));
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let client = PlainClient::new("bob", "hunter2-secret");
        let shown = format!("{client:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
