//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802 with RFC 7677's hashes),
//! client and server, without channel binding (gs2 header `n,,`).
//!
//! SASLprep (RFC 4013) is skipped: it only changes non-ASCII input, and
//! Kafka's tools create users and passwords in ASCII. A non-ASCII password
//! still works as long as both sides use the same bytes, which they do
//! when the credential was made by klink or by Kafka's own (also
//! unprepped) tools.
//!
//! RFC 5802 section 5's worked example is SCRAM-SHA-1, which klink does not
//! offer; the tests match RFC 7677 section 3's SCRAM-SHA-256 exchange.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};

use super::SaslError;

mod client;
mod server;
#[cfg(test)]
mod tests;

pub use client::ScramClient;
pub use server::{ScramServer, ServerStep, StoredCredential};

/// RFC 7677 section 4: fewer iterations make a stolen StoredKey cheap to
/// brute-force, and a server asking for them is misconfigured or hostile.
pub const MIN_ITERATIONS: u32 = 4096;
/// A hostile server could otherwise make klink burn minutes of CPU per
/// login; Kafka itself caps credentials at 16384.
pub const MAX_ITERATIONS: u32 = 1_000_000;
const GS2_HEADER: &str = "n,,";
/// base64("n,,"): the channel-binding attribute without channel binding.
const CHANNEL_BINDING: &str = "biws";
const NONCE_BYTES: usize = 24;
/// Salt length in the fake server-first for unknown users.
const FAKE_SALT_BYTES: usize = 16;

/// The hash a SCRAM mechanism is built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ScramHash {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl ScramHash {
    pub fn name(self) -> &'static str {
        match self {
            ScramHash::Sha256 => "SCRAM-SHA-256",
            ScramHash::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn output_len(self) -> usize {
        match self {
            ScramHash::Sha256 => 32,
            ScramHash::Sha512 => 64,
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha256 => Sha256::digest(data).to_vec(),
            ScramHash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            ScramHash::Sha256 => mac::<Hmac<Sha256>>(key, data),
            ScramHash::Sha512 => mac::<Hmac<Sha512>>(key, data),
        }
    }

    /// Constant time, through the hmac crate's own comparison.
    fn verify_hmac(self, key: &[u8], data: &[u8], tag: &[u8]) -> bool {
        match self {
            ScramHash::Sha256 => verify_mac::<Hmac<Sha256>>(key, data, tag),
            ScramHash::Sha512 => verify_mac::<Hmac<Sha512>>(key, data, tag),
        }
    }

    /// ClientKey and ServerKey from a password (RFC 5802 section 3).
    fn client_and_server_keys(
        self,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut salted = vec![0u8; self.output_len()];
        match self {
            ScramHash::Sha256 => {
                pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted)
            }
            ScramHash::Sha512 => {
                pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut salted)
            }
        }
        let keys = (
            self.hmac(&salted, b"Client Key"),
            self.hmac(&salted, b"Server Key"),
        );
        salted.fill(0);
        keys
    }
}

/// HMAC takes keys of any length (RFC 2104), so `new_from_slice` cannot
/// fail; were it to, the empty MAC fails every length-checked comparison
/// that follows, closed rather than open.
fn mac<M: Mac + KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    match <M as Mac>::new_from_slice(key) {
        Ok(mut m) => {
            Mac::update(&mut m, data);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn verify_mac<M: Mac + KeyInit>(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    match <M as Mac>::new_from_slice(key) {
        Ok(mut m) => {
            Mac::update(&mut m, data);
            m.verify_slice(tag).is_ok()
        }
        Err(_) => false,
    }
}

/// Lengths are public (the hash's output size); only the contents are
/// compared without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_nonce() -> Result<String, SaslError> {
    let mut buf = [0u8; NONCE_BYTES];
    getrandom::fill(&mut buf).map_err(|e| SaslError::Random(e.to_string()))?;
    Ok(B64.encode(buf))
}

/// Only if the OS random source fails, which it does not where klink runs.
/// SCRAM's security rests on the client nonce being unique per exchange
/// (so no proof or server signature is ever valid twice), which time,
/// process and a counter give; the server's random nonce adds the rest.
fn fallback_nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut input = nanos.to_le_bytes().to_vec();
    input.extend(std::process::id().to_le_bytes());
    input.extend(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let digest = ScramHash::Sha256.digest(&input);
    B64.encode(&digest[..NONCE_BYTES])
}

/// RFC 5802's nonce: printable ASCII without ','.
fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

fn escape_username(name: &str) -> String {
    // '=' first, or the '=' of "=2C" would be escaped again.
    name.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_username(escaped: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix("3D") {
            out.push('=');
            rest = r;
        } else if let Some(r) = after.strip_prefix("2C") {
            out.push(',');
            rest = r;
        } else {
            return Err(malformed("username has '=' not followed by 2C or 3D"));
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn malformed(why: &str) -> SaslError {
    SaslError::Malformed(why.to_string())
}

fn text<'a>(message: &'a [u8], what: &str) -> Result<&'a str, SaslError> {
    std::str::from_utf8(message).map_err(|_| SaslError::Malformed(format!("{what} is not UTF-8")))
}

/// `a=v,b=w` as (name, value) pairs in order; values may contain '='.
/// A leading `m=` (mandatory extension) is refused: RFC 5802 requires
/// failing on one not understood, and klink understands none.
fn attributes<'a>(message: &'a str, what: &str) -> Result<Vec<(&'a str, &'a str)>, SaslError> {
    let attrs = message
        .split(',')
        .map(|part| {
            part.split_once('=')
                .ok_or_else(|| SaslError::Malformed(format!("{what} has an attribute without '='")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if attrs.first().is_some_and(|(name, _)| *name == "m") {
        return Err(SaslError::Malformed(format!(
            "{what} carries a mandatory extension (m=), which klink does not support"
        )));
    }
    Ok(attrs)
}

/// The value of attribute `name`, required at `index` (RFC 5802 fixes the
/// order).
fn attribute<'a>(
    attrs: &[(&str, &'a str)],
    index: usize,
    name: &str,
    what: &str,
) -> Result<&'a str, SaslError> {
    match attrs.get(index) {
        Some((n, value)) if *n == name => Ok(value),
        _ => Err(SaslError::Malformed(format!(
            "{what} lacks {name}= in place {}",
            index + 1
        ))),
    }
}

fn decode(value: &str, what: &str) -> Result<Vec<u8>, SaslError> {
    B64.decode(value)
        .map_err(|_| SaslError::Malformed(format!("{what} is not base64")))
}
