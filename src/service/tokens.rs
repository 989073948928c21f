//! The token endpoint: client authentication, then an agent token from client credentials
//! or bound to a user by RFC 8693 token exchange. Every decision is audited (fail closed).

use std::str::FromStr;
use std::time::Instant;

use crate::audit::Outcome;
use crate::auth::subject::{unverified_issuer, SubjectError};
use crate::auth::tokens::{Act, AgentClaims, MAX_TOKEN_TTL};
use crate::model::{Owner, OwnerKind};
use crate::secret::Secret;
use crate::vault::{new_id, TokenDecision, VaultError};

use super::Services;

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Subject token types accepted for exchange: all of them JWTs.
const JWT_TYPES: [&str; 3] = ["urn:ietf:params:oauth:token-type:jwt", ACCESS_TOKEN_TYPE, "urn:ietf:params:oauth:token-type:id_token"];
const MAX_SUBJECT_TOKEN: usize = 16 * 1024;

/// The grant types latchkey's token endpoint supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantType {
    ClientCredentials,
    TokenExchange,
}

impl GrantType {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "client_credentials",
            GrantType::TokenExchange => TOKEN_EXCHANGE,
        }
    }

    fn audit_action(self) -> &'static str {
        match self {
            GrantType::ClientCredentials => "token.issue",
            GrantType::TokenExchange => "token.exchange",
        }
    }
}

impl FromStr for GrantType {
    type Err = TokenEndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client_credentials" => Ok(GrantType::ClientCredentials),
            TOKEN_EXCHANGE => Ok(GrantType::TokenExchange),
            _ => Err(TokenEndpointError::UnsupportedGrantType),
        }
    }
}

/// A token request as parsed from the form.
#[derive(Debug)]
pub struct TokenRequest {
    /// Where it came from (the client's address, behind trusted proxies).
    pub source: std::net::IpAddr,
    pub client_id: String,
    pub client_secret: Secret,
    pub grant: GrantType,
    /// Token exchange only.
    pub subject_token: Option<Secret>,
    pub subject_token_type: Option<String>,
}

/// An issued agent token.
#[derive(Debug)]
pub struct IssuedToken {
    pub access_token: Secret,
    pub expires_in: i64,
    /// Set for token exchange (RFC 8693 `issued_token_type`).
    pub issued_token_type: Option<&'static str>,
}

/// Why the token endpoint refused; mapped to RFC 6749 §5.2 error codes by the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenEndpointError {
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("grant_type must be client_credentials or token exchange")]
    UnsupportedGrantType,
    #[error("client authentication failed")]
    InvalidClient,
    /// The subject token was refused; the reason is safe to return.
    #[error("{0}")]
    InvalidGrant(String),
    #[error("the audit trail cannot be written; no token is issued")]
    AuditUnavailable,
    /// Too many failed authentications from this address.
    #[error("too many failed client authentications from this address; retry later")]
    TooManyRequests { retry_after: u64 },
    /// The database is busy or unreachable: retry shortly.
    #[error("the vault is temporarily unavailable; retry shortly")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl From<VaultError> for TokenEndpointError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Release(crate::vault::ReleaseError::AuditUnavailable) => TokenEndpointError::AuditUnavailable,
            VaultError::Store(e) if e.is_transient() => {
                tracing::warn!(error = %e, "token endpoint: database busy or unavailable");
                TokenEndpointError::Unavailable
            }
            other => {
                tracing::error!(error = %other, "token endpoint failed");
                TokenEndpointError::Internal
            }
        }
    }
}

