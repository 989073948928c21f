//! The curated provider catalog: real endpoints and the quirks that break naive OAuth
//! clients. A connection naming `"provider": "<name>"` gets these endpoints unless it
//! sets its own.

use serde::Serialize;

use super::TokenEndpointAuthMethod;

/// How a provider's token endpoint shapes its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseShape {
    /// RFC 6749 §5.1 / §5.2.
    Standard,
    /// Slack `oauth.v2.access`: HTTP 200 with `{"ok": false, "error": ...}` on failure;
    /// a user token under `authed_user` when only user scopes were requested.
    Slack,
}

/// A provider's own sign that a refresh grant is gone, beyond the standard codes (every
/// given part must match).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GrantGone {
    /// The HTTP status it comes with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The `error` code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// A body field, and text its value contains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<(&'static str, &'static str)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Provider {
    pub name: &'static str,
    pub display_name: &'static str,
    /// May contain `{tenant}` (Microsoft), filled from the connection's `oauth2.tenant`.
    pub authorization_endpoint: &'static str,
    pub token_endpoint: &'static str,
    /// RFC 7009 endpoint, when the provider has one.
    pub revocation_endpoint: Option<&'static str>,
    /// How the provider wants the client to authenticate, unless the connection says.
    pub token_endpoint_auth_method: TokenEndpointAuthMethod,
    pub pkce: bool,
    /// Added to every authorization request.
    pub extra_authorize_params: &'static [(&'static str, &'static str)],
    /// Separator of scopes in the authorization request.
    pub scope_separator: &'static str,
    pub response_shape: ResponseShape,
    /// Refresh tokens are replaced on every refresh (reuse revokes the grant).
    pub rotates_refresh_tokens: bool,
    /// Access tokens may come without `expires_in` (treated as non-expiring).
    pub expiry_optional: bool,
    /// Documented to honour a narrower `scope` on the refresh grant (RFC 6749 §6), so that
    /// `downscope` is the default scope enforcement for its connections.
    pub honours_narrow_refresh: bool,
    /// How the provider says a refresh grant is gone, where it does not use a standard code.
    #[serde(skip_serializing_if = "<[GrantGone]>::is_empty")]
    pub grant_gone: &'static [GrantGone],
    /// The API root proxy mode uses when a connection names none (`{instance_url}`: the
    /// credential's own host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_base: Option<&'static str>,
    pub notes: &'static str,
}

const fn p(
    name: &'static str,
    display_name: &'static str,
    authz: &'static str,
    token: &'static str,
    revoke: Option<&'static str>,
) -> Provider {
    Provider {
        name,
        display_name,
        authorization_endpoint: authz,
        token_endpoint: token,
        revocation_endpoint: revoke,
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretBasic,
        pkce: true,
        extra_authorize_params: &[],
        scope_separator: " ",
        response_shape: ResponseShape::Standard,
        rotates_refresh_tokens: false,
        expiry_optional: false,
        honours_narrow_refresh: false,
        grant_gone: &[],
        api_base: None,
        notes: "",
    }
}

