//! latchkey's agent tokens: compact JWS, EdDSA (Ed25519) only, `kid` required.
//!
//! Verification accepts exactly one algorithm, pinned to our own keys: `none`, HMAC and
//! anything else is refused before any cryptography, so a token signed with HS256
//! using our public key as the secret cannot pass. Verified tokens are cached by the
//! SHA-256 of the token until they expire, so the common path does no signature work;
//! whether the agent is still enabled is checked by the caller on every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::crypto::sha256;
use crate::crypto::{b64url, b64url_decode};
use crate::policy::Principal;

/// Clock skew tolerated on `exp` / `nbf`, seconds.
pub const LEEWAY: i64 = 10;
/// Agent tokens live at most this long.
pub const MAX_TOKEN_TTL: i64 = 15 * 60;
const CACHE_LIMIT: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    pub sub: String,
}

/// Claims of a latchkey agent token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub client_id: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Act>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The agent's token epoch when the token was issued: rotating the agent's secret or
    /// disabling it moves the agent past it. (Tokens from before epochs existed carry 0.)
    #[serde(default)]
    pub epoch: i64,
}

impl AgentClaims {
    /// Who the token speaks for: the exchanged user (if any) and the agent.
    pub fn principal(&self) -> Principal {
        Principal {
            agent_id: self.client_id.clone(),
            user: self.act.as_ref().map(|_| self.sub.clone()),
            tenant: self.tenant.clone(),
            roles: self.roles.clone(),
            epoch: self.epoch,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not accepted")]
    Algorithm,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("wrong issuer or audience")]
    IssuerOrAudience,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
}

/// One Ed25519 signing key with its `kid`.
pub struct KeyPair {
    pub kid: String,
    signing: SigningKey,
    verifying: VerifyingKey,
}

impl KeyPair {
    pub fn from_seed(kid: String, seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let verifying = signing.verifying_key();
        KeyPair { kid, signing, verifying }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.verifying.to_bytes()
    }

    fn jwk(&self) -> serde_json::Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(&self.public_key()), "kid": self.kid, "alg": "EdDSA", "use": "sig"})
    }
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("kid", &self.kid).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

fn check_lifetime(nbf: i64, exp: i64, now: i64) -> Result<(), TokenError> {
    if exp.saturating_add(LEEWAY) <= now {
        return Err(TokenError::Expired);
    }
    if nbf.saturating_sub(LEEWAY) > now {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// Issues and verifies agent tokens.
pub struct TokenService {
    public_url: String,
    /// The first key signs; all verify.
    keys: RwLock<Vec<Arc<KeyPair>>>,
    cache: Mutex<HashMap<[u8; 32], Arc<Verified>>>,
}

/// What a verified token grants, as the verified-token cache keeps it: who it speaks for and
/// when it is valid. Not the whole claims (issuer, audience and token id were checked and are
/// not needed again): at the cache's cap of 100,000 tokens this is about half the memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub principal: Principal,
    pub nbf: i64,
    pub exp: i64,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService").field("public_url", &self.public_url).finish_non_exhaustive()
    }
}

impl TokenService {
    pub fn new(public_url: String, keys: Vec<KeyPair>) -> Self {
        TokenService { public_url, keys: RwLock::new(keys.into_iter().map(Arc::new).collect()), cache: Mutex::new(HashMap::new()) }
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// Signs `claims` with the active key.
    pub fn sign(&self, claims: &AgentClaims) -> Option<String> {
        let key = self.keys.read().unwrap_or_else(|p| p.into_inner()).first().cloned()?;
        let header = json!({"alg": "EdDSA", "typ": "JWT", "kid": key.kid});
        let mut out = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(serde_json::to_string(claims).ok()?.as_bytes()));
        let sig = key.signing.sign(out.as_bytes());
        out.push('.');
        out.push_str(&b64url(&sig.to_bytes()));
        Some(out)
    }

