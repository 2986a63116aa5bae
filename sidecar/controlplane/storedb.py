"""Where the flag store's rows live: the schema, and the embedded SQLite database.

The store (``store.FlagStore``) speaks to a ``Database`` through short transactions and
portable SQL with ``?`` placeholders; this module holds that contract, the schema both
backends share, and SQLite (stdlib ``sqlite3``, WAL, one file under ``--data-dir``).
PostgreSQL, for several replicas, is ``postgres.PostgresDatabase``.

Tables: ``fader_head`` (one row: the newest version, the row every write locks and moves
on, which is what makes a stale write fail), ``fader_versions`` (author, time, reason,
action and diff of each version), ``fader_items`` (each item of the flag set, by ``kind``
and name, as of the version that changed it: Split flags, segments, rule-based segments,
flagd flags, flagd evaluators and flagd settings, ``flagset.KINDS``; ``kind`` is free text,
so a new kind needs no migration; a NULL body means removed),
``fader_rollouts`` (rollout plans) and ``fader_meta`` (small facts such as the digest of
a ``--snapshot`` file last applied).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS fader_head (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fader_versions (version BIGINT PRIMARY KEY,"
    " created_at DOUBLE PRECISION NOT NULL, author TEXT NOT NULL, reason TEXT NOT NULL,"
    " action TEXT NOT NULL, diff TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fader_items (kind TEXT NOT NULL, name TEXT NOT NULL,"
    " version BIGINT NOT NULL, body TEXT, PRIMARY KEY (kind, name, version))",
    "CREATE INDEX IF NOT EXISTS fader_items_by_version ON fader_items (version)",
    "CREATE TABLE IF NOT EXISTS fader_rollouts (flag TEXT PRIMARY KEY, plan TEXT NOT NULL,"
    " updated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS fader_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO fader_head (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING",
)

Row = tuple[Any, ...]


class Tx(Protocol):
    """One open transaction."""

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Execute a statement; the number of rows it changed."""
        ...

    def lock_head(self) -> int:
        """The newest version, locked until the transaction ends."""
        ...

    def lock_plan(self, flag: str) -> str | None:
        """The rollout plan JSON of ``flag``, locked until the transaction ends."""
        ...

    def notify(self, version: int) -> None:
        """Tell other replicas, once committed, that ``version`` exists."""
        ...


class Database(Protocol):
    """A backend: transactions, and a way to hear of versions other replicas wrote."""

    description: str

    def transaction(self) -> Any:
        """Context manager yielding a Tx; commits on success, rolls back on error."""
        ...

    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Call ``on_change`` whenever another process may have written (until ``stop``)."""
        ...

    def close(self) -> None: ...


class _SqliteTx:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._connection.execute(sql, tuple(params)).fetchall()

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._connection.execute(sql, tuple(params)).rowcount

    def lock_head(self) -> int:
        # BEGIN IMMEDIATE already holds the database's write lock.
        return int(self.query("SELECT version FROM fader_head WHERE id = 1")[0][0])

    def lock_plan(self, flag: str) -> str | None:
        rows = self.query("SELECT plan FROM fader_rollouts WHERE flag = ?", (flag,))
        return str(rows[0][0]) if rows else None

    def notify(self, version: int) -> None:
        """One process owns a SQLite store: nobody else to tell."""


class SqliteDatabase:
    """One SQLite file in WAL mode, one connection, transactions taken one at a time."""

    FILE_NAME = "fader.db"

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.path = data_dir / self.FILE_NAME
        self.description = f"sqlite:{self.path}"
        self._lock = threading.Lock()
        try:
            self._connection = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self._connection.execute("PRAGMA journal_mode=WAL")
            with self.transaction() as tx:
                for statement in SCHEMA:
                    tx.run(statement)
        except sqlite3.Error as exc:
            raise OSError(f"cannot open the flag store {self.path}: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            # IMMEDIATE: take the write lock up front, so a transaction never fails
            # half-way on a lock upgrade.
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(self._connection)
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Nothing to hear: this process is the only writer."""

    def close(self) -> None:
        with self._lock:
            self._connection.close()