/// Every catalog entry, by name.
pub const CATALOG: &[Provider] = &[
    Provider {
        extra_authorize_params: &[("access_type", "offline"), ("prompt", "consent")],
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretPost,
        notes: "A refresh token is only issued with access_type=offline; prompt=consent makes Google issue it again on reconnect.",
        api_base: Some("https://www.googleapis.com"),
        ..p("google", "Google", "https://accounts.google.com/o/oauth2/v2/auth", "https://oauth2.googleapis.com/token", Some("https://oauth2.googleapis.com/revoke"))
    },
    Provider {
        rotates_refresh_tokens: true,
        honours_narrow_refresh: true,
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretPost,
        notes: "Tenant in the URL: set oauth2.tenant (default 'common'). Add the offline_access scope for refresh tokens. No RFC 7009 revocation endpoint. The refresh grant takes a scope subset, so downscoping works.",
        api_base: Some("https://graph.microsoft.com"),
        ..p("microsoft", "Microsoft Entra ID", "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize", "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token", None)
    },
    Provider {
        expiry_optional: true,
        pkce: true,
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretPost,
        notes: "token_type is lowercase 'bearer'; tokens expire (8 h, refresh 6 months) only if the app opts into expiring user tokens. Needs Accept: application/json. Revocation is a non-standard API call.",
        api_base: Some("https://api.github.com"),
        ..p("github", "GitHub", "https://github.com/login/oauth/authorize", "https://github.com/login/oauth/access_token", None)
    },
    Provider {
        response_shape: ResponseShape::Slack,
        scope_separator: ",",
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretPost,
        expiry_optional: true,
        pkce: false,
        notes: "oauth.v2.access answers HTTP 200 with {\"ok\": false, \"error\"} on failure; user tokens arrive under authed_user. Tokens expire only with token rotation enabled. Comma-separated scopes.",
        api_base: Some("https://slack.com/api"),
        ..p("slack", "Slack", "https://slack.com/oauth/v2/authorize", "https://slack.com/api/oauth.v2.access", None)
    },
    Provider {
        expiry_optional: true,
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretPost,
        notes: "Responses carry instance_url (the org's API host); no expires_in (session policy decides).",
        api_base: Some("{instance_url}"),
        ..p("salesforce", "Salesforce", "https://login.salesforce.com/services/oauth2/authorize", "https://login.salesforce.com/services/oauth2/token", Some("https://login.salesforce.com/services/oauth2/revoke"))
    },
    Provider {
        extra_authorize_params: &[("audience", "api.atlassian.com"), ("prompt", "consent")],
        rotates_refresh_tokens: true,
        // An expired or revoked refresh token: HTTP 403 unauthorized_client.
        grant_gone: &[GrantGone { status: Some(403), error: Some("unauthorized_client"), field: None }],
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretPost,
        notes: "Rotating refresh tokens; request the offline_access scope.",
        api_base: Some("https://api.atlassian.com"),
        ..p("atlassian", "Atlassian (Jira, Confluence)", "https://auth.atlassian.com/authorize", "https://auth.atlassian.com/oauth/token", None)
    },
    Provider {
        extra_authorize_params: &[("owner", "user")],
        expiry_optional: true,
        pkce: false,
        notes: "Access tokens do not expire and there is no refresh token.",
        api_base: Some("https://api.notion.com"),
        ..p("notion", "Notion", "https://api.notion.com/v1/oauth/authorize", "https://api.notion.com/v1/oauth/token", None)
    },
    Provider {
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretPost,
        // {"status": "BAD_REFRESH_TOKEN", "message": ...} with no `error` field.
        grant_gone: &[GrantGone { status: None, error: None, field: Some(("status", "BAD_REFRESH_TOKEN")) }],
        notes: "Access tokens last 30 minutes. Revocation is DELETE /oauth/v1/refresh-tokens/{token} (non-standard).",
        api_base: Some("https://api.hubapi.com"),
        ..p("hubspot", "HubSpot", "https://app.hubspot.com/oauth/authorize", "https://api.hubapi.com/oauth/v1/token", None)
    },
    Provider {
        extra_authorize_params: &[("token_access_type", "offline")],
        notes: "A refresh token is only issued with token_access_type=offline. Revocation is POST /2/auth/token/revoke with the access token (non-standard).",
        api_base: Some("https://api.dropboxapi.com"),
        ..p("dropbox", "Dropbox", "https://www.dropbox.com/oauth2/authorize", "https://api.dropboxapi.com/oauth2/token", None)
    },
    Provider {
        rotates_refresh_tokens: true,
        // {"reason": "Invalid Token!", "error": "invalid_request"}.
        grant_gone: &[GrantGone { status: None, error: Some("invalid_request"), field: Some(("reason", "Invalid Token")) }],
        notes: "Rotating refresh tokens: the previous one stops working after a refresh.",
        api_base: Some("https://api.zoom.us"),
        ..p("zoom", "Zoom", "https://zoom.us/oauth/authorize", "https://zoom.us/oauth/token", Some("https://zoom.us/oauth/revoke"))
    },
    Provider {
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretPost,
        notes: "Comma- or space-separated scopes accepted.",
        api_base: Some("https://api.linear.app"),
        ..p("linear", "Linear", "https://linear.app/oauth/authorize", "https://api.linear.app/oauth/token", Some("https://api.linear.app/oauth/revoke"))
    },
    Provider {
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretPost,
        notes: "Access tokens last one hour.",
        api_base: Some("https://app.asana.com/api/1.0"),
        ..p("asana", "Asana", "https://app.asana.com/-/oauth_authorize", "https://app.asana.com/-/oauth_token", Some("https://app.asana.com/-/oauth_revoke"))
    },
    Provider {
        rotates_refresh_tokens: true,
        token_endpoint_auth_method: TokenEndpointAuthMethod::ClientSecretPost,
        notes: "Rotating single-use refresh tokens (60 days).",
        api_base: Some("https://api.box.com"),
        ..p("box", "Box", "https://account.box.com/api/oauth2/authorize", "https://api.box.com/oauth2/token", Some("https://api.box.com/oauth2/revoke"))
    },
    Provider {
        // {"error": "invalid_request", "error_description": "Invalid \"refresh_token\" in request."}.
        grant_gone: &[GrantGone { status: None, error: Some("invalid_request"), field: Some(("error_description", "Invalid \"refresh_token\"")) }],
        notes: "Access tokens last 7 days.",
        api_base: Some("https://discord.com/api"),
        ..p("discord", "Discord", "https://discord.com/oauth2/authorize", "https://discord.com/api/oauth2/token", Some("https://discord.com/api/oauth2/token/revoke"))
    },
    Provider {
        rotates_refresh_tokens: true,
        notes: "gitlab.com; for self-managed GitLab give explicit endpoints. Rotating refresh tokens; access tokens last 2 hours.",
        api_base: Some("https://gitlab.com/api/v4"),
        ..p("gitlab", "GitLab", "https://gitlab.com/oauth/authorize", "https://gitlab.com/oauth/token", Some("https://gitlab.com/oauth/revoke"))
    },
    Provider {
        notes: "Refresh tokens do not rotate by default.",
        api_base: Some("https://api.spotify.com"),
        ..p("spotify", "Spotify", "https://accounts.spotify.com/authorize", "https://accounts.spotify.com/api/token", None)
    },
];

