-- Until now a connection's token_endpoint_auth_method defaulted to client_secret_basic
-- when absent and was stored that way, which overrode the catalog's method for providers
-- that want client_secret_post. The field is now optional (absent: the catalog's method).
-- Stored values equal to the old default, on catalog providers that want another method,
-- are dropped so that the catalog applies.
UPDATE connections
SET spec = json_remove(spec, '$.oauth2.token_endpoint_auth_method')
WHERE json_extract(spec, '$.provider') IN
      ('google', 'microsoft', 'github', 'slack', 'salesforce', 'atlassian', 'hubspot', 'linear', 'asana', 'box')
  AND json_extract(spec, '$.oauth2.token_endpoint_auth_method') = 'client_secret_basic';

UPDATE config_generation SET value = value + 1 WHERE id = 1;
