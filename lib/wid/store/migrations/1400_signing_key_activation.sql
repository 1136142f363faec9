-- Scheduled key rotation (keys.py): a `next` key is published before it signs, from activate_at.
-- Expand only: existing rows stay valid (NULL: active since it was created, or retired), and code
-- that predates the column ignores it (it signs with state 'active' and publishes rows whose
-- verify_until is in the future, which a `next` row has). States now: next | active | retired | revoked.
ALTER TABLE signing_keys ADD COLUMN activate_at BIGINT;
