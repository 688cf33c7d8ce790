"""Exact resume: a run interrupted after any evaluation, before or after its state write, resumes to the same run.

The optimizer is never saved: resume builds it anew and replays the history
through ask/tell (``optimizer.replay``). These tests interrupt a short search
at every evaluation index, in-process (a KeyboardInterrupt where a SIGKILL
would land), for the default strategy, a gradient-free-optimizers strategy and
an optuna sampler, and compare every proposal and the final result with the
uninterrupted run. ``test_search_cli`` keeps a real SIGKILL in a subprocess.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import logging
import zlib
from pathlib import Path

import pytest

from lib_mbw.blocks import BLOCKS
from lib_mbw.recipe import Recipe
from lib_mbw.search.history import STATE_FILE, RunHistory
from lib_mbw.search.loop import LoopSettings, SearchRun
from lib_mbw.search.optimizer import DEFAULT_STRATEGY, InitSettings, Told, make_optimizer, replay
from lib_mbw.search.space import SearchSpace
from lib_mbw.search.stopping import StopSettings
from tests.loop_backend import FakeGenerator, FakeScorer
from tests.test_loop import PAYLOADS

EVALUATIONS = 13
STOP = StopSettings(max_evaluations=EVALUATIONS, patience=None)
SETTINGS = LoopSettings(rescore_top=2, max_failures=EVALUATIONS)  # failures never pause these runs
#: Default strategy, one gradient-free-optimizers strategy, one optuna sampler.
STRATEGIES = [DEFAULT_STRATEGY, "HillClimbing", "TPEOptimizer"]


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in the loop catches it."""


def failing(recipe: Recipe, payload) -> bool:
    """Some recipes fail (so replay covers tell_failed too)."""
    return round(recipe.weights["M00"] * 20) % 5 == 1 and payload.name == PAYLOADS[0].name


def optimizer_of(strategy: str):
    return lambda: make_optimizer(strategy, SearchSpace(levels=21), seed=5, init=InitSettings(random=4))


class KilledAtApply(FakeGenerator):
    """Killed while rendering evaluation ``at`` (so after the state write of the one before)."""

    def __init__(self, at: int) -> None:
        super().__init__(fail_when=failing)
        self.at = at

    def apply(self, recipe):
        if self.applies == self.at:
            raise Killed
        return super().apply(recipe)


class KilledBeforeState(RunHistory):
    """Killed after history row ``at`` was written (fsync'd) but before ``state.json`` was replaced."""

    at = -1

    def write_state(self, state) -> None:
        if state.rows == self.at + 1 and self.rows()[-1].index == self.at:
            raise Killed
        super().write_state(state)


def new_run(folder: Path, strategy: str, generator: FakeGenerator | None = None, history_cls: type[RunHistory] = RunHistory,
            stop: StopSettings = STOP) -> SearchRun:
    if (folder / "history.csv").exists():
        history = history_cls.open(folder)
    else:
        history = history_cls.create(folder, BLOCKS, [p.name for p in PAYLOADS])
    make = optimizer_of(strategy)
    return SearchRun(PAYLOADS, make(), generator or FakeGenerator(fail_when=failing), FakeScorer(), stop=stop, settings=SETTINGS,
                     history=history, optimizer_factory=make)


def comparable(rows) -> list[tuple]:
    return [(r.index, r.status, r.source, r.recipe, r.score) for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory):
    return {s: new_run(tmp_path_factory.mktemp(s), s).run() for s in STRATEGIES}


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_interrupted_after_every_evaluation_resumes_to_the_same_run(tmp_path: Path, strategy: str, when: str, uninterrupted, caplog) -> None:
    """Killed after evaluation 0, resumed, killed after evaluation 1, resumed, ...: every resume continues exactly.

    ``before``: killed after the history row was written, before ``state.json``;
    ``after``: killed after the state write, while rendering the next evaluation.
    """
    whole = uninterrupted[strategy]
    assert whole.evaluations == EVALUATIONS and whole.rows[-1].status == "selected"
    assert any(r.status == "failed" for r in whole.rows) and any(r.source == "optimizer" for r in whole.rows)
    caplog.set_level(logging.WARNING, logger="lib_mbw.search.loop")
    for index in range(EVALUATIONS):
        if when == "before":
            killed = new_run(tmp_path, strategy, history_cls=type("Killed", (KilledBeforeState,), {"at": index}))
        else:
            killed = new_run(tmp_path, strategy, KilledAtApply(1))  # the next evaluation after the one it makes
        with pytest.raises(Killed):
            killed.run()
        rows = RunHistory.open(tmp_path).rows()
        assert len(rows) == index + 1
        assert comparable(rows) == comparable(whole.rows[: index + 1]), f"{strategy}: diverged after a kill after evaluation {index - 1}"
    resumed = new_run(tmp_path, strategy).run()
    assert comparable(resumed.rows) == comparable(whole.rows)
    assert resumed.recipe == whole.recipe and resumed.score == whole.score
    assert "not what" not in caplog.text  # every replay was exact


