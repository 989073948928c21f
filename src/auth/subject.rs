//! Subject tokens for RFC 8693 token exchange: JWTs (access or ID tokens) from
//! operator-configured trusted issuers, verified against the issuer's JWKS.
//!
//! The algorithm is pinned to the key, never taken from the token: RSA keys verify
//! RS256, P-256 keys ES256, Ed25519 keys EdDSA; `none` and HMAC are never accepted.
//! JWKS documents are fetched, cached for an hour, refetched when a token names an
//! unknown `kid`, and refetched at most once per [`MIN_REFETCH`] per issuer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::model::ValidationError;
use crate::secret::Secret;

const JWKS_TTL: Duration = Duration::from_secs(3600);
/// Rate limit for fetching one issuer's JWKS.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
const JWKS_MAX_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A trusted issuer (`/v1/admin/issuers`): whose JWTs agents may exchange, how its
/// subjects map to owners, and (optionally) how latchkey signs people in there to prove
/// who they are before a connect link stores their account.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IssuerConfig {
    pub issuer: String,
    /// Owners from this issuer are `user:<prefix>:<sub>` and `tenant:<prefix>:<tenant>`, so
    /// that subjects of different issuers never meet. Unique across issuers.
    pub subject_prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwkSet>,
    pub audience: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_claim: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
    /// latchkey's own OIDC client at this issuer, for owner proof on connect links.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_proof: Option<OwnerProofClient>,
}

/// latchkey as an OIDC client of a trusted issuer (its secret is held apart, sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnerProofClient {
    pub client_id: String,
    /// Whether a client secret is stored (it is never returned).
    pub client_secret_set: bool,
}

impl IssuerConfig {
    /// The owner id of this issuer's user or tenant `id`.
    pub fn owner_id(&self, id: &str) -> String {
        format!("{}:{id}", self.subject_prefix)
    }

    /// The issuer-side id inside one of this issuer's owner ids; `None` if the owner is
    /// not this issuer's.
    pub fn local_id<'a>(&self, owner_id: &'a str) -> Option<&'a str> {
        owner_id.strip_prefix(self.subject_prefix.as_str())?.strip_prefix(':')
    }
}

/// Where a token's verification keys are.
#[derive(Debug, Clone, Copy)]
pub enum Keys<'a> {
    /// A JWKS document to fetch (and cache).
    Uri(&'a str),
    Inline(&'a JwkSet),
}

/// What verifying a JWT needs: its issuer, keys and audience, and which claims carry the
/// tenant and roles.
#[derive(Debug, Clone, Copy)]
pub struct Expect<'a> {
    pub issuer: &'a str,
    pub keys: Keys<'a>,
    pub audience: &'a str,
    pub tenant_claim: Option<&'a str>,
    pub roles_claim: Option<&'a str>,
}

impl IssuerConfig {
    /// What this issuer's subject tokens must satisfy; `None` if it names no keys.
    pub fn expect(&self) -> Option<Expect<'_>> {
        let keys = match (&self.jwks, &self.jwks_uri) {
            (Some(set), _) => Keys::Inline(set),
            (None, Some(uri)) => Keys::Uri(uri),
            (None, None) => return None,
        };
        Some(Expect {
            issuer: &self.issuer,
            keys,
            audience: &self.audience,
            tenant_claim: self.tenant_claim.as_deref(),
            roles_claim: self.roles_claim.as_deref(),
        })
    }
}

/// The subject prefix an owner id starts with, if it has one.
pub fn owner_prefix(owner_id: &str) -> Option<&str> {
    owner_id.split_once(':').map(|(p, _)| p)
}

/// `POST /v1/admin/issuers`, validated as it is deserialised; the owner-proof client
/// secret is taken out as a [`Secret`].
#[derive(Debug)]
pub struct NewIssuer {
    pub config: IssuerConfig,
    pub proof_client_secret: Option<Secret>,
}

impl<'de> Deserialize<'de> for NewIssuer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let body = IssuerBody::deserialize(d)?;
        NewIssuer::try_from(body).map_err(serde::de::Error::custom)
    }
}

/// An issuer as written, before its checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerBody {
    issuer: String,
    subject_prefix: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    audience: String,
    #[serde(default)]
    tenant_claim: Option<String>,
    #[serde(default)]
    roles_claim: Option<String>,
    #[serde(default)]
    owner_proof: Option<OwnerProofBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnerProofBody {
    client_id: String,
    #[serde(default)]
    client_secret: Option<Secret>,
}

