//! Connect sessions: single-use links for a person to connect an account, bound to the
//! browser that continues them. The OAuth `state`, the OIDC `nonce` and the binding cookie
//! are stored only as hashes; the PKCE verifier of the current stage is sealed.
//!
//! Stages: created (by an admin or an agent with `connect: true`) → opened by a POST from a
//! browser, which gets the binding cookie → proven, when the person must first sign in at
//! the owner's trusted issuer → finished by the provider's callback in that same browser.

use serde_json::json;

use super::connections::parse_stored;
use super::{new_id, Actor, Result, Vault, VaultError};
use crate::audit::{Event, Outcome};
use crate::crypto::{ct_eq, sha256, Binding};
use crate::model::oauth::{random_token, Pkce};
use crate::model::{ConnectionId, ConnectionSpec, Owner, ValidationError};
use crate::secret::Secret;
use crate::store::rows;
use crate::store::sessions::{self, NewSession, SessionRow, Stage};
use crate::store::sql::Conn;

/// Connect links live this long.
pub const SESSION_TTL: i64 = 600;
const VERIFIER: &str = "pkce_verifier";
const PROOF_VERIFIER: &str = "proof_pkce_verifier";

fn session_binding(connection: &str, owner: &str, id: &str) -> Binding {
    Binding::new("connect_session", connection, owner, id, 1)
}

/// A link to create.
#[derive(Debug, Clone)]
pub struct NewLink {
    /// Who asked, for the page and the audit trail (`admin:<id>`, `agent:<id>`, `cli:<user>`).
    pub requester: String,
    pub connection: ConnectionId,
    pub owner: Owner,
    pub return_to: Option<String>,
    /// Where the person must prove they are the owner first (`None`: no proof).
    pub proof: Option<ProofPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofPlan {
    /// The trusted issuer's URL.
    pub issuer: String,
    /// For tenant owners: a role the person must hold there.
    pub role: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CreatedLink {
    pub id: String,
    pub expires_at: i64,
    /// A credential exists for this owner and will be replaced when the flow completes.
    pub replaces_existing: bool,
}

/// What the confirmation page shows (reading it changes nothing).
#[derive(Debug, Clone)]
pub struct LinkView {
    pub connection: ConnectionId,
    pub connection_name: String,
    pub owner: Owner,
    pub requester: String,
    pub proof_issuer: Option<String>,
    pub expires_at: i64,
}

/// A stage just begun: where the browser goes next and the values it carries.
#[derive(Debug)]
pub struct StageStart {
    pub connection: ConnectionId,
    pub owner: Owner,
    pub spec: ConnectionSpec,
    /// `Some(issuer URL)` for the owner-proof stage; `None` for the provider stage.
    pub proof_issuer: Option<String>,
    pub state: Secret,
    pub nonce: Secret,
    pub challenge: String,
}

/// A session waiting for its owner proof, matched by the issuer's `state` in the browser
/// that holds its binding.
#[derive(Debug)]
pub struct ProofSession {
    pub id: String,
    pub connection: ConnectionId,
    pub owner: Owner,
    pub issuer: String,
    pub role: Option<String>,
    pub verifier: Secret,
    nonce_hash: Vec<u8>,
    proof_state_hash: Vec<u8>,
}

/// A callback matched to its session (consumed).
#[derive(Debug)]
pub struct FinishedSession {
    pub connection: ConnectionId,
    pub owner: Owner,
    pub spec: ConnectionSpec,
    pub return_to: Option<String>,
    pub verifier: Secret,
    pub requester: String,
    nonce_hash: Vec<u8>,
}

impl ProofSession {
    /// Whether `nonce` (an ID token's claim) is the one this stage sent.
    pub fn nonce_matches(&self, nonce: Option<&str>) -> bool {
        nonce.is_some_and(|n| ct_eq(&sha256(n.as_bytes()), &self.nonce_hash))
    }
}

impl FinishedSession {
    /// Whether `nonce` (an ID token's claim) is the one the provider stage sent.
    pub fn nonce_matches(&self, nonce: Option<&str>) -> bool {
        nonce.is_some_and(|n| ct_eq(&sha256(n.as_bytes()), &self.nonce_hash))
    }
}

/// Why a browser cannot continue a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// No open session matches (forged, replayed, expired or never opened).
    Unknown,
    /// A session matches, but this browser does not hold its binding cookie.
    WrongBrowser,
}

/// The binding cookie this browser holds for a session, by session id.
pub type BindingLookup<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

fn binding_ok(row: &SessionRow, binding: BindingLookup<'_>) -> bool {
    match (&row.binding_hash, binding(&row.id)) {
        (Some(stored), Some(presented)) => ct_eq(&sha256(presented.as_bytes()), stored),
        _ => false,
    }
}

fn in_allowlist(allowlist: &[String], r: &str) -> bool {
    allowlist.iter().any(|allowed| {
        r == allowed || r.starts_with(&format!("{}/", allowed.trim_end_matches('/'))) || r.starts_with(&format!("{allowed}?"))
    })
}

impl Vault {
    /// Creates a single-use connect link (10 minutes). Who may ask is decided by the caller.
    pub fn create_connect_session(&self, link: NewLink) -> Result<CreatedLink> {
        let now = self.clock.now();
        let (connection, owner) = (&link.connection, link.owner.to_string());
        self.store.write(|tx| {
            let row =
                rows::get_connection(tx, connection.as_str())?.ok_or_else(|| VaultError::NotFound(format!("connection '{connection}'")))?;
            let spec = parse_stored(&row)?;
            let Some(o) = spec.oauth2.as_ref() else {
                return Err(ValidationError(format!("connection '{connection}' is not an oauth2 connection")).into());
            };
            if link.return_to.as_deref().is_some_and(|r| !in_allowlist(&o.return_to_allowlist, r)) {
                return Err(ValidationError("return_to is not in the connection's return_to_allowlist".into()).into());
            }
            let replaces_existing = rows::get_credential(tx, connection.as_str(), &owner)?.is_some();
            let id = new_id("cs_")? + &new_id("")?;
            let proof = link.proof.as_ref();
            sessions::insert_session(
                tx,
                &NewSession {
                    id: &id,
                    connection_id: connection.as_str(),
                    owner: &owner,
                    return_to: link.return_to.as_deref(),
                    created_by: &link.requester,
                    proof_issuer: proof.map(|p| p.issuer.as_str()),
                    proof_role: proof.and_then(|p| p.role.as_deref()),
                    now,
                    expires_at: now + SESSION_TTL,
                },
            )?;
            let detail = json!({"expires_at": now + SESSION_TTL, "replaces_existing": replaces_existing,
                "owner_proof": proof.map(|p| &p.issuer)});
            self.audit(tx, Event::new(&link.requester, "connect.session", format!("{connection}/{owner}"), Outcome::Ok, detail))?;
            Ok(CreatedLink { id, expires_at: now + SESSION_TTL, replaces_existing })
        })
    }

