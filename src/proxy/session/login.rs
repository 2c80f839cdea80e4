//! Clients logging in to klink (`[proxy] sasl`), as to a Kafka broker:
//! SaslHandshake v1 names the mechanism, SaslAuthenticate carries its
//! messages, and until the login succeeds a connection gets ApiVersions
//! answered and nothing forwarded. A refused login is answered with
//! SASL_AUTHENTICATION_FAILED and the connection closed, after a short
//! pause that slows password guessing down (Kafka's
//! `connection.failed.authentication.delay.ms`).
//!
//! The client's identity stays in klink: upstream, klink is its own
//! configured user, so the clusters' ACLs see klink, not the client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{
    ApiKey, RequestHeader as WireHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, StrBytes};

use super::Queued;
use crate::config::ListenerSaslConfig;
use crate::error::{Error, Kind, Result};
use crate::metrics::metrics;
use crate::sasl::scram::{ScramHash, ScramServer, ServerStep};
use crate::sasl::users::Users;
use crate::sasl::{Mechanism, SaslError};
use crate::split::encode_response;
use crate::wire::{Frame, RequestHeader};

/// A connection that has not logged in within this is closed: it holds a
/// socket and memory for someone klink does not know.
pub const LOGIN_WITHIN: Duration = Duration::from_secs(30);
/// The pause before a refusal is answered.
const REFUSAL_DELAY: Duration = Duration::from_millis(100);
/// What a refused client is told; the reason (unknown user, wrong
/// password) goes to klink's log only, as Kafka brokers do.
const REFUSED: &str = "Authentication failed: Invalid username or password";

/// What logins check against: the enabled mechanisms and the users file.
#[derive(Debug)]
pub struct ClientLogins {
    mechanisms: Vec<Mechanism>,
    users: Users,
}

impl ClientLogins {
    pub fn open(config: &ListenerSaslConfig) -> std::result::Result<ClientLogins, String> {
        if config.mechanisms.is_empty() {
            return Err("mechanisms is empty: no client could log in".into());
        }
        let users = Users::open(&config.users_file)?;
        Ok(ClientLogins {
            mechanisms: config.mechanisms.clone(),
            users,
        })
    }

    pub fn offers(&self, mechanism: Mechanism) -> bool {
        self.mechanisms.contains(&mechanism)
    }

    pub fn users(&self) -> usize {
        self.users.count()
    }

    fn names(&self) -> Vec<StrBytes> {
        self.mechanisms
            .iter()
            .map(|m| StrBytes::from_static_str(m.name()))
            .collect()
    }
}

enum State {
    /// No login needed, or the client logged in.
    Open {
        user: Option<String>,
    },
    AwaitHandshake,
    AwaitAuthenticate(Mechanism),
    Scram(Mechanism, ScramServer),
}

/// What the session does with a request, as far as logging in goes.
pub enum Step {
    /// Dispatch it as any other request.
    Pass,
    /// klink's own answer; the login goes on.
    Answer(Bytes),
    /// Answer (if any) and close the connection.
    Close {
        answer: Option<Bytes>,
        reason: String,
    },
}

/// One connection's login.
pub struct Login {
    logins: Option<Arc<ClientLogins>>,
    state: State,
}

impl Login {
    pub fn new(logins: Option<Arc<ClientLogins>>) -> Login {
        let state = match logins {
            Some(_) => State::AwaitHandshake,
            None => State::Open { user: None },
        };
        Login { logins, state }
    }

    /// True until the client has logged in (where a login is needed).
    pub fn pending(&self) -> bool {
        !matches!(self.state, State::Open { .. })
    }

    /// Looks at a request before it is dispatched.
    pub async fn step(&mut self, header: &RequestHeader, payload: &Bytes) -> Result<Step> {
        let api = header.known_api;
        let is_sasl = matches!(api, Some(ApiKey::SaslHandshake | ApiKey::SaslAuthenticate));
        let Some(logins) = self.logins.clone() else {
            return Ok(match api {
                // A client set up for SASL in front of a klink without it:
                // told plainly instead of disconnected without a word.
                Some(ApiKey::SaslHandshake) => Step::Close {
                    answer: Some(handshake_answer(
                        header,
                        ResponseError::UnsupportedSaslMechanism.code(),
                        Vec::new(),
                    )?),
                    reason: "the client asked to log in; klink has no [proxy] sasl".into(),
                },
                _ => Step::Pass,
            });
        };
        match (&mut self.state, api) {
            (State::Open { .. }, _) if !is_sasl => Ok(Step::Pass),
            (_, Some(ApiKey::ApiVersions)) => Ok(Step::Pass),
            (State::AwaitHandshake, Some(ApiKey::SaslHandshake)) => {
                self.handshake(&logins, header, payload)
            }
            (State::AwaitAuthenticate(_) | State::Scram(..), Some(ApiKey::SaslAuthenticate)) => {
                self.authenticate(&logins, header, payload).await
            }
            // Kafka's KIP-368 re-authentication is offered only with a
            // session lifetime, and klink announces none.
            (State::Open { user }, _) => Ok(Step::Close {
                answer: Some(illegal_state(header)?),
                reason: format!(
                    "{api:?} from a client already logged in as {:?}",
                    user.as_deref().unwrap_or_default()
                ),
            }),
            (_, Some(ApiKey::SaslHandshake | ApiKey::SaslAuthenticate)) => Ok(Step::Close {
                answer: Some(illegal_state(header)?),
                reason: format!("{api:?} out of order in a login"),
            }),
            (_, _) => Ok(Step::Close {
                answer: None,
                reason: format!(
                    "api key {} before logging in (klink's [proxy] sasl requires a login)",
                    header.api_key
                ),
            }),
        }
    }

