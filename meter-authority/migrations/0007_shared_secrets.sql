-- Secrets every server on this database shares, each made once by the
-- first server that needs it (INSERT ... ON CONFLICT DO NOTHING, then read
-- back): the key of the tokens that let a meter read its pending list
-- (src/serve/routes/meter_auth.rs). So a token one server gave a meter
-- opens the list on any server behind the same address, and still does
-- after a restart, until it expires. Deleting a row (and restarting the
-- servers) rotates that secret: every token made under it is refused.
CREATE TABLE shared_secrets (
    name  text PRIMARY KEY,
    value bytea NOT NULL CHECK (length(value) = 32)
);
