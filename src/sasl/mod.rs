//! SASL mechanisms as pure state machines: bytes in, bytes out, no I/O.
//!
//! The connection code carries the bytes in SaslHandshake/SaslAuthenticate;
//! keeping the mechanisms free of sockets and async lets them be tested
//! against the RFC test vectors and fed arbitrary garbage.
//!
//! - [`plain`]: PLAIN (RFC 4616), client and the server-side parser.
//! - [`scram`]: SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677),
//!   client and server.
//! - [`users`]: the file of credentials clients log in to klink with.
//!
//! Secrets (passwords, salted passwords, keys) never reach an error message
//! or a `Debug` output: both end up in logs.

pub mod plain;
pub mod scram;
pub mod users;

use std::fmt;
use std::str::FromStr;

use self::scram::ScramHash;

/// A SASL mechanism klink speaks, as Kafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Mechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl Mechanism {
    /// The name in SaslHandshake and in Kafka's configuration.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = SaslError;

    /// Case-sensitive, as brokers compare the names in SaslHandshake.
    fn from_str(s: &str) -> Result<Self, SaslError> {
        match s {
            "PLAIN" => Ok(Mechanism::Plain),
            "SCRAM-SHA-256" => Ok(Mechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(Mechanism::ScramSha512),
            other => Err(SaslError::UnknownMechanism(other.to_string())),
        }
    }
}

