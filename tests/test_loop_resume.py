"""Resume in-process: after a stop, after a crash whose state lags the history by a row, after a torn last line."""

from __future__ import annotations

from pathlib import Path

import pytest

from lib_mbw.blocks import BLOCKS
from lib_mbw.search.events import IterationDone
from lib_mbw.search.history import STATE_FILE, RunHistory
from lib_mbw.search.loop import LoopSettings, SearchRun
from lib_mbw.search.stopping import StopReason, StopSettings
from tests.loop_backend import FakeGenerator, FakeScorer, RandomGridOptimizer
from tests.test_loop import PAYLOADS

STOP = StopSettings(max_evaluations=12, patience=None)
SETTINGS = LoopSettings(rescore_top=2)


def new_run(folder: Path, generator: FakeGenerator | None = None, stop: StopSettings = STOP) -> SearchRun:
    if (folder / "history.csv").exists():
        history = RunHistory.open(folder)
    else:
        history = RunHistory.create(folder, BLOCKS, [p.name for p in PAYLOADS])
    return SearchRun(PAYLOADS, RandomGridOptimizer(BLOCKS, seed=3), generator or FakeGenerator(), FakeScorer(), stop=stop, settings=SETTINGS, history=history)


def comparable(rows) -> list[tuple]:
    return [(r.status, r.source, r.recipe, r.score) for r in rows if not (r.status == "selected" and r is not rows[-1])]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory):
    return new_run(tmp_path_factory.mktemp("whole")).run()


def test_uninterrupted_reference(uninterrupted) -> None:
    statuses = [r.status for r in uninterrupted.rows]
    assert statuses == ["ok"] * 12 + ["rescore", "rescore", "selected"]


def test_stop_then_resume_reaches_the_same_result(tmp_path: Path, uninterrupted) -> None:
    run = new_run(tmp_path)
    run.add_listener(lambda e: isinstance(e, IterationDone) and e.index == 4 and run.request_stop())
    stopped = run.run()
    assert stopped.stop_reason == StopReason.USER_ABORT and stopped.evaluations == 5
    assert stopped.recipe is not None  # a user stop still returns the best so far
    resumed_run = new_run(tmp_path)
    resumed = resumed_run.run()
    assert resumed.stop_reason == StopReason.MAX_EVALUATIONS and resumed.evaluations == 12
    assert comparable(resumed.rows) == comparable(uninterrupted.rows)
    assert resumed.recipe == uninterrupted.recipe and resumed.score == uninterrupted.score


def test_crash_with_lagging_state_and_torn_line_resumes_exactly(tmp_path: Path, uninterrupted) -> None:
    snapshot: dict[str, bytes] = {}

    class CrashOnSixthApply(FakeGenerator):
        def apply(self, recipe):
            if self.applies == 5:
                raise KeyboardInterrupt  # stands in for SIGKILL mid-evaluation
            return super().apply(recipe)

    run = new_run(tmp_path, CrashOnSixthApply())
    run.add_listener(lambda e: isinstance(e, IterationDone) and e.index == 3 and snapshot.setdefault("state", (tmp_path / STATE_FILE).read_bytes()))
    with pytest.raises(KeyboardInterrupt):
        run.run()
    assert len(RunHistory.open(tmp_path)) == 5
    # the kill landed after row 5 was written but before its state: state.json still says 4 rows
    (tmp_path / STATE_FILE).write_bytes(snapshot["state"])
    # ...and a half-written line of the evaluation in flight is at the end of the file
    with open(tmp_path / "history.csv", "a", encoding="utf-8") as handle:
        handle.write("5,2024-01-01T00:00:00,ok,optimizer,0.12")
    resumed = new_run(tmp_path).run()
    assert comparable(resumed.rows) == comparable(uninterrupted.rows)
    assert resumed.recipe == uninterrupted.recipe


@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_resume_without_usable_state_replays_the_whole_history(tmp_path: Path, uninterrupted, damage: str) -> None:
    run = new_run(tmp_path)
    run.add_listener(lambda e: isinstance(e, IterationDone) and e.index == 6 and run.request_stop())
    run.run()
    if damage == "missing":
        (tmp_path / STATE_FILE).unlink()
    else:  # what a power loss can leave of a file that was not fsync'd
        (tmp_path / STATE_FILE).write_bytes(b"")
    resumed = new_run(tmp_path).run()
    assert comparable(resumed.rows) == comparable(uninterrupted.rows)


def test_finished_run_is_not_searched_again_but_can_be_extended(tmp_path: Path) -> None:
    first = new_run(tmp_path, stop=StopSettings(max_evaluations=4, patience=None)).run()
    generator = FakeGenerator()
    again = new_run(tmp_path, generator, stop=StopSettings(max_evaluations=4, patience=None)).run()
    assert generator.applies == 0 and again.recipe == first.recipe and comparable(again.rows) == comparable(first.rows)
    extended = new_run(tmp_path, stop=StopSettings(max_evaluations=7, patience=None)).run()
    assert extended.evaluations == 7
    assert [r.status for r in extended.rows if r.source == "optimizer"] == ["ok"] * 7
    assert extended.rows[-1].status == "selected"


def test_torn_header_only_file_and_damaged_rows_are_reported(tmp_path: Path) -> None:
    history = RunHistory.create(tmp_path, BLOCKS, ["p1"])
    history.close()
    (tmp_path / "history.csv").write_text((tmp_path / "history.csv").read_text() + "1,2,3\n")
    from lib_mbw.search.history import HistoryError

    with pytest.raises(HistoryError, match="damaged"):
        RunHistory.open(tmp_path)
