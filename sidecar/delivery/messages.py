"""fader.v1 Snapshot / SnapshotAck messages <-> bytes and Outcomes.

Shared by the control-plane stream (both ends) and direct push, so that every path
encodes a snapshot and reports its fate the same way.
"""

from __future__ import annotations

from fader.pb.fader.v1 import snapshot_pb2
from fader.snapshot.codec import JSON, MSGPACK
from fader.snapshot.issues import Issue

from sidecar.delivery.apply import Outcome

_TO_ENCODING = {
    JSON: snapshot_pb2.SNAPSHOT_ENCODING_JSON,
    MSGPACK: snapshot_pb2.SNAPSHOT_ENCODING_MSGPACK,
}
_TO_FORMAT = {value: key for key, value in _TO_ENCODING.items()}


class WireError(ValueError):
    """A Snapshot message that cannot even be decoded (unknown encoding)."""


def to_message(
    data: bytes, fmt: str, version: int, signature: bytes | None = None
) -> snapshot_pb2.Snapshot:
    return snapshot_pb2.Snapshot(
        version=version, encoding=_TO_ENCODING[fmt], document=data, signature=signature or b""
    )


def format_of(message: snapshot_pb2.Snapshot) -> str:
    try:
        return _TO_FORMAT[message.encoding]
    except KeyError:
        raise WireError(f"unknown snapshot encoding {message.encoding}") from None


def ack_for(outcome: Outcome, offered: int = 0) -> snapshot_pb2.SnapshotAck:
    """ACK with the applied version, or NACK with the offered version and every error.

    ``offered`` is the version the message claimed, for a refusal that did not read the
    snapshot's own (an unsigned one, say).
    """
    return snapshot_pb2.SnapshotAck(
        version=outcome.version if outcome.version is not None else offered,
        accepted=outcome.applied,
        errors=[str(issue) for issue in outcome.errors],
        warnings=outcome.warnings,
    )


def nack(version: int, message: str) -> snapshot_pb2.SnapshotAck:
    return snapshot_pb2.SnapshotAck(
        version=version, accepted=False, errors=[str(Issue(None, "$", message))]
    )
