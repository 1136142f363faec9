"""One schema, two backends: SQLite (default, WAL) and PostgreSQL (DATABASE_URI=postgresql://...).

SQL is written once with `?` placeholders; migrations are the .sql files in `migrations/`, applied in
name order under a lock so two processes starting at once cannot apply one twice. `{blob}` and
`{autoid}` in migration files are replaced per dialect. A new migration only expands the schema (the
previous release keeps serving on it during a rolling deploy; docs/operator.md, "Rolling deploys"),
and a released migration file is never edited or renamed.
"""

from __future__ import annotations

# The C modules themselves (docs/architecture.md, "What a request imports"): the `sqlite3` package adds
# to `_sqlite3` only adapters for `datetime` values, which this proxy never stores (its times are
# integers), at the price of importing `datetime`; `threading.local` and `threading.Lock` are `_thread`'s.
import _sqlite3 as sqlite3
import os
from _thread import _local as ThreadLocal
from _thread import allocate_lock
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, Protocol

from wid import config, metrics

Row = tuple[Any, ...]
_DIALECT_WORDS = {
    "sqlite": {"{blob}": "BLOB", "{autoid}": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"{blob}": "BYTEA", "{autoid}": "BIGSERIAL PRIMARY KEY"},
}


SQLITE_NAME = "wid.sqlite3"  # in WID_DATA_DIR


class DatabaseUnavailable(Exception):
    """The database cannot be reached or used right now: the caller answers 503, never a guess.

    Each one is counted as it is made (wid.metrics), so no place that raises one can be missed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        metrics.database_error()


class Conflict(Exception):
    """A uniqueness rule refused the write (for example a nonce used twice)."""


class _Cursor(Protocol):
    description: Any

    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Transaction:
    def __init__(self, db: Database, cursor: _Cursor):
        self._db = db
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if self._db.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        try:
            self._cursor.execute(sql, tuple(params))
            if self._cursor.description is None:  # a statement without a result set
                return []
            return [tuple(row) for row in self._cursor.fetchall()]
        except Exception as exc:
            raise _translate(exc) from exc

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self.execute(sql, params)
        return rows[0] if rows else None

    def lock(self, name: str) -> None:
        """Serialise writers on `name` until the transaction ends (SQLite's write lock already does)."""
        if self._db.dialect == "postgresql":
            self.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (name,))


def _translate(exc: Exception) -> Exception:
    name = type(exc).__name__
    if isinstance(exc, sqlite3.IntegrityError) or name in {"UniqueViolation", "IntegrityError"}:
        return Conflict(str(exc))
    if isinstance(exc, sqlite3.OperationalError) or name in {"OperationalError", "InterfaceError",
                                                             "AdminShutdown", "ConnectionTimeout"}:
        return DatabaseUnavailable(f"database unavailable: {str(exc).splitlines()[0] if str(exc) else name}")
    return exc


class BoundedCache(OrderedDict[str, Any]):
    """The per-database memo: at most MAX_ENTRIES entries, the oldest dropped first, so what a long-lived
    process remembers stays bounded whatever its requests name. Each user states its own staleness bound."""

    MAX_ENTRIES = 4096

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.MAX_ENTRIES:
            self.popitem(last=False)


