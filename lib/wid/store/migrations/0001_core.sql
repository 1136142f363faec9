-- Signing keys: private key encrypted with WID_SECRET_KEY. At most one row has state 'active'.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    state TEXT NOT NULL,               -- active | retired
    private_key {blob} NOT NULL,       -- Fernet token of the PKCS#8 PEM
    public_jwk TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT,
    verify_until BIGINT                -- retired keys stay published until every token they signed expired
);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active';

-- A value encrypted with WID_SECRET_KEY so a wrong key is detected at startup, not as garbage later.
CREATE TABLE key_check (
    id INTEGER PRIMARY KEY,
    token {blob} NOT NULL
);

-- Append-only audit log: issuance, exchange, proof, refresh, push, denial. Never a secret; tokens by jti.
CREATE TABLE audit_log (
    id {autoid},
    ts BIGINT NOT NULL,
    event TEXT NOT NULL,
    decision TEXT NOT NULL,            -- allow | deny | info
    api TEXT,
    actx TEXT,
    sub TEXT,
    iss TEXT,
    jti TEXT,
    request_id TEXT,
    detail TEXT NOT NULL               -- JSON object
);
CREATE INDEX audit_log_ts ON audit_log (ts);
CREATE INDEX audit_log_actx ON audit_log (actx, ts);
