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

const JWKS_TTL: Duration = Duration::from_secs(3600);
/// Rate limit for fetching one issuer's JWKS.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
const JWKS_MAX_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A trusted issuer (`/v1/admin/issuers`), validated as it is deserialised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "IssuerBody")]
pub struct IssuerConfig {
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwkSet>,
    pub audience: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles_claim: Option<String>,
}

/// An issuer as written, before its checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerBody {
    issuer: String,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default)]
    jwks: Option<serde_json::Value>,
    audience: String,
    #[serde(default)]
    tenant_claim: Option<String>,
    #[serde(default)]
    roles_claim: Option<String>,
}

impl TryFrom<IssuerBody> for IssuerConfig {
    type Error = ValidationError;

    fn try_from(c: IssuerBody) -> Result<Self, ValidationError> {
        let url_ok = |u: &str| {
            url::Url::parse(u).is_ok_and(|u| {
                u.scheme() == "https" || (u.scheme() == "http" && matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")))
            })
        };
        if c.issuer.len() > 512 || !url_ok(&c.issuer) {
            return Err(ValidationError("issuer must be an https URL (http only for localhost)".into()));
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
        Ok(IssuerConfig {
            issuer: c.issuer,
            jwks_uri: c.jwks_uri,
            jwks,
            audience: c.audience,
            tenant_claim: c.tenant_claim,
            roles_claim: c.roles_claim,
        })
    }
}

/// What a verified subject token says about the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub sub: String,
    pub exp: i64,
    pub tenant: Option<String>,
    pub roles: Vec<String>,
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
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
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

struct Cached {
    set: Option<Arc<JwkSet>>,
    fetched: Option<Instant>,
    attempted: Instant,
}

/// Fetches and caches issuers' JWKS documents.
pub struct JwksCache {
    http: reqwest::Client,
    entries: Mutex<HashMap<String, Cached>>,
}

impl JwksCache {
    /// Fails if the HTTP client (with its timeout and no-redirect policy) cannot be built.
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(FETCH_TIMEOUT).redirect(reqwest::redirect::Policy::none()).build()?;
        Ok(JwksCache { http, entries: Mutex::new(HashMap::new()) })
    }

    /// The issuer's key `kid` (or its only key when the token names none).
    async fn key(&self, cfg: &IssuerConfig, kid: Option<&str>) -> Result<Jwk, SubjectError> {
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        if let Some(inline) = &cfg.jwks {
            return find(inline).ok_or(SubjectError::UnknownKey);
        }
        let uri = cfg.jwks_uri.as_deref().ok_or(SubjectError::UnknownKey)?;
        let (cached, may_fetch) = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match entries.get(&cfg.issuer) {
                Some(c) => {
                    let fresh = c.fetched.is_some_and(|f| f.elapsed() < JWKS_TTL);
                    (c.set.clone().filter(|_| fresh), c.attempted.elapsed() >= MIN_REFETCH)
                }
                None => (None, true),
            }
        };
        if let Some(k) = cached.as_deref().and_then(find) {
            return Ok(k);
        }
        if !may_fetch {
            return Err(if cached.is_some() { SubjectError::UnknownKey } else { SubjectError::JwksUnavailable });
        }
        let fetched = self.fetch(uri).await;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry(cfg.issuer.clone()).or_insert(Cached { set: None, fetched: None, attempted: Instant::now() });
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

    /// Verifies a subject token from the issuer described by `cfg` at time `now` (latchkey's
    /// clock, not the library's).
    pub async fn verify(&self, cfg: &IssuerConfig, token: &str, now: i64) -> Result<Subject, SubjectError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| SubjectError::Malformed)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA) {
            return Err(SubjectError::Algorithm);
        }
        let jwk = self.key(cfg, header.kid.as_deref()).await?;
        let alg = pinned_algorithm(&jwk).ok_or(SubjectError::Algorithm)?;
        if alg != header.alg {
            return Err(SubjectError::Algorithm);
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| SubjectError::UnknownKey)?;
        let mut v = Validation::new(alg);
        v.set_issuer(&[&cfg.issuer]);
        v.set_audience(&[&cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        // Times are checked below against latchkey's clock.
        v.validate_exp = false;
        v.validate_nbf = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).map_err(|e| SubjectError::Invalid(e.to_string()))?;
        let claims = data.claims;
        let sub = claims["sub"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| SubjectError::Invalid("missing sub".into()))?.to_owned();
        let exp = claims["exp"].as_i64().ok_or_else(|| SubjectError::Invalid("missing exp".into()))?;
        let leeway = super::tokens::LEEWAY;
        if exp + leeway <= now {
            return Err(SubjectError::Invalid("ExpiredSignature".into()));
        }
        if claims.get("nbf").and_then(|n| n.as_i64()).is_some_and(|nbf| nbf - leeway > now) {
            return Err(SubjectError::Invalid("ImmatureSignature".into()));
        }
        let tenant = cfg.tenant_claim.as_ref().and_then(|c| claims.get(c)).and_then(|v| v.as_str()).map(str::to_owned);
        let roles = match cfg.roles_claim.as_ref().and_then(|c| claims.get(c)) {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect(),
            Some(serde_json::Value::String(s)) => s.split(' ').filter(|r| !r.is_empty()).map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        Ok(Subject { sub, exp, tenant, roles })
    }
}
