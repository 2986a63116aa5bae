"""The in-process mode of fader.Client and fader.aio.Client against a real sidecar (event loop
in a thread): when it answers locally, when it asks the sidecar, and what it answers where
the sidecar would refuse a lookup."""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Iterator

import fader.aio
import pytest
from fader import Client, Result
from fader._inprocess import (
    BUSY_DRAIN_SECONDS,
    BUSY_RATE,
    DRAIN_SECONDS,
    RETIRED_SECONDS,
    InProcess,
    next_wait,
)
from fader._local import Limits, LocalSnapshot
from fader.snapshot.loader import build_snapshot
from fader.snapshot.snapshot import Snapshot

from tests.fader.rules.builders import condition, flag, matcher, snapshot_doc
from tests.integration.harness import RunningSidecar, loopback_settings, running_sidecar
from tests.waiting import wait_for

TIMEOUT = 5.0
AT_LEAST_18 = matcher(
    "GREATER_THAN_OR_EQUAL_TO",
    "age",
    unaryNumericMatcherData={"dataType": "NUMBER", "value": 18},
)
TAGGED = matcher("CONTAINS_ANY_OF_SET", "tags", whitelistMatcherData={"whitelist": ["vip"]})
SINCE = matcher(
    "GREATER_THAN_OR_EQUAL_TO",
    "since",
    unaryNumericMatcherData={"dataType": "DATETIME", "value": 1_700_000_000_000},
)


def versioned(version: int) -> Snapshot:
    """ "adult" answers "yes" from age 18 (an int: 18.0 is not a number to Split); "vip" to a
    tag set holding "vip"; "recent" from a datetime; "f" answers "v<version>"."""
    return build_snapshot(
        snapshot_doc(
            flag("f", condition(partitions={f"v{version}": 100})),
            flag("adult", condition(AT_LEAST_18, partitions={"yes": 100})),
            flag("vip", condition(TAGGED, partitions={"yes": 100})),
            flag("recent", condition(SINCE, partitions={"yes": 100})),
            version=version,
        )
    )


@pytest.fixture
def sidecar() -> Iterator[RunningSidecar]:
    with running_sidecar(loopback_settings(max_attributes=3, max_attribute_size=10)) as running:
        yield running


def in_process(client: Client) -> fader._inprocess.InProcess:
    assert client.in_process is not None
    return client.in_process


def test_the_sidecar_answers_until_the_first_snapshot(sidecar: RunningSidecar) -> None:
    with Client(sidecar.tcp_target, timeout=TIMEOUT, mode="in-process") as client:
        state = in_process(client)
        wait_for(lambda: state.connected.is_set(), what="the stream")
        # no snapshot anywhere: the sidecar is asked, refuses (UNAVAILABLE), "control"
        assert client.evaluate("u", "f") == Result("control", None, "sidecar unavailable", None)
        assert (client.fallback_count, state.remote_lookups) == (1, 1)
        sidecar.store.swap(versioned(1))
        assert state.ready.wait(5)
        assert client.evaluate("u", "f") == Result("v1", None, "rule", 1)
        assert client.get_treatments("u", ["f", "adult"]) == {"f": "v1", "adult": "off"}
        assert client.get_treatments("u", []) == {
            "adult": "off",
            "f": "v1",
            "recent": "off",
            "vip": "off",
        }
        assert state.remote_lookups == 1  # nothing more went to the sidecar


