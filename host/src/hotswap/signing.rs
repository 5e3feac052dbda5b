//! Signed deploys: an ed25519 signature over a component's SHA-256, made by
//! `jetplug plugin sign|deploy --key KEY` and carried in the deploy
//! announcement. A host with `host.trusted_keys` runs a deployed version
//! only if one of those keys signed it, so write access to the deploy
//! bucket alone cannot push code to the fleet.
//!
//! Keys are text: `ed25519:BASE64` (public, for `trusted_keys`) and
//! `ed25519-secret:BASE64` (the 32-byte seed, in a 0600 file).

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature as Ed25519Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

const PUBLIC: &str = "ed25519:";
const SECRET: &str = "ed25519-secret:";
/// What is signed: a domain tag and the component's SHA-256 (hex).
const DOMAIN: &[u8] = b"jetplug-plugin-v1\0";

/// A signature as it travels with an announcement (or in a `.sig` file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// The signer's public key, `ed25519:BASE64`.
    pub key: String,
    /// The signature, base64.
    pub signature: String,
    /// The SHA-256 (hex) of the component signed.
    pub hash: String,
}

/// A public key trusted to sign deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey(VerifyingKey);

impl TrustedKey {
    /// Parses `ed25519:BASE64`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let b64 = text
            .trim()
            .strip_prefix(PUBLIC)
            .ok_or_else(|| KeyError::NotPublic(text.to_owned()))?;
        let bytes: [u8; 32] = B64
            .decode(b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError::NotBase64(text.to_owned()))?;
        VerifyingKey::from_bytes(&bytes)
            .map(TrustedKey)
            .map_err(|e| KeyError::NotEd25519 {
                text: text.to_owned(),
                reason: e.to_string(),
            })
    }

    pub fn text(&self) -> String {
        format!("{PUBLIC}{}", B64.encode(self.0.as_bytes()))
    }
}

/// Why a deployed version is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("it is not signed, and this host requires a signature by one of host.trusted_keys")]
    Unsigned,
    #[error("it is signed by {0}, which is not in host.trusted_keys")]
    UntrustedKey(String),
    #[error("its signature does not match the component (forged or damaged)")]
    BadSignature,
}

impl Refusal {
    /// The metric label (`jetplug_plugin_swaps_total{outcome}`).
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Unsigned => "unsigned",
            Refusal::UntrustedKey(_) | Refusal::BadSignature => "bad-signature",
        }
    }
}

/// Checks that one of `trusted` signed the component with SHA-256 `hash`.
pub fn verify(trusted: &[TrustedKey], hash: &str, sig: Option<&Signature>) -> Result<(), Refusal> {
    let sig = sig.ok_or(Refusal::Unsigned)?;
    let key = trusted
        .iter()
        .find(|k| k.text() == sig.key.trim())
        .ok_or_else(|| Refusal::UntrustedKey(sig.key.clone()))?;
    let bytes: [u8; 64] = B64
        .decode(&sig.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(Refusal::BadSignature)?;
    if sig.hash != hash {
        return Err(Refusal::BadSignature);
    }
    key.0
        .verify(&message(hash), &Ed25519Signature::from_bytes(&bytes))
        .map_err(|_| Refusal::BadSignature)
}

fn message(hash: &str) -> Vec<u8> {
    [DOMAIN, hash.as_bytes()].concat()
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("`{0}` is not an `ed25519:BASE64` public key")]
    NotPublic(String),
    #[error("`{0}` is not 32 bytes of base64")]
    NotBase64(String),
    #[error("`{text}` is not an ed25519 public key: {reason}")]
    NotEd25519 { text: String, reason: String },
    #[error("no randomness for a key: {0}")]
    NoRandomness(String),
    #[error("cannot read the key {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a jetplug signing key (`ed25519-secret:BASE64`; make one with `jetplug plugin keygen`)", path.display())]
    NotSecret { path: std::path::PathBuf },
}

/// A new key pair: (secret text for the key file, public text).
pub fn generate() -> Result<(String, String), KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::NoRandomness(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    Ok((
        format!("{SECRET}{}", B64.encode(seed)),
        TrustedKey(key.verifying_key()).text(),
    ))
}

/// A signing key from its file (`ed25519-secret:BASE64`).
pub fn load_key(path: &Path) -> Result<SigningKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    let seed: [u8; 32] = text
        .trim()
        .strip_prefix(SECRET)
        .and_then(|b| B64.decode(b).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::NotSecret {
            path: path.to_owned(),
        })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Signs the component with SHA-256 `hash`.
pub fn sign(key: &SigningKey, hash: &str) -> Signature {
    Signature {
        key: TrustedKey(key.verifying_key()).text(),
        signature: B64.encode(key.sign(&message(hash)).to_bytes()),
        hash: hash.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_by_a_trusted_key_only() -> Result<(), Box<dyn std::error::Error>> {
        let (secret, public) = generate()?;
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("k");
        std::fs::write(&file, &secret)?;
        let key = load_key(&file)?;
        let trusted = vec![TrustedKey::parse(&public)?];
        let sig = sign(&key, "abc");
        assert_eq!(verify(&trusted, "abc", Some(&sig)), Ok(()));
        assert_eq!(
            verify(&trusted, "abd", Some(&sig)),
            Err(Refusal::BadSignature)
        );
        assert_eq!(verify(&trusted, "abc", None), Err(Refusal::Unsigned));
        let (_, other) = generate()?;
        let stranger = vec![TrustedKey::parse(&other)?];
        assert!(matches!(
            verify(&stranger, "abc", Some(&sig)),
            Err(Refusal::UntrustedKey(_))
        ));
        let mut forged = sig.clone();
        forged.signature = B64.encode([7u8; 64]);
        assert_eq!(
            verify(&trusted, "abc", Some(&forged)),
            Err(Refusal::BadSignature)
        );
        assert!(TrustedKey::parse("ed25519:nope").is_err());
        assert!(load_key(&dir.path().join("missing")).is_err());
        Ok(())
    }
}