    /// A link as its confirmation page shows it; reading it changes nothing.
    pub fn connect_link(&self, id: &str) -> Result<LinkView> {
        let now = self.clock.now();
        let gone = || VaultError::NotFound("connect link (it is invalid, used or expired)".into());
        let (s, conn) = self.store.read(|c| {
            let s = sessions::unopened_session(c, id, now)?.ok_or_else(gone)?;
            let conn = rows::get_connection(c, &s.connection_id)?.ok_or_else(gone)?;
            Ok::<_, VaultError>((s, conn))
        })?;
        let spec = parse_stored(&conn)?;
        Ok(LinkView {
            connection_name: spec.display_name.clone().unwrap_or_else(|| spec.id.to_string()),
            connection: spec.id,
            owner: Owner::parse(&s.owner)?,
            requester: s.created_by,
            proof_issuer: s.proof_issuer,
            expires_at: s.expires_at,
        })
    }

    /// Seals a stage's PKCE verifier and returns the stage's secrets and their hashes.
    fn stage(&self, tx: &Conn<'_>, s: &SessionRow, field: &str) -> Result<(Secret, Secret, Pkce, i64, Vec<u8>)> {
        let (state, nonce, pkce) = (random_token()?, random_token()?, Pkce::generate()?);
        let b = session_binding(&s.connection_id, &s.owner, &s.id);
        let (dek, dek_id) = self.new_dek(tx, &b)?;
        let sealed = dek.seal(pkce.verifier.expose().as_bytes(), &b, field)?;
        Ok((state, nonce, pkce, dek_id, sealed))
    }

