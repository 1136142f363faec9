-- The ATProto upstream (lib/wid/upstreams/atproto/oauth.py, identity.py). DID sessions themselves (access and
-- refresh tokens, DPoP key) live in upstream_credentials under api 'ATProto', encrypted.

-- The confidential client's ES256 keys for private_key_jwt, published at /oauth/atproto/jwks.json.
-- At most one 'active' key signs new sign-ins; a retired key keeps signing for the sessions that
-- were authorized with it (the authorization server binds a session to its client key).
CREATE TABLE atproto_client_keys (
    kid TEXT PRIMARY KEY,
    state TEXT NOT NULL,               -- active | retired
    private_key {blob} NOT NULL,       -- Fernet token of the PKCS#8 PEM
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT
);
CREATE UNIQUE INDEX atproto_client_keys_one_active ON atproto_client_keys (state) WHERE state = 'active';

-- Sign-ins in progress: state and browser secret as SHA-256 hashes; the PKCE verifier, the
-- session's DPoP key and what was resolved sealed with WID_SECRET_KEY. Used at most once.
CREATE TABLE atproto_oauth_states (
    state_hash TEXT PRIMARY KEY,
    browser_hash TEXT NOT NULL,
    sealed {blob} NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX atproto_oauth_states_expires ON atproto_oauth_states (expires_at);

-- The last DPoP nonce each server (origin) handed out, shared by every process and replica.
CREATE TABLE atproto_dpop_nonces (
    origin TEXT PRIMARY KEY,
    nonce TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Resolved DID documents (public data), re-fetched after ATPROTO_DID_CACHE_SECONDS.
CREATE TABLE atproto_did_cache (
    did TEXT PRIMARY KEY,
    document TEXT NOT NULL,
    pds TEXT NOT NULL,
    fetched_at BIGINT NOT NULL
);
