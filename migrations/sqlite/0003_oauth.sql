-- latchkey schema v3: OAuth lifecycle. Refresh scheduling and a single-flight lease live in
-- the credential row itself, so they hold across processes and (later) replicas.

ALTER TABLE credentials ADD COLUMN refresh_due_at INTEGER;       -- unix s; NULL: nothing to refresh
ALTER TABLE credentials ADD COLUMN refresh_lease_until INTEGER;  -- unix ms; a refresh is in flight until then
ALTER TABLE credentials ADD COLUMN refresh_lease_holder TEXT;
-- Non-secret provider metadata the caller needs with the token (Salesforce's API host).
ALTER TABLE credentials ADD COLUMN instance_url TEXT;
CREATE INDEX credentials_refresh_due ON credentials (refresh_due_at) WHERE refresh_due_at IS NOT NULL;

CREATE TABLE connect_sessions (
    id            TEXT PRIMARY KEY,          -- in the connect_url
    connection_id TEXT NOT NULL REFERENCES connections (id) ON DELETE CASCADE,
    owner         TEXT NOT NULL,
    return_to     TEXT,
    created_by    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    state_hash    BLOB UNIQUE,               -- SHA-256 of the OAuth state, set when the link is opened
    dek_id        INTEGER REFERENCES deks (id),
    verifier      BLOB,                      -- sealed PKCE verifier
    opened_at     INTEGER,                   -- the link is single use
    finished_at   INTEGER                    -- the callback is single use
);
CREATE INDEX connect_sessions_expiry ON connect_sessions (expires_at);