    /// Opens a link once, for the browser that will hold `binding`: starts the owner-proof
    /// stage where one is required, the provider stage otherwise.
    pub fn open_connect_session(&self, id: &str, binding: &Secret) -> Result<StageStart> {
        let now = self.clock.now();
        let gone = || VaultError::NotFound("connect link (it is invalid, used or expired)".into());
        self.store.write(|tx| {
            let s = sessions::unopened_session(tx, id, now)?.ok_or_else(gone)?;
            let row = rows::get_connection(tx, &s.connection_id)?.ok_or_else(gone)?;
            let proof = s.proof_issuer.is_some();
            let field = if proof { PROOF_VERIFIER } else { VERIFIER };
            let (state, nonce, pkce, dek_id, sealed) = self.stage(tx, &s, field)?;
            let stage = Stage {
                state_hash: &sha256(state.expose().as_bytes()),
                nonce_hash: &sha256(nonce.expose().as_bytes()),
                dek_id,
                verifier: &sealed,
                proof,
            };
            if !sessions::open_session(tx, id, now, &sha256(binding.expose().as_bytes()), &stage)? {
                return Err(gone());
            }
            self.audit(
                tx,
                Event::new(
                    &Actor::System.name(),
                    "connect.open",
                    format!("{}/{}", s.connection_id, s.owner),
                    Outcome::Ok,
                    json!({"owner_proof": proof}),
                ),
            )?;
            Ok(StageStart {
                connection: ConnectionId::parse(&s.connection_id)?,
                owner: Owner::parse(&s.owner)?,
                spec: parse_stored(&row)?,
                proof_issuer: s.proof_issuer,
                state,
                nonce,
                challenge: pkce.challenge,
            })
        })
    }

    /// The session an owner-proof callback belongs to, if this browser holds its binding.
    /// A wrong browser is refused (and audited) without spending the session.
    pub fn proof_session(
        &self,
        proof_state: &str,
        binding: BindingLookup<'_>,
    ) -> Result<std::result::Result<ProofSession, SessionRefusal>> {
        let now = self.clock.now();
        let proof_state_hash = sha256(proof_state.as_bytes()).to_vec();
        let Some(s) = self.store.read(|c| sessions::session_by_proof_state(c, &proof_state_hash, now))? else {
            return Ok(Err(SessionRefusal::Unknown));
        };
        if !binding_ok(&s, binding) {
            self.audit_connect_refusal(&s, "connect.proof", "the browser does not hold this link's binding cookie");
            return Ok(Err(SessionRefusal::WrongBrowser));
        }
        let (Some(issuer), Some(sealed)) = (s.proof_issuer.clone(), s.sealed.as_ref()) else {
            return Ok(Err(SessionRefusal::Unknown));
        };
        let verifier = self.open_verifier(&s, sealed, PROOF_VERIFIER)?;
        Ok(Ok(ProofSession {
            connection: ConnectionId::parse(&s.connection_id)?,
            owner: Owner::parse(&s.owner)?,
            issuer,
            role: s.proof_role,
            verifier,
            nonce_hash: s.nonce_hash.unwrap_or_default(),
            proof_state_hash,
            id: s.id,
        }))
    }

    /// Owner proof passed: spends the proof stage and starts the provider stage.
    pub fn proven(&self, p: &ProofSession, subject: &str) -> Result<StageStart> {
        let now = self.clock.now();
        let gone = || VaultError::NotFound("connect link (it is invalid, used or expired)".into());
        self.store.write(|tx| {
            let s = sessions::session_by_proof_state(tx, &p.proof_state_hash, now)?.ok_or_else(gone)?;
            let row = rows::get_connection(tx, &s.connection_id)?.ok_or_else(gone)?;
            let (state, nonce, pkce, dek_id, sealed) = self.stage(tx, &s, VERIFIER)?;
            let next = Stage {
                state_hash: &sha256(state.expose().as_bytes()),
                nonce_hash: &sha256(nonce.expose().as_bytes()),
                dek_id,
                verifier: &sealed,
                proof: false,
            };
            if !sessions::prove_session(tx, &s.id, &p.proof_state_hash, now, &next)? {
                return Err(gone());
            }
            let detail = json!({"issuer": p.issuer, "subject": subject});
            self.audit(
                tx,
                Event::new(&Actor::System.name(), "connect.proof", format!("{}/{}", s.connection_id, s.owner), Outcome::Ok, detail),
            )?;
            Ok(StageStart {
                connection: ConnectionId::parse(&s.connection_id)?,
                owner: Owner::parse(&s.owner)?,
                spec: parse_stored(&row)?,
                proof_issuer: None,
                state,
                nonce,
                challenge: pkce.challenge,
            })
        })
    }

