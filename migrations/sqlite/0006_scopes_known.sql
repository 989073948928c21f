-- latchkey schema v6: whether a credential's scopes are known. A token imported without
-- `scope`, or a provider scope string that could not be parsed, leaves them unknown, and
-- scope enforcement then treats the credential as holding more than any grant allows.
-- Until now an empty `scopes` meant exactly that, so existing empty rows become unknown.
ALTER TABLE credentials ADD COLUMN scopes_known INTEGER NOT NULL DEFAULT 1;
UPDATE credentials SET scopes_known = 0 WHERE scopes = '';
