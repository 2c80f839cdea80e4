//! The server side: checking a login against stored credentials (for
//! clients logging in to klink).

use super::*;

/// What a server stores for a user (RFC 5802 section 3): no password.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredCredential {
    /// Serialized as the mechanism name, "SCRAM-SHA-256" or "SCRAM-SHA-512".
    pub hash: ScramHash,
    /// base64
    pub salt: String,
    pub iterations: u32,
    /// base64
    pub stored_key: String,
    /// base64
    pub server_key: String,
}

/// The keys let anyone impersonate the server (ServerKey) or brute-force
/// the password offline (StoredKey), so Debug leaves them out.
impl fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCredential")
            .field("hash", &self.hash)
            .field("salt", &self.salt)
            .field("iterations", &self.iterations)
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

impl StoredCredential {
    pub fn derive(hash: ScramHash, password: &str, salt: &[u8], iterations: u32) -> Self {
        let (client_key, server_key) = hash.client_and_server_keys(password, salt, iterations);
        StoredCredential {
            hash,
            salt: B64.encode(salt),
            iterations,
            stored_key: B64.encode(hash.digest(&client_key)),
            server_key: B64.encode(server_key),
        }
    }

    /// Whether `password` is the one this credential was made from: how a
    /// PLAIN login is checked against a credential stored for SCRAM. Costs
    /// the credential's iterations of PBKDF2 (milliseconds): call it off
    /// the async threads. A credential that does not decode verifies
    /// nothing.
    pub fn verifies_password(&self, password: &str) -> bool {
        let Ok((salt, keys)) = self.decoded() else {
            return false;
        };
        let (client_key, _) = self
            .hash
            .client_and_server_keys(password, &salt, self.iterations);
        constant_time_eq(&self.hash.digest(&client_key), &keys.stored_key)
    }

    /// Whether the salt, keys and iteration count are well formed.
    pub fn is_usable(&self) -> bool {
        self.decoded().is_ok()
    }

    /// A fresh credential for `password`: a random 24-byte salt.
    pub fn generate(
        hash: ScramHash,
        password: &str,
        iterations: u32,
    ) -> Result<StoredCredential, SaslError> {
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(SaslError::BadCredential(format!(
                "{iterations} iterations, outside {MIN_ITERATIONS}..={MAX_ITERATIONS}"
            )));
        }
        let mut salt = [0u8; 24];
        getrandom::fill(&mut salt).map_err(|e| SaslError::Random(e.to_string()))?;
        Ok(StoredCredential::derive(hash, password, &salt, iterations))
    }

    /// The salt and keys, checked: the credential comes from configuration,
    /// not from this module.
    pub(super) fn decoded(&self) -> Result<(Vec<u8>, ServerKeys), SaslError> {
        let bad = |what: &str| SaslError::BadCredential(format!("{what} is not base64"));
        let salt = B64.decode(&self.salt).map_err(|_| bad("salt"))?;
        let stored_key = B64
            .decode(&self.stored_key)
            .map_err(|_| bad("stored_key"))?;
        let server_key = B64
            .decode(&self.server_key)
            .map_err(|_| bad("server_key"))?;
        let len = self.hash.output_len();
        if salt.is_empty() || stored_key.len() != len || server_key.len() != len {
            return Err(SaslError::BadCredential(format!(
                "{} needs a salt and {len}-byte keys",
                self.hash.name()
            )));
        }
        // Clients refuse such counts (as klink's own client does), so the
        // credential could never log anyone in.
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(SaslError::BadCredential(format!(
                "{} iterations, outside {MIN_ITERATIONS}..={MAX_ITERATIONS}",
                self.iterations
            )));
        }
        let keys = ServerKeys {
            stored_key,
            server_key,
        };
        Ok((salt, keys))
    }
}

/// A salt for a user who does not exist: stable per user for the life of
/// the process (a salt changing between attempts would give the absence
/// away), and not computable from outside (a per-process random key).
fn fake_salt(hash: ScramHash, username: &str) -> Result<Vec<u8>, SaslError> {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = match KEY.get() {
        Some(key) => key,
        None => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| SaslError::Random(e.to_string()))?;
            KEY.get_or_init(|| key)
        }
    };
    let mut salt = ScramHash::Sha256.hmac(key, format!("{}\0{username}", hash.name()).as_bytes());
    salt.truncate(FAKE_SALT_BYTES);
    Ok(salt)
}

/// What the server sends next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStep {
    /// server-first
    Continue(Vec<u8>),
    /// The client proved the password; `server_final` is `v=...`.
    Done {
        username: String,
        server_final: Vec<u8>,
    },
    /// The login failed; `server_final` is `e=...` for the client and
    /// `reason` is for klink's log.
    Refused {
        server_final: Vec<u8>,
        reason: SaslError,
    },
}

pub(super) struct ServerKeys {
    pub(super) stored_key: Vec<u8>,
    pub(super) server_key: Vec<u8>,
}

struct Pending {
    username: String,
    nonce: String,
    /// client-first-bare "," server-first: the AuthMessage's start.
    auth_prefix: String,
    /// None for an unknown user.
    keys: Option<ServerKeys>,
}

enum ServerState {
    Start,
    AwaitClientFinal(Pending),
    Finished,
}

/// Server side of SCRAM: checking a client's login.
pub struct ScramServer {
    hash: ScramHash,
    state: ServerState,
}

