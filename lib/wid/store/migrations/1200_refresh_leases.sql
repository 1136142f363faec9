-- Leases (leases.py): which process or replica is doing a slow job (refreshing a context's upstream
-- credential) that others must not repeat at the same time. Claimed and released in short write
-- transactions; the job itself (a network call) runs between them, with no transaction open. A lease
-- whose holder crashed stops counting at expires_at.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,             -- what is leased, e.g. refresh:DigitalOcean:{team uuid}
    holder TEXT NOT NULL,              -- random id of one attempt
    claimed_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
