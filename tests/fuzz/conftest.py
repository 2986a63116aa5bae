"""Fuzz runs refuse thousands of inputs; their refusal logs would only fill memory."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def quiet_refusals() -> Iterator[None]:
    logger = logging.getLogger("sidecar")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)
