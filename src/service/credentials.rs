//! Disconnecting a credential: revoke its refresh token at the provider (RFC 7009) where
//! the connection has a revocation endpoint, then destroy it. The revocation outcome is
//! recorded in the audit event.

use super::Services;
use crate::model::{ConnectionId, Owner};
use crate::vault::{Actor, VaultError};

impl Services {
    pub async fn disconnect(&self, actor: Actor, connection: ConnectionId, owner: Owner) -> Result<(), VaultError> {
        let (c, o) = (connection.clone(), owner.clone());
        let material = self.blocking(move |v| v.refresh_material(&c, &o)).await?;
        let Some(m) = material else {
            return Err(VaultError::NotFound(format!("credential of {owner} for connection '{connection}'")));
        };
        let revocation = match m.refresh_token {
            Some(token) if m.spec.oauth2.is_some() => match self.oauth.revoke(&m.spec, &token).await {
                Ok(()) => "revoked".to_owned(),
                Err(e) => format!("not revoked: {e}"),
            },
            _ => "nothing to revoke".to_owned(),
        };
        self.blocking(move |v| v.delete_credential(&actor, &connection, &owner, Some(&revocation))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CredentialInput, NewConnection};
    use crate::secret::Secret;
    use crate::service::testing::fixture;

    #[tokio::test]
    async fn disconnect_destroys_and_audits_what_happened_at_the_provider() {
        let f = fixture();
        let s = &f.services;
        let spec = serde_json::json!({"id": "k", "kind": "api_key", "api_key": {"header": "X-Key"}});
        s.vault.create_connection(&Actor::System, NewConnection::from_json(spec).unwrap()).unwrap();
        let (k, alice) = (ConnectionId::parse("k").unwrap(), Owner::parse("user:alice").unwrap());
        s.vault.put_credential(&Actor::System, &k, &alice, CredentialInput::api_key(Secret::new("sk".into()))).unwrap();

        s.disconnect(Actor::System, k.clone(), alice.clone()).await.unwrap();
        assert!(s.vault.open_credential(&k, &alice).unwrap().is_none());
        let last = s.vault.audit_tail(1).unwrap().pop().unwrap();
        assert_eq!((last.action.as_str(), last.detail.as_str()), ("credential.delete", r#"{"revocation":"nothing to revoke"}"#));
        assert!(matches!(s.disconnect(Actor::System, k, alice).await, Err(VaultError::NotFound(_))));
    }
}
