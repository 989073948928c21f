-- Replicas announce themselves (a heartbeat), so that `keys rotate` activates a new master
-- key only once every live replica can load it (SQLite: migration 0011).
CREATE TABLE replicas (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    seen_at      BIGINT NOT NULL,
    key_versions TEXT NOT NULL,
    missing_keys TEXT NOT NULL
);
