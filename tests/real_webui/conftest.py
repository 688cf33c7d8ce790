"""Module-scoped real hosts (one WebUI process at a time); see ``harness.running_host``."""

from __future__ import annotations

from typing import Iterator

import pytest

from .harness import RunningHost, running_host


@pytest.fixture(scope="module")
def a1111() -> Iterator[RunningHost]:
    yield from running_host("a1111")


@pytest.fixture(scope="module")
def forge() -> Iterator[RunningHost]:
    yield from running_host("forge")
