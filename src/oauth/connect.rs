//! The provider side of the connect flow and of disconnecting: the authorization URL a
//! connect link redirects to, the code exchange at the callback, and RFC 7009 revocation.

use super::{client, Error, OAuthService};
use crate::model::providers;
use crate::model::{ConnectionSpec, Owner};
use crate::secret::Secret;
use crate::vault::{FinishedSession, OpenedSession};

impl OAuthService {
    /// The provider URL a just-opened connect link redirects to (state and PKCE S256).
    pub async fn authorize_url(&self, s: &OpenedSession) -> Result<String, Error> {
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

    /// Exchanges the code of a finished connect session and stores the credential.
    pub async fn complete_connect(&self, s: &FinishedSession, code: &str, iss: Option<&str>) -> Result<(), Error> {
        let ep = self.endpoints(&s.spec).await?;
        // RFC 9207: when we know the issuer and the provider names one, they must match.
        if let (Some(expected), Some(got)) = (&ep.issuer, iss) {
            if expected.trim_end_matches('/') != got.trim_end_matches('/') {
                return Err(Error::IssuerMismatch);
            }
        }
        let o = s.spec.oauth2.as_ref().ok_or_else(|| Error::NotOAuth(s.connection.clone()))?;
        let id = s.connection.clone();
        let secret = self.run_blocking(move |v| v.client_secret(&id)).await?;
        let verifier = o.pkce.then_some(&s.verifier);
        let tokens = client::exchange_code(&self.http, &ep, &o.client_id, secret.as_ref(), code, verifier, &self.redirect_uri()).await?;
        let (conn, owner): (_, Owner) = (s.connection.clone(), s.owner.clone());
        self.run_blocking(move |v| v.store_tokens(&conn, &owner, tokens, None)).await?;
        self.wake_refresher();
        Ok(())
    }

    /// Revokes a refresh token at the provider (RFC 7009), if it has an endpoint.
    pub async fn revoke(&self, spec: &ConnectionSpec, token: &Secret) -> Result<(), Error> {
        let ep = self.endpoints(spec).await?;
        let o = spec.oauth2.as_ref().ok_or_else(|| Error::NotOAuth(spec.id.clone()))?;
        let id = spec.id.clone();
        let secret = self.run_blocking(move |v| v.client_secret(&id)).await?;
        Ok(client::revoke(&self.http, &ep, &o.client_id, secret.as_ref(), token).await?)
    }
}
