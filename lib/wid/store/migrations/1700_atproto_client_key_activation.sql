-- ATProto client keys rotate as signing keys do (lib/wid/store/keyring.py): a `next` key is published
-- before it serves new sign-ins (from activate_at), and a retired key is kept at least until
-- verify_until (sign-ins started with it), then as long as a session names it. Expand only: existing
-- rows stay valid (NULL: active since created, or retired by the release before), and code that
-- predates the columns signs new sign-ins with state 'active', which a `next` row is not.
-- States now: next | active | retired | revoked.
ALTER TABLE atproto_client_keys ADD COLUMN activate_at BIGINT;
ALTER TABLE atproto_client_keys ADD COLUMN verify_until BIGINT;
