-- latchkey schema v4: a configuration generation. Every change to an agent or a connection,
-- from any process (server or CLI), bumps it in the same transaction. The release path keeps
-- parsed policies and connection specs in memory and reads this counter in the same statement
-- as the credential, so a cached entry is used only while nothing has changed.
CREATE TABLE config_generation (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO config_generation (id, value) VALUES (1, 1);

CREATE TRIGGER agents_insert_generation AFTER INSERT ON agents
BEGIN UPDATE config_generation SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER agents_update_generation AFTER UPDATE ON agents
BEGIN UPDATE config_generation SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER agents_delete_generation AFTER DELETE ON agents
BEGIN UPDATE config_generation SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER connections_insert_generation AFTER INSERT ON connections
BEGIN UPDATE config_generation SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER connections_update_generation AFTER UPDATE ON connections
BEGIN UPDATE config_generation SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER connections_delete_generation AFTER DELETE ON connections
BEGIN UPDATE config_generation SET value = value + 1 WHERE id = 1; END;
