//! Agent policy: deny by default, a list of grants, and the release decision as pure
//! functions (no I/O, no clock) so every rule is unit-tested here.
//!
//! A release is decided in two steps: [`authorize`] picks the grant and the owner
//! before anything is read (so a refusal cannot depend on whether the connection or
//! credential exists), then [`release_scopes`] intersects what was asked for with the
//! grant, the credential's granted scopes and the connection's `scope_roles`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{ConnectionId, HeldScopes, Owner, OwnerKind, Scope, ScopeEnforcement, ValidationError};

/// Default lease for API keys (which do not expire) when the grant sets no `max_ttl`.
pub const DEFAULT_API_KEY_LEASE: i64 = 900;
const MAX_GRANTS: usize = 256;
const MAX_TTL: u64 = 86_400;

/// A validated policy: deserialising one checks it, whether it comes from a request or
/// from the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "PolicyBody")]
pub struct Policy {
    pub grants: Vec<Grant>,
}

/// A policy as written, before its checks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    #[serde(default)]
    grants: Vec<Grant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub connection: ConnectionId,
    /// Scopes this agent may receive; absent means "whatever the credential holds".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<Scope>>,
    pub owners: OwnerRule,
    /// Upper bound on a lease, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::model::whole_u64")]
    pub max_ttl: Option<u64>,
    /// Whether the holder may create connect links, which store (or replace) the owner's
    /// credential. Reading a credential never implies it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub connect: bool,
    /// For connect links to a tenant owner: a role the person proving membership of the
    /// tenant must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_role: Option<String>,
    /// How the holder may use the secret: receive a copy (`release`), have latchkey call the
    /// API with it (`proxy`), or both. Absent: `["release"]`. A proxy-only grant never lets
    /// the secret out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modes: Option<Vec<Mode>>,
}

/// How a grant's holder may use the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A short-lived copy leaves the vault (`GET /v1/connections/{id}/token`).
    #[default]
    Release,
    /// latchkey injects it into a request it forwards (`/v1/proxy/{id}/…`); it never leaves.
    Proxy,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Release => "release",
            Mode::Proxy => "proxy",
        }
    }
}

