//! The client side: klink logging in to a broker.

use super::*;

enum ClientState {
    Start,
    AwaitServerFirst,
    AwaitServerFinal {
        server_key: Vec<u8>,
        auth_message: String,
    },
    Done,
    Failed,
}

impl ClientState {
    fn name(&self) -> &'static str {
        match self {
            ClientState::Start => "Start",
            ClientState::AwaitServerFirst => "AwaitServerFirst",
            ClientState::AwaitServerFinal { .. } => "AwaitServerFinal",
            ClientState::Done => "Done",
            ClientState::Failed => "Failed",
        }
    }
}

/// Client side of SCRAM: klink logging in to a broker.
pub struct ScramClient {
    hash: ScramHash,
    username: String,
    /// Emptied once the keys are derived: nothing needs it after that.
    password: String,
    pub(super) nonce: String,
    state: ClientState,
}

impl fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramClient")
            .field("hash", &self.hash)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("nonce", &self.nonce)
            .field("state", &self.state.name())
            .finish()
    }
}

impl ScramClient {
    /// A fresh random nonce (24 bytes, base64).
    pub fn new(hash: ScramHash, username: &str, password: &str) -> Self {
        let nonce = random_nonce().unwrap_or_else(|_| fallback_nonce());
        Self::with_nonce(hash, username, password, &nonce)
    }

    /// A fixed nonce, for test vectors.
    pub fn with_nonce(hash: ScramHash, username: &str, password: &str, nonce: &str) -> Self {
        ScramClient {
            hash,
            username: username.to_string(),
            password: password.to_string(),
            nonce: nonce.to_string(),
            state: ClientState::Start,
        }
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", escape_username(&self.username), self.nonce)
    }

    /// client-first; calling it again repeats the message without
    /// restarting the exchange.
    pub fn first(&mut self) -> Vec<u8> {
        if matches!(self.state, ClientState::Start) {
            self.state = ClientState::AwaitServerFirst;
        }
        format!("{GS2_HEADER}{}", self.client_first_bare()).into_bytes()
    }

    /// server-first -> Some(client-final); server-final -> None once the
    /// server's signature verifies. Any error ends the exchange.
    pub fn step(&mut self, server: &[u8]) -> Result<Option<Vec<u8>>, SaslError> {
        match std::mem::replace(&mut self.state, ClientState::Failed) {
            ClientState::Start => {
                self.state = ClientState::Start;
                Err(SaslError::OutOfOrder(
                    "SCRAM answer before client-first was sent",
                ))
            }
            ClientState::AwaitServerFirst => {
                let result = self.client_final(server);
                self.password.clear();
                let (message, next) = result?;
                self.state = next;
                Ok(Some(message))
            }
            ClientState::AwaitServerFinal {
                server_key,
                auth_message,
            } => {
                self.verify_server_final(server, &server_key, &auth_message)?;
                self.state = ClientState::Done;
                Ok(None)
            }
            ClientState::Done | ClientState::Failed => {
                Err(SaslError::OutOfOrder("SCRAM exchange already finished"))
            }
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, ClientState::Done)
    }

    fn client_final(&self, server: &[u8]) -> Result<(Vec<u8>, ClientState), SaslError> {
        let what = "server-first";
        let server_first = text(server, what)?;
        let attrs = attributes(server_first, what)?;
        if let Some(("e", error)) = attrs.first() {
            return Err(SaslError::ServerRefused(error.to_string()));
        }
        let nonce = attribute(&attrs, 0, "r", what)?;
        let salt = decode(attribute(&attrs, 1, "s", what)?, "server-first salt")?;
        let iterations = attribute(&attrs, 2, "i", what)?;
        if !valid_nonce(nonce) {
            return Err(malformed(
                "server-first nonce has characters outside printable ASCII",
            ));
        }
        // The server must add its own part, or the exchange could be a
        // replay of one this client never started.
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err(SaslError::NonceMismatch);
        }
        if salt.is_empty() {
            return Err(malformed("server-first salt is empty"));
        }
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| malformed("server-first iteration count is not a number"))?;
        if iterations < MIN_ITERATIONS {
            return Err(SaslError::WeakIterations(iterations));
        }
        if iterations > MAX_ITERATIONS {
            return Err(SaslError::ExcessiveIterations(iterations));
        }

        let (client_key, server_key) =
            self.hash
                .client_and_server_keys(&self.password, &salt, iterations);
        let stored_key = self.hash.digest(&client_key);
        let without_proof = format!("c={CHANNEL_BINDING},r={nonce}");
        let auth_message = format!(
            "{},{server_first},{without_proof}",
            self.client_first_bare()
        );
        let signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let message = format!("{without_proof},p={}", B64.encode(proof));
        let next = ClientState::AwaitServerFinal {
            server_key,
            auth_message,
        };
        Ok((message.into_bytes(), next))
    }

    fn verify_server_final(
        &self,
        server: &[u8],
        server_key: &[u8],
        auth_message: &str,
    ) -> Result<(), SaslError> {
        let what = "server-final";
        let attrs = attributes(text(server, what)?, what)?;
        match attrs.first() {
            Some(("e", error)) => Err(SaslError::ServerRefused(error.to_string())),
            Some(("v", signature)) => {
                let signature = decode(signature, "server-final signature")?;
                if self
                    .hash
                    .verify_hmac(server_key, auth_message.as_bytes(), &signature)
                {
                    Ok(())
                } else {
                    Err(SaslError::BadServerSignature)
                }
            }
            _ => Err(malformed("server-final is neither v= nor e=")),
        }
    }
}
