-- latchkey schema v8: no cheap denial of service, no stale trust, no refresh storms.

-- Long-lived random keys for keyed hashes (and later MACs), sealed like any secret under a
-- data key: not derived from a master-key version, so they survive rotation and
-- `keys destroy`.
CREATE TABLE vault_keys (
    purpose    TEXT PRIMARY KEY,
    dek_id     INTEGER NOT NULL REFERENCES deks (id),
    sealed     BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX vault_keys_dek ON vault_keys (dek_id);

-- Agent tokens carry an epoch from a global counter that never goes back: rotating an
-- agent's secret, disabling or deleting it moves it past every token issued before, and a
-- re-created agent starts above them too.
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO counters (name, value) VALUES ('agent_epoch', 0);
ALTER TABLE agents ADD COLUMN token_epoch INTEGER NOT NULL DEFAULT 0;

-- Refresh storms: the lifetime the provider issues (so that a min_ttl it cannot meet is
-- refused without a refresh), and when the last on-demand refresh happened (a cooldown
-- that holds across processes).
ALTER TABLE credentials ADD COLUMN issued_lifetime INTEGER;
ALTER TABLE credentials ADD COLUMN on_demand_refresh_at INTEGER;
