-- latchkey schema v12: row integrity. Every row that grants access or says where secrets go
-- carries a MAC under a long-lived random key (sealed in vault_keys as 'row_mac') over its
-- table, its columns and a row version drawn from one counter that only grows, so a
-- database writer can neither forge nor swap rows, and an old version is recognisable.
ALTER TABLE admin_tokens ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE admin_tokens ADD COLUMN mac BLOB;
ALTER TABLE agents ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN mac BLOB;
ALTER TABLE issuers ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE issuers ADD COLUMN mac BLOB;
ALTER TABLE connections ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE connections ADD COLUMN mac BLOB;
ALTER TABLE credentials ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE credentials ADD COLUMN mac BLOB;
ALTER TABLE signing_keys ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE signing_keys ADD COLUMN mac BLOB;
ALTER TABLE connect_sessions ADD COLUMN row_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE connect_sessions ADD COLUMN mac BLOB;

-- The integrity state: a global row-version counter, the XOR of every sealed row's MAC (so
-- a deleted, re-inserted or rolled-back row changes it) and the configuration generation at
-- the last sealed write; MACed itself. Written by latchkey when it seals the existing rows.
CREATE TABLE integrity_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    seq        INTEGER NOT NULL,
    digest     BLOB NOT NULL,
    generation INTEGER NOT NULL,
    mac        BLOB NOT NULL
);

-- Signed audit checkpoints (head sequence, head hash, configuration generation, integrity
-- state), chained to each other; each is also written to the checkpoint sink outside the
-- database. `body` is the exact signed JSON line.
CREATE TABLE audit_checkpoints (
    seq       INTEGER PRIMARY KEY,
    audit_seq INTEGER NOT NULL,
    body      TEXT NOT NULL
);

-- Older binaries write rows without a MAC, which this version refuses: they must not write here.
UPDATE schema_meta SET value = '0.2.0' WHERE key = 'min_binary_version';
