-- latchkey schema v7: connect links that connect the right person, scopes enforced in what
-- leaves the vault, and subjects namespaced per trusted issuer.

-- Trusted issuers: a subject namespace each (owners look like user:<prefix>:<sub>), a name
-- to show people, and latchkey's own OIDC client there for owner proof (secret sealed).
-- Existing issuers get the prefix iss<N>; see docs/operations.md, "Upgrading to schema 7".
ALTER TABLE issuers ADD COLUMN subject_prefix TEXT;
ALTER TABLE issuers ADD COLUMN display_name TEXT;
ALTER TABLE issuers ADD COLUMN proof_client_id TEXT;
ALTER TABLE issuers ADD COLUMN proof_dek_id INTEGER REFERENCES deks (id);
ALTER TABLE issuers ADD COLUMN proof_client_secret BLOB;
UPDATE issuers SET subject_prefix = 'iss' || rowid;
CREATE UNIQUE INDEX issuers_subject_prefix ON issuers (subject_prefix);
CREATE INDEX issuers_dek ON issuers (proof_dek_id);

-- Connect sessions: whether the person must prove who they are (and which role a tenant
-- owner needs), the hash of the per-session browser binding cookie, and the proof stage.
-- A session opened by an older version has no binding and can no longer complete: it
-- expires within ten minutes.
ALTER TABLE connect_sessions ADD COLUMN proof_issuer TEXT;
ALTER TABLE connect_sessions ADD COLUMN proof_role TEXT;
ALTER TABLE connect_sessions ADD COLUMN binding_hash BLOB;
ALTER TABLE connect_sessions ADD COLUMN proof_state_hash BLOB;
ALTER TABLE connect_sessions ADD COLUMN nonce_hash BLOB;
ALTER TABLE connect_sessions ADD COLUMN proven_at INTEGER;
CREATE UNIQUE INDEX connect_sessions_proof_state ON connect_sessions (proof_state_hash);
-- Links agents made under the old rules (no connect grant, no owner proof) are ended.
UPDATE connect_sessions SET finished_at = created_at WHERE finished_at IS NULL AND created_by LIKE 'agent:%';

-- Credentials: the provider account's identity, (iss, sub) of a verified ID token.
ALTER TABLE credentials ADD COLUMN account_iss TEXT;
ALTER TABLE credentials ADD COLUMN account_sub TEXT;

-- Narrower access tokens minted for a subset of a credential's scopes (downscope), sealed,
-- one per credential and scope set. Deleted with their credential, explicitly (their data
-- keys go too).
CREATE TABLE narrowed_tokens (
    credential_id TEXT NOT NULL REFERENCES credentials (id),
    scopes        TEXT NOT NULL,
    dek_id        INTEGER NOT NULL REFERENCES deks (id),
    access_token  BLOB NOT NULL,
    token_type    TEXT NOT NULL,
    expires_at    INTEGER,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (credential_id, scopes)
);
CREATE INDEX narrowed_tokens_dek ON narrowed_tokens (dek_id);

-- Every OAuth connection states its scope enforcement: downscope for catalog providers
-- known to honour a narrower refresh, strict for everything else.
UPDATE connections
SET spec = json_set(spec, '$.oauth2.scope_enforcement',
    CASE json_extract(spec, '$.provider') WHEN 'microsoft' THEN 'downscope' ELSE 'strict' END)
WHERE kind = 'oauth2' AND json_extract(spec, '$.oauth2.scope_enforcement') IS NULL;
