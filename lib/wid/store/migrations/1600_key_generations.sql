-- Key-set generations (lib/wid/store/keyring.py): bumped in the transaction that changes a key set and
-- read at every use of a cached key, so an emergency rotation stops the revoked key on every process
-- and replica from their next request. Expand only: code that predates the table ignores it (its
-- caches expire after 30 s, as they always did).
CREATE TABLE key_generations (
    name TEXT PRIMARY KEY,             -- the key kind: signing | atproto_client
    generation BIGINT NOT NULL
);
