-- Row integrity and audit checkpoints (SQLite: migration 0012, which explains them).
ALTER TABLE admin_tokens ADD COLUMN row_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE admin_tokens ADD COLUMN mac BYTEA;
ALTER TABLE agents ADD COLUMN row_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN mac BYTEA;
ALTER TABLE issuers ADD COLUMN row_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE issuers ADD COLUMN mac BYTEA;
ALTER TABLE connections ADD COLUMN row_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN mac BYTEA;
ALTER TABLE credentials ADD COLUMN row_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE credentials ADD COLUMN mac BYTEA;
ALTER TABLE signing_keys ADD COLUMN row_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE signing_keys ADD COLUMN mac BYTEA;
ALTER TABLE connect_sessions ADD COLUMN row_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE connect_sessions ADD COLUMN mac BYTEA;

-- The integrity state: a global row-version counter, the XOR of every sealed row's MAC (so
-- a deleted, re-inserted or rolled-back row changes it) and the configuration generation at
-- the last sealed write; MACed itself. Written by latchkey when it seals the existing rows.
CREATE TABLE integrity_state (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    seq        BIGINT NOT NULL,
    digest     BYTEA NOT NULL,
    generation BIGINT NOT NULL,
    mac        BYTEA NOT NULL
);

-- Signed audit checkpoints (head sequence, head hash, configuration generation, integrity
-- state), chained to each other; each is also written to the checkpoint sink outside the
-- database. `body` is the exact signed JSON line.
CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    audit_seq BIGINT NOT NULL,
    body      TEXT NOT NULL
);

-- Older binaries write rows without a MAC, which this version refuses: they must not write here.
UPDATE schema_meta SET value = '0.2.0' WHERE key = 'min_binary_version';