def test_typed_attributes_answer_as_over_grpc(sidecar: RunningSidecar) -> None:
    sidecar.store.swap(versioned(1))
    after = datetime.datetime(2023, 11, 15, tzinfo=datetime.UTC)
    lookups: list[tuple[str, dict[str, object]]] = [
        ("adult", {"age": 30}),
        ("adult", {"age": 30.0}),  # a float never matches a numeric matcher
        ("adult", {"age": True}),
        ("vip", {"tags": ("a", "vip")}),
        ("vip", {"tags": frozenset({"vip"})}),
        ("vip", {"tags": "vip"}),
        ("recent", {"since": after}),
        ("recent", {"since": after.replace(tzinfo=None)}),
        ("recent", {"since": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)}),
    ]
    with (
        Client(sidecar.tcp_target, timeout=TIMEOUT) as remote,
        Client(sidecar.tcp_target, timeout=TIMEOUT, mode="in-process") as local,
    ):
        assert in_process(local).ready.wait(5)
        for name, attributes in lookups:
            assert local.evaluate("u", name, attributes=attributes) == remote.evaluate(
                "u", name, attributes=attributes
            ), (name, attributes)
        assert local.get_treatment("u", "adult", {"age": 30}) == "yes"
        with pytest.raises(TypeError, match="attribute 'bad': dict is not supported"):
            local.get_treatment("u", "adult", {"bad": {}})
        with pytest.raises(TypeError, match="does not fit in 64 bits"):
            local.get_treatment("u", "adult", {"age": 2**70})
        for client in (local, remote):  # a key protobuf cannot carry: raised, as over gRPC
            with pytest.raises(UnicodeEncodeError):
                client.get_treatment("a\ud800", "adult")
            with pytest.raises(UnicodeEncodeError):
                client.get_treatment("u", "adult", bucketing_key="b\ud800")
        assert local.get_treatment("josé", "adult", {"age": 30}) == "yes"
        assert in_process(local).remote_lookups == 0


def test_what_the_sidecar_refuses_answers_control_and_is_counted(sidecar: RunningSidecar) -> None:
    sidecar.store.swap(versioned(1))
    refused: list[tuple[str, str, dict[str, object] | None, str | None]] = [
        ("", "f", None, None),  # empty key
        ("k" * 251, "f", None, None),  # key too long
        ("u", "", None, None),  # empty flag name
        ("u", "f", None, "b" * 251),  # bucketing key too long
        ("u", "f", {"a": 1, "b": 2, "c": 3, "d": 4}, None),  # max_attributes=3
        ("u", "f", {"a": "x" * 11}, None),  # max_attribute_size=10
        ("u", "f", {"a": ["xxxxxx", "xxxxx"]}, None),  # a list counts all its strings
        ("u", "f", {"": 1}, None),  # empty attribute name
    ]
    with (
        Client(sidecar.tcp_target, timeout=TIMEOUT) as remote,
        Client(sidecar.tcp_target, timeout=TIMEOUT, mode="in-process") as local,
    ):
        assert in_process(local).ready.wait(5)
        for key, name, attributes, bucketing in refused:
            expected = remote.evaluate(key, name, attributes=attributes, bucketing_key=bucketing)
            assert expected == Result("control", None, "sidecar error: INVALID_ARGUMENT", None)
            assert local.evaluate(key, name, attributes=attributes, bucketing_key=bucketing) == (
                expected
            )
            assert local.get_treatment(key, name, attributes, bucketing_key=bucketing) == "control"
        assert local.get_treatments("u", ["f", ""]) == remote.get_treatments("u", ["f", ""])
        assert local.evaluate("u", "f", bucketing_key="") == remote.evaluate(
            "u", "f", bucketing_key=""
        )  # empty means none
        assert remote.fallback_count == len(refused) + 1
        assert local.fallback_count == 2 * len(refused) + 1
        assert in_process(local).remote_lookups == 0


def test_a_version_without_its_bytes_is_answered_by_the_sidecar(sidecar: RunningSidecar) -> None:
    sidecar.store.swap(versioned(1))
    with Client(sidecar.tcp_target, timeout=TIMEOUT, mode="in-process") as client:
        state = in_process(client)
        assert state.ready.wait(5)
        unstreamable = versioned(2)
        unstreamable.document = None  # as if built without keeping its bytes
        sidecar.store.swap(unstreamable)
        wait_for(lambda: state.local is None, what="local answers stop")
        assert client.get_treatment("u", "f") == "v2"  # from the sidecar
        assert state.remote_lookups == 1
        sidecar.store.swap(versioned(3))
        assert state.ready.wait(5)
        assert client.get_treatment("u", "f") == "v3"
        assert state.remote_lookups == 1


