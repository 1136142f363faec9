"""What a server runs with, recorded at `wid setup`: its issuer (THIS_ENDPOINT).

The environment alone is lost when the shell changes: `wid` commands run later read the issuer from here
(lib/wid/cli/server.py), so a token signed by hand names the issuer the server actually serves.
"""

from __future__ import annotations

import time

from wid.store import storage

ISSUER = "this_endpoint"


def record_issuer(issuer: str) -> None:
    with storage.database().transaction() as tx:
        tx.execute("INSERT INTO server_record (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                   "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                   (ISSUER, issuer, int(time.time())))


def recorded_issuer() -> str | None:
    with storage.database().transaction(write=False) as tx:
        row = tx.one("SELECT value FROM server_record WHERE name = ?", (ISSUER,))
    return str(row[0]) if row else None
