-- Droplet provisioning and attestation (provisioning.py, refresh.py, docs/droplets.md).
-- No secret is stored here: refresh tokens and recovery challenges by SHA-256 hash only.

-- One nonce per POST /v2/droplets through the proxy: 'pending' before the upstream call, 'bound'
-- after the upstream created Droplets, 'failed' when it did not. Only a bound nonce can be proved.
CREATE TABLE provisioning_nonces (
    nonce TEXT PRIMARY KEY,
    team_uuid TEXT NOT NULL,
    jti TEXT NOT NULL,                 -- the provisioning token's jti
    state TEXT NOT NULL,               -- pending | bound | failed
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    failure TEXT                       -- why the upstream create did not bind it
);
CREATE INDEX provisioning_nonces_expires ON provisioning_nonces (expires_at);

-- The Droplets a nonce covers (one for a single create, each of a multi-create). A Droplet is bound
-- to one nonce ever, and proves with it at most once (proved_at).
CREATE TABLE provisioning_droplets (
    droplet_id BIGINT PRIMARY KEY,
    nonce TEXT NOT NULL,
    team_uuid TEXT NOT NULL,
    proved_at BIGINT
);
CREATE INDEX provisioning_droplets_nonce ON provisioning_droplets (nonce);

-- The host key each Droplet first proved, the anchor of recovery.
CREATE TABLE droplet_identities (
    team_uuid TEXT NOT NULL,
    droplet_id BIGINT NOT NULL,
    host_key_type TEXT NOT NULL,
    host_key {blob} NOT NULL,          -- SSH wire format public key
    host_key_sha256 TEXT NOT NULL,     -- OpenSSH fingerprint, for the audit log and operators
    public_ipv4 TEXT NOT NULL,         -- where it was last attested
    first_proved_at BIGINT NOT NULL,
    last_proved_at BIGINT NOT NULL,
    PRIMARY KEY (team_uuid, droplet_id)
);

-- Refresh token families: one chain per Droplet proof or recovery.
CREATE TABLE refresh_families (
    family_id TEXT PRIMARY KEY,
    team_uuid TEXT NOT NULL,
    droplet_id BIGINT NOT NULL,
    state TEXT NOT NULL,               -- active | revoked
    revoked_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX refresh_families_droplet ON refresh_families (team_uuid, droplet_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,       -- SHA-256 hex of the opaque token
    family_id TEXT NOT NULL,
    generation BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT                     -- set when rotated, and presenting it again revokes the family
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_expires ON refresh_tokens (expires_at);

-- Recovery challenges are stateless until used: a used one is remembered until it expires.
CREATE TABLE recovery_challenges_used (
    challenge_hash TEXT PRIMARY KEY,
    team_uuid TEXT NOT NULL,
    droplet_id BIGINT NOT NULL,
    used_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
