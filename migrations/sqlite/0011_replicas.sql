-- latchkey schema v11: replicas announce themselves (a heartbeat), so that `keys rotate`
-- activates a new master key only once every live replica can load it.
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    started_at   INTEGER NOT NULL,
    seen_at      INTEGER NOT NULL,   -- unix milliseconds, by the vault's clock
    key_versions TEXT NOT NULL,      -- master key versions this replica can load, e.g. "1,2"
    missing_keys TEXT NOT NULL       -- recorded versions it cannot load, e.g. "3"
);