    fn handshake(
        &mut self,
        logins: &ClientLogins,
        header: &RequestHeader,
        payload: &Bytes,
    ) -> Result<Step> {
        // v0 carries the exchange in raw frames without Kafka headers;
        // every client of the last years sends v1 when offered it.
        if header.api_version < 1 {
            return Ok(Step::Close {
                answer: Some(handshake_answer(
                    header,
                    ResponseError::UnsupportedVersion.code(),
                    logins.names(),
                )?),
                reason: "SaslHandshake v0 (klink takes v1, SaslAuthenticate framing)".into(),
            });
        }
        let request: SaslHandshakeRequest = decode(header, payload)?;
        let wanted = request.mechanism.as_str();
        match wanted.parse::<Mechanism>() {
            Ok(mechanism) if logins.offers(mechanism) => {
                self.state = State::AwaitAuthenticate(mechanism);
                Ok(Step::Answer(handshake_answer(header, 0, logins.names())?))
            }
            _ => Ok(Step::Close {
                answer: Some(handshake_answer(
                    header,
                    ResponseError::UnsupportedSaslMechanism.code(),
                    logins.names(),
                )?),
                reason: format!("the client asked for SASL mechanism {wanted:?}, not enabled"),
            }),
        }
    }

    async fn authenticate(
        &mut self,
        logins: &Arc<ClientLogins>,
        header: &RequestHeader,
        payload: &Bytes,
    ) -> Result<Step> {
        let request: SaslAuthenticateRequest = decode(header, payload)?;
        let message = request.auth_bytes;
        let state = std::mem::replace(&mut self.state, State::AwaitHandshake);
        let (mechanism, outcome) = match state {
            State::AwaitAuthenticate(Mechanism::Plain) => {
                (Mechanism::Plain, check_plain(logins.clone(), message).await)
            }
            State::AwaitAuthenticate(mechanism) => {
                let hash = match mechanism {
                    Mechanism::ScramSha512 => ScramHash::Sha512,
                    _ => ScramHash::Sha256,
                };
                let mut server = ScramServer::new(hash);
                let step = server.step(&message, |name| logins.users.credential(name, hash));
                if let Ok(ServerStep::Continue(_)) = &step {
                    self.state = State::Scram(mechanism, server);
                }
                (mechanism, step)
            }
            State::Scram(mechanism, mut server) => (mechanism, server.step(&message, |_| None)),
            State::Open { .. } | State::AwaitHandshake => {
                return Ok(Step::Close {
                    answer: Some(illegal_state(header)?),
                    reason: "SaslAuthenticate before SaslHandshake".into(),
                });
            }
        };
        match outcome {
            Ok(ServerStep::Continue(bytes)) => {
                Ok(Step::Answer(authenticate_answer(header, 0, None, bytes)?))
            }
            Ok(ServerStep::Done {
                username,
                server_final,
            }) => {
                tracing::debug!(user = %username, %mechanism, "client logged in");
                self.state = State::Open {
                    user: Some(username),
                };
                Ok(Step::Answer(authenticate_answer(
                    header,
                    0,
                    None,
                    server_final,
                )?))
            }
            Ok(ServerStep::Refused { reason, .. }) => self.refuse(header, mechanism, reason).await,
            Err(e) => self.refuse(header, mechanism, e).await,
        }
    }

    async fn refuse(
        &mut self,
        header: &RequestHeader,
        mechanism: Mechanism,
        reason: SaslError,
    ) -> Result<Step> {
        self.state = State::AwaitHandshake;
        tokio::time::sleep(REFUSAL_DELAY).await;
        Ok(Step::Close {
            answer: Some(authenticate_answer(
                header,
                ResponseError::SaslAuthenticationFailed.code(),
                Some(REFUSED),
                Vec::new(),
            )?),
            reason: format!("login refused ({mechanism}): {reason}"),
        })
    }
}

