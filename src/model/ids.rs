//! Identifiers parsed at the edge: connection and agent ids, owners, scopes.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{invalid, ValidationError};

/// A connection id: `^[a-z0-9][a-z0-9._-]{0,62}$`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConnectionId(String);

impl TryFrom<String> for ConnectionId {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ConnectionId::parse(&s)
    }
}

impl From<ConnectionId> for String {
    fn from(c: ConnectionId) -> String {
        c.0
    }
}

impl ConnectionId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let b = s.as_bytes();
        let ok = (1..=63).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-'));
        if ok {
            Ok(ConnectionId(s.to_owned()))
        } else {
            invalid("invalid connection id: use 1-63 characters from a-z, 0-9, '.', '_', '-', starting with a letter or digit")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An agent id (also its OAuth `client_id`): same rule as connection ids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgentId(String);

impl TryFrom<String> for AgentId {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        AgentId::parse(&s)
    }
}

impl From<AgentId> for String {
    fn from(a: AgentId) -> String {
        a.0
    }
}

impl AgentId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        ConnectionId::parse(s).map(|c| AgentId(c.0)).map_err(|_| {
            ValidationError("invalid agent id: use 1-63 characters from a-z, 0-9, '.', '_', '-', starting with a letter or digit".into())
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OwnerKind {
    User,
    Tenant,
}

/// Longest owner id: an issuer's subject prefix (up to 32), a colon, and an OIDC `sub`
/// (up to 255 by the spec), with room to spare.
pub const MAX_OWNER_ID: usize = 300;

/// Whose credential it is: `user:<id>` or `tenant:<id>`. Users and tenants that come from
/// a trusted issuer are namespaced by its subject prefix: `user:<prefix>:<sub>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    kind: OwnerKind,
    id: String,
}

impl Owner {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let (kind, id) = match s.split_once(':') {
            Some(("user", id)) => (OwnerKind::User, id),
            Some(("tenant", id)) => (OwnerKind::Tenant, id),
            _ => return invalid("invalid owner: expected 'user:<id>' or 'tenant:<id>'"),
        };
        Self::new(kind, id)
    }

    pub fn new(kind: OwnerKind, id: &str) -> Result<Self, ValidationError> {
        let ok = (1..=MAX_OWNER_ID).contains(&id.len())
            && id.bytes().all(|c| (0x21..=0x7e).contains(&c) && !matches!(c, b'/' | b'?' | b'#' | b'%'));
        if ok {
            Ok(Owner { kind, id: id.to_owned() })
        } else {
            invalid(format!("invalid owner id: use 1-{MAX_OWNER_ID} printable ASCII characters without '/', '?', '#', '%' or spaces"))
        }
    }

    pub fn kind(&self) -> OwnerKind {
        self.kind
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            OwnerKind::User => "user",
            OwnerKind::Tenant => "tenant",
        };
        write!(f, "{k}:{}", self.id)
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Owner::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Owner {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// An OAuth scope token (RFC 6749 §3.3: printable ASCII except space, `"` and `\`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let ok = (1..=256).contains(&s.len()) && s.bytes().all(|c| c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c));
        if ok {
            Ok(Scope(s.to_owned()))
        } else {
            invalid("invalid scope: use 1-256 printable ASCII characters without spaces, '\"' or '\\'")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a space-separated scope string; empty input gives no scopes.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, ValidationError> {
        let mut out: Vec<Scope> = s.split(' ').filter(|p| !p.is_empty()).map(Scope::parse).collect::<Result<_, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl TryFrom<String> for Scope {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Scope::parse(&s)
    }
}

impl From<Scope> for String {
    fn from(s: Scope) -> String {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids() {
        for ok in ["a", "google-calendar", "crm.v2", "0_x", &"a".repeat(63)] {
            assert!(ConnectionId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "A", "-a", ".a", "a/b", "a b", "é", &"a".repeat(64), &"a".repeat(5000)] {
            assert!(ConnectionId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn owners() {
        for ok in [
            "user:alice",
            "tenant:acme",
            "user:auth0|abc123",
            "user:a@b.example",
            &format!("user:{}", "x".repeat(MAX_OWNER_ID)),
            "user:okta:00u1abc",
        ] {
            assert_eq!(Owner::parse(ok).unwrap().to_string(), ok);
        }
        for bad in [
            "alice",
            "group:x",
            "user:",
            "user:a b",
            "user:a/b",
            "user:a?b",
            "user:a#b",
            "user:a%2F",
            "user:\u{7f}",
            &format!("user:{}", "x".repeat(MAX_OWNER_ID + 1)),
        ] {
            assert!(Owner::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes() {
        assert_eq!(Scope::parse_list("b a  a").unwrap(), vec![Scope::parse("a").unwrap(), Scope::parse("b").unwrap()]);
        assert!(Scope::parse("a\"b").is_err());
        assert!(Scope::parse("https://www.googleapis.com/auth/calendar.readonly").is_ok());
    }
}
