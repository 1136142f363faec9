-- OAuth web flow state for the DigitalOcean authorization (lib/wid/upstreams/digitalocean/oauth.py). One row per flow started:
-- the state and the browser cookie are stored as SHA-256 hashes only. A row is used at most once
-- (used_at) and is worthless after expires_at. Old rows are deleted when new flows start.
CREATE TABLE do_oauth_states (
    state_hash TEXT PRIMARY KEY,
    browser_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX do_oauth_states_expires ON do_oauth_states (expires_at);
