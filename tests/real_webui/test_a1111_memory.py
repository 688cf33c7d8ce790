"""AUTOMATIC1111 1.10.1's memory across three searches (the memory scenario of issue 15 for this host).

A module of its own so it does not change ``test_a1111.py``; it starts one more A1111 (about a minute
plus install.py's checks). The margin is absolute: the tiny A1111 test models' UNet is a few MB, so what is
measured is the process's own growth (before the fix glibc kept the freed heap of every search).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.real_webui.harness import RunningHost
from tests.real_webui.memory_check import MIB, trace_searches
from tests.real_webui.scenarios import reference_scorer, run_search, txt2img_payload, write_references


@pytest.fixture(scope="module")
def references(a1111: RunningHost) -> Path:
    txt2img_payload(a1111)
    return write_references(a1111, a1111.server.payload_dir / "references")  # a folder the UI may name (inside the host's folders)


def test_memory_after_three_searches_is_where_it_started(a1111: RunningHost, references: Path) -> None:
    run_search(a1111, max_evaluations=2, **reference_scorer(references))  # warm-up: scorer and payload code loaded

    def search() -> None:
        result = run_search(a1111, max_evaluations=3, **reference_scorer(references))
        assert "**Finished**" in result.final_status, result.statuses

    trace = trace_searches(a1111.server.process.pid, search, 3)
    print(f"\n[real-webui] a1111 memory: {trace.describe()}")
    assert trace.after[-1] - trace.before <= 64 * MIB, trace.describe()
    assert trace.after[-1] - trace.after[0] <= 32 * MIB, trace.describe()