pub fn find(name: &str) -> Option<&'static Provider> {
    CATALOG.iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_is_well_formed() {
        assert!(CATALOG.len() >= 15);
        let mut names: Vec<_> = CATALOG.iter().map(|p| p.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), CATALOG.len(), "duplicate names");
        for p in CATALOG {
            for u in [Some(p.authorization_endpoint), Some(p.token_endpoint), p.revocation_endpoint].into_iter().flatten() {
                let u = u.replace("{tenant}", "common");
                assert!(url::Url::parse(&u).is_ok_and(|u| u.scheme() == "https"), "{}: {u}", p.name);
            }
            assert!(!p.notes.is_empty(), "{} needs notes", p.name);
            // Every API root is a valid proxy base_url.
            let base = p.api_base.unwrap_or_else(|| panic!("{} needs an api_base", p.name));
            let conn = crate::model::ConnectionSpec {
                provider: Some(p.name.to_owned()),
                ..crate::model::NewConnection::from_json(serde_json::json!({"id": "x", "kind": "api_key", "api_key": {"header": "X"}}))
                    .unwrap()
                    .spec
            };
            let spec = crate::model::ProxySpec::of(&conn).unwrap();
            assert_eq!(spec.base_url, base);
            assert!(spec.base_for(Some("https://na1.my.salesforce.com")).is_ok(), "{}: {base}", p.name);
        }
        for required in [
            "google",
            "microsoft",
            "github",
            "slack",
            "salesforce",
            "atlassian",
            "notion",
            "hubspot",
            "dropbox",
            "zoom",
            "linear",
            "asana",
            "box",
            "discord",
            "gitlab",
        ] {
            assert!(find(required).is_some(), "{required}");
        }
        assert_eq!(find("google").unwrap().extra_authorize_params, &[("access_type", "offline"), ("prompt", "consent")]);
    }
}
