-- latchkey schema v5: indexes on every column that references deks (id). Replacing a
-- secret deletes its old data key, and SQLite's foreign-key check then looks for rows
-- still pointing at it: without these indexes that is a full scan of each referencing
-- table per write (measured: a background refresh of one credential among 20,000 spent
-- ~45 % of its time scanning `credentials`).
CREATE INDEX credentials_dek ON credentials (dek_id);
CREATE INDEX connections_dek ON connections (dek_id);
CREATE INDEX signing_keys_dek ON signing_keys (dek_id);
CREATE INDEX connect_sessions_dek ON connect_sessions (dek_id);
