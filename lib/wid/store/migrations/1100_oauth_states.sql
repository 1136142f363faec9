-- One table for the browser-bound OAuth state of every sign-in flow (browser_state.py), replacing the
-- per-flow tables. Hashes only; `sealed` holds what a flow must remember until its callback.
CREATE TABLE oauth_states (
    state_hash TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    browser_hash TEXT NOT NULL,
    sealed {blob},
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX oauth_states_expires ON oauth_states (expires_at);
DROP TABLE do_oauth_states;
DROP TABLE atproto_oauth_states;
