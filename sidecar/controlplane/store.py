"""The flag store: every change is a new version of the whole flag set, with its history.

``change`` is the one way in. It locks the head version, refuses a write based on an older
version (``StaleVersion``, HTTP 409) without writing anything, runs the edit on the newest
set, and, when something changed, records the new version (author, time, reason, action,
diff) and the items it changed in one transaction. Subscribers (the snapshot offers) are
then told, in version order. Other control-plane modules call the same methods in process
(``store.kill("f", author="guardrail", reason="error rate 4 %")``).

Several replicas may share one PostgreSQL database: each keeps the current set in memory
and catches up from the rows (``refresh``) when the database tells it of a new version, or
inside ``change`` when its head lock shows that another replica wrote first.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.controlplane import edits
from sidecar.controlplane.documents import Part
from sidecar.controlplane.flagset import (
    FLAG_KINDS,
    Change,
    FlagSet,
    changed_keys,
    diff,
    encode,
)
from sidecar.controlplane.storedb import Database, Tx

log = logging.getLogger(__name__)

Key = tuple[str, str]
Hook = Callable[[Tx, int], None]

# How often a replica re-reads the head even without a notification (a lost connection
# can drop one).
POLL_SECONDS = 5.0


class StaleVersion(Exception):
    """The write was based on ``base``, but the store is at ``current``: nothing written."""

    def __init__(self, base: int, current: int) -> None:
        super().__init__(
            f"stale write: based on version {base}, but the flag set is at version {current}"
            " (re-read and try again)"
        )
        self.base = base
        self.current = current


class UnknownVersion(LookupError):
    """No such version in the store."""


@dataclass(frozen=True)
class State:
    """The flag set at one version, and the version in which each item last changed."""

    version: int
    flags: FlagSet
    changed: Mapping[Key, int]

    def document(self) -> dict[str, Any]:
        """The snapshot document sidecars receive for this version."""
        return self.flags.document(self.version, self.changed)


@dataclass(frozen=True)
class VersionRecord:
    version: int
    created_at: float
    author: str
    reason: str
    action: str
    changes: tuple[Change, ...]

    def to_json(self, name: str | None = None) -> dict[str, Any]:
        """As the API shows it; with ``name``, only that flag's part of the diff."""
        changes = [
            c.to_json()
            for c in self.changes
            if name is None or (c.kind in FLAG_KINDS and c.name == name)
        ]
        return {
            "version": self.version,
            "time": self.created_at,
            "author": self.author,
            "reason": self.reason,
            "action": self.action,
            "changes": changes,
        }


@dataclass(frozen=True)
class Written:
    """What a change did: the version it made (or the unchanged current one)."""

    version: int
    changed: bool
    changes: tuple[Change, ...] = ()
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "changed": self.changed,
            "changes": [c.to_json() for c in self.changes],
            "notes": list(self.notes),
        }


