-- Keys of external OIDC issuers (issuers.py), shared by every CGI process and replica.
-- One row per issuer on the operator's allowlist that a token has needed; written only by fetches.
CREATE TABLE issuer_cache (
    issuer TEXT PRIMARY KEY,
    jwks_uri TEXT,                     -- from the issuer's discovery document, at the last success
    jwks TEXT,                         -- JSON list of the usable public JWKs (NULL before the first success)
    fetched_at BIGINT,                 -- last successful fetch
    fresh_until BIGINT,                -- fetched_at + Cache-Control max-age, clamped to sane bounds
    attempt_at BIGINT NOT NULL,        -- last fetch started or failed: refetch rate limit and failure backoff
    error TEXT                         -- why the last fetch failed (NULL after a success)
);