/// `^[a-z0-9][a-z0-9-]{0,31}$`: short, and never containing the `:` that ends it.
pub fn valid_subject_prefix(p: &str) -> bool {
    let b = p.as_bytes();
    (1..=32).contains(&b.len())
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

impl TryFrom<IssuerBody> for NewIssuer {
    type Error = ValidationError;

    fn try_from(c: IssuerBody) -> Result<Self, ValidationError> {
        let url_ok = |u: &str| {
            crate::model::web_url(u).is_ok_and(|u| {
                u.scheme() == "https" || (u.scheme() == "http" && matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")))
            })
        };
        if c.issuer.len() > 512 || !url_ok(&c.issuer) {
            return Err(ValidationError("issuer must be an https URL (http only for localhost)".into()));
        }
        if !valid_subject_prefix(&c.subject_prefix) {
            return Err(ValidationError(
                "subject_prefix must be 1-32 characters from a-z, 0-9 and '-', starting with a letter or digit".into(),
            ));
        }
        if let Some(n) = &c.display_name {
            if n.is_empty() || n.chars().count() > 100 || n.chars().any(char::is_control) {
                return Err(ValidationError("display_name must be 1-100 characters without control characters".into()));
            }
        }
        let jwks = match (&c.jwks_uri, c.jwks) {
            (Some(u), None) if url_ok(u) => None,
            (Some(_), None) => return Err(ValidationError("jwks_uri must be an https URL (http only for localhost)".into())),
            (None, Some(j)) => {
                let set: JwkSet = serde_json::from_value(j).map_err(|_| ValidationError("jwks is not a JWK Set".into()))?;
                if set.keys.is_empty() || set.keys.iter().any(|k| pinned_algorithm(k).is_none()) {
                    return Err(ValidationError("jwks must hold RSA, P-256 or Ed25519 public keys only".into()));
                }
                Some(set)
            }
            _ => return Err(ValidationError("give exactly one of jwks_uri and jwks".into())),
        };
        if c.audience.is_empty() || c.audience.len() > 512 {
            return Err(ValidationError("audience must be 1-512 characters".into()));
        }
        for claim in [&c.tenant_claim, &c.roles_claim].into_iter().flatten() {
            if claim.is_empty() || claim.len() > 128 {
                return Err(ValidationError("claim names must be 1-128 characters".into()));
            }
        }
        let (owner_proof, proof_client_secret) = match c.owner_proof {
            None => (None, None),
            Some(p) => {
                if p.client_id.is_empty() || p.client_id.len() > 512 || !p.client_id.bytes().all(|c| (0x20..=0x7e).contains(&c)) {
                    return Err(ValidationError("owner_proof.client_id must be 1-512 printable ASCII characters".into()));
                }
                if p.client_secret.as_ref().is_some_and(|s| s.is_empty() || s.len() > 4096) {
                    return Err(ValidationError("owner_proof.client_secret must be 1-4096 bytes".into()));
                }
                let set = p.client_secret.is_some();
                (Some(OwnerProofClient { client_id: p.client_id, client_secret_set: set }), p.client_secret)
            }
        };
        Ok(NewIssuer {
            config: IssuerConfig {
                issuer: c.issuer,
                subject_prefix: c.subject_prefix,
                display_name: c.display_name,
                jwks_uri: c.jwks_uri,
                jwks,
                audience: c.audience,
                tenant_claim: c.tenant_claim,
                roles_claim: c.roles_claim,
                owner_proof,
            },
            proof_client_secret,
        })
    }
}

/// What a verified token (a subject token, or an ID token) says about the person. `sub`
/// and `tenant` are the issuer's own ids, not yet namespaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub sub: String,
    pub exp: i64,
    pub tenant: Option<String>,
    pub roles: Vec<String>,
    /// The `nonce` claim of an ID token.
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("the subject token is not a JWT")]
    Malformed,
    #[error("the subject token's issuer is not trusted")]
    UnknownIssuer,
    #[error("the subject token's signing key is not in the issuer's JWKS")]
    UnknownKey,
    #[error("the subject token's algorithm does not match the issuer's key")]
    Algorithm,
    #[error("the subject token is invalid: {0}")]
    Invalid(String),
    #[error("the issuer's JWKS could not be fetched")]
    JwksUnavailable,
}

/// The issuer named by a token, read without verification (to find its configuration).
pub fn unverified_issuer(token: &str) -> Result<String, SubjectError> {
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let payload = token.split('.').nth(1).ok_or(SubjectError::Malformed)?;
    let bytes = crate::crypto::b64url_decode(payload).ok_or(SubjectError::Malformed)?;
    serde_json::from_slice::<Iss>(&bytes).map(|i| i.iss).map_err(|_| SubjectError::Malformed)
}

/// The one algorithm a key may verify.
fn pinned_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        // A public key of any other length panics jsonwebtoken's verifier (found by fuzzing).
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 && ed25519_key_len(&p.x) => Algorithm::EdDSA,
        _ => return None,
    };
    let declared_ok = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(KeyAlgorithm::EdDSA) => alg == Algorithm::EdDSA,
        Some(_) => false,
    };
    declared_ok.then_some(alg)
}