class FlagStore:
    """The versioned flag set on a ``Database`` (SQLite or PostgreSQL)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._write_lock = threading.RLock()
        self._subscribers: list[Callable[[State], None]] = []
        self._records: dict[int, VersionRecord] = {}
        with db.transaction() as tx:
            self._state = _load(tx, tx.lock_head())
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def state(self) -> State:
        return self._state

    @property
    def version(self) -> int:
        return self._state.version

    # --- subscribers and replicas ------------------------------------------------------

    def subscribe(self, subscriber: Callable[[State], None]) -> Callable[[], None]:
        """Call ``subscriber(state)`` for every new version, in order, from the writer."""
        with self._write_lock:
            self._subscribers.append(subscriber)

        def unsubscribe() -> None:
            with self._write_lock:
                if subscriber in self._subscribers:
                    self._subscribers.remove(subscriber)

        return unsubscribe

    def start(self) -> None:
        """Hear of versions written by other replicas (notifications, and a slow poll)."""
        self._stop.clear()
        for target in (self._listen, self._poll):
            thread = threading.Thread(target=target, daemon=True, name=f"store-{target.__name__}")
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()

    def _listen(self) -> None:
        self.db.listen(self._refresh_quietly, self._stop)

    def _poll(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self._refresh_quietly()

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception:
            log.exception("cannot read the flag store; will retry")

    def refresh(self) -> bool:
        """Catch up with versions written elsewhere; True when there were some."""
        with self._write_lock:
            with self.db.transaction() as tx:
                head = int(tx.query("SELECT version FROM fader_head WHERE id = 1")[0][0])
                if head == self._state.version:
                    return False
                previous = self._state
                self._state = _catch_up(tx, previous, head)
            log.info("flag set: caught up from version %d to %d", previous.version, head)
            self._publish(self._state)
            return True

    def _publish(self, state: State) -> None:
        for subscriber in tuple(self._subscribers):
            try:
                subscriber(state)
            except Exception:
                log.exception("a flag-store subscriber failed on version %d", state.version)

    # --- the one way in ------------------------------------------------------------------

    def change(
        self,
        edit: edits.Edit,
        *,
        author: str,
        reason: str,
        action: str,
        base_version: int | None = None,
        hook: Hook | None = None,
    ) -> Written:
        """Run ``edit`` on the newest set and record the result as a new version.

        ``base_version``: the version the caller's change is based on; if the store has
        moved on, StaleVersion and nothing is written. ``hook(tx, version)`` runs inside the
        same transaction (e.g. to save a rollout plan with its step), also when the edit
        changed nothing; an exception from it undoes everything.
        """
        with self._write_lock:
            with self.db.transaction() as tx:
                head = tx.lock_head()
                if base_version is not None and base_version != head:
                    raise StaleVersion(base_version, head)
                current = _catch_up(tx, self._state, head)
                self._state = current
                edited = edit(current.flags)
                changes = tuple(diff(current.flags, edited.flags))
                if not changes:
                    if hook is not None:
                        hook(tx, head)
                    return Written(head, False, (), edited.notes)
                version = head + 1
                now = time.time()
                if (
                    tx.run(
                        "UPDATE fader_head SET version = ? WHERE id = 1 AND version = ?",
                        (version, head),
                    )
                    != 1
                ):  # cannot happen while the head is locked; refuse rather than fork
                    raise StaleVersion(head, head + 1)
                tx.run(
                    "INSERT INTO fader_versions (version, created_at, author, reason, action,"
                    " diff) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        version,
                        now,
                        author,
                        reason,
                        action,
                        json.dumps([c.to_json() for c in changes]),
                    ),
                )
                changed = changed_keys(current.flags, edited.flags)
                for (kind, name), body in changed.items():
                    tx.run(
                        "INSERT INTO fader_items (kind, name, version, body) VALUES (?, ?, ?, ?)",
                        (kind, name, version, None if body is None else encode(body)),
                    )
                if hook is not None:
                    hook(tx, version)
                tx.notify(version)
            marks = dict(current.changed)
            for key, body in changed.items():
                if body is None:
                    marks.pop(key, None)
                else:
                    marks[key] = version
            self._state = State(version, edited.flags, marks)
            self._records[version] = VersionRecord(version, now, author, reason, action, changes)
            log.info("flag set version %d by %s (%s): %s", version, author, action, reason)
            self._publish(self._state)
            return Written(version, True, changes, edited.notes)

    def preview(self, edit: edits.Edit) -> Written:
        """What ``edit`` would change, without writing (``--dry-run``)."""
        current = self._state
        edited = edit(current.flags)
        return Written(
            current.version, False, tuple(diff(current.flags, edited.flags)), edited.notes
        )

    # --- the changes, by name (the in-process API) -----------------------------------------

    def apply(
        self,
        parts: Sequence[Part],
        *,
        author: str,
        reason: str,
        replace: bool = False,
        base_version: int | None = None,
        hook: Hook | None = None,
    ) -> Written:
        return self.change(
            edits.apply_documents(parts, replace=replace),
            author=author,
            reason=reason,
            action="apply",
            base_version=base_version,
            hook=hook,
        )

    def put_flag(
        self,
        name: str,
        definition: Any,
        *,
        author: str,
        reason: str,
        base_version: int | None = None,
    ) -> Written:
        action = "edit" if self._state.flags.dialect(name) is not None else "create"
        return self.change(
            edits.put_flag(name, definition),
            author=author,
            reason=reason,
            action=action,
            base_version=base_version,
        )

    def dial(
        self,
        name: str,
        percent: int,
        treatment: str | None = None,
        *,
        author: str,
        reason: str,
        base_version: int | None = None,
        hook: Hook | None = None,
    ) -> Written:
        return self.change(
            edits.dial(name, percent, treatment),
            author=author,
            reason=reason,
            action="dial",
            base_version=base_version,
            hook=hook,
        )

    def kill(
        self,
        name: str,
        *,
        author: str,
        reason: str,
        base_version: int | None = None,
        hook: Hook | None = None,
    ) -> Written:
        """Every key gets the flag's default treatment (the guardrails call this too)."""
        return self.change(
            edits.set_killed(name, True),
            author=author,
            reason=reason,
            action="kill",
            base_version=base_version,
            hook=hook,
        )

    def revive(
        self, name: str, *, author: str, reason: str, base_version: int | None = None
    ) -> Written:
        return self.change(
            edits.set_killed(name, False),
            author=author,
            reason=reason,
            action="revive",
            base_version=base_version,
        )

    def delete(
        self, name: str, *, author: str, reason: str, base_version: int | None = None
    ) -> Written:
        return self.change(
            edits.delete(name),
            author=author,
            reason=reason,
            action="delete",
            base_version=base_version,
        )

    def rollback(
        self,
        name: str,
        to_version: int,
        *,
        author: str,
        reason: str,
        base_version: int | None = None,
    ) -> Written:
        """The flag's rules as of ``to_version``, recorded as a new version."""
        kind, definition = self.flag_at(name, to_version)
        return self.change(
            edits.restore(name, kind, definition, to_version),
            author=author,
            reason=reason or f"rollback to version {to_version}",
            action="rollback",
            base_version=base_version,
        )

    # --- reading history -----------------------------------------------------------------

    def flag_at(self, name: str, version: int) -> tuple[str, dict[str, Any]]:
        """The flag's dialect (its kind) and definition at ``version``; UnknownVersion /
        UnknownFlag otherwise."""
        if not 1 <= version <= self._state.version:
            raise UnknownVersion(f"no version {version} (the flag set is at {self._state.version})")
        with self.db.transaction() as tx:
            for kind in FLAG_KINDS:  # a name is a flag of one dialect at a time
                rows = tx.query(
                    "SELECT body FROM fader_items WHERE kind = ? AND name = ? AND version <= ?"
                    " ORDER BY version DESC LIMIT 1",
                    (kind, name, version),
                )
                if rows and rows[0][0] is not None:
                    body: dict[str, Any] = json.loads(rows[0][0])
                    return kind, body
        raise edits.UnknownFlag(name, f"flag {name!r} did not exist at version {version}")

    def history(self, name: str | None = None, limit: int = 100) -> list[VersionRecord]:
        """Newest first: the versions that changed flag ``name`` (either dialect; or any
        version, when None)."""
        if name is None:
            sql = (
                "SELECT version, created_at, author, reason, action, diff FROM fader_versions"
                " ORDER BY version DESC LIMIT ?"
            )
            params: tuple[Any, ...] = (limit,)
        else:
            sql = (
                "SELECT version, created_at, author, reason, action, diff FROM fader_versions"
                " WHERE version IN (SELECT version FROM fader_items"
                f" WHERE kind IN ({', '.join('?' for _ in FLAG_KINDS)}) AND name = ?)"
                " ORDER BY version DESC LIMIT ?"
            )
            params = (*FLAG_KINDS, name, limit)
        with self.db.transaction() as tx:
            rows = tx.query(sql, params)
        return [_record(row) for row in rows]

    def records(self, versions: set[int]) -> dict[int, VersionRecord]:
        """The records of ``versions`` (cached: a version never changes)."""
        missing = sorted(v for v in versions if v not in self._records)
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            with self.db.transaction() as tx:
                rows = tx.query(
                    "SELECT version, created_at, author, reason, action, diff FROM fader_versions"
                    f" WHERE version IN ({marks})",
                    chunk,
                )
            for row in rows:
                record = _record(row)
                self._records[record.version] = record
        return {v: self._records[v] for v in versions if v in self._records}

    # --- small facts and plans -------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        with self.db.transaction() as tx:
            rows = tx.query("SELECT value FROM fader_meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def plans(self) -> dict[str, str]:
        """Every stored rollout plan (flag -> plan JSON)."""
        with self.db.transaction() as tx:
            rows = tx.query("SELECT flag, plan FROM fader_rollouts")
        return {str(flag): str(plan) for flag, plan in rows}

    def save_plan(self, flag: str, plan: str, tx: Tx | None = None) -> None:
        """Store a rollout plan, inside ``tx`` when given."""
        if tx is None:
            with self.db.transaction() as own:
                save_plan(own, flag, plan)
        else:
            save_plan(tx, flag, plan)


def save_plan(tx: Tx, flag: str, plan: str) -> None:
    tx.run(
        "INSERT INTO fader_rollouts (flag, plan, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (flag) DO UPDATE SET plan = excluded.plan, updated_at = excluded.updated_at",
        (flag, plan, time.time()),
    )


def set_meta(tx: Tx, key: str, value: str) -> None:
    tx.run(
        "INSERT INTO fader_meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _record(row: Sequence[Any]) -> VersionRecord:
    version, created_at, author, reason, action, raw_diff = row
    changes = tuple(Change.from_json(c) for c in json.loads(raw_diff))
    return VersionRecord(int(version), float(created_at), author, reason, action, changes)


def _load(tx: Tx, head: int) -> State:
    """The whole set at ``head``: the newest row of every item."""
    rows = tx.query(
        "SELECT i.kind, i.name, i.version, i.body FROM fader_items i JOIN"
        " (SELECT kind, name, MAX(version) AS newest FROM fader_items WHERE version <= ?"
        " GROUP BY kind, name) m ON i.kind = m.kind AND i.name = m.name AND i.version = m.newest",
        (head,),
    )
    return _with_rows(State(0, FlagSet(), {}), rows, head)


def _catch_up(tx: Tx, state: State, head: int) -> State:
    """``state`` moved forward to ``head`` with the items written since."""
    if head == state.version:
        return state
    rows = tx.query(
        "SELECT kind, name, version, body FROM fader_items WHERE version > ? AND version <= ?"
        " ORDER BY version",
        (state.version, head),
    )
    return _with_rows(state, rows, head)


def _with_rows(state: State, rows: Sequence[Sequence[Any]], head: int) -> State:
    changes: dict[Key, Any | None] = {}
    marks = dict(state.changed)
    for kind, name, version, body in rows:
        key = (str(kind), str(name))
        changes[key] = None if body is None else json.loads(body)
        if body is None:
            marks.pop(key, None)
        else:
            marks[key] = int(version)
    return State(head, state.flags.with_changes(changes), marks)
