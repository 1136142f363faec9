"""Which server a `wid` command acts on: the data dir `make run` uses (lib/wid/config.py finds it the same
way: WID_DATA_DIR, else the checkout's data/, else the image's /var/lib/wid; never the current
directory), its database, and the issuer `wid setup` recorded there.

A command that acts on a server refuses a data dir that holds no configuration, and never creates a
signing key (only `wid setup` does).
"""

from __future__ import annotations

import os
import sys

from wid import config
from wid.store import server_record, storage

# Commands that need no server: they prepare one, check one, or work offline.
NO_SERVER = frozenset({"setup", "config", "doctor", "demo", "policy"})


class NoServer(Exception):
    """The settings point at no prepared server; the message names the variable and the fix."""


def describe() -> str:
    s = config.settings()
    sqlite = os.path.join(s.data_dir, storage.SQLITE_NAME)
    database = "PostgreSQL (DATABASE_URI)" if s.database_uri else f"SQLite {sqlite}"
    return f"data dir {s.data_dir}, database {database}, issuer {s.this_endpoint}"


def attach() -> None:
    """Check there is a server to act on and take its recorded issuer (unless THIS_ENDPOINT is set here)."""
    s = config.settings()
    if not s.database_uri and not os.path.isfile(os.path.join(s.data_dir, storage.SQLITE_NAME)):
        raise NoServer(f"WID_DATA_DIR {s.data_dir} holds no server configuration (no {storage.SQLITE_NAME}): set "
                       "WID_DATA_DIR to the data dir of the server you administer, or prepare a new one with "
                       "`make run` or `wid setup`")
    db = storage.database()
    pending = db.pending_migrations()
    if pending:
        raise NoServer(f"the database ({'DATABASE_URI' if s.database_uri else 'WID_DATA_DIR'}) has not been set up "
                       f"by this release ({len(pending)} migration(s) to apply): run `wid setup`")
    recorded = server_record.recorded_issuer()
    if recorded is None:
        return
    if "THIS_ENDPOINT" not in os.environ:  # the environment of this shell says nothing: the server's own issuer
        os.environ["THIS_ENDPOINT"] = recorded
        config.settings.cache_clear()
    elif s.this_endpoint != recorded:
        print(f"wid: warning: THIS_ENDPOINT is {s.this_endpoint} here, but the server records {recorded} "
              "(wid setup); tokens signed here name the former", file=sys.stderr)


def require_signing_key() -> None:
    from wid.store import keys

    if not any(k.state == "active" for k in keys.listing()):
        raise NoServer("the server has no signing key yet: run `wid setup` (make run does); wid creates none here")