/// Whether a JWK's `x` is an Ed25519 public key: 32 bytes, base64url.
fn ed25519_key_len(x: &str) -> bool {
    crate::crypto::b64url_decode(x).is_some_and(|k| k.len() == 32)
}

/// [`pinned_algorithm`], for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub fn pinned_algorithm_for_fuzzing(jwk: &Jwk) -> Option<Algorithm> {
    pinned_algorithm(jwk)
}

struct Cached {
    set: Option<Arc<JwkSet>>,
    fetched: Option<Instant>,
    attempted: Instant,
}

/// A fetch in progress: held while one caller fetches, waited on by the rest.
type Flight = Arc<tokio::sync::Mutex<()>>;

/// Fetches and caches issuers' JWKS documents, by issuer *and* key location: replacing an
/// issuer's `jwks_uri` never reuses keys fetched from the old one.
pub struct JwksCache {
    http: reqwest::Client,
    entries: Mutex<HashMap<(String, String), Cached>>,
    /// One fetch per issuer and key location at a time: concurrent callers wait for it.
    fetching: Mutex<HashMap<(String, String), Flight>>,
}

impl JwksCache {
    /// Fails if the HTTP client (with its timeout and no-redirect policy) cannot be built.
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(FETCH_TIMEOUT).redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(JwksCache { http, entries: Mutex::new(HashMap::new()), fetching: Mutex::new(HashMap::new()) })
    }

    /// The issuer's key `kid` (or its only key when the token names none).
    async fn key(&self, expect: &Expect<'_>, kid: Option<&str>) -> Result<Jwk, SubjectError> {
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let uri = match expect.keys {
            Keys::Inline(set) => return find(set).ok_or(SubjectError::UnknownKey),
            Keys::Uri(uri) => uri,
        };
        let cache_key = (expect.issuer.to_owned(), uri.to_owned());
        let look = || {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match entries.get(&cache_key) {
                Some(c) => {
                    let fresh = c.fetched.is_some_and(|f| f.elapsed() < JWKS_TTL);
                    (c.set.clone().filter(|_| fresh), c.attempted.elapsed() >= MIN_REFETCH, Some(c.attempted))
                }
                None => (None, true, None),
            }
        };
        let refuse = |cached: Option<Arc<JwkSet>>| if cached.is_some() { SubjectError::UnknownKey } else { SubjectError::JwksUnavailable };
        let (cached, may_fetch, attempted) = look();
        if let Some(k) = cached.as_deref().and_then(find) {
            return Ok(k);
        }
        if !may_fetch {
            return Err(refuse(cached));
        }
        let flight = self.fetching.lock().unwrap_or_else(|p| p.into_inner()).entry(cache_key.clone()).or_default().clone();
        let _fetching = flight.lock().await;
        // Someone else fetched while we waited: their answer is ours.
        let (cached, _, now_attempted) = look();
        if now_attempted != attempted {
            return cached.as_deref().and_then(find).ok_or_else(|| refuse(cached));
        }
        let fetched = self.fetch(uri).await;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry(cache_key).or_insert(Cached { set: None, fetched: None, attempted: Instant::now() });
        entry.attempted = Instant::now();
        match fetched {
            Some(set) => {
                let set = Arc::new(set);
                entry.set = Some(set.clone());
                entry.fetched = Some(Instant::now());
                find(&set).ok_or(SubjectError::UnknownKey)
            }
            None => Err(SubjectError::JwksUnavailable),
        }
    }

    async fn fetch(&self, uri: &str) -> Option<JwkSet> {
        let mut resp = self.http.get(uri).send().await.ok()?;
        if !resp.status().is_success() {
            tracing::warn!(status = resp.status().as_u16(), "JWKS fetch failed");
            return None;
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.ok()? {
            body.extend_from_slice(&chunk);
            if body.len() > JWKS_MAX_BYTES {
                tracing::warn!("JWKS document too large");
                return None;
            }
        }
        serde_json::from_slice(&body).ok()
    }

    /// Forgets every key fetched for `issuer` (it was replaced or deleted).
    pub fn forget(&self, issuer: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).retain(|(i, _), _| i != issuer);
        self.fetching.lock().unwrap_or_else(|p| p.into_inner()).retain(|(i, _), _| i != issuer);
    }

    /// Verifies a JWT as `expect` says, at time `now` (latchkey's clock, not the library's).
    pub async fn verify(&self, expect: &Expect<'_>, token: &str, now: i64) -> Result<Subject, SubjectError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| SubjectError::Malformed)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA) {
            return Err(SubjectError::Algorithm);
        }
        let jwk = self.key(expect, header.kid.as_deref()).await?;
        let alg = pinned_algorithm(&jwk).ok_or(SubjectError::Algorithm)?;
        if alg != header.alg {
            return Err(SubjectError::Algorithm);
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| SubjectError::UnknownKey)?;
        let mut v = Validation::new(alg);
        v.set_issuer(&[expect.issuer]);
        v.set_audience(&[expect.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Times are checked below against latchkey's clock.
        v.validate_exp = false;
        v.validate_nbf = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).map_err(|e| SubjectError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let sub = claims["sub"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| SubjectError::Invalid("missing sub".into()))?.to_owned();
        let exp = claims["exp"].as_i64().ok_or_else(|| SubjectError::Invalid("missing exp".into()))?;
        let leeway = super::tokens::LEEWAY;
        // Saturating: an issuer may sign any number.
        if exp.saturating_add(leeway) <= now {
            return Err(SubjectError::Invalid("ExpiredSignature".into()));
        }
        if claims.get("nbf").and_then(|n| n.as_i64()).is_some_and(|nbf| nbf.saturating_sub(leeway) > now) {
            return Err(SubjectError::Invalid("ImmatureSignature".into()));
        }
        let tenant = expect.tenant_claim.and_then(|c| claims.get(c)).and_then(|v| v.as_str()).map(str::to_owned);
        let roles = match expect.roles_claim.and_then(|c| claims.get(c)) {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect(),
            Some(serde_json::Value::String(s)) => s.split(' ').filter(|r| !r.is_empty()).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let nonce = claims.get("nonce").and_then(|n| n.as_str()).map(str::to_owned);
        Ok(Subject { sub, exp, tenant, roles, nonce })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::b64url;

    /// Found by the `jwks` fuzz target (fuzz/): an Ed25519 key shorter than 32 bytes
    /// panicked jsonwebtoken's verifier (a slice `[..32]`); it is now no key latchkey takes.
    #[tokio::test]
    async fn short_ed25519_keys_are_refused_not_a_panic() {
        let crash = r#"{"keys": [{"kty": "OKP", "crv": "Ed25519","jwalg": "EA", "x": "2ZH96_drE8WLyXp9hg"}]}"#;
        let set: JwkSet = serde_json::from_str(crash).unwrap();
        assert_eq!(pinned_algorithm(&set.keys[0]), None);
        let expect = Expect {
            issuer: "https://issuer.example",
            keys: Keys::Inline(&set),
            audience: "latchkey",
            tenant_claim: None,
            roles_claim: None,
        };
        let token = format!("{}.{}.{}", b64url(br#"{"alg":"EdDSA"}"#), b64url(br#"{"sub":"a"}"#), b64url(&[0u8; 64]));
        assert_eq!(JwksCache::new().unwrap().verify(&expect, &token, 0).await.unwrap_err(), SubjectError::Algorithm);
        let body = serde_json::json!({"issuer": "https://issuer.example", "subject_prefix": "p", "audience": "a", "jwks": set});
        assert!(serde_json::from_value::<NewIssuer>(body).is_err());
        // A key of the right length is still taken.
        let ok: Jwk = serde_json::from_value(serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": b64url(&[9u8; 32])})).unwrap();
        assert_eq!(pinned_algorithm(&ok), Some(Algorithm::EdDSA));
    }

    /// Replayed through the `subject_token` fuzz target: `exp` of `i64::MAX` or `nbf` of
    /// `i64::MIN` in a validly signed token overflowed the leeway arithmetic (a panic with
    /// overflow checks, a wrapped comparison without).
    #[tokio::test]
    async fn extreme_times_in_signed_tokens_do_not_overflow() {
        use ed25519_dalek::{Signer, SigningKey};
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let x = b64url(key.verifying_key().as_bytes());
        let set: JwkSet =
            serde_json::from_value(serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "s1", "x": x}]})).unwrap();
        let expect = Expect {
            issuer: "https://issuer.example",
            keys: Keys::Inline(&set),
            audience: "latchkey",
            tenant_claim: None,
            roles_claim: None,
        };
        let sign = |claims: serde_json::Value| {
            let input = format!("{}.{}", b64url(br#"{"alg":"EdDSA","kid":"s1"}"#), b64url(claims.to_string().as_bytes()));
            format!("{input}.{}", b64url(&key.sign(input.as_bytes()).to_bytes()))
        };
        let base = serde_json::json!({"iss": "https://issuer.example", "aud": "latchkey", "sub": "alice"});
        let cache = JwksCache::new().unwrap();
        let mut forever = base.clone();
        forever["exp"] = i64::MAX.into();
        assert_eq!(cache.verify(&expect, &sign(forever), 1_000).await.unwrap().exp, i64::MAX);
        let mut always = base;
        always["exp"] = 2_000.into();
        always["nbf"] = i64::MIN.into();
        assert!(cache.verify(&expect, &sign(always), 1_000).await.is_ok());
    }
}
