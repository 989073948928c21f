-- latchkey schema v10: schema metadata shared by both backends. `min_binary_version` is the
-- oldest latchkey that may open this database. (No write_lock table here, unlike PostgreSQL:
-- BEGIN IMMEDIATE already serialises SQLite's writers.)
CREATE TABLE schema_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO schema_meta (key, value) VALUES ('min_binary_version', '0.1.0');
