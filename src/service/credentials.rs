//! Operator changes with more to them than one vault call: disconnecting a credential
//! (revoke its refresh token at the provider, RFC 7009, where the connection has a
//! revocation endpoint, then destroy it; the revocation outcome is audited), and trusted
//! issuers (whose cached keys must go when they change).

use super::Services;
use crate::auth::subject::{IssuerConfig, NewIssuer};
use crate::model::{ConnectionId, Owner};
use crate::vault::{Actor, VaultError};

impl Services {
    /// Adds or replaces a trusted issuer; keys fetched from its previous configuration are
    /// forgotten at once.
    pub async fn put_issuer(&self, actor: Actor, new: NewIssuer) -> Result<IssuerConfig, VaultError> {
        let cfg = self.blocking(move |v| v.put_issuer(&actor, new)).await?;
        self.jwks.forget(&cfg.issuer);
        Ok(cfg)
    }

    pub async fn delete_issuer(&self, actor: Actor, issuer: String) -> Result<(), VaultError> {
        let i = issuer.clone();
        self.blocking(move |v| v.delete_issuer(&actor, &i)).await?;
        self.jwks.forget(&issuer);
        Ok(())
    }

    /// Deletes a connection. With `cascade`, every credential is first disconnected as
    /// [`Services::disconnect`] does (revoked at the provider where possible, each outcome
    /// audited); without it, a connection that still has credentials is refused.
    pub async fn delete_connection(&self, actor: Actor, connection: ConnectionId, cascade: bool) -> Result<u64, VaultError> {
        let mut disconnected = 0;
        if cascade {
            loop {
                let c = connection.clone();
                let page = self.blocking(move |v| v.list_credentials(&c, None, 500)).await?;
                if page.is_empty() {
                    break;
                }
                for cred in page {
                    let owner = Owner::parse(&cred.owner)?;
                    match self.disconnect(actor.clone(), connection.clone(), owner).await {
                        Ok(()) => disconnected += 1,
                        // Removed meanwhile by someone else: nothing left to do for it.
                        Err(VaultError::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let removed = self.blocking(move |v| v.delete_connection(&actor, &connection, cascade)).await?;
        Ok(disconnected + removed)
    }

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