/// SaslHandshake or SaslAuthenticate, read from the first two bytes (the
/// API key) without parsing the header.
pub(super) fn is_login_request(frame: &Frame) -> bool {
    let payload = frame.payload();
    let key = payload.get(..2).map(|k| i16::from_be_bytes([k[0], k[1]]));
    key.is_some_and(|k| k == ApiKey::SaslHandshake as i16 || k == ApiKey::SaslAuthenticate as i16)
}

impl super::Session {
    /// A login request, or any request while a login is owed: `None` to
    /// dispatch it as usual, else klink's answer and whether the
    /// connection closes after it.
    pub(super) async fn log_in(
        &self,
        login: &mut Login,
        frame: &Frame,
    ) -> Result<Option<(Queued, bool)>> {
        let payload = frame.payload();
        let header = RequestHeader::parse(&payload)
            .map_err(|e| Error::client(Kind::Protocol, e.to_string()))?;
        let arrived = std::time::Instant::now();
        let was_pending = login.pending();
        let (answer, close) = match login.step(&header, &payload).await? {
            Step::Pass => return Ok(None),
            Step::Answer(answer) => (answer, false),
            Step::Close { answer, reason } => {
                metrics().client_login(false);
                match answer {
                    Some(answer) => {
                        tracing::info!(peer = %self.peer, %reason, "closing client connection after answering its login");
                        (answer, true)
                    }
                    None => return Err(Error::client(Kind::Auth, reason)),
                }
            }
        };
        if was_pending && !login.pending() {
            metrics().client_login(true);
        }
        metrics().client_request(header.api_key, frame.wire_bytes().len());
        Ok(Some((
            Queued::ready(answer, header.api_key, arrived),
            close,
        )))
    }
}

/// PLAIN against the stored SCRAM credentials: PBKDF2 off the async
/// threads, so guessing passwords does not stall other connections.
async fn check_plain(logins: Arc<ClientLogins>, message: Bytes) -> Result<ServerStep, SaslError> {
    let (authzid, user, password) = crate::sasl::plain::parse_plain(&message)?;
    if !authzid.is_empty() && authzid != user {
        return Err(SaslError::Malformed(format!(
            "PLAIN authorization identity {authzid:?} differs from the user {user:?}"
        )));
    }
    let name = user.clone();
    let verified =
        tokio::task::spawn_blocking(move || logins.users.check_password(&name, &password))
            .await
            .map_err(|_| SaslError::Internal("the password check panicked"))?;
    match verified {
        true => Ok(ServerStep::Done {
            username: user,
            server_final: Vec::new(),
        }),
        false => Ok(ServerStep::Refused {
            server_final: Vec::new(),
            reason: SaslError::PlainRefused(user),
        }),
    }
}

fn decode<R: Decodable>(header: &RequestHeader, payload: &Bytes) -> Result<R> {
    let api = header.known_api.unwrap_or(ApiKey::SaslHandshake);
    let version = header.api_version;
    let fail = |e: anyhow::Error| Error::client(Kind::Protocol, format!("{api:?} v{version}: {e}"));
    let mut buf = payload.clone();
    WireHeader::decode(&mut buf, api.request_header_version(version)).map_err(fail)?;
    R::decode(&mut buf, version).map_err(fail)
}

fn handshake_answer(
    header: &RequestHeader,
    error: i16,
    mechanisms: Vec<StrBytes>,
) -> Result<Bytes> {
    // A v0 request is answered at v0 (the same layout as v1).
    let version = header.api_version.clamp(0, 1);
    encode_response(
        ApiKey::SaslHandshake,
        version,
        header.correlation_id,
        &SaslHandshakeResponse::default()
            .with_error_code(error)
            .with_mechanisms(mechanisms),
    )
}

fn authenticate_answer(
    header: &RequestHeader,
    error: i16,
    message: Option<&'static str>,
    bytes: Vec<u8>,
) -> Result<Bytes> {
    encode_response(
        ApiKey::SaslAuthenticate,
        header.api_version.clamp(0, 2),
        header.correlation_id,
        &SaslAuthenticateResponse::default()
            .with_error_code(error)
            .with_error_message(message.map(StrBytes::from_static_str))
            .with_auth_bytes(Bytes::from(bytes)),
    )
}

fn illegal_state(header: &RequestHeader) -> Result<Bytes> {
    let code = ResponseError::IllegalSaslState.code();
    match header.known_api {
        Some(ApiKey::SaslHandshake) => handshake_answer(header, code, Vec::new()),
        _ => authenticate_answer(
            header,
            code,
            Some("klink takes one login per connection"),
            Vec::new(),
        ),
    }
}

#[cfg(test)]
mod tests;
