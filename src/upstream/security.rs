//! How klink reaches a cluster that wants TLS, a login, or both: the TLS
//! handshake (rustls) and the SASL exchange (SaslHandshake v1, then
//! SaslAuthenticate v2 until the mechanism is done) run on a fresh
//! connection before any forwarded request, so every upstream connection
//! (sessions', the mirror's, klink's own) is authenticated as klink's
//! configured user.
//!
//! Secrets: the password is read once from the environment or a file and
//! lives in a [`Secret`], whose Debug and Display print `<redacted>`; no
//! error built here quotes it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslAuthenticateResponse,
    SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Error, Kind, Result};
use crate::sasl::{ClientExchange, Mechanism};

/// A password, kept out of every log line, error and status.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// klink's login to one cluster.
#[derive(Clone, Debug)]
pub struct Login {
    pub mechanism: Mechanism,
    pub username: String,
    pub password: Secret,
}

/// TLS to one cluster: whom to trust and, for mTLS, who klink is.
#[derive(Clone)]
pub struct Tls {
    pub connector: tokio_rustls::TlsConnector,
    /// The name the broker's certificate must carry; the host of the
    /// address dialled when unset.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// What a connection to one cluster goes through before it carries
/// requests.
#[derive(Clone, Debug, Default)]
pub struct Security {
    pub tls: Option<Tls>,
    pub login: Option<Login>,
    /// Set once the cluster's login session lifetime has been logged.
    lifetime_logged: std::sync::OnceLock<()>,
}

/// An upstream byte stream, plain or under TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A connection ready for requests, and when its login runs out (the
/// broker's `session_lifetime_ms`, KIP-368): past it the broker closes the
/// connection at the next request, so klink stops using it before then.
pub struct Established {
    pub stream: Stream,
    pub session_lifetime: Option<Duration>,
}

/// SASL answers are a few hundred bytes; a bigger one is not a broker's.
const MAX_HANDSHAKE_ANSWER: u32 = 1 << 20;
/// A login or TLS handshake should not take longer than this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

impl Security {
    pub fn plaintext() -> Arc<Security> {
        Arc::new(Security::default())
    }

    pub fn new(tls: Option<Tls>, login: Option<Login>) -> Security {
        Security {
            tls,
            login,
            lifetime_logged: std::sync::OnceLock::new(),
        }
    }

    /// Logs, once per cluster, that its brokers' logins expire and klink
    /// renews its connections before they do.
    pub fn note_session_lifetime(&self, cluster: &Arc<str>, lifetime: Duration) {
        if self.lifetime_logged.set(()).is_ok() {
            tracing::info!(%cluster, lifetime_s = lifetime.as_secs_f64(),
                "the cluster's logins expire (KIP-368): klink renews each connection at 80% of that");
        }
    }

    pub fn is_plaintext(&self) -> bool {
        self.tls.is_none() && self.login.is_none()
    }

