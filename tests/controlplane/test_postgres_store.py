"""The flag store on a real PostgreSQL server: two replicas on one database stay in step."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from itertools import count
from typing import TypedDict

import pytest

from sidecar.controlplane.documents import parse_document
from sidecar.controlplane.postgres import PostgresDatabase, redact
from sidecar.controlplane.store import FlagStore, StaleVersion
from tests.controlplane.flagd_docs import flagd_file
from tests.fader.rules.builders import condition, flag, snapshot_doc
from tests.postgres import Postgres, create_database, postgres_server, skip_reason
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))


class Who(TypedDict):
    author: str
    reason: str


ME: Who = {"author": "alice", "reason": "test"}
_names = count()


@pytest.fixture(scope="module")
def server() -> Iterator[Postgres]:
    with postgres_server() as running:
        yield running


@pytest.fixture
def replicas(server: Postgres) -> Iterator[tuple[FlagStore, FlagStore]]:
    dsn = create_database(server, f"store{next(_names)}")
    a, b = FlagStore(PostgresDatabase(dsn)), FlagStore(PostgresDatabase(dsn))
    a.start()
    b.start()
    yield a, b
    for store in (a, b):
        store.stop()
        store.db.close()


def test_a_change_on_one_replica_reaches_the_other(replicas: tuple[FlagStore, FlagStore]) -> None:
    a, b = replicas
    heard: list[int] = []
    b.subscribe(lambda state: heard.append(state.version))
    document = snapshot_doc(flag("f", condition(partitions={"on": 0, "off": 100})))
    a.apply([parse_document(document)], **ME)
    a.dial("f", 30, **ME)
    wait_for(lambda: b.version == 2, what="replica b at version 2")
    assert b.state.document() == a.state.document()
    assert heard == [2] or heard == [1, 2]
    b.kill("f", author="guardrail", reason="errors")
    wait_for(lambda: a.version == 3 and a.state.flags.flags["f"]["killed"], what="a sees the kill")
    assert [r.author for r in a.history("f")] == ["guardrail", "alice", "alice"]


def test_replicas_refuse_a_stale_base_and_race_fairly(
    replicas: tuple[FlagStore, FlagStore],
) -> None:
    a, b = replicas
    a.apply([parse_document(flag("f", condition(partitions={"on": 0, "off": 100})))], **ME)
    wait_for(lambda: b.version == 1, what="b at 1")
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def writer(store: FlagStore, percent: int) -> None:
        barrier.wait()
        try:
            store.dial("f", percent, base_version=1, **ME)
            outcomes.append("won")
        except StaleVersion:
            outcomes.append("409")

    threads = [threading.Thread(target=writer, args=(s, p)) for s, p in ((a, 10), (b, 20))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["409", "won"]
    assert [r.action for r in a.history("f")] == ["dial", "apply"]
    # A write without a base on the replica that lost catches up first, then applies.
    wait_for(lambda: a.version == b.version == 2, what="both at 2")
    assert b.dial("f", 50, **ME).version == 3


def test_flagd_flags_travel_between_replicas_with_their_history(
    replicas: tuple[FlagStore, FlagStore],
) -> None:
    a, b = replicas
    a.apply([parse_document(flagd_file(), "shop.flagd.json")], **ME)
    a.kill("new-ui", author="guardrail", reason="errors")
    wait_for(lambda: b.version == 2, what="b at 2")
    assert b.state.document() == a.state.document()
    assert b.state.flags.flagd_flags["new-ui"]["state"] == "DISABLED"
    assert b.state.flags.evaluators == {"is-pro": {"==": [{"var": "plan"}, "pro"]}}
    b.rollback("new-ui", 1, **ME)
    wait_for(lambda: a.version == 3, what="a at 3")
    assert a.state.flags.flagd_flags["new-ui"]["state"] == "ENABLED"
    assert [(r.version, r.action) for r in a.history("new-ui")] == [
        (3, "rollback"), (2, "kill"), (1, "apply"),
    ]  # fmt: skip
    # a third replica reads the whole set, flagd items included, from the rows alone
    assert isinstance(a.db, PostgresDatabase)
    fresh = FlagStore(PostgresDatabase(a.db.dsn))
    try:
        assert fresh.state.document() == a.state.document()
    finally:
        fresh.db.close()


def test_the_password_never_shows() -> None:
    assert (
        redact("postgresql://fader:s3cret@db:5432/flags") == "postgresql://fader:***@db:5432/flags"
    )
    assert "s3cret" not in redact("host=db password=s3cret dbname=flags")
