//! Owner proof: before a connect link made by an agent continues to the provider, the
//! person signs in at the owner's trusted issuer, with latchkey as an OIDC client there
//! (its own client id, redirect URI, nonce and PKCE, in the browser holding the link's
//! binding cookie). What the issuer's ID token says is then compared with the link's owner.

use super::connect::check_iss;
use super::{client, Error, OAuthService};
use crate::auth::subject::{Expect, IssuerConfig, Keys, Subject};
use crate::vault::{ProofSession, StageStart};

impl OAuthService {
    pub fn proof_redirect_uri(&self) -> String {
        format!("{}/v1/connect/proof", self.public_url)
    }

    /// Where the browser signs in at `issuer` (state, nonce, PKCE S256).
    pub async fn proof_authorize_url(&self, issuer: &IssuerConfig, s: &StageStart) -> Result<String, Error> {
        let client = issuer.owner_proof.as_ref().ok_or(Error::NoProofClient)?;
        let ep = self.issuer_endpoints(&issuer.issuer).await?;
        let mut url = url::Url::parse(&ep.authorization).map_err(|_| Error::BadAuthorizationEndpoint)?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.client_id)
            .append_pair("redirect_uri", &self.proof_redirect_uri())
            .append_pair("scope", "openid")
            .append_pair("state", s.state.expose())
            .append_pair("nonce", s.nonce.expose())
            .append_pair("code_challenge", &s.challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// Exchanges the owner-proof code and verifies the ID token (signature, `iss`, `aud` =
    /// our client id at the issuer, this session's nonce). Returns what it says about the
    /// person, not yet namespaced.
    pub async fn complete_proof(&self, issuer: &IssuerConfig, p: &ProofSession, code: &str, iss: Option<&str>) -> Result<Subject, Error> {
        let client_cfg = issuer.owner_proof.as_ref().ok_or(Error::NoProofClient)?;
        let ep = self.issuer_endpoints(&issuer.issuer).await?;
        check_iss(&ep, iss)?;
        let url = issuer.issuer.clone();
        let secret = self.run_blocking(move |v| v.issuer_proof_secret(&url)).await?;
        let tokens = client::exchange_code(
            &self.http,
            &ep,
            &client_cfg.client_id,
            secret.as_ref(),
            code,
            Some(&p.verifier),
            &self.proof_redirect_uri(),
        )
        .await?;
        let id_token = tokens.id_token.ok_or_else(|| Error::IdToken("the issuer returned no ID token".into()))?;
        let keys = match (&issuer.jwks, &issuer.jwks_uri, &ep.jwks_uri) {
            (Some(set), _, _) => Keys::Inline(set),
            (None, Some(uri), _) | (None, None, Some(uri)) => Keys::Uri(uri),
            (None, None, None) => return Err(Error::IdToken("the issuer's keys are unknown".into())),
        };
        let expect = Expect {
            issuer: &issuer.issuer,
            keys,
            audience: &client_cfg.client_id,
            tenant_claim: issuer.tenant_claim.as_deref(),
            roles_claim: issuer.roles_claim.as_deref(),
        };
        let subject =
            self.jwks.verify(&expect, id_token.expose(), self.vault.clock().now()).await.map_err(|e| Error::IdToken(e.to_string()))?;
        if !p.nonce_matches(subject.nonce.as_deref()) {
            return Err(Error::IdToken("the ID token's nonce is not this session's".into()));
        }
        Ok(subject)
    }
}
