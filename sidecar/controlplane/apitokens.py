"""Bearer tokens for the admin HTTP API, each with a role: ``viewer`` reads, ``editor`` also writes.

``--api-tokens FILE`` holds one token per line: ``ROLE TOKEN [NAME]``. NAME, when given, is
the author recorded for that token's changes. Blank lines and lines starting with ``#``
are ignored. The file is re-read when it changes (rotation without a restart); tokens are
compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

VIEWER: Final = "viewer"
EDITOR: Final = "editor"
ROLES: Final = (VIEWER, EDITOR)
_RANK: Final = {VIEWER: 1, EDITOR: 2}


@dataclass(frozen=True)
class Principal:
    """Who is calling: their role, and the name their changes are recorded under."""

    role: str
    name: str | None = None

    def may(self, role: str) -> bool:
        return _RANK[self.role] >= _RANK[role]


class TokenFileError(ValueError):
    """The tokens file cannot be used (a startup error)."""


def parse(text: str, source: str) -> list[tuple[str, bytes, str | None]]:
    entries: list[tuple[str, bytes, str | None]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) not in (2, 3) or fields[0] not in ROLES:
            raise TokenFileError(
                f"{source} line {number}: expected 'ROLE TOKEN [NAME]' with ROLE viewer or editor"
            )
        entries.append((fields[0], fields[1].encode(), fields[2] if len(fields) == 3 else None))
    if not entries:
        raise TokenFileError(f"{source} holds no token")
    return entries


class RoleTokens:
    """The current role tokens from a file, re-read when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._mtime = path.stat().st_mtime_ns
            self._entries = parse(path.read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            raise TokenFileError(f"cannot read {path}: {exc.strerror}") from None

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
            if mtime == self._mtime:
                return
            entries = parse(self.path.read_text(encoding="utf-8"), str(self.path))
        except (OSError, TokenFileError) as exc:
            log.error("API tokens %s: %s; keeping the previous tokens", self.path, exc)
            return
        with self._lock:
            self._entries, self._mtime = entries, mtime

    def principal(self, token: bytes) -> Principal | None:
        """Who holds ``token`` (None when nobody does)."""
        self._refresh()
        found: Principal | None = None
        with self._lock:
            entries = self._entries
        for role, candidate, name in entries:  # no early exit: constant time per token
            if hmac.compare_digest(token, candidate) and found is None:
                found = Principal(role, name)
        return found