/// Why an exchange failed. Messages name the cause for an operator and
/// never carry a password or a key.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SaslError {
    #[error(
        "unknown SASL mechanism {0:?}: klink speaks PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 \
         (names are case-sensitive)"
    )]
    UnknownMechanism(String),
    #[error("malformed SASL message: {0}")]
    Malformed(String),
    #[error("the server refused the SCRAM login with error {0:?}")]
    ServerRefused(String),
    #[error(
        "the server's SCRAM signature does not verify: the server does not hold this user's \
         credential (wrong server, or someone in between)"
    )]
    BadServerSignature,
    #[error("the SCRAM nonce does not match the one this side sent (confused or replaying peer)")]
    NonceMismatch,
    #[error(
        "the server asked for {0} SCRAM iterations; klink refuses fewer than {min} (RFC 7677)",
        min = scram::MIN_ITERATIONS
    )]
    WeakIterations(u32),
    #[error(
        "the server asked for {0} SCRAM iterations, more than klink's limit of {max}",
        max = scram::MAX_ITERATIONS
    )]
    ExcessiveIterations(u32),
    #[error("the client's SCRAM proof does not verify (wrong password)")]
    InvalidProof,
    #[error("wrong PLAIN password, or no user {0:?}")]
    PlainRefused(String),
    #[error("no SCRAM credential for user {0:?}")]
    UnknownUser(String),
    #[error("channel binding is not supported: {0}")]
    ChannelBinding(String),
    #[error("stored SCRAM credential is unusable: {0}")]
    BadCredential(String),
    #[error("SASL exchange out of order: {0}")]
    OutOfOrder(&'static str),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("internal SASL error: {0}")]
    Internal(&'static str),
}

/// A client-side SASL exchange: klink logging in to a broker.
#[derive(Debug)]
pub enum ClientExchange {
    Plain(plain::PlainClient),
    Scram(scram::ScramClient),
}

impl ClientExchange {
    /// SCRAM gets a fresh random nonce.
    pub fn start(mechanism: Mechanism, username: &str, password: &str) -> ClientExchange {
        match mechanism {
            Mechanism::Plain => ClientExchange::Plain(plain::PlainClient::new(username, password)),
            Mechanism::ScramSha256 => ClientExchange::Scram(scram::ScramClient::new(
                ScramHash::Sha256,
                username,
                password,
            )),
            Mechanism::ScramSha512 => ClientExchange::Scram(scram::ScramClient::new(
                ScramHash::Sha512,
                username,
                password,
            )),
        }
    }

    /// The first message to send (PLAIN: the whole auth message; SCRAM:
    /// client-first).
    pub fn first(&mut self) -> Vec<u8> {
        match self {
            ClientExchange::Plain(c) => c.first(),
            ClientExchange::Scram(c) => c.first(),
        }
    }

    /// Feeds the server's answer; returns the next message to send, or None
    /// when the exchange is complete and verified. PLAIN completes on the
    /// (empty) answer to its one message; SCRAM answers server-first with
    /// client-final and completes on a verified server-final.
    pub fn step(&mut self, server: &[u8]) -> Result<Option<Vec<u8>>, SaslError> {
        match self {
            ClientExchange::Plain(c) => c.step(server),
            ClientExchange::Scram(c) => c.step(server),
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            ClientExchange::Plain(c) => c.is_done(),
            ClientExchange::Scram(c) => c.is_done(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_names_round_trip_exactly() {
        for m in [
            Mechanism::Plain,
            Mechanism::ScramSha256,
            Mechanism::ScramSha512,
        ] {
            assert_eq!(m.name().parse::<Mechanism>(), Ok(m));
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.name())
            );
            let back: Mechanism = serde_json::from_str(&format!("\"{}\"", m.name())).unwrap();
            assert_eq!(back, m);
        }
        assert_eq!(
            "scram-sha-256".parse::<Mechanism>(),
            Err(SaslError::UnknownMechanism("scram-sha-256".into()))
        );
        assert!("SCRAM-SHA-1".parse::<Mechanism>().is_err());
        assert!("GSSAPI".parse::<Mechanism>().is_err());
    }

    #[test]
    fn plain_exchange_completes_on_empty_answer() {
        let mut ex = ClientExchange::start(Mechanism::Plain, "user", "pass");
        assert_eq!(ex.first(), b"\0user\0pass");
        assert!(!ex.is_done());
        assert_eq!(ex.step(b""), Ok(None));
        assert!(ex.is_done());
    }

    #[test]
    fn scram_exchange_against_scram_server() {
        use scram::{ScramServer, ServerStep, StoredCredential};
        for (mechanism, hash) in [
            (Mechanism::ScramSha256, ScramHash::Sha256),
            (Mechanism::ScramSha512, ScramHash::Sha512),
        ] {
            let cred = StoredCredential::derive(hash, "pw", b"salt-bytes", 4096);
            let mut ex = ClientExchange::start(mechanism, "alice", "pw");
            let mut server = ScramServer::new(hash);
            let first = ex.first();
            let ServerStep::Continue(server_first) =
                server.step(&first, |_| Some(cred.clone())).unwrap()
            else {
                panic!("expected server-first");
            };
            let client_final = ex.step(&server_first).unwrap().unwrap();
            let ServerStep::Done {
                username,
                server_final,
            } = server.step(&client_final, |_| None).unwrap()
            else {
                panic!("expected success");
            };
            assert_eq!(username, "alice");
            assert_eq!(ex.step(&server_final), Ok(None));
            assert!(ex.is_done());
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        for m in [
            Mechanism::Plain,
            Mechanism::ScramSha256,
            Mechanism::ScramSha512,
        ] {
            let mut ex = ClientExchange::start(m, "bob", "hunter2-secret");
            let before = format!("{ex:?} {ex:#?}");
            assert!(!before.contains("hunter2"), "{before}");
            assert!(before.contains("bob"), "{before}");
            ex.first();
            let after = format!("{ex:?}");
            assert!(!after.contains("hunter2"), "{after}");
        }
    }

    #[test]
    fn errors_read_as_sentences() {
        assert_eq!(
            SaslError::WeakIterations(1).to_string(),
            "the server asked for 1 SCRAM iterations; klink refuses fewer than 4096 (RFC 7677)"
        );
        assert!(
            SaslError::ServerRefused("invalid-proof".into())
                .to_string()
                .contains("\"invalid-proof\"")
        );
    }
}