    /// Verifies a token at time `now` (unix seconds); a token verified before is answered
    /// from the cache (its signature is not checked again, its lifetime is).
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<Verified>, TokenError> {
        let digest = sha256(token.as_bytes());
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&digest).cloned();
        let verified = match cached {
            Some(v) => v,
            None => {
                let c = self.verify_uncached(token)?;
                let v = Arc::new(Verified { principal: c.principal(), nbf: c.nbf, exp: c.exp });
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= CACHE_LIMIT {
                    cache.retain(|_, v| v.exp.saturating_add(LEEWAY) > now);
                    if cache.len() >= CACHE_LIMIT {
                        cache.clear();
                    }
                }
                cache.insert(digest, v.clone());
                v
            }
        };
        check_lifetime(verified.nbf, verified.exp, now)?;
        Ok(verified)
    }

    /// Verifies a token at time `now` without the cache, returning all its claims.
    pub fn verify_claims(&self, token: &str, now: i64) -> Result<AgentClaims, TokenError> {
        let claims = self.verify_uncached(token)?;
        check_lifetime(claims.nbf, claims.exp, now)?;
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str) -> Result<AgentClaims, TokenError> {
        if token.len() > 8 * 1024 {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let header: Header = b64url_decode(h).and_then(|b| serde_json::from_slice(&b).ok()).ok_or(TokenError::Malformed)?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key =
            self.keys.read().unwrap_or_else(|p| p.into_inner()).iter().find(|k| k.kid == kid).cloned().ok_or(TokenError::UnknownKey)?;
        let sig_bytes: [u8; 64] = b64url_decode(s).and_then(|b| b.try_into().ok()).ok_or(TokenError::Malformed)?;
        let signed = &token[..h.len() + 1 + p.len()];
        key.verifying.verify(signed.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig_bytes)).map_err(|_| TokenError::Signature)?;
        // `verify` on dalek rejects non-canonical S; `verify_strict` also weak keys,
        // which cannot be ours.
        let claims: AgentClaims = b64url_decode(p).and_then(|b| serde_json::from_slice(&b).ok()).ok_or(TokenError::Malformed)?;
        if claims.iss != self.public_url || claims.aud != self.public_url {
            return Err(TokenError::IssuerOrAudience);
        }
        Ok(claims)
    }

    /// The public keys, as a JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<_> = self.keys.read().unwrap_or_else(|p| p.into_inner()).iter().map(|k| k.jwk()).collect();
        json!({ "keys": keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> TokenService {
        TokenService::new("http://vault.test".into(), vec![KeyPair::from_seed("k1".into(), &[7u8; 32])])
    }

    fn claims(exp: i64) -> AgentClaims {
        AgentClaims {
            iss: "http://vault.test".into(),
            aud: "http://vault.test".into(),
            sub: "agent-1".into(),
            client_id: "agent-1".into(),
            iat: 1000,
            nbf: 1000,
            exp,
            jti: "j".into(),
            act: None,
            tenant: None,
            roles: vec![],
            epoch: 0,
        }
    }

    fn tamper_payload(token: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
        let parts: Vec<&str> = token.split('.').collect();
        let mut v: serde_json::Value = serde_json::from_slice(&b64url_decode(parts[1]).unwrap()).unwrap();
        f(&mut v);
        format!("{}.{}.{}", parts[0], b64url(v.to_string().as_bytes()), parts[2])
    }

    #[test]
    fn sign_verify_and_expiry() {
        let s = service();
        let t = s.sign(&claims(2000)).unwrap();
        assert_eq!(s.verify(&t, 1500).unwrap().principal.agent_id, "agent-1");
        assert_eq!(s.verify(&t, 1500).unwrap().principal.agent_id, "agent-1", "cached path");
        assert_eq!(s.verify_claims(&t, 1500).unwrap().sub, "agent-1");
        assert_eq!(s.verify_claims(&t, 2000 + LEEWAY).unwrap_err(), TokenError::Expired);
        assert_eq!(s.verify(&t, 2000 + LEEWAY).unwrap_err(), TokenError::Expired);
        assert_eq!(s.verify(&t, 1000 - LEEWAY - 1).unwrap_err(), TokenError::NotYetValid);
    }

    /// Replayed through the `agent_token` fuzz target: extreme `exp` / `nbf` overflowed the
    /// leeway arithmetic (a panic with overflow checks).
    #[test]
    fn extreme_times_do_not_overflow() {
        let s = service();
        let mut c = claims(i64::MAX);
        c.nbf = i64::MIN;
        let t = s.sign(&c).unwrap();
        assert_eq!(s.verify(&t, 1500).unwrap().exp, i64::MAX);
    }

    #[test]
    fn forgeries_are_refused() {
        let s = service();
        let t = s.sign(&claims(2000)).unwrap();
        let tampered = tamper_payload(&t, |v| v["sub"] = "someone-else".into());
        assert_eq!(s.verify(&tampered, 1500).unwrap_err(), TokenError::Signature);
        let parts: Vec<&str> = t.split('.').collect();
        let none = format!("{}.{}.", b64url(br#"{"alg":"none","kid":"k1"}"#), parts[1]);
        assert_eq!(s.verify(&none, 1500).unwrap_err(), TokenError::Algorithm);
        let hs = format!("{}.{}.{}", b64url(br#"{"alg":"HS256","kid":"k1"}"#), parts[1], parts[2]);
        assert_eq!(s.verify(&hs, 1500).unwrap_err(), TokenError::Algorithm);
        let other_kid = format!("{}.{}.{}", b64url(br#"{"alg":"EdDSA","kid":"k2"}"#), parts[1], parts[2]);
        assert_eq!(s.verify(&other_kid, 1500).unwrap_err(), TokenError::UnknownKey);
        let other_key = TokenService::new("http://vault.test".into(), vec![KeyPair::from_seed("k1".into(), &[8u8; 32])]);
        assert_eq!(other_key.verify(&t, 1500).unwrap_err(), TokenError::Signature);
        let mut wrong_aud = claims(2000);
        wrong_aud.aud = "http://elsewhere".into();
        assert_eq!(s.verify(&s.sign(&wrong_aud).unwrap(), 1500).unwrap_err(), TokenError::IssuerOrAudience);
        assert_eq!(s.verify("a.b", 1500).unwrap_err(), TokenError::Malformed);
    }

    #[test]
    fn principal_distinguishes_exchanged_tokens() {
        let mut c = claims(2000);
        assert_eq!(c.principal().user, None);
        c.sub = "alice".into();
        c.act = Some(Act { sub: "agent-1".into() });
        assert_eq!(c.principal().user.as_deref(), Some("alice"));
        assert_eq!(c.principal().agent_id, "agent-1");
    }
}
