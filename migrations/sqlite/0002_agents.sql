-- latchkey schema v2: agents and their policies, trusted issuers for token exchange,
-- and latchkey's own token-signing keys (private halves sealed like any secret).

CREATE TABLE agents (
    id          TEXT PRIMARY KEY,            -- also the OAuth client_id
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,               -- argon2id PHC string of the client secret
    policy      TEXT NOT NULL,               -- JSON: {"grants": [...]}
    disabled    INTEGER NOT NULL DEFAULT 0,
    generation  INTEGER NOT NULL DEFAULT 1,  -- bumped when the secret rotates
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE issuers (
    issuer       TEXT PRIMARY KEY,
    jwks_uri     TEXT,
    jwks         TEXT,
    audience     TEXT NOT NULL,
    tenant_claim TEXT,
    roles_claim  TEXT,
    created_at   INTEGER NOT NULL,
    CHECK ((jwks_uri IS NULL) <> (jwks IS NULL))
);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL CHECK (alg = 'EdDSA'),
    public_key  BLOB NOT NULL,
    dek_id      INTEGER NOT NULL REFERENCES deks (id),
    private_key BLOB NOT NULL,               -- sealed
    state       TEXT NOT NULL CHECK (state IN ('active', 'published', 'retired')),
    created_at  INTEGER NOT NULL
);
