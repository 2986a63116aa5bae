"""The flag store on PostgreSQL (psycopg 3), for several control-plane replicas.

Same schema and SQL as SQLite (``storedb``). What PostgreSQL adds: the head row is locked
with ``SELECT ... FOR UPDATE``, so two replicas writing at once are serialised and the
second sees the first's version (a stale base then gets 409, exactly as on one replica);
each committed version is announced with ``NOTIFY fader_versions``, and every replica
LISTENs on its own connection, catches up and offers the new snapshot to its sidecars.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from sidecar.controlplane.storedb import SCHEMA, Row, Tx

log = logging.getLogger(__name__)

CHANNEL = "fader_versions"
# Serialises schema creation when replicas start together (CREATE ... IF NOT EXISTS races).
_SCHEMA_LOCK = 0x46414452
_RECONNECT_SECONDS = 1.0


def _sql(statement: str) -> str:
    """Portable ``?`` placeholders to psycopg's ``%s``."""
    return statement.replace("%", "%%").replace("?", "%s")


class _PgTx:
    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(_sql(sql), tuple(params))
        return list(self._cursor.fetchall())

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cursor.execute(_sql(sql), tuple(params))
        return self._cursor.rowcount

    def lock_head(self) -> int:
        return int(self.query("SELECT version FROM fader_head WHERE id = 1 FOR UPDATE")[0][0])

    def lock_plan(self, flag: str) -> str | None:
        rows = self.query("SELECT plan FROM fader_rollouts WHERE flag = ? FOR UPDATE", (flag,))
        return str(rows[0][0]) if rows else None

    def notify(self, version: int) -> None:
        self.run("SELECT pg_notify(?, ?)", (CHANNEL, str(version)))


def redact(dsn: str) -> str:
    """The DSN without its password, for logs and status."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", re.sub(r"password=\S+", "password=***", dsn))


class PostgresDatabase:
    """One connection for transactions (taken one at a time), one more for LISTEN."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.description = f"postgresql:{redact(dsn)}"
        self._lock = threading.Lock()
        self._connection: psycopg.Connection[Any] | None = None
        with self.transaction() as tx:
            tx.query("SELECT pg_advisory_xact_lock(?)", (_SCHEMA_LOCK,))
            for statement in SCHEMA:
                tx.run(statement)

    def _connect(self) -> psycopg.Connection[Any]:
        if self._connection is None or self._connection.closed or self._connection.broken:
            try:
                self._connection = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
            except psycopg.Error as exc:
                raise ConnectionError(f"cannot reach {redact(self.dsn)}: {exc}") from None
        return self._connection

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            connection = self._connect()
            try:
                with connection.transaction(), connection.cursor() as cursor:
                    yield _PgTx(cursor)
            except psycopg.OperationalError:
                connection.close()  # reconnect on the next transaction
                raise

    def listen(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """LISTEN until ``stop``; after a lost connection, reconnect and catch up."""
        while not stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    on_change()  # whatever was written while not listening
                    while not stop.is_set():
                        for _ in connection.notifies(timeout=0.5, stop_after=1):
                            on_change()
            except psycopg.Error as exc:
                log.warning("flag store notifications: %s; reconnecting", exc)
                stop.wait(_RECONNECT_SECONDS)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
