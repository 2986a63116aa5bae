"""Alerts: every guardrail decision POSTed as JSON to webhooks, retried, never in the loop's way.

The guardrail loop only enqueues (``send`` returns at once); one background thread posts.
A delivery that fails (connection refused, timeout, any non-2xx answer) is retried with
capped exponential backoff (``Backoff``) up to ``attempts`` times; meanwhile other
deliveries go on, because waiting retries sit in a time-ordered heap, not in front of the
queue. A full queue drops the new alert and counts it as failed, so a dead webhook can never
grow memory or slow the loop.

The body is Slack-compatible: an incoming webhook shows its ``text``; every other receiver
gets the decision's fields (``kind``, ``flag``, ``message``, ``time``, ``details``) too.
``sent`` counts alerts delivered, ``failed`` alerts given up on (``/metrics``).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sidecar.controlplane.decisions import Decision, Kind
from sidecar.plumbing.backoff import Backoff

log = logging.getLogger(__name__)

DEFAULT_ATTEMPTS: Final = 6
DEFAULT_TIMEOUT: Final = 5.0
DEFAULT_QUEUE: Final = 1000
USER_AGENT: Final = "fader-controlplane"

_ICON: Final = {
    Kind.BREACH: ":rotating_light:",
    Kind.KILL: ":octagonal_sign:",
    Kind.SRM_PAUSE: ":warning:",
    Kind.HOLD: ":hourglass:",
    Kind.ADVANCE: ":arrow_up:",
    Kind.COMPLETE: ":white_check_mark:",
}


def payload(decision: Decision, page_url: str | None = None) -> dict[str, Any]:
    """The JSON body for one decision; ``text`` is what Slack shows."""
    text = (
        f"{_ICON[decision.kind]} Fader {decision.kind.value} on {decision.flag}: {decision.message}"
    )
    if page_url:
        text += f" <{page_url}|release page>"
    body: dict[str, Any] = {"text": text, **decision.to_json()}
    if page_url:
        body["release_page"] = page_url
    return body


@dataclass(order=True)
class _Delivery:
    due: float
    sequence: int
    url: str = field(compare=False)
    body: bytes = field(compare=False)
    attempt: int = field(default=0, compare=False)


class Alerts:
    """Posts payloads to the global webhooks plus any given per call, from one thread."""

    def __init__(
        self,
        webhooks: Sequence[str] = (),
        *,
        attempts: int = DEFAULT_ATTEMPTS,
        timeout: float = DEFAULT_TIMEOUT,
        backoff: Backoff | None = None,
        queue_limit: int = DEFAULT_QUEUE,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self.webhooks = tuple(webhooks)
        self.attempts = attempts
        self.timeout = timeout
        self.backoff = backoff or Backoff(initial=1.0, maximum=60.0)
        self.queue_limit = queue_limit
        self.sent = 0
        self.failed = 0
        self._heap: list[_Delivery] = []
        self._sequence = itertools.count()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def send(self, body: Mapping[str, Any], webhooks: Sequence[str] = ()) -> int:
        """Queue ``body`` for every global webhook and each of ``webhooks``; how many queued."""
        data = json.dumps(body, separators=(",", ":"), default=str).encode()
        queued = 0
        with self._wake:
            for url in dict.fromkeys((*self.webhooks, *webhooks)):
                if len(self._heap) >= self.queue_limit:
                    self.failed += 1
                    log.error(
                        "alert queue full (%d): dropped an alert for %s", self.queue_limit, url
                    )
                    continue
                heapq.heappush(
                    self._heap, _Delivery(time.monotonic(), next(self._sequence), url, data)
                )
                queued += 1
            self._wake.notify()
        return queued

    def pending(self) -> int:
        with self._wake:
            return len(self._heap)

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="alerts")
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop posting; deliveries still queued are abandoned (counted as failed)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._wake:
            self.failed += len(self._heap)
            self._heap.clear()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and (
                    not self._heap or self._heap[0].due > time.monotonic()
                ):
                    wait = self._heap[0].due - time.monotonic() if self._heap else None
                    self._wake.wait(wait)
                if self._stopping:
                    return
                delivery = heapq.heappop(self._heap)
            self._deliver(delivery)

    def _deliver(self, delivery: _Delivery) -> None:
        error = self._post(delivery.url, delivery.body)
        with self._wake:
            if error is None:
                self.sent += 1
                return
            delivery.attempt += 1
            if delivery.attempt >= self.attempts:
                self.failed += 1
                log.error(
                    "alert to %s failed %d times, giving up: %s",
                    delivery.url,
                    delivery.attempt,
                    error,
                )
                return
            delay = self.backoff.delay(delivery.attempt - 1)
            log.warning("alert to %s failed (%s); retrying in %.1f s", delivery.url, error, delay)
            delivery.due = time.monotonic() + delay
            heapq.heappush(self._heap, delivery)

    def _post(self, url: str, body: bytes) -> str | None:
        """None when the webhook took it (2xx), else why not."""
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read(65536)
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return str(getattr(exc, "reason", exc))
        return None if 200 <= status < 300 else f"HTTP {status}"
