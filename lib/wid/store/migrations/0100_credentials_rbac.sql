-- Upstream credentials per (API, context), encrypted (credentials.py).
CREATE TABLE upstream_credentials (
    api TEXT NOT NULL,
    actx TEXT NOT NULL,
    sealed {blob} NOT NULL,
    status TEXT NOT NULL,              -- active | revoked
    status_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (api, actx)
);

-- The compiled RBAC configuration in force per context (lib/wid/store/rbac.py); version bumps on every push.
CREATE TABLE rbac_configs (
    api TEXT NOT NULL,
    actx TEXT NOT NULL,
    version BIGINT NOT NULL,
    main_commit TEXT NOT NULL,
    compiled TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (api, actx)
);