class Database:
    def __init__(self, uri: str | None, data_dir: str):
        self.uri = uri
        self.dialect = "postgresql" if uri else "sqlite"  # wid.config accepts only postgresql:// URIs
        self.data_dir = data_dir
        self._local = ThreadLocal()
        self._migrated = False
        # Per-database memo for modules that cache what they read (signing keys, compiled RBAC...).
        self.cache = BoundedCache()
        self.cache_lock = allocate_lock()

    @property
    def sqlite_path(self) -> str:
        return os.path.join(self.data_dir, SQLITE_NAME)

    def _connect(self) -> Any:
        if self.dialect == "postgresql":
            try:
                import psycopg  # only on PostgreSQL deployments: its import costs ~0.1 s
            except ImportError as exc:
                raise config.ConfigError("DATABASE_URI names PostgreSQL but psycopg is not installed") from exc
            try:
                return psycopg.connect(str(self.uri), connect_timeout=5, autocommit=True)
            except psycopg.Error as exc:
                raise DatabaseUnavailable(f"cannot connect to PostgreSQL (DATABASE_URI): "
                                          f"{str(exc).splitlines()[0]}") from exc
        ensure_data_dir(self.data_dir)
        try:
            _create_private(self.sqlite_path)
            conn = sqlite3.connect(self.sqlite_path, timeout=10, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"cannot open SQLite database {self.sqlite_path}: {exc}") from exc
        return conn

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self.dialect == "postgresql" and _hung_up(conn):
            self._local.conn = None
            conn.close()
            conn = None
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Transaction]:
        """One transaction; `write` takes SQLite's write lock up front so read-then-write cannot race."""
        if not self._migrated:
            self.migrate()
        with self._raw_transaction(write) as tx:
            yield tx

    @contextmanager
    def _raw_transaction(self, write: bool) -> Iterator[Transaction]:
        if self.dialect == "postgresql":
            with self._postgresql_transaction() as tx:
                yield tx
            return
        conn = self._connection()
        try:
            cursor = conn.cursor()
            cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield Transaction(self, cursor)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        except Exception as exc:
            error = self._failed(conn, exc)
            if error is exc:
                raise
            raise error from exc

    @contextmanager
    def _postgresql_transaction(self) -> Iterator[Transaction]:
        """A connection kept from an earlier request may have died with its server (a restart, a failover):
        when BEGIN fails on it, nothing of this transaction has run, so it is retried once on a new one."""
        reused = getattr(self._local, "conn", None) is not None
        conn = self._connection()
        try:
            with ExitStack() as stack:
                try:
                    stack.enter_context(conn.transaction())
                except Exception:
                    if not (reused and getattr(conn, "closed", False)):
                        raise
                    self._local.conn = None
                    conn = self._connection()
                    stack.enter_context(conn.transaction())
                yield Transaction(self, conn.cursor())
        except Exception as exc:
            error = self._failed(conn, exc)
            if error is exc:
                raise
            raise error from exc

    def read_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """One read statement in its own implicit transaction: on PostgreSQL one round trip instead of
        three (BEGIN, the statement, COMMIT), for a per-request check that needs no consistent snapshot."""
        return self._one_statement(sql, params, repeatable=True)

    def write_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """One write statement in its own implicit transaction, for a row that commits alone (an audit row):
        SQLite holds its write lock for the statement only, not from BEGIN IMMEDIATE through the Python
        between to COMMIT, and PostgreSQL takes one round trip instead of three. Never repeated: on a
        connection that broke, the statement may have been applied."""
        return self._one_statement(sql, params, repeatable=False)

    def _one_statement(self, sql: str, params: Sequence[Any], repeatable: bool) -> Row | None:
        if not self._migrated:
            self.migrate()
        reused = getattr(self._local, "conn", None) is not None
        conn = self._connection()
        try:
            return Transaction(self, conn.cursor()).one(sql, params)
        except Exception as exc:
            error = self._failed(conn, exc)
            if repeatable and self.dialect == "postgresql" and reused and getattr(conn, "closed", False):
                # A kept connection that died with its server (as _postgresql_transaction): a read is safe to repeat.
                return Transaction(self, self._connection().cursor()).one(sql, params)
            if error is exc:
                raise
            raise error from exc

    def _failed(self, conn: Any, exc: Exception) -> Exception:
        """The error as ours; a connection that can no longer serve is dropped (the next transaction opens one)."""
        error = _translate(exc)
        if self.dialect == "postgresql":
            broken = bool(getattr(conn, "closed", False))
        else:
            cause = exc.__cause__ if isinstance(exc, DatabaseUnavailable) else exc
            broken = isinstance(error, DatabaseUnavailable) and not _sqlite_busy(cause)
        kept = getattr(self._local, "conn", None)
        if broken and kept is not None and kept is conn:
            self._local.conn = None
            if self.dialect == "sqlite":
                kept.close()
        return error

    def migrate(self) -> list[str]:
        """Apply pending migrations; safe when several processes start at the same moment."""
        names = migration_names()
        if self._applied_migrations() >= set(names):  # the common case: a read, no write lock
            self._migrated = True
            return []
        with self._raw_transaction(write=True) as tx:
            tx.lock("wid-migrations")
            tx.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT)")
            done = {row[0] for row in tx.execute("SELECT name FROM schema_migrations")}
            applied = []
            for name in names:
                if name in done:
                    continue
                for statement in _statements(self._render(name)):
                    tx.execute(statement)
                tx.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, _now()))
                applied.append(name)
        self._migrated = True
        return applied

    def pending_migrations(self) -> list[str]:
        """The migrations this release has that the database has not run (a read, nothing applied)."""
        return sorted(set(migration_names()) - self._applied_migrations())

    def _applied_migrations(self) -> set[str]:
        exists = ("SELECT to_regclass('schema_migrations') IS NOT NULL" if self.dialect == "postgresql"
                  else "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
        with self._raw_transaction(write=False) as tx:
            row = tx.one(exists)
            if not row or not row[0]:
                return set()
            return {r[0] for r in tx.execute("SELECT name FROM schema_migrations")}

    def _render(self, name: str) -> str:
        with open(os.path.join(MIGRATIONS_DIR, name), encoding="utf-8") as migration:
            sql = migration.read()
        for word, replacement in _DIALECT_WORDS[self.dialect].items():
            sql = sql.replace(word, replacement)
        return sql

    def ping(self) -> None:
        with self._raw_transaction(write=False) as tx:
            tx.execute("SELECT 1")


def _sqlite_busy(exc: BaseException | None) -> bool:
    """Another writer holds the lock: the connection is fine, the moment is not."""
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def _now() -> int:
    import time

    return int(time.time())


# A plain directory listing: importlib.resources costs ~12 ms per CGI process.
MIGRATIONS_DIR = os.path.join(os.path.dirname(os.path.realpath(__file__)), "migrations")


def migration_names() -> list[str]:
    return sorted(name for name in os.listdir(MIGRATIONS_DIR) if name.endswith(".sql"))


def _create_private(path: str) -> None:
    """Create the SQLite file readable by the service user only, whatever the umask of whoever runs first
    (`wid setup` by hand included); SQLite gives its -wal and -shm files the database file's mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise sqlite3.OperationalError(exc.strerror) from exc


def ensure_data_dir(path: str) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise config.ConfigError(f"data directory {path} (WID_DATA_DIR) cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise config.ConfigError(f"data directory {path} (WID_DATA_DIR) is not writable by uid {os.getuid()}")


def _hung_up(conn: Any) -> bool:
    """A kept PostgreSQL connection, idle between statements, that the server has since written to: a server
    shutting down says "terminating connection" and closes, and a backend that died leaves end-of-file, so
    the connection is dropped before a statement is sent on it (a write is never repeated: write_one). One
    poll with no wait, not a round trip; an idle connection has nothing to read (no LISTEN here), and were a
    notice ever waiting, the cost is one new connection."""
    import select  # a C module, already loaded with socket on most paths

    import psycopg  # loaded already: the connection is psycopg's

    try:
        if conn.closed:
            return True
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            return False  # inside a transaction: never dropped under it
        return bool(select.select([conn.fileno()], [], [], 0)[0])
    except (psycopg.Error, OSError, ValueError):  # a connection psycopg already knows is closed
        return True


_databases: dict[tuple[str | None, str], Database] = {}
_lock = allocate_lock()


def database() -> Database:
    """The process-wide database for the current settings."""
    s = config.settings()
    key = (s.database_uri, s.data_dir)
    with _lock:
        db = _databases.get(key)
        if db is None:
            db = _databases[key] = Database(s.database_uri, s.data_dir)
    return db


def close_all() -> None:
    """Close this thread's connections and forget every database (a CGI process before it exits; tests
    switch settings between cases)."""
    with _lock:
        for db in _databases.values():
            db.close()
        _databases.clear()