def test_a_history_the_optimizer_did_not_propose_is_told_as_a_warm_start(tmp_path: Path, caplog) -> None:
    new_run(tmp_path, "RandomSearch", stop=StopSettings(max_evaluations=6, patience=None)).run()
    make_other = lambda: make_optimizer("RandomSearch", SearchSpace(levels=21), seed=99, init=InitSettings(random=4))  # noqa: E731
    history = RunHistory.open(tmp_path)
    run = SearchRun(PAYLOADS, make_other(), FakeGenerator(), FakeScorer(), stop=StopSettings(max_evaluations=9, patience=None),
                    settings=SETTINGS, history=history, optimizer_factory=make_other)
    with caplog.at_level(logging.WARNING, logger="lib_mbw.search.loop"):
        result = run.run()
    lines = [r.getMessage() for r in caplog.records if "not what" in r.getMessage()]
    assert len(lines) == 1 and "history row 0 is not what RandomSearch proposes" in lines[0] and "told as a warm start" in lines[0]
    assert result.evaluations == 9
    recorded = [r.recipe for r in result.rows if r.source in ("optimizer", "initial")]
    assert len(set(recorded)) == len(recorded)  # the warm start knows every earlier recipe: nothing is proposed twice


def test_replay_reports_where_it_diverged() -> None:
    make = optimizer_of("RandomSearch")
    straight = make()
    records = []
    for i in range(6):
        (recipe,) = straight.ask(1)
        straight.tell(recipe, -float(i))
        records.append(Told(recipe, -float(i), asked=True, row=i))
    again = replay(make, records)
    assert again.exact and again.optimizer.ask(1) == straight.ask(1)
    tampered = records[:3] + [Told(Recipe.uniform(0.5), 1.0, asked=True, row=3)] + records[4:]
    off = replay(make, tampered)
    assert not off.exact and off.diverged_row == 3 and off.optimizer.cache.n_observations == 6


def _legacy_state(marker: Path) -> str:
    """A state.json as an older auto-MBW wrote it, whose pickled optimizer runs a command when unpickled.

    The gadget of the issue: ``lib_mbw.search.session._registry`` returned any
    function of any module, and the old unpickler admitted ``lib_mbw.*``.
    """
    gadget = (
        b"clib_mbw.search.session\n_registry\n(Vos\nVsystem\nVstrategy\nVx\ntR"
        + b"(V" + f"touch {marker}".encode() + b"\ntR."
    )
    packages = {}
    for name in ("numpy", "torch", "scipy", "scikit-learn", "optuna", "gradient-free-optimizers", "cmaes"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = ""
    header = json.dumps({"version": 1, "strategy": "RandomSearch", "packages": packages}).encode()
    blob = b"AUTO-MBW-OPTIMIZER-STATE\n" + header + b"\n" + zlib.compress(gadget)
    return json.dumps({"format": "auto-mbw-state", "version": 1, "rows": 3, "phase": "search", "stop_reason": None,
                       "stop_message": "", "elapsed_s": 1.0, "candidates": [], "optimizer": base64.b64encode(blob).decode()})


def test_a_crafted_pickled_optimizer_state_is_never_loaded(tmp_path: Path, caplog) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    run_dir.mkdir()
    new_run(run_dir, "RandomSearch", stop=StopSettings(max_evaluations=3, patience=None)).run()
    (run_dir / STATE_FILE).write_text(_legacy_state(marker))
    with caplog.at_level(logging.WARNING, logger="lib_mbw.search.loop"):
        resumed = new_run(run_dir, "RandomSearch").run()
    assert not marker.exists()
    assert resumed.evaluations == EVALUATIONS
    (line,) = [r.getMessage() for r in caplog.records if "state.json" in r.getMessage()]
    assert "(a pickle): it is never loaded; the optimizer is rebuilt from the history instead" in line
    written = json.loads((run_dir / STATE_FILE).read_text())
    assert "optimizer" not in written  # what is written now holds no optimizer at all