impl Services {
    /// Authenticates the client, then issues an agent token. Refusals are audited too.
    pub async fn issue_token(&self, req: TokenRequest) -> Result<IssuedToken, TokenEndpointError> {
        let grant = req.grant;
        let TokenRequest { source, client_id, client_secret, subject_token, subject_token_type, .. } = req;
        // Refused before any work: no hash, no audit write.
        self.failures.check(source, Instant::now()).map_err(|retry_after| TokenEndpointError::TooManyRequests { retry_after })?;
        let audit_id = crate::model::AgentId::parse(&client_id).map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        let agent = match self.blocking(move |v| v.authenticate_agent(&client_id, client_secret.expose())).await {
            Ok(a) => a,
            Err(VaultError::Unauthorized) => {
                self.failures.failed(source, Instant::now());
                if self.failure_audit.record(&audit_id, self.vault.clock().now()) {
                    let reason = Some("client authentication failed".to_owned());
                    self.audit_token(&audit_id, grant, Outcome::Denied, TokenDecision { reason, ..Default::default() }).await?;
                }
                return Err(TokenEndpointError::InvalidClient);
            }
            Err(e) => return Err(e.into()),
        };
        let now = self.vault.clock().now();
        let public = self.tokens.public_url().to_owned();
        let mut claims = AgentClaims {
            iss: public.clone(),
            aud: public,
            sub: agent.id.clone(),
            client_id: agent.id.clone(),
            iat: now,
            nbf: now,
            exp: now + MAX_TOKEN_TTL,
            jti: new_id("").map_err(|_| TokenEndpointError::Internal)?,
            act: None,
            tenant: None,
            roles: vec![],
            epoch: agent.token_epoch,
        };
        if grant == GrantType::TokenExchange {
            if let Err(reason) = self.bind_subject(subject_token, subject_token_type.as_deref(), &mut claims, now).await {
                let decision = TokenDecision { reason: Some(reason.clone()), ..Default::default() };
                self.audit_token(&agent.id, grant, Outcome::Denied, decision).await?;
                return Err(TokenEndpointError::InvalidGrant(reason));
            }
        }
        let decision = TokenDecision {
            user: claims.act.as_ref().map(|_| claims.sub.clone()),
            jti: Some(claims.jti.clone()),
            exp: Some(claims.exp),
            ..Default::default()
        };
        self.audit_token(&agent.id, grant, Outcome::Ok, decision).await?;
        let token = self.tokens.sign(&claims).ok_or(TokenEndpointError::Internal)?;
        Ok(IssuedToken {
            access_token: Secret::new(token),
            expires_in: claims.exp - now,
            issued_token_type: (grant == GrantType::TokenExchange).then_some(ACCESS_TOKEN_TYPE),
        })
    }

    /// Writes the failed authentications counted in minutes that are over, one record per
    /// client and minute. Runs every few seconds in the background.
    pub async fn flush_failure_audit(&self) -> Result<(), VaultError> {
        for (client, minute, repeated) in self.failure_audit.take_finished(self.vault.clock().now()) {
            let reason =
                Some(format!("client authentication failed {repeated} more time(s) in the minute from {}", crate::time::rfc3339(minute)));
            let decision = TokenDecision { grant_type: "any", reason, ..Default::default() };
            self.blocking(move |v| v.audit_token_decision(&client, "token.issue", Outcome::Denied, &decision)).await?;
        }
        Ok(())
    }

    async fn audit_token(
        &self,
        agent: &str,
        grant: GrantType,
        outcome: Outcome,
        decision: TokenDecision,
    ) -> Result<(), TokenEndpointError> {
        let decision = TokenDecision { grant_type: grant.as_str(), ..decision };
        let agent = agent.to_owned();
        self.blocking(move |v| v.audit_token_decision(&agent, grant.audit_action(), outcome, &decision)).await?;
        Ok(())
    }

