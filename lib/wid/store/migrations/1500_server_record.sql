-- What a server runs with, recorded by `wid setup` (lib/wid/store/server_record.py), so `wid` run later
-- from another shell signs with the issuer the server serves, not a default (README.md, "Administering").
CREATE TABLE server_record (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