impl fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (state, username) = match &self.state {
            ServerState::Start => ("Start", None),
            ServerState::AwaitClientFinal(p) => ("AwaitClientFinal", Some(&p.username)),
            ServerState::Finished => ("Finished", None),
        };
        f.debug_struct("ScramServer")
            .field("hash", &self.hash)
            .field("state", &state)
            .field("username", &username)
            .finish()
    }
}

impl ScramServer {
    pub fn new(hash: ScramHash) -> Self {
        ScramServer {
            hash,
            state: ServerState::Start,
        }
    }

    /// Feeds client-first, then client-final. `lookup` finds a user's
    /// credential; it is called once, on client-first, and ignored on
    /// client-final (pass `|_| None` there). An unknown user (None, or a
    /// credential for the other hash) gets a plausible server-first and is
    /// refused with `e=unknown-user` only at the final step, so the first
    /// answer does not reveal who exists. `Err` is a protocol violation
    /// with nothing to send back; any `Err` or `Refused` ends the exchange.
    pub fn step(
        &mut self,
        client: &[u8],
        lookup: impl FnOnce(&str) -> Option<StoredCredential>,
    ) -> Result<ServerStep, SaslError> {
        match std::mem::replace(&mut self.state, ServerState::Finished) {
            ServerState::Start => {
                let server_nonce = random_nonce()?;
                self.server_first(client, lookup, &server_nonce)
            }
            ServerState::AwaitClientFinal(pending) => self.server_final(client, pending),
            ServerState::Finished => Err(SaslError::OutOfOrder("SCRAM exchange already finished")),
        }
    }

    pub(super) fn server_first(
        &mut self,
        client: &[u8],
        lookup: impl FnOnce(&str) -> Option<StoredCredential>,
        server_nonce: &str,
    ) -> Result<ServerStep, SaslError> {
        let what = "client-first";
        let client_first = text(client, what)?;
        let Some(bare) = client_first.strip_prefix(GS2_HEADER) else {
            return Err(
                if client_first.starts_with("p=") || client_first.starts_with("y,") {
                    SaslError::ChannelBinding(
                        "the client's gs2 header announces it; klink takes only n,,".into(),
                    )
                } else {
                    malformed("client-first must start with n,, (no authorization identity)")
                },
            );
        };
        // Extensions after r= are ignored (RFC 5802 allows it). Kafka's
        // tokenauth=true is one: klink then looks the token id up as a
        // user name, which fails as an unknown user.
        let attrs = attributes(bare, what)?;
        let username = unescape_username(attribute(&attrs, 0, "n", what)?)?;
        let client_nonce = attribute(&attrs, 1, "r", what)?;
        if username.is_empty() {
            return Err(malformed("client-first has an empty username"));
        }
        if !valid_nonce(client_nonce) {
            return Err(malformed(
                "client-first nonce is empty or not printable ASCII",
            ));
        }
        let credential = lookup(&username).filter(|c| c.hash == self.hash);
        let (salt, iterations, keys) = match credential {
            Some(c) => {
                let (salt, keys) = c.decoded()?;
                (salt, c.iterations, Some(keys))
            }
            // 4096 is Kafka's default count, so most real users look alike.
            None => (fake_salt(self.hash, &username)?, MIN_ITERATIONS, None),
        };
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
        self.state = ServerState::AwaitClientFinal(Pending {
            username,
            nonce,
            auth_prefix: format!("{bare},{server_first}"),
            keys,
        });
        Ok(ServerStep::Continue(server_first.into_bytes()))
    }

    fn server_final(&self, client: &[u8], pending: Pending) -> Result<ServerStep, SaslError> {
        let what = "client-final";
        let client_final = text(client, what)?;
        let Some((without_proof, proof)) = client_final.rsplit_once(",p=") else {
            return Err(malformed("client-final has no proof (p=)"));
        };
        let attrs = attributes(without_proof, what)?;
        if attribute(&attrs, 0, "c", what)? != CHANNEL_BINDING {
            return Err(SaslError::ChannelBinding(
                "client-final c= is not biws, base64 of n,,".into(),
            ));
        }
        // Equal to what the server sent, which starts with the client's
        // nonce: a proof computed for another exchange is refused here.
        if attribute(&attrs, 1, "r", what)? != pending.nonce {
            return Err(SaslError::NonceMismatch);
        }
        let proof = decode(proof, "client-final proof")?;
        let Some(ServerKeys {
            stored_key,
            server_key,
        }) = pending.keys
        else {
            return Ok(ServerStep::Refused {
                server_final: b"e=unknown-user".to_vec(),
                reason: SaslError::UnknownUser(pending.username),
            });
        };
        let auth_message = format!("{},{without_proof}", pending.auth_prefix);
        let signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if proof.len() != signature.len()
            || !constant_time_eq(&self.hash.digest(&client_key), &stored_key)
        {
            return Ok(ServerStep::Refused {
                server_final: b"e=invalid-proof".to_vec(),
                reason: SaslError::InvalidProof,
            });
        }
        let server_signature = self.hash.hmac(&server_key, auth_message.as_bytes());
        Ok(ServerStep::Done {
            username: pending.username,
            server_final: format!("v={}", B64.encode(server_signature)).into_bytes(),
        })
    }
}