    /// TLS, then the login, on a freshly connected socket.
    pub async fn establish(
        &self,
        cluster: &Arc<str>,
        addr: &str,
        tcp: TcpStream,
    ) -> Result<Established> {
        let work = async {
            let mut stream = match &self.tls {
                None => Stream::Plain(tcp),
                Some(tls) => {
                    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                    let name = tls.server_name.as_deref().unwrap_or(host);
                    let name = ServerName::try_from(name.to_string()).map_err(|e| {
                        Error::upstream(
                            cluster,
                            Kind::Config,
                            format!("TLS server name `{name}`: {e}"),
                        )
                    })?;
                    let tls_stream = tls.connector.connect(name, tcp).await.map_err(|e| {
                        Error::upstream(
                            cluster,
                            Kind::Auth,
                            format!("TLS handshake with {addr}: {e}"),
                        )
                    })?;
                    Stream::Tls(Box::new(tls_stream))
                }
            };
            let session_lifetime = match &self.login {
                None => None,
                Some(login) => match &mut stream {
                    Stream::Plain(s) => log_in(s, login, cluster, addr).await?,
                    Stream::Tls(s) => log_in(&mut **s, login, cluster, addr).await?,
                },
            };
            Ok(Established {
                stream,
                session_lifetime,
            })
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
            .await
            .map_err(|_| {
                Error::upstream(
                    cluster,
                    Kind::Timeout,
                    format!("TLS or SASL handshake with {addr} timed out"),
                )
            })?
    }
}

/// The SASL exchange: SaslHandshake names the mechanism, SaslAuthenticate
/// carries its messages. Returns the session lifetime the broker set.
async fn log_in<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    login: &Login,
    cluster: &Arc<str>,
    addr: &str,
) -> Result<Option<Duration>> {
    let refused = |why: String| {
        Error::upstream(
            cluster,
            Kind::Auth,
            format!(
                "{addr} refused klink's login as `{}` ({}): {why}",
                login.username,
                login.mechanism.name()
            ),
        )
    };
    let mut io = Exchange {
        stream,
        cluster,
        addr,
        correlation_id: 0,
    };
    let handshake: SaslHandshakeResponse = io
        .call(
            SaslHandshakeRequest::default()
                .with_mechanism(StrBytes::from_static_str(login.mechanism.name())),
            1,
        )
        .await?;
    if handshake.error_code != 0 {
        let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(refused(format!(
            "mechanism not enabled (error {}; the broker offers {offered:?})",
            handshake.error_code
        )));
    }
    let mut exchange =
        ClientExchange::start(login.mechanism, &login.username, login.password.expose());
    let mut message = exchange.first();
    loop {
        let answer: SaslAuthenticateResponse = io
            .call(
                SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message)),
                2,
            )
            .await?;
        if answer.error_code != 0 {
            let said = answer.error_message.as_ref().map_or("", |m| m.as_str());
            return Err(refused(format!("error {}: {said}", answer.error_code)));
        }
        let next = exchange
            .step(&answer.auth_bytes)
            .map_err(|e| refused(e.to_string()))?;
        match next {
            Some(more) => message = more,
            None => {
                let lifetime = u64::try_from(answer.session_lifetime_ms).unwrap_or(0);
                return Ok((lifetime > 0).then(|| Duration::from_millis(lifetime)));
            }
        }
    }
}

/// Requests klink sends on a connection before it is split into its
/// reader and writer.
struct Exchange<'a, S> {
    stream: &'a mut S,
    cluster: &'a Arc<str>,
    addr: &'a str,
    correlation_id: i32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Exchange<'_, S> {
    async fn call<R: Request>(&mut self, request: R, version: i16) -> Result<R::Response> {
        let api = ApiKey::try_from(R::KEY)
            .map_err(|_| Error::klink(Kind::Unsupported, format!("api key {}", R::KEY)))?;
        let fail = |what: &str, e: String| {
            Error::upstream(
                self.cluster,
                Kind::Protocol,
                format!("{what} {api:?} with {}: {e}", self.addr),
            )
        };
        self.correlation_id += 1;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("klink")))
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| fail("encoding", e.to_string()))?;
        request
            .encode(&mut buf, version)
            .map_err(|e| fail("encoding", e.to_string()))?;
        let length = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&length.to_be_bytes());
        let io = |e: std::io::Error| {
            Error::upstream(
                self.cluster,
                Kind::Io,
                format!("{api:?} with {}: {e}", self.addr),
            )
        };
        self.stream.write_all(&buf).await.map_err(io)?;
        self.stream.flush().await.map_err(io)?;
        let length = self.stream.read_u32().await.map_err(io)?;
        if length > MAX_HANDSHAKE_ANSWER {
            return Err(fail("reading", format!("an answer of {length} bytes")));
        }
        let mut payload = vec![0u8; length as usize];
        self.stream.read_exact(&mut payload).await.map_err(io)?;
        let mut body = Bytes::from(payload);
        let header = ResponseHeader::decode(&mut body, api.response_header_version(version))
            .map_err(|e| fail("decoding", e.to_string()))?;
        if header.correlation_id != self.correlation_id {
            return Err(fail("reading", "an answer to another request".into()));
        }
        R::Response::decode(&mut body, version).map_err(|e| fail("decoding", e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_never_shows_its_password() {
        let login = Login {
            mechanism: Mechanism::ScramSha512,
            username: "migrator".into(),
            password: Secret::new("hunter2-secret".into()),
        };
        let security = Security::new(None, Some(login));
        let shown = format!("{security:?}");
        assert!(
            shown.contains("migrator") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
