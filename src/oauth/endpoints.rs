//! Where a connection's provider lives: explicit fields first, then discovery (RFC 8414 /
//! OIDC, cached for an hour), then the catalog entry.

use std::time::{Duration, Instant};

use super::{client, Error, OAuthService};
use crate::model::providers::{self, ResponseShape};
use crate::model::{ConnectionSpec, TokenEndpointAuthMethod};

const DISCOVERY_TTL: Duration = Duration::from_secs(3600);

/// Where and how to reach a provider.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub issuer: Option<String>,
    pub authorization: String,
    pub token: String,
    pub revocation: Option<String>,
    pub auth_method: TokenEndpointAuthMethod,
    pub shape: ResponseShape,
    /// The provider's own signs of a dead grant (catalog providers).
    pub grant_gone: &'static [providers::GrantGone],
    pub scope_separator: &'static str,
    /// The provider's ID-token keys, when known.
    pub jwks_uri: Option<String>,
    /// RFC 9207: the provider's metadata says every authorization response carries `iss`,
    /// so a callback without it is refused.
    pub iss_required: bool,
}

impl OAuthService {
    /// The endpoints of a connection.
    pub async fn endpoints(&self, spec: &ConnectionSpec) -> Result<Endpoints, Error> {
        let o = spec.oauth2.as_ref().ok_or_else(|| Error::NotOAuth(spec.id.clone()))?;
        let provider = spec.provider.as_deref().and_then(providers::find);
        let tenant = o.tenant.as_deref().unwrap_or("common");
        let fill = |u: &str| u.replace("{tenant}", tenant);
        let mut ep = Endpoints {
            issuer: o.issuer.clone(),
            authorization: o.authorization_endpoint.clone().or(provider.map(|p| fill(p.authorization_endpoint))).unwrap_or_default(),
            token: o.token_endpoint.clone().or(provider.map(|p| fill(p.token_endpoint))).unwrap_or_default(),
            revocation: o.revocation_endpoint.clone().or(provider.and_then(|p| p.revocation_endpoint.map(fill))),
            // Explicit, else the catalog's, else RFC 6749's default.
            auth_method: o.token_endpoint_auth_method.or(provider.map(|p| p.token_endpoint_auth_method)).unwrap_or_default(),
            shape: provider.map(|p| p.response_shape).unwrap_or(ResponseShape::Standard),
            grant_gone: provider.map(|p| p.grant_gone).unwrap_or(&[]),
            scope_separator: provider.map(|p| p.scope_separator).unwrap_or(" "),
            jwks_uri: o.jwks_uri.clone(),
            iss_required: false,
        };
        if let Some(url) = &o.discovery_url {
            let found = self.discover(url).await?;
            // Explicit fields win over discovered ones.
            ep.issuer = ep.issuer.or(found.issuer);
            if o.authorization_endpoint.is_none() {
                ep.authorization = found.authorization;
            }
            if o.token_endpoint.is_none() {
                ep.token = found.token;
            }
            if o.revocation_endpoint.is_none() {
                ep.revocation = found.revocation;
            }
            if o.jwks_uri.is_none() {
                ep.jwks_uri = found.jwks_uri;
            }
            ep.iss_required = found.iss_parameter_supported;
        }
        if ep.authorization.is_empty() || ep.token.is_empty() {
            return Err(Error::NoEndpoints(spec.id.clone()));
        }
        Ok(ep)
    }

    /// The OIDC endpoints of a trusted issuer, where latchkey signs people in for owner
    /// proof (OIDC discovery at the issuer's well-known URL).
    pub async fn issuer_endpoints(&self, issuer: &str) -> Result<Endpoints, Error> {
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let found = self.discover(&url).await?;
        Ok(Endpoints {
            issuer: found.issuer,
            authorization: found.authorization,
            token: found.token,
            revocation: found.revocation,
            auth_method: TokenEndpointAuthMethod::ClientSecretBasic,
            shape: ResponseShape::Standard,
            grant_gone: &[],
            scope_separator: " ",
            jwks_uri: found.jwks_uri,
            iss_required: found.iss_parameter_supported,
        })
    }

    /// Discovered metadata for `url`, from the cache while fresh.
    async fn discover(&self, url: &str) -> Result<client::Discovered, Error> {
        let cached = self
            .discovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .filter(|(_, at)| at.elapsed() < DISCOVERY_TTL)
            .map(|(d, _)| d.clone());
        if let Some(d) = cached {
            return Ok(d);
        }
        let found = client::discover(&self.http, url).await.map_err(Error::Discovery)?;
        self.discovery.lock().unwrap_or_else(|p| p.into_inner()).insert(url.to_owned(), (found.clone(), Instant::now()));
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::model::{NewConnection, TokenEndpointAuthMethod};
    use crate::oauth::{ClientOptions, OAuthService};
    use crate::vault::{Actor, Vault};

    #[tokio::test]
    async fn client_authentication_is_explicit_then_the_catalogs_then_basic() {
        let dir = tempfile::tempdir().unwrap();
        let clock = crate::time::Clock::fixed(1_800_000_000);
        let vault = Vault::init(&dir.path().join("d"), &dir.path().join("k"), None, clock, &Actor::System).unwrap().vault;
        let jwks = Arc::new(crate::auth::subject::JwksCache::new().unwrap());
        let oauth = Arc::new(
            OAuthService::new(Arc::new(vault), "http://vault.test".into(), Default::default(), jwks, ClientOptions::default()).unwrap(),
        );
        let method = |body: serde_json::Value| {
            let spec = NewConnection::from_json(body).unwrap().spec;
            let oauth = oauth.clone();
            async move { oauth.endpoints(&spec).await.unwrap().auth_method }
        };
        let google = serde_json::json!({"id": "g", "kind": "oauth2", "provider": "google", "oauth2": {"client_id": "c"}});
        assert_eq!(method(google).await, TokenEndpointAuthMethod::ClientSecretPost, "the catalog's method");
        let explicit = serde_json::json!({"id": "g", "kind": "oauth2", "provider": "google",
            "oauth2": {"client_id": "c", "token_endpoint_auth_method": "client_secret_basic"}});
        assert_eq!(method(explicit).await, TokenEndpointAuthMethod::ClientSecretBasic, "the connection's own");
        let custom = serde_json::json!({"id": "x", "kind": "oauth2",
            "oauth2": {"client_id": "c", "authorization_endpoint": "https://x.example/a", "token_endpoint": "https://x.example/t"}});
        assert_eq!(method(custom).await, TokenEndpointAuthMethod::ClientSecretBasic, "RFC 6749's default");
    }
}