    /// Verifies the subject token and binds `claims` to its user. `Err` is a reason safe
    /// to return as `invalid_grant`.
    async fn bind_subject(
        &self,
        subject_token: Option<Secret>,
        subject_token_type: Option<&str>,
        claims: &mut AgentClaims,
        now: i64,
    ) -> Result<(), String> {
        let token = subject_token.filter(|t| !t.is_empty() && t.len() <= MAX_SUBJECT_TOKEN).ok_or("subject_token is required")?;
        if !subject_token_type.is_some_and(|t| JWT_TYPES.contains(&t)) {
            return Err("subject_token_type must be a JWT, access_token or id_token type".into());
        }
        let token = token.expose();
        let iss = unverified_issuer(token).map_err(|e| e.to_string())?;
        let cfg = self
            .blocking(move |v| v.issuer(&iss))
            .await
            .map_err(|_| "issuer lookup failed".to_owned())?
            .ok_or_else(|| SubjectError::UnknownIssuer.to_string())?;
        let expect = cfg.expect().ok_or_else(|| SubjectError::UnknownKey.to_string())?;
        let subject = self.jwks.verify(&expect, token, now).await.map_err(|e| e.to_string())?;
        // Subjects are namespaced by their issuer: another issuer's `alice` is someone else.
        let user = cfg.owner_id(&subject.sub);
        Owner::new(OwnerKind::User, &user).map_err(|_| "the subject's sub cannot name a latchkey owner".to_owned())?;
        let tenant = subject.tenant.map(|t| cfg.owner_id(&t)).filter(|t| Owner::new(OwnerKind::Tenant, t).is_ok());
        let exp = claims.exp.min(subject.exp);
        if exp <= now {
            return Err("the subject token has expired".into());
        }
        claims.act = Some(Act { sub: claims.client_id.clone() });
        claims.sub = user;
        claims.exp = exp;
        claims.tenant = tenant;
        claims.roles = subject.roles;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::testing::fixture;

    fn request(client_id: &str, secret: &str, grant: GrantType) -> TokenRequest {
        TokenRequest {
            source: "10.1.1.1".parse().unwrap(),
            client_id: client_id.into(),
            client_secret: Secret::new(secret.into()),
            grant,
            subject_token: None,
            subject_token_type: None,
        }
    }

    #[test]
    fn grant_types_parse_exactly() {
        assert_eq!("client_credentials".parse::<GrantType>(), Ok(GrantType::ClientCredentials));
        assert_eq!(TOKEN_EXCHANGE.parse::<GrantType>(), Ok(GrantType::TokenExchange));
        assert_eq!("password".parse::<GrantType>(), Err(TokenEndpointError::UnsupportedGrantType));
        assert_eq!("Client_Credentials".parse::<GrantType>(), Err(TokenEndpointError::UnsupportedGrantType));
    }

    #[tokio::test]
    async fn client_credentials_issue_a_verifiable_token_and_refusals_are_audited() {
        let f = fixture();
        let s = &f.services;
        let new: crate::vault::NewAgent = serde_json::from_value(serde_json::json!({"id": "svc", "name": "svc"})).unwrap();
        let (_, secret) = s.vault.create_agent(&crate::vault::Actor::System, new).unwrap();
        let issued = s.issue_token(request("svc", secret.expose(), GrantType::ClientCredentials)).await.unwrap();
        let claims = s.tokens.verify_claims(issued.access_token.expose(), f.clock.now()).unwrap();
        assert_eq!((claims.sub.as_str(), claims.client_id.as_str()), ("svc", "svc"));
        assert_eq!(issued.expires_in, MAX_TOKEN_TTL);
        assert_eq!(issued.issued_token_type, None);

        let before = s.vault.audit_tail(1000).unwrap().len();
        for (id, secret) in [("svc", "lks_wrong"), ("nobody", secret.expose()), ("../bad", "x")] {
            assert_eq!(
                s.issue_token(request(id, secret, GrantType::ClientCredentials)).await.unwrap_err(),
                TokenEndpointError::InvalidClient
            );
        }
        let audit = s.vault.audit_tail(1000).unwrap();
        assert_eq!(audit.len(), before + 3);
        assert!(audit[before..].iter().all(|r| r.outcome == "denied" && r.action == "token.issue"));
        assert!(!audit.iter().any(|r| r.detail.contains(secret.expose())), "no secret in the audit");

        // A token exchange without a subject token is refused after authentication.
        let mut exchange = request("svc", secret.expose(), GrantType::TokenExchange);
        assert!(matches!(s.issue_token(exchange).await, Err(TokenEndpointError::InvalidGrant(_))));
        exchange = request("svc", secret.expose(), GrantType::TokenExchange);
        exchange.subject_token = Some(Secret::new("not-a-jwt".into()));
        exchange.subject_token_type = Some("urn:ietf:params:oauth:token-type:jwt".into());
        assert!(matches!(s.issue_token(exchange).await, Err(TokenEndpointError::InvalidGrant(_))));
    }
}
