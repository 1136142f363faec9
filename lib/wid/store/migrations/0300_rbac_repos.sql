-- RBAC repos served over git smart HTTP (rbac_repo.py). One row per git object and per ref, per
-- context; objects are immutable and content-addressed within their repo. Pushes are in the audit log.
CREATE TABLE rbac_repo_objects (
    api TEXT NOT NULL,
    actx TEXT NOT NULL,
    sha TEXT NOT NULL,                 -- hex object id
    type INTEGER NOT NULL,             -- 1 commit, 2 tree, 3 blob, 4 tag
    size BIGINT NOT NULL,              -- inflated size of the raw content
    data {blob} NOT NULL,              -- zlib-compressed raw content (no git header)
    created_at BIGINT NOT NULL,
    PRIMARY KEY (api, actx, sha)
);

-- refs/heads/main (pushed by admins) and refs/heads/schema (the compiled rbac.json, written by the server).
CREATE TABLE rbac_repo_refs (
    api TEXT NOT NULL,
    actx TEXT NOT NULL,
    name TEXT NOT NULL,
    sha TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (api, actx, name)
);