def test_it_answers_while_the_sidecar_is_away_then_gives_up_after_max_staleness() -> None:
    with running_sidecar(loopback_settings(), versioned(1)) as sidecar:
        client = Client(sidecar.tcp_target, timeout=1.0, mode="in-process", max_staleness=1.5)
        state = in_process(client)
        assert state.ready.wait(5)
    # the sidecar is gone: the snapshot it served goes on answering, for max_staleness
    assert client.get_treatment("u", "f") == "v1"
    assert client.fallback_count == 0
    wait_for(lambda: state.local is None, timeout=5, what="staleness")
    assert client.get_treatment("u", "f") == "control"  # asked the sidecar: unreachable
    assert client.fallback_count == 1 and state.remote_lookups == 1
    client.close()


def test_modes_and_targets_are_checked() -> None:
    with pytest.raises(ValueError, match="mode must be one of remote, in-process"):
        Client("127.0.0.1:1", mode="local")
    with pytest.raises(ValueError, match="not a fastlane:// one"):
        Client("fastlane:///tmp/x.sock", mode="in-process")
    with Client("127.0.0.1:1") as remote:
        assert remote.in_process is None


def test_aio_client_in_process(sidecar: RunningSidecar) -> None:
    sidecar.store.swap(versioned(4))

    async def scenario() -> None:
        async with fader.aio.Client(sidecar.tcp_target, timeout=TIMEOUT, mode="in-process") as c:
            state = c.in_process
            assert state is not None
            await asyncio.get_running_loop().run_in_executor(None, state.ready.wait, 5)
            assert await c.get_treatment("u", "adult", {"age": 18}) == "yes"
            assert await c.evaluate("u", "f") == Result("v4", None, "rule", 4)
            assert await c.get_treatments("u", ["vip"], {"tags": ["vip"]}) == {"vip": "yes"}
            assert await c.get_treatment("", "f") == "control"
            assert c.fallback_count == 1 and state.remote_lookups == 0

    asyncio.run(scenario())


def test_the_exposures_thread_drains_faster_while_lookups_come_fast() -> None:
    busy, idle = BUSY_DRAIN_SECONDS, DRAIN_SECONDS
    assert next_wait(0, idle) == idle
    assert next_wait(int(BUSY_RATE * idle), idle) == busy
    assert next_wait(int(BUSY_RATE * busy), busy) == busy
    assert next_wait(int(BUSY_RATE * busy) - 1, busy) == idle


def test_a_retired_snapshot_is_collected_for_retired_seconds() -> None:
    """A lookup that took the previous snapshot just before a swap still gets its impression,
    for RETIRED_SECONDS after the swap, however often the thread drains meanwhile."""
    state = InProcess("127.0.0.1:1", exit_timeout=0.1)
    state.close()  # its threads stopped: this test drains by hand
    state._buffer.set_mode("debug", 1_000, 0)
    limits = Limits(max_attributes=3, max_attribute_size=10, max_batch_items=100)
    old = LocalSnapshot(versioned(1), limits, recording=True)
    state._swap(old)
    before = time.monotonic()
    state._swap(LocalSnapshot(versioned(2), limits, recording=True))
    ((retired, until),) = state._retired
    assert retired is old
    assert before + RETIRED_SECONDS <= until <= time.monotonic() + RETIRED_SECONDS
    state._retired = [(old, time.monotonic() + 60)]  # these drains are well within its time
    for _ in range(10):
        old.decide("late-1", "f", None, None)
        assert state._drain() == 1
    state._retired = [(old, time.monotonic())]  # its time is up
    old.decide("late-2", "f", None, None)
    assert state._drain() == 1  # one last time after it, then forgotten
    old.decide("late-3", "f", None, None)
    assert state._drain() == 0
    assert state._buffer.open_records() == 11