impl Grant {
    /// Whether the grant lets its holder use the secret this way.
    pub fn allows(&self, mode: Mode) -> bool {
        match &self.modes {
            None => mode == Mode::Release,
            Some(m) => m.contains(&mode),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OwnerRule {
    /// Only the user (or tenant) the agent token speaks for.
    #[serde(rename = "self")]
    SelfOnly,
    /// The tenant credential of the token's tenant.
    Tenant,
    /// A service agent may name any `user_id` / `tenant_id`.
    Any,
}

impl TryFrom<PolicyBody> for Policy {
    type Error = ValidationError;

    fn try_from(p: PolicyBody) -> Result<Policy, ValidationError> {
        if p.grants.len() > MAX_GRANTS {
            return Err(ValidationError(format!("a policy holds at most {MAX_GRANTS} grants")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for g in &p.grants {
            if !seen.insert(&g.connection) {
                return Err(ValidationError(format!("two grants for connection '{}'; merge them into one", g.connection)));
            }
            if let Some(t) = g.max_ttl {
                if !(1..=MAX_TTL).contains(&t) {
                    return Err(ValidationError(format!("max_ttl must be between 1 and {MAX_TTL} seconds")));
                }
            }
            if let Some(m) = &g.modes {
                let mut sorted = m.clone();
                sorted.sort();
                sorted.dedup();
                if m.is_empty() || sorted.len() != m.len() {
                    return Err(ValidationError("modes: a non-empty list of \"release\" and \"proxy\", each at most once".into()));
                }
            }
            if let Some(role) = &g.connect_role {
                if !g.connect || !(1..=128).contains(&role.len()) || !role.bytes().all(|c| (0x21..=0x7e).contains(&c)) {
                    return Err(ValidationError("connect_role needs connect: true and 1-128 printable characters".into()));
                }
            }
        }
        Ok(Policy { grants: p.grants })
    }
}

impl Policy {
    /// Parses a policy document (JSON text). Messages never quote input values.
    pub fn parse_json(text: &str) -> Result<Policy, ValidationError> {
        let invalid =
            |e: serde_json::Error| ValidationError(format!("invalid policy: {}", crate::model::clean_serde_error(&e.to_string())));
        let value: serde_json::Value = serde_json::from_str(text).map_err(invalid)?;
        // An object: serde would also read the struct from an array, member by position.
        if !value.is_object() {
            return Err(ValidationError("invalid policy: a policy is a JSON object {\"grants\": [...]}".into()));
        }
        crate::model::from_value_strict(value).map_err(invalid)
    }

    pub fn grant_for(&self, connection: &ConnectionId) -> Option<&Grant> {
        self.grants.iter().find(|g| &g.connection == connection)
    }
}

/// Who a verified agent token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub agent_id: String,
    /// The user bound by token exchange; `None` for a client-credentials token.
    pub user: Option<String>,
    pub tenant: Option<String>,
    pub roles: Vec<String>,
    /// The agent token epoch the token was issued at.
    pub epoch: i64,
}

/// What the caller asked for.
#[derive(Debug, Clone, Default)]
pub struct ReleaseRequest {
    pub scopes: Vec<Scope>,
    pub user_id: Option<String>,
    pub tenant_id: Option<String>,
    /// Release a copy, or use the secret in a proxied call.
    pub mode: Mode,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No grant covers this connection for this owner (also: unknown connection).
    AccessDenied(&'static str),
    /// The request itself is malformed (message safe to show).
    InvalidRequest(String),
}

/// Step 1: the grant and the owner. Reads nothing but the policy and the token.
pub fn authorize<'p>(
    policy: &'p Policy,
    connection: &ConnectionId,
    who: &Principal,
    req: &ReleaseRequest,
) -> Result<(&'p Grant, Owner), Refusal> {
    let grant = policy.grant_for(connection).ok_or(Refusal::AccessDenied("no grant for this connection"))?;
    if !grant.allows(req.mode) {
        return Err(Refusal::AccessDenied(match req.mode {
            Mode::Release => "the grant does not allow release (proxy only)",
            Mode::Proxy => "the grant does not allow proxy mode",
        }));
    }
    let deny = |why| Err(Refusal::AccessDenied(why));
    let (kind, id) = match (&req.user_id, &req.tenant_id, grant.owners) {
        (Some(_), Some(_), _) => return Err(Refusal::InvalidRequest("give user_id or tenant_id, not both".into())),
        (Some(u), None, OwnerRule::Any) => (OwnerKind::User, u.clone()),
        (Some(u), None, OwnerRule::SelfOnly) if who.user.as_ref() == Some(u) => (OwnerKind::User, u.clone()),
        (Some(_), None, _) => return deny("the grant does not allow naming this user"),
        (None, Some(t), OwnerRule::Any) => (OwnerKind::Tenant, t.clone()),
        (None, Some(t), OwnerRule::SelfOnly | OwnerRule::Tenant) if who.tenant.as_ref() == Some(t) => (OwnerKind::Tenant, t.clone()),
        (None, Some(_), _) => return deny("the grant does not allow naming this tenant"),
        (None, None, OwnerRule::SelfOnly | OwnerRule::Any) => match &who.user {
            Some(u) => (OwnerKind::User, u.clone()),
            None if grant.owners == OwnerRule::Any => {
                return Err(Refusal::InvalidRequest("name the owner with user_id or tenant_id".into()))
            }
            None => return deny("the token speaks for no user"),
        },
        (None, None, OwnerRule::Tenant) => match &who.tenant {
            Some(t) => (OwnerKind::Tenant, t.clone()),
            None => return deny("the token carries no tenant"),
        },
    };
    let owner = Owner::new(kind, &id).map_err(|e| Refusal::InvalidRequest(e.0))?;
    Ok((grant, owner))
}

/// Who may create a connect link for `owner`: a grant with `connect: true` whose owner rule
/// covers exactly that owner. A `self` grant covers only the token's own user (never its
/// tenant: membership is not enough), a `tenant` grant only the token's tenant, `any` both.
pub fn authorize_connect<'p>(policy: &'p Policy, connection: &ConnectionId, who: &Principal, owner: &Owner) -> Result<&'p Grant, Refusal> {
    let grant = policy.grant_for(connection).ok_or(Refusal::AccessDenied("no grant for this connection"))?;
    if !grant.connect {
        return Err(Refusal::AccessDenied("the grant does not allow creating connect links"));
    }
    let covered = match (owner.kind(), grant.owners) {
        (_, OwnerRule::Any) => true,
        (OwnerKind::User, OwnerRule::SelfOnly) => who.user.as_deref() == Some(owner.id()),
        (OwnerKind::Tenant, OwnerRule::Tenant) => who.tenant.as_deref() == Some(owner.id()),
        (OwnerKind::Tenant, OwnerRule::SelfOnly) | (OwnerKind::User, OwnerRule::Tenant) => false,
    };
    if covered {
        Ok(grant)
    } else {
        Err(Refusal::AccessDenied("the grant does not cover this owner for connect links"))
    }
}

/// Step 2: the scopes to release. `credential_scopes` is `None` when the credential
/// records none (API keys, tokens imported without `scope`). `Err` lists refused scopes.
pub fn release_scopes(
    grant: &Grant,
    requested: &[Scope],
    credential_scopes: Option<&[Scope]>,
    scope_roles: &BTreeMap<Scope, Vec<String>>,
    roles: &[String],
) -> Result<Vec<Scope>, Vec<Scope>> {
    let allowed = |s: &Scope| {
        grant.scopes.as_ref().is_none_or(|g| g.contains(s))
            && credential_scopes.is_none_or(|c| c.contains(s))
            && scope_roles.get(s).is_none_or(|need| need.iter().any(|r| roles.contains(r)))
    };
    if requested.is_empty() {
        // Nothing asked: everything the credential holds that this caller may have.
        let base: Vec<Scope> = match (credential_scopes, &grant.scopes) {
            (Some(c), _) => c.to_vec(),
            (None, Some(g)) => g.clone(),
            (None, None) => Vec::new(),
        };
        return Ok(base.into_iter().filter(|s| allowed(s)).collect());
    }
    let refused: Vec<Scope> = requested.iter().filter(|s| !allowed(s)).cloned().collect();
    if refused.is_empty() {
        Ok(requested.to_vec())
    } else {
        Err(refused)
    }
}

/// What leaves the vault for an OAuth release, as far as scopes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopePlan {
    /// Release the stored token. `scopes` is what the response says; `enforced` whether
    /// the token itself carries nothing the caller may not have.
    AsIs { scopes: Vec<Scope>, enforced: bool },
    /// Release a narrower token for exactly these scopes (minted with the refresh grant).
    Narrow { scopes: Vec<Scope> },
}

/// Why scopes stop a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeRefusal {
    /// Requested scopes the grant, the credential or the roles rule does not allow.
    Refused(Vec<Scope>),
    /// The credential holds scopes the caller may not have, and no narrower token is to be
    /// had. An empty list: the held scopes are unknown.
    Excess(Vec<Scope>),
}

/// Step 2 for OAuth credentials: the scopes to release and whether the token that leaves
/// is really limited to them, by the connection's `mode`:
/// - `label`: the scope field is narrowed, the stored token leaves (`enforced: false`).
/// - `strict`: the stored token leaves only if every scope it holds is allowed to this
///   caller (by the grant and the roles rule); unknown held scopes count as more.
/// - `downscope`: a narrower token is minted for the scopes asked for (or all allowed ones)
///   unless the stored one already holds exactly those; with `narrowing` false (the
///   provider did not confirm a narrower token) it behaves as `strict`.
#[allow(clippy::too_many_arguments)]
pub fn plan_scopes(
    mode: ScopeEnforcement,
    narrowing: bool,
    grant: &Grant,
    requested: &[Scope],
    held: &HeldScopes,
    scope_roles: &BTreeMap<Scope, Vec<String>>,
    roles: &[String],
) -> Result<ScopePlan, ScopeRefusal> {
    let labelled = release_scopes(grant, requested, held.known(), scope_roles, roles).map_err(ScopeRefusal::Refused)?;
    if mode == ScopeEnforcement::Label {
        return Ok(ScopePlan::AsIs { scopes: labelled, enforced: false });
    }
    let permitted = |s: &Scope| {
        grant.scopes.as_ref().is_none_or(|g| g.contains(s)) && scope_roles.get(s).is_none_or(|need| need.iter().any(|r| roles.contains(r)))
    };
    // What the caller wants in its token: what it asked for, or everything it may have.
    let target: Vec<Scope> = if requested.is_empty() { labelled.clone() } else { requested.to_vec() };
    let excess: Option<Vec<Scope>> = match held {
        HeldScopes::Known(h) => Some(h.iter().filter(|s| !permitted(s)).cloned().collect()),
        HeldScopes::Unknown => None,
    };
    // Unknown held scopes are within policy only when the caller may have any scope at all.
    let anything_goes = grant.scopes.is_none() && scope_roles.values().all(|need| need.iter().any(|r| roles.contains(r)));
    let within_policy = match &excess {
        Some(e) => e.is_empty(),
        None => anything_goes,
    };
    let exactly_target = match held {
        HeldScopes::Known(h) => h.iter().all(|s| target.contains(s)),
        HeldScopes::Unknown => false,
    };
    if mode == ScopeEnforcement::Downscope && narrowing && !exactly_target && !target.is_empty() {
        return Ok(ScopePlan::Narrow { scopes: target });
    }
    if within_policy {
        let scopes = match held {
            HeldScopes::Known(h) => h.clone(),
            HeldScopes::Unknown => target,
        };
        return Ok(ScopePlan::AsIs { scopes, enforced: true });
    }
    Err(ScopeRefusal::Excess(excess.unwrap_or_default()))
}

/// Lease length: the grant's `max_ttl`, the credential's remaining life, whichever is
/// shorter. API keys do not expire, so their lease defaults to [`DEFAULT_API_KEY_LEASE`].
pub fn lease_ttl(grant: &Grant, remaining: Option<i64>) -> i64 {
    let cap = grant.max_ttl.map(|t| t as i64);
    match (cap, remaining) {
        (Some(c), Some(r)) => c.min(r),
        (Some(c), None) => c,
        (None, Some(r)) => r,
        (None, None) => DEFAULT_API_KEY_LEASE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scopes(s: &str) -> Vec<Scope> {
        Scope::parse_list(s).unwrap()
    }
    fn conn(s: &str) -> ConnectionId {
        ConnectionId::parse(s).unwrap()
    }
    fn parse(v: serde_json::Value) -> Result<Policy, ValidationError> {
        Policy::parse_json(&v.to_string())
    }
    fn policy(v: serde_json::Value) -> Policy {
        parse(v).unwrap()
    }
    fn user(u: &str, tenant: Option<&str>, roles: &[&str]) -> Principal {
        Principal {
            agent_id: "a".into(),
            user: Some(u.into()),
            tenant: tenant.map(Into::into),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            epoch: 0,
        }
    }
    fn service() -> Principal {
        Principal { agent_id: "svc".into(), user: None, tenant: None, roles: vec![], epoch: 0 }
    }
    fn req(user: Option<&str>, tenant: Option<&str>) -> ReleaseRequest {
        ReleaseRequest { scopes: vec![], user_id: user.map(Into::into), tenant_id: tenant.map(Into::into), ..Default::default() }
    }

    #[test]
    fn parse_rejects_bad_policies() {
        assert!(parse(json!({"grants": [{"connection": "x", "owners": "everyone"}]})).is_err());
        assert!(parse(json!({"grants": [{"connection": "../x", "owners": "self"}]})).is_err());
        assert!(parse(json!({"grants": [{"connection": "x", "owners": "self", "max_ttl": 0}]})).is_err());
        assert!(parse(json!({"grants": [{"connection": "x", "owners": "self"}, {"connection": "x", "owners": "any"}]})).is_err());
        assert!(parse(json!({"grants": [], "extra": 1})).is_err());
        assert_eq!(parse(json!({})).unwrap(), Policy::default());
    }

    #[test]
    fn modes_say_how_the_secret_may_be_used() {
        let alice = user("alice", None, &[]);
        let proxy = ReleaseRequest { mode: Mode::Proxy, ..req(None, None) };
        // Absent: release only.
        let p = policy(json!({"grants": [{"connection": "cal", "owners": "self"}]}));
        assert!(authorize(&p, &conn("cal"), &alice, &req(None, None)).is_ok());
        assert!(matches!(authorize(&p, &conn("cal"), &alice, &proxy), Err(Refusal::AccessDenied(_))));
        // Proxy only: the secret never leaves.
        let p = policy(json!({"grants": [{"connection": "cal", "owners": "self", "modes": ["proxy"]}]}));
        assert!(matches!(authorize(&p, &conn("cal"), &alice, &req(None, None)), Err(Refusal::AccessDenied(_))));
        assert!(authorize(&p, &conn("cal"), &alice, &proxy).is_ok());
        let p = policy(json!({"grants": [{"connection": "cal", "owners": "self", "modes": ["release", "proxy"]}]}));
        assert!(authorize(&p, &conn("cal"), &alice, &req(None, None)).is_ok() && authorize(&p, &conn("cal"), &alice, &proxy).is_ok());
        for bad in [json!([]), json!(["proxy", "proxy"]), json!(["stream"])] {
            assert!(parse(json!({"grants": [{"connection": "x", "owners": "self", "modes": bad}]})).is_err());
        }
    }

    #[test]
    fn deny_by_default_and_unknown_connection_look_alike() {
        let p = policy(json!({"grants": [{"connection": "cal", "owners": "self"}]}));
        assert_eq!(
            authorize(&p, &conn("mail"), &user("alice", None, &[]), &req(None, None)).unwrap_err(),
            Refusal::AccessDenied("no grant for this connection")
        );
        assert!(authorize(&Policy::default(), &conn("cal"), &user("alice", None, &[]), &req(None, None)).is_err());
    }

    #[test]
    fn self_grants_release_only_the_token_user() {
        let p = policy(json!({"grants": [{"connection": "cal", "owners": "self"}]}));
        let alice = user("alice", Some("acme"), &[]);
        assert_eq!(authorize(&p, &conn("cal"), &alice, &req(None, None)).unwrap().1.to_string(), "user:alice");
        assert_eq!(authorize(&p, &conn("cal"), &alice, &req(Some("alice"), None)).unwrap().1.to_string(), "user:alice");
        assert!(matches!(authorize(&p, &conn("cal"), &alice, &req(Some("bob"), None)), Err(Refusal::AccessDenied(_))));
        assert!(matches!(authorize(&p, &conn("cal"), &service(), &req(None, None)), Err(Refusal::AccessDenied(_))));
        // Its own tenant is allowed under self; another tenant is not.
        assert_eq!(authorize(&p, &conn("cal"), &alice, &req(None, Some("acme"))).unwrap().1.to_string(), "tenant:acme");
        assert!(authorize(&p, &conn("cal"), &alice, &req(None, Some("globex"))).is_err());
    }

    #[test]
    fn tenant_grants_release_only_the_token_tenant() {
        let p = policy(json!({"grants": [{"connection": "reports", "owners": "tenant"}]}));
        let alice = user("alice", Some("acme"), &[]);
        assert_eq!(authorize(&p, &conn("reports"), &alice, &req(None, None)).unwrap().1.to_string(), "tenant:acme");
        assert_eq!(authorize(&p, &conn("reports"), &alice, &req(None, Some("acme"))).unwrap().1.to_string(), "tenant:acme");
        assert!(matches!(authorize(&p, &conn("reports"), &alice, &req(None, Some("globex"))), Err(Refusal::AccessDenied(_))));
        assert!(matches!(authorize(&p, &conn("reports"), &alice, &req(Some("alice"), None)), Err(Refusal::AccessDenied(_))));
        assert!(matches!(authorize(&p, &conn("reports"), &user("bob", None, &[]), &req(None, None)), Err(Refusal::AccessDenied(_))));
    }

    #[test]
    fn any_grants_let_a_service_agent_name_owners() {
        let p = policy(json!({"grants": [{"connection": "crm", "owners": "any"}]}));
        assert_eq!(authorize(&p, &conn("crm"), &service(), &req(Some("bob"), None)).unwrap().1.to_string(), "user:bob");
        assert_eq!(authorize(&p, &conn("crm"), &service(), &req(None, Some("globex"))).unwrap().1.to_string(), "tenant:globex");
        assert!(matches!(authorize(&p, &conn("crm"), &service(), &req(None, None)), Err(Refusal::InvalidRequest(_))));
        assert!(matches!(authorize(&p, &conn("crm"), &service(), &req(Some("a"), Some("b"))), Err(Refusal::InvalidRequest(_))));
        assert!(matches!(authorize(&p, &conn("crm"), &service(), &req(Some("bad/id"), None)), Err(Refusal::InvalidRequest(_))));
    }

    #[test]
    fn scopes_are_the_intersection_of_grant_credential_and_roles() {
        let p = policy(json!({"grants": [{"connection": "crm", "owners": "self", "scopes": ["crm:read", "crm:write"]}]}));
        let g = p.grant_for(&conn("crm")).unwrap();
        let held = scopes("crm:read crm:write crm:admin");
        let roles_rule: BTreeMap<Scope, Vec<String>> = [(Scope::parse("crm:write").unwrap(), vec!["sales-admin".to_string()])].into();
        let none: Vec<String> = vec![];
        let admin = vec!["sales-admin".to_string()];
        // Allowed.
        assert_eq!(release_scopes(g, &scopes("crm:read"), Some(&held), &roles_rule, &none).unwrap(), scopes("crm:read"));
        // Escalation beyond the grant.
        assert_eq!(release_scopes(g, &scopes("crm:read crm:admin"), Some(&held), &roles_rule, &none).unwrap_err(), scopes("crm:admin"));
        // Role-gated scope without and with the role.
        assert_eq!(release_scopes(g, &scopes("crm:write"), Some(&held), &roles_rule, &none).unwrap_err(), scopes("crm:write"));
        assert_eq!(release_scopes(g, &scopes("crm:write"), Some(&held), &roles_rule, &admin).unwrap(), scopes("crm:write"));
        // Beyond what the credential was granted.
        assert_eq!(release_scopes(g, &scopes("crm:read"), Some(&scopes("other")), &roles_rule, &admin).unwrap_err(), scopes("crm:read"));
        // Nothing requested: what the credential holds, filtered.
        assert_eq!(release_scopes(g, &[], Some(&held), &roles_rule, &none).unwrap(), scopes("crm:read"));
        assert_eq!(release_scopes(g, &[], Some(&held), &roles_rule, &admin).unwrap(), scopes("crm:read crm:write"));
        // API keys: no credential scopes, no grant scopes → nothing to intersect.
        let open = policy(json!({"grants": [{"connection": "k", "owners": "self"}]}));
        assert!(release_scopes(open.grant_for(&conn("k")).unwrap(), &[], None, &BTreeMap::new(), &none).unwrap().is_empty());
    }

    #[test]
    fn connect_links_need_the_connect_flag_and_an_exact_owner() {
        let p = policy(json!({"grants": [
            {"connection": "read-only", "owners": "any"},
            {"connection": "mine", "owners": "self", "connect": true},
            {"connection": "team", "owners": "tenant", "connect": true, "connect_role": "admin"},
            {"connection": "svc", "owners": "any", "connect": true}]}));
        let alice = user("alice", Some("acme"), &[]);
        let o = |s: &str| Owner::parse(s).unwrap();
        // Reading a credential never implies replacing it.
        assert!(authorize_connect(&p, &conn("read-only"), &service(), &o("user:bob")).is_err());
        assert!(authorize_connect(&p, &conn("mine"), &alice, &o("user:alice")).is_ok());
        assert!(authorize_connect(&p, &conn("mine"), &alice, &o("user:bob")).is_err(), "self: someone else");
        assert!(authorize_connect(&p, &conn("mine"), &alice, &o("tenant:acme")).is_err(), "membership is not enough");
        assert!(authorize_connect(&p, &conn("team"), &alice, &o("tenant:acme")).is_ok());
        assert!(authorize_connect(&p, &conn("team"), &alice, &o("tenant:globex")).is_err());
        assert!(authorize_connect(&p, &conn("team"), &alice, &o("user:alice")).is_err());
        assert!(authorize_connect(&p, &conn("svc"), &service(), &o("tenant:globex")).is_ok());
        assert!(authorize_connect(&p, &conn("other"), &service(), &o("user:bob")).is_err());
        assert!(
            parse(json!({"grants": [{"connection": "x", "owners": "self", "connect_role": "admin"}]})).is_err(),
            "role without connect"
        );
    }

    #[test]
    fn scope_enforcement_limits_the_token_not_only_the_label() {
        use ScopeEnforcement::{Downscope, Label, Strict};
        let p = policy(json!({"grants": [{"connection": "crm", "owners": "self", "scopes": ["crm:read"]},
            {"connection": "open", "owners": "self"}]}));
        let (narrow, open) = (p.grant_for(&conn("crm")).unwrap(), p.grant_for(&conn("open")).unwrap());
        let full = HeldScopes::Known(scopes("crm:read crm:write crm:admin"));
        let read = HeldScopes::Known(scopes("crm:read"));
        let none: Vec<String> = vec![];
        let no_roles = BTreeMap::new();
        let plan = |mode, narrowing, g, req: &str, held: &HeldScopes| plan_scopes(mode, narrowing, g, &scopes(req), held, &no_roles, &none);
        // label: today's behaviour, named for what it is.
        assert_eq!(plan(Label, true, narrow, "", &full), Ok(ScopePlan::AsIs { scopes: scopes("crm:read"), enforced: false }));
        // strict: a full-power credential under a narrow grant is refused, with the excess listed.
        assert_eq!(plan(Strict, true, narrow, "", &full), Err(ScopeRefusal::Excess(scopes("crm:write crm:admin"))));
        assert_eq!(plan(Strict, true, narrow, "crm:read", &full), Err(ScopeRefusal::Excess(scopes("crm:write crm:admin"))));
        assert_eq!(plan(Strict, true, narrow, "", &read), Ok(ScopePlan::AsIs { scopes: scopes("crm:read"), enforced: true }));
        assert_eq!(plan(Strict, true, narrow, "", &HeldScopes::Unknown), Err(ScopeRefusal::Excess(vec![])), "unknown counts as more");
        assert_eq!(plan(Strict, true, open, "", &HeldScopes::Unknown).map(|_| ()), Ok(()), "a grant without scope limits takes anything");
        // downscope: a narrower token, unless the stored one already is exactly that.
        assert_eq!(plan(Downscope, true, narrow, "", &full), Ok(ScopePlan::Narrow { scopes: scopes("crm:read") }));
        assert_eq!(plan(Downscope, true, open, "crm:write", &full), Ok(ScopePlan::Narrow { scopes: scopes("crm:write") }));
        assert_eq!(plan(Downscope, true, narrow, "", &read), Ok(ScopePlan::AsIs { scopes: scopes("crm:read"), enforced: true }));
        assert_eq!(
            plan(Downscope, true, open, "", &full),
            Ok(ScopePlan::AsIs { scopes: scopes("crm:read crm:write crm:admin"), enforced: true })
        );
        // ...and where the provider does not confirm narrowing, strict.
        assert_eq!(plan(Downscope, false, narrow, "", &full), Err(ScopeRefusal::Excess(scopes("crm:write crm:admin"))));
        // Asking for a scope the grant does not allow is refused in every mode.
        for mode in [Label, Strict, Downscope] {
            assert_eq!(plan(mode, true, narrow, "crm:admin", &full), Err(ScopeRefusal::Refused(scopes("crm:admin"))));
        }
        // scope_roles goes through the same enforcement.
        let roles_rule: BTreeMap<Scope, Vec<String>> = [(Scope::parse("crm:write").unwrap(), vec!["sales-admin".to_string()])].into();
        let rw = HeldScopes::Known(scopes("crm:read crm:write"));
        assert_eq!(plan_scopes(Strict, true, open, &[], &rw, &roles_rule, &none), Err(ScopeRefusal::Excess(scopes("crm:write"))));
        let admin = vec!["sales-admin".to_string()];
        assert!(matches!(plan_scopes(Strict, true, open, &[], &rw, &roles_rule, &admin), Ok(ScopePlan::AsIs { enforced: true, .. })));
        assert_eq!(plan_scopes(Downscope, true, open, &[], &rw, &roles_rule, &none), Ok(ScopePlan::Narrow { scopes: scopes("crm:read") }));
    }

    #[test]
    fn lease_is_the_shorter_of_grant_and_credential() {
        let p = policy(json!({"grants": [{"connection": "a", "owners": "self", "max_ttl": 300}, {"connection": "b", "owners": "self"}]}));
        let (a, b) = (p.grant_for(&conn("a")).unwrap(), p.grant_for(&conn("b")).unwrap());
        assert_eq!(lease_ttl(a, Some(3600)), 300);
        assert_eq!(lease_ttl(a, Some(100)), 100);
        assert_eq!(lease_ttl(a, None), 300);
        assert_eq!(lease_ttl(b, Some(100)), 100);
        assert_eq!(lease_ttl(b, None), DEFAULT_API_KEY_LEASE);
    }
}
