//! The provider side of the connect flow and of disconnecting: the authorization URL a
//! connect link continues to, the code exchange at the callback (with the ID token that
//! names the provider account), the revocation of a replaced account's grant, and RFC 7009
//! revocation.

use super::endpoints::Endpoints;
use super::{client, Error, OAuthService};
use crate::auth::subject::{Expect, Keys};
use crate::model::providers;
use crate::model::{ConnectionSpec, Scope};
use crate::secret::Secret;
use crate::vault::{AccountChange, FinishedSession, StageStart};

impl OAuthService {
    /// The provider URL a connect link continues to (state, PKCE S256, and an OIDC nonce
    /// when `openid` is asked for).
    pub async fn authorize_url(&self, s: &StageStart) -> Result<String, Error> {
        let ep = self.endpoints(&s.spec).await?;
        let o = s.spec.oauth2.as_ref().ok_or_else(|| Error::NotOAuth(s.connection.clone()))?;
        let provider = s.spec.provider.as_deref().and_then(providers::find);
        let mut url = url::Url::parse(&ep.authorization).map_err(|_| Error::BadAuthorizationEndpoint)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &o.client_id)
                .append_pair("redirect_uri", &self.redirect_uri())
                .append_pair("state", s.state.expose());
            if !o.scopes.is_empty() {
                q.append_pair("scope", &o.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(ep.scope_separator));
            }
            if o.scopes.iter().any(|s| s.as_str() == "openid") {
                q.append_pair("nonce", s.nonce.expose());
            }
            if o.pkce {
                q.append_pair("code_challenge", &s.challenge).append_pair("code_challenge_method", "S256");
            }
            for (k, v) in provider.map(|p| p.extra_authorize_params).unwrap_or_default() {
                if !o.extra_authorize_params.contains_key(*k) {
                    q.append_pair(k, v);
                }
            }
            for (k, v) in &o.extra_authorize_params {
                q.append_pair(k, v);
            }
        }
        Ok(url.into())
    }

    /// Exchanges the code of a finished connect session and stores the credential. When it
    /// replaces a credential of another provider account, the old grant is revoked — after
    /// the new one is committed, and never when the account is the same (many providers end
    /// the whole grant on revocation) or unknown.
    pub async fn complete_connect(&self, s: &FinishedSession, code: &str, iss: Option<&str>) -> Result<AccountChange, Error> {
        let ep = self.endpoints(&s.spec).await?;
        check_iss(&ep, iss)?;
        let o = s.spec.oauth2.as_ref().ok_or_else(|| Error::NotOAuth(s.connection.clone()))?;
        let id = s.connection.clone();
        let secret = self.run_blocking(move |v| v.client_secret(&id)).await?;
        let verifier = o.pkce.then_some(&s.verifier);
        let tokens = client::exchange_code(&self.http, &ep, &o.client_id, secret.as_ref(), code, verifier, &self.redirect_uri()).await?;
        let account = self.provider_account(&ep, &o.client_id, s, tokens.id_token.as_ref()).await?;
        let (conn, owner, requester, requested) = (s.connection.clone(), s.owner.clone(), s.requester.clone(), o.scopes.clone());
        let replacement = self
            .run_blocking(move |v| {
                let account = account.as_ref().map(|(i, s)| (i.as_str(), s.as_str()));
                v.store_connected(&requester, &conn, &owner, tokens, account, &requested)
            })
            .await?;
        self.wake_refresher();
        if let Some(old) = replacement.previous_refresh {
            let outcome = match self.revoke(&s.spec, &old).await {
                Ok(()) => "revoked".to_owned(),
                Err(e) => format!("not revoked: {e}"),
            };
            let (conn, owner) = (s.connection.clone(), s.owner.clone());
            self.run_blocking(move |v| v.audit_previous_revocation(&conn, &owner, &outcome)).await?;
        }
        Ok(replacement.change)
    }

    /// The provider account of connected tokens: (iss, sub) of their ID token, verified
    /// (signature, `iss`, `aud` = our client id, this session's nonce). No ID token, or no
    /// way to verify one, leaves the account unknown; an ID token that fails is refused.
    async fn provider_account(
        &self,
        ep: &Endpoints,
        client_id: &str,
        s: &FinishedSession,
        id_token: Option<&Secret>,
    ) -> Result<Option<(String, String)>, Error> {
        let Some(token) = id_token else { return Ok(None) };
        let (Some(issuer), Some(jwks)) = (&ep.issuer, &ep.jwks_uri) else {
            tracing::info!(connection = %s.connection, "an ID token came back but the provider's keys are unknown; the account stays unknown");
            return Ok(None);
        };
        let expect = Expect { issuer, keys: Keys::Uri(jwks), audience: client_id, tenant_claim: None, roles_claim: None };
        let subject =
            self.jwks.verify(&expect, token.expose(), self.vault.clock().now()).await.map_err(|e| Error::IdToken(e.to_string()))?;
        // A nonce was sent only when `openid` was asked for; an ID token the provider adds
        // unasked came straight from its token endpoint in exchange for our code.
        let nonce_sent = s.spec.oauth2.as_ref().is_some_and(|o| o.scopes.iter().any(|sc| sc.as_str() == "openid"));
        if nonce_sent && !s.nonce_matches(subject.nonce.as_deref()) {
            return Err(Error::IdToken("the ID token's nonce is not this session's".into()));
        }
        Ok(Some((issuer.clone(), subject.sub)))
    }

    /// Revokes a refresh token at the provider (RFC 7009), if it has an endpoint.
    pub async fn revoke(&self, spec: &ConnectionSpec, token: &Secret) -> Result<(), Error> {
        let ep = self.endpoints(spec).await?;
        let o = spec.oauth2.as_ref().ok_or_else(|| Error::NotOAuth(spec.id.clone()))?;
        let id = spec.id.clone();
        let secret = self.run_blocking(move |v| v.client_secret(&id)).await?;
        Ok(client::revoke(&self.http, &ep, &o.client_id, secret.as_ref(), token).await?)
    }

    /// The scopes a connection asks for when connecting.
    pub fn requested_scopes(spec: &ConnectionSpec) -> Vec<Scope> {
        spec.oauth2.as_ref().map(|o| o.scopes.clone()).unwrap_or_default()
    }
}

/// RFC 9207: an authorization response's `iss` must name the expected issuer, and must be
/// present when the issuer's metadata promises it (a mix-up attack removes it).
pub(super) fn check_iss(ep: &Endpoints, iss: Option<&str>) -> Result<(), Error> {
    match (&ep.issuer, iss) {
        (Some(expected), Some(got)) if expected.trim_end_matches('/') != got.trim_end_matches('/') => Err(Error::IssuerMismatch),
        (_, None) if ep.iss_required => Err(Error::IssuerMissing),
        _ => Ok(()),
    }
}