    /// Ends a session for good (owner proof failed): nothing can be stored through it.
    pub fn refuse_connect_session(&self, id: &str, action: &'static str, target: &str, reason: &str) -> Result<()> {
        let now = self.clock.now();
        self.store.write(|tx| {
            sessions::finish_session(tx, id, now)?;
            self.audit(tx, Event::new(&Actor::System.name(), action, target, Outcome::Denied, json!({"reason": reason})))?;
            Ok(())
        })
    }

    /// Matches a provider callback's `state` to its session and consumes it, if this
    /// browser holds the session's binding. A wrong browser is refused (and audited)
    /// without spending the session.
    pub fn finish_connect_session(
        &self,
        state: &str,
        binding: BindingLookup<'_>,
    ) -> Result<std::result::Result<FinishedSession, SessionRefusal>> {
        let now = self.clock.now();
        let state_hash = sha256(state.as_bytes());
        let found = self.store.write(|tx| {
            let Some(s) = sessions::session_by_state(tx, &state_hash, now)? else {
                return Ok::<_, VaultError>(Err(SessionRefusal::Unknown));
            };
            if !binding_ok(&s, binding) {
                return Ok(Err(SessionRefusal::WrongBrowser));
            }
            if !sessions::finish_session(tx, &s.id, now)? {
                return Ok(Err(SessionRefusal::Unknown));
            }
            Ok(Ok(s))
        })?;
        let s = match found {
            Ok(s) => s,
            Err(SessionRefusal::WrongBrowser) => {
                if let Some(s) = self.store.read(|c| sessions::session_by_state(c, &state_hash, now))? {
                    self.audit_connect_refusal(&s, "connect.callback", "the browser does not hold this link's binding cookie");
                }
                return Ok(Err(SessionRefusal::WrongBrowser));
            }
            Err(r) => return Ok(Err(r)),
        };
        let sealed = s.sealed.as_ref().ok_or_else(|| VaultError::Integrity("session without verifier".into()))?;
        let verifier = self.open_verifier(&s, sealed, VERIFIER)?;
        let row =
            self.store.read(|c| rows::get_connection(c, &s.connection_id))?.ok_or_else(|| VaultError::NotFound("connection".into()))?;
        Ok(Ok(FinishedSession {
            connection: ConnectionId::parse(&s.connection_id)?,
            owner: Owner::parse(&s.owner)?,
            spec: parse_stored(&row)?,
            return_to: s.return_to,
            verifier,
            requester: s.created_by,
            nonce_hash: s.nonce_hash.unwrap_or_default(),
        }))
    }

    fn open_verifier(&self, s: &SessionRow, sealed: &rows::SealedSecret, field: &str) -> Result<Secret> {
        let b = session_binding(&s.connection_id, &s.owner, &s.id);
        let plain = self
            .open_dek(&sealed.dek, &b)?
            .open(&sealed.ciphertext, &b, field)
            .map_err(|_| VaultError::Integrity("PKCE verifier failed to decrypt".into()))?;
        Ok(Secret::new(String::from_utf8(plain.to_vec()).map_err(|_| VaultError::Integrity("bad verifier".into()))?))
    }

    fn audit_connect_refusal(&self, s: &SessionRow, action: &'static str, reason: &str) {
        let ev = Event::new(
            &Actor::System.name(),
            action,
            format!("{}/{}", s.connection_id, s.owner),
            Outcome::Denied,
            json!({"reason": reason}),
        );
        if let Err(e) = self.store.write(|tx| self.audit(tx, ev)) {
            tracing::error!(error = %e, "audit write failed");
        }
    }

    /// Audits the end of a connect flow that stored nothing.
    pub fn audit_connect_failure(&self, target: &str, reason: &str) {
        let ev = Event::new(&Actor::System.name(), "connect.callback", target, Outcome::Failed, json!({"reason": reason}));
        if let Err(e) = self.store.write(|tx| self.audit(tx, ev)) {
            tracing::error!(error = %e, "audit write failed");
        }
    }

    /// Removes finished and expired connect sessions.
    pub fn purge_connect_sessions(&self) -> Result<u64> {
        let now = self.clock.now();
        Ok(self.store.write(|tx| sessions::purge_sessions(tx, now))?)
    }
}
