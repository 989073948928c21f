-- latchkey schema v1. The store holds ciphertext only: every secret column is an
-- AES-256-GCM ciphertext under a data key (deks.wrapped), itself wrapped by a master key.

CREATE TABLE master_keys (
    version      INTEGER PRIMARY KEY,
    state        TEXT NOT NULL CHECK (state IN ('staged', 'active', 'decrypt_only', 'retired', 'destroyed')),
    created_at   INTEGER NOT NULL,
    activated_at INTEGER,
    retired_at   INTEGER,
    destroyed_at INTEGER,
    wraps        INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX master_keys_one_active ON master_keys (state) WHERE state = 'active';

-- One row per data key. `binding` names what the key belongs to and is part of the
-- wrap's associated data, so a sweep can re-wrap any key without knowing its owner.
CREATE TABLE deks (
    id          INTEGER PRIMARY KEY,
    key_version INTEGER NOT NULL REFERENCES master_keys (version),
    binding     BLOB NOT NULL,
    wrapped     BLOB NOT NULL
);
CREATE INDEX deks_by_version ON deks (key_version, id);

CREATE TABLE connections (
    id             TEXT PRIMARY KEY,
    kind           TEXT NOT NULL CHECK (kind IN ('oauth2', 'api_key')),
    spec           TEXT NOT NULL,            -- JSON, non-secret configuration
    secret_version INTEGER NOT NULL DEFAULT 0,
    dek_id         INTEGER REFERENCES deks (id),
    client_secret  BLOB,                     -- sealed
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE credentials (
    id               TEXT PRIMARY KEY,
    connection_id    TEXT NOT NULL REFERENCES connections (id),
    owner            TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('oauth2', 'api_key')),
    status           TEXT NOT NULL CHECK (status IN ('active', 'needs_reauth', 'revoked')),
    secret_version   INTEGER NOT NULL,
    dek_id           INTEGER NOT NULL REFERENCES deks (id),
    primary_secret   BLOB NOT NULL,          -- sealed api key or access token
    refresh_secret   BLOB,                   -- sealed refresh token
    token_type       TEXT,
    scopes           TEXT NOT NULL DEFAULT '',
    expires_at       INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_refresh_at  INTEGER,
    last_error       TEXT,
    refresh_failures INTEGER NOT NULL DEFAULT 0,
    UNIQUE (connection_id, owner)
);

CREATE TABLE admin_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,               -- SHA-256 of the random secret part
    label       TEXT,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL,
    revoked_at  INTEGER
);

-- Hash-chained: hash = SHA-256(prev_hash || canonical(record)).
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    ts_ms     INTEGER NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    detail    TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL
);
