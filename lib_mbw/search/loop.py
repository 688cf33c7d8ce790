"""The search loop: ask the optimizer, apply, render, score, tally, tell, record, decide whether to go on.

``SearchRun`` is a thin driver over the optimizer's ask/tell (see STYLE.md:
study = SearchRun, sampler = optimizer, storage = history). One evaluation of
a recipe is::

    generator.apply(recipe) -> generator.generate(payload) for each payload
    (or generator.generate_many(payloads) where a generator batches them)
    -> scorer.score(images) -> mean per payload -> tally -> run score
    -> optimizer.tell(recipe, objective) -> history row (fsync'd) -> state -> stop checks

Scores are on the scorer's scale in history and events; the optimizer is
told the *objective* (the score, negated for scorers where lower is better).

Phases: **search** (until a stop criterion, see ``stopping``), **rescore**
(the optimizer's top ``rescore_top`` candidates are evaluated again on the
same payloads with new seeds: seed + ``rescore_seed_offset``; a deterministic
generator would repeat a score exactly, so new seeds are what measures
whether a candidate is good or was lucky), then the final choice: the
candidate with the best mean over all its full evaluations, written as a
``selected`` history row with the reason. With ``rescore_top = 0``, or after a
user abort, the optimizer's ``recommend()`` decides (or the best observed
score if it has none).

Failures (a generator error, ``EvaluationFailed`` from the scorer) are
recorded with their reason and told with ``tell_failed``; ``max_failures``
in a row pause the run with a message (``resume()`` goes on;
``stop_after_failures()`` ends it with stop reason ``failures`` instead, as
the CLI does). A run folder that cannot be written (full disk) ends the
search with stop reason ``write_error``: nothing more is written, so the
history stays exactly as it was and the run can be resumed once there is room. A recipe
evaluated before is not rendered again: its cached score is told again and
recorded as ``cached``.

Early abandon (``AbandonSettings.margin``): after the first part of the
payloads, a candidate whose tally so far is below the best full score by
more than the margin is not rendered further. It is recorded as
``abandoned`` with the partial tally as its score, and the optimizer is told
that partial tally: it is the best estimate there is of the full score, it is
known to be far below the best (so it cannot become the returned recipe), and
telling it keeps the optimizer from proposing that region again. Abandoned
candidates never count as an improvement for early stop and are never
chosen as the best.

Multi-fidelity screening (``LoopSettings.fidelity``, ``lib_mbw.search.fidelity``)
renders a search candidate cheaply first (fewer steps, fewer payloads or
images) and in full only when ``Screen.decide`` promotes it; one that is not
promoted is recorded as ``screened`` with a full-scale estimate as its score,
which is what the optimizer is told. Early abandon then acts inside the full
render. Re-scoring always renders in full.

While ``run()`` works, it holds the run folder's lock (``runlock``): a
second process resuming the same folder is refused, naming the holder.

Control from any thread: ``request_stop()``, ``request_pause()``,
``resume()``. Stop takes effect between payloads (the evaluation in flight
is dropped, never recorded half-done). Every exit path calls
``generator.restore()``.

With several generators (remote workers) the run asks for a batch, renders
one candidate per generator on its own thread and tells results as they
arrive. Resume is exact for a single generator: no optimizer state is saved;
resume builds the optimizer anew and replays every history row through
ask/tell (``optimizer.replay``), so it proposes what the uninterrupted run
would have. With several workers it continues from the same history but the
order of arrival, and so the proposals, may differ.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ..fileio import remove_stale_temps
from ..errors import EvaluationFailed, GenerationInterrupted, MBWError, WorkerUnavailableError
from ..generators.base import GeneratedImage, Generator
from ..payloads import Payload
from ..recipe import Recipe
from ..scorers.base import Scorer
from ..scorers.tally import Tally
from .events import (
    EvaluationFailure,
    EvaluationStarted,
    FinalRecommendation,
    GenerationProgress,
    IterationDone,
    Listener,
    NewBest,
    Paused,
    Resumed,
    RunStarted,
    SearchEvent,
    Stopped,
    Timings,
)
from .fidelity import FidelitySettings, make_screen
from .history import HistoryError, HistoryRow, HistoryWriteError, LoopState, RunHistory
from .optimizer import Told, replay
from .runlock import RunLock
from .settings import AbandonSettings
from .stopping import UNFINISHED, StopReason, StopSettings, StopTracker

log = logging.getLogger(__name__)

SEARCH_SOURCES = ("optimizer", "initial")


class LoopError(MBWError):
    """The loop was set up wrongly (no payloads, no generator, ...)."""


class SearchOptimizer(Protocol):
    """What the loop needs from ``lib_mbw.search.optimizer`` (optional: rank_for_rescoring, recommend).

    It must be deterministic given how it was made: resume replays the history through a new one.
    """

    def ask(self, n: int = 1) -> list[Recipe]: ...

    def tell(self, recipe: Recipe, score: float) -> None: ...

    def tell_failed(self, recipe: Recipe) -> None: ...


@dataclass(frozen=True)
class LoopSettings:
    """Loop behaviour besides stopping (see the module docstring)."""

    rescore_top: int = 3
    max_failures: int = 3
    abandon: AbandonSettings = field(default_factory=AbandonSettings)
    fidelity: FidelitySettings = field(default_factory=FidelitySettings)
    rescore_seed_offset: int = 1_000_003


@dataclass
class Evaluation:
    """The outcome of rendering and scoring one recipe (status ok / failed / abandoned / aborted / unavailable)."""

    recipe: Recipe
    status: str
    score: float | None = None
    payload_scores: dict[str, float] = field(default_factory=dict)
    images: list[GeneratedImage] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    reason: str = ""
    worker: str = ""
    rung: str = ""  # multi-fidelity screening: screen / full ("" without screening)
    screen_score: float | None = None


@dataclass
class SearchResult:
    """What a finished (or stopped) search returns."""

    recipe: Recipe | None
    score: float | None
    reason: str
    stop_reason: StopReason | None
    stop_message: str
    evaluations: int
    best_observed: tuple[Recipe, float] | None
    images: list[GeneratedImage]
    rows: list[HistoryRow]
    run_dir: Path | None = None


def _apply_seconds(value: Any, measured: float) -> float:
    """Seconds a generator's ``apply`` reports (a float, or stats with ``.seconds``), else the measured time."""
    seconds = getattr(value, "seconds", value)
    return float(seconds) if isinstance(seconds, (int, float)) and seconds >= 0 else measured


class SearchRun:
    """One search: payloads × optimizer × generator(s) × scorer × tally, recorded in a history."""

    def __init__(
        self,
        payloads: Sequence[Payload],
        optimizer: SearchOptimizer,
        generators: Generator | Sequence[Generator],
        scorer: Scorer,
        *,
        tally: Tally | None = None,
        stop: StopSettings | None = None,
        settings: LoopSettings | None = None,
        history: RunHistory | None = None,
        initial_recipes: Sequence[Recipe] = (),
        run_id: str = "",
        strategy: str = "",
        listeners: Sequence[Listener] = (),
        clock: Callable[[], float] = time.monotonic,
        optimizer_factory: Callable[[], SearchOptimizer] | None = None,
    ) -> None:
        self.payloads = list(payloads)
        if not self.payloads:
            raise LoopError("a search needs at least one payload")
        self.generators: list[Generator] = list(generators) if isinstance(generators, (list, tuple)) else [generators]  # type: ignore[list-item]
        if not self.generators:
            raise LoopError("a search needs at least one generator")
        keys = [p.key for p in self.payloads]
        if len(set(keys)) != len(keys):
            raise LoopError(f"payloads must have distinct names/variants, got {keys}")
        tally = tally or Tally()
        stop = stop or StopSettings()
        settings = settings or LoopSettings()
        self.optimizer = optimizer
        self._optimizer_factory = optimizer_factory  # a new optimizer like ``optimizer`` (resume's fallback)
        self.scorer = scorer
        self.tally = tally
        self.stop_settings = stop
        self.settings = settings
        self.history = history
        self.run_id = run_id
        self.strategy = strategy or getattr(optimizer, "name", type(optimizer).__name__)
        self._listeners: list[Listener] = list(listeners)
        self._clock = clock
        self._sign = 1.0 if getattr(scorer, "higher_is_better", True) else -1.0
        self._names = list(dict.fromkeys(p.name for p in self.payloads))
        self._weights = {name: next(p.weight for p in self.payloads if p.name == name) for name in self._names}
        offset = settings.rescore_seed_offset
        self._rescore_payloads = [dataclasses.replace(p, seed=(p.seed + offset) % 2**32) for p in self.payloads]
        self._screen = make_screen(settings.fidelity, self.payloads, scorer, self._sign)
        self._initial = list(initial_recipes)
        self._retry: list[tuple[Recipe, str]] = []  # recipes a worker could not evaluate (down), tried first
        self._worker_names = self._name_workers()

        self._control = threading.Condition()
        self._emit_lock = threading.RLock()
        self._stop_requested = False
        self._abort_message = "stopped by user"
        self._forced_stop: tuple[StopReason, str] | None = None  # failures / write error: not a user abort
        self._write_error: str | None = None
        self._successes = 0
        self._last_failure = ""
        self._pause_requested = False
        self._pause_reason = ""
        self._pause_by_user = True
        self._paused_s = 0.0

        self._tracker = StopTracker(stop, self._sign)
        self._rows: list[HistoryRow] = []
        self._cache: dict[Recipe, float] = {}
        self._best: tuple[Recipe, float] | None = None
        self._images: dict[Recipe, list[GeneratedImage]] = {}
        self._failures_in_row = 0
        self._model_led = False  # the optimizer's describe()["model_led"] last seen (logged when it changes)
        self._launched = 0
        self._phase = "search"
        self._stop_reason: StopReason | None = None
        self._stop_message = ""
        self._candidates: list[Recipe] = []
        self._elapsed_before = 0.0
        self._session_start = clock()

    # ------------------------------------------------------------------ listeners and control

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def emit(self, event: SearchEvent) -> None:
        """Send ``event`` to every listener (serialised; a failing listener is logged and skipped)."""
        with self._emit_lock:
            for listener in list(self._listeners):
                try:
                    listener(event)
                except Exception:  # a UI or progress bar must never end a search
                    log.exception("search event listener %r failed on %s", listener, event.kind)

    def request_stop(self, message: str = "stopped by user") -> None:
        """End the search: the evaluation in flight is dropped at the next payload; outputs still get written.

        The run ends with stop reason ``user_abort`` and ``message``; ``--resume`` continues its search.
        """
        with self._control:
            if not self._stop_requested:
                self._stop_requested = True
                self._abort_message = message
            self._control.notify_all()

    def request_pause(self) -> None:
        """Pause before the next evaluation (the one in flight finishes)."""
        with self._control:
            self._pause_requested = True
            self._pause_reason = "paused by user"
            self._pause_by_user = True
            self._control.notify_all()

    def resume(self) -> None:
        """Continue a paused run (also one paused after repeated failures)."""
        with self._control:
            self._pause_requested = False
            self._control.notify_all()

    def stop_after_failures(self) -> None:
        """End the search because evaluations keep failing (stop reason ``failures``, not a user abort)."""
        self._force_stop(StopReason.FAILURES, self._failure_message(self._last_failure))

    def _force_stop(self, reason: StopReason, message: str) -> None:
        with self._control:
            if self._forced_stop is None:
                self._forced_stop = (reason, message)
            self._stop_requested = True
            self._control.notify_all()

    def _failure_message(self, reason: str) -> str:
        count = f"{self._failures_in_row} evaluation{'s' if self._failures_in_row != 1 else ''} failed in a row (last: {reason})"
        if self._successes == 0:
            return (
                f"{count} and none has succeeded: the models, payloads or settings are likely wrong, and a resume "
                "cannot change them; fix the cause and start a new search"
            )
        return f"{count}; fix the cause, then resume the run"

    @property
    def write_error(self) -> str | None:
        """Why the run folder could not be written (the search stopped), or None."""
        return self._write_error

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    @property
    def paused(self) -> bool:
        return self._pause_requested

    @property
    def rows(self) -> list[HistoryRow]:
        return list(self._rows)

    # ------------------------------------------------------------------ the run

    def run(self) -> SearchResult:
        """Run (or continue) the search to its end; restores every generator's model on every exit path."""
        self._session_start = self._clock()
        lock = RunLock(self.history.folder).acquire() if self.history is not None else None
        if self.history is not None:
            remove_stale_temps(self.history.folder)  # state/manifest temp files of a killed earlier run
        try:
            done_before = self._restore()
            self.emit(
                RunStarted(
                    run_id=self.run_id,
                    run_dir=str(self.history.folder) if self.history is not None else None,
                    strategy=self.strategy,
                    payloads=len(self.payloads),
                    images_per_evaluation=sum(p.batch_size for p in self.payloads),
                    max_evaluations=self.stop_settings.max_evaluations,
                    resumed_evaluations=done_before,
                )
            )
            if self._phase == "search":
                if len(self.generators) == 1:
                    self._search_serial()
                else:
                    self._search_parallel()
                self._end_search()
            if self._phase == "rescore":
                self._rescore()
            if self._phase == "select":
                self._select()
            result = self._result()
            self.emit(FinalRecommendation(result.recipe, result.score, result.reason, len(self._candidates)))
            return result
        finally:
            self._restore_generators()
            if self.history is not None:
                self.history.close()
            if lock is not None:
                lock.release()

    def _restore_generators(self) -> None:
        for generator in self.generators:
            try:
                generator.restore()
            except Exception:
                log.exception("could not restore the model of generator %s", getattr(generator, "name", generator))

    def _elapsed(self) -> float:
        return self._elapsed_before + (self._clock() - self._session_start) - self._paused_s

    # ------------------------------------------------------------------ resume

    def _restore(self) -> int:
        """Rebuild loop state from the history (resume); returns how many search evaluations exist.

        The optimizer is rebuilt by replaying every search row (``optimizer.replay``);
        ``state.json`` only says where the loop was (phase, stop reason, time, candidates).
        """
        if self.history is None:
            return 0
        rows = self.history.rows()
        try:
            state = self.history.read_state()
        except HistoryError as exc:
            log.warning("%s; replaying the whole history instead", exc)
            state = None
        if state is not None:
            if state.legacy_optimizer:
                log.warning(
                    "%s/state.json holds an optimizer state of an older auto-MBW (a pickle): it is never loaded; "
                    "the optimizer is rebuilt from the history instead", self.history.folder,
                )
            self._phase = state.phase
            self._stop_reason = StopReason(state.stop_reason) if state.stop_reason else None
            self._stop_message = state.stop_message
            self._elapsed_before = state.elapsed_s
            self._candidates = list(state.candidates)
        records: list[Told] = []
        initial_seen = 0
        for row in rows:
            self._rows.append(row)
            if row.source in SEARCH_SOURCES:
                if row.source == "initial":
                    initial_seen += 1
                records.append(self._told(row))
                self._account_search_row(row)
            elif row.source == "rescore":
                self._failures_in_row = self._failures_in_row + 1 if row.status == "failed" else 0
        self._initial = self._initial[initial_seen:]
        if records:
            self._replay(records)
        if self._phase == "select" and rows and rows[-1].status == "selected":
            self._phase = "done"  # the selected row was written, the state after it was not (killed, disk full)
        if self._phase in ("rescore", "select", "done"):
            can_go_on = self._stop_reason in UNFINISHED or self._tracker.check(self._elapsed_before) is None
            if can_go_on:
                self._phase, self._candidates = "search", []
                self._stop_reason, self._stop_message = None, ""
            elif self._candidates and hasattr(self.optimizer, "rank_for_rescoring"):
                # the uninterrupted run ranked its candidates here: the model fit it made is part of its state
                self.optimizer.rank_for_rescoring(self.settings.rescore_top)  # type: ignore[attr-defined]
        return self._tracker.evaluations

    def _told(self, row: HistoryRow) -> Told:
        """What the optimizer was told for a search row (and whether it had proposed it)."""
        assert row.recipe is not None
        score = None if row.status == "failed" else self._sign * row.score  # type: ignore[operator]
        return Told(row.recipe, score, asked=row.source == "optimizer" and len(self.generators) == 1, row=row.index)

    def _replay(self, records: list[Told]) -> None:
        """Put the optimizer where the recorded search left it (see ``optimizer.replay``)."""
        fresh = [self.optimizer]
        replayed = replay(lambda: fresh.pop() if fresh else self._new_optimizer(), records, rebuild=self._new_optimizer)
        self.optimizer = replayed.optimizer
        if not replayed.exact:
            log.warning(
                "resume: history row %s is not what %s proposes now (a history of another auto-MBW version or strategy?); "
                "all %d recorded results are told as a warm start, so later proposals may differ from an uninterrupted run",
                replayed.diverged_row, self.strategy, len(records),
            )

    def _new_optimizer(self) -> SearchOptimizer:
        if self._optimizer_factory is None:
            raise LoopError("resume: the optimizer does not reproduce the history and no factory can make a new one")
        return self._optimizer_factory()

    def _account_search_row(self, row: HistoryRow) -> None:
        """Update counters, cache and best from one search row (live or replayed from history)."""
        objective = None
        if row.status == "ok" and row.score is not None and row.recipe is not None:
            objective = self._sign * row.score
            self._cache[row.recipe] = row.score
            if self._best is None or objective > self._sign * self._best[1]:
                self._best = (row.recipe, row.score)
        elif row.status in ("abandoned", "screened", "cached") and row.score is not None and row.recipe is not None:
            self._cache.setdefault(row.recipe, row.score)
        if self._screen is not None:
            self._screen.observe(row.rung, row.status, row.screen_score, row.score)
        self._tracker.record(objective)
        self._failures_in_row = self._failures_in_row + 1 if row.status == "failed" else 0
        self._successes += row.status == "ok"

    # ------------------------------------------------------------------ search phase

    def _stop_check(self) -> tuple[StopReason, str] | None:
        if self._forced_stop is not None:
            return self._forced_stop
        if self._stop_requested:
            return StopReason.USER_ABORT, self._abort_message
        return self._tracker.check(self._elapsed())

    def _wait_if_paused(self) -> None:
        with self._control:
            if not self._pause_requested or self._stop_requested:
                return
            reason, by_user = self._pause_reason, self._pause_by_user
        self.emit(Paused(reason, by_user))
        started = self._clock()
        with self._control:
            while self._pause_requested and not self._stop_requested:
                self._control.wait(timeout=1.0)
        self._paused_s += self._clock() - started
        if not self._stop_requested:
            self._failures_in_row = 0
            self.emit(Resumed())

    def _requeue(self, recipe: Recipe, source: str, reason: str) -> None:
        """Put back a recipe no worker could evaluate and pause the run with the worker's error."""
        self._retry.append((recipe, source))
        self._requeue_pause(reason)

    def _requeue_pause(self, reason: str) -> None:
        with self._control:
            if not self._stop_requested:
                self._pause_requested = True
                self._pause_by_user = False
                self._pause_reason = f"{reason}; the run is paused: resume when the worker is back (or stop and resume later)"

    def _pause_for_failures(self, reason: str) -> None:
        with self._control:
            self._pause_requested = True
            self._pause_by_user = False
            if self._successes == 0:
                self._pause_reason = self._failure_message(reason)
            else:
                self._pause_reason = (
                    f"{self._failures_in_row} evaluations failed in a row (last: {reason}); "
                    "fix the cause, then resume (or stop: the run can be resumed later)"
                )

    def _propose(self, n: int) -> list[tuple[Recipe, str]]:
        proposals: list[tuple[Recipe, str]] = []
        while self._retry and len(proposals) < n:
            proposals.append(self._retry.pop(0))
        while self._initial and len(proposals) < n:
            proposals.append((self._initial.pop(0), "initial"))
        if len(proposals) < n:
            proposals.extend((r, "optimizer") for r in self.optimizer.ask(n - len(proposals)))
        return proposals

    def _search_serial(self) -> None:
        generator = self.generators[0]
        while True:
            self._wait_if_paused()
            stop = self._stop_check()
            if stop:
                self._stop_reason, self._stop_message = stop
                return
            proposals = self._propose(1)
            if not proposals:
                self._stop_reason, self._stop_message = StopReason.EXHAUSTED, "the optimizer has no new recipe to propose"
                return
            recipe, source = proposals[0]
            if recipe in self._cache:
                self._record_cached(recipe, source)
                continue
            evaluation = self._evaluate(0, generator, recipe, self.payloads, "search")
            if evaluation.status == "aborted":
                continue  # the stop check above ends the loop
            if evaluation.status == "unavailable":
                self._requeue(recipe, source, evaluation.reason)
                continue
            self._record_search(evaluation, source)

    def _search_parallel(self) -> None:
        idle = list(range(len(self.generators)))
        running: dict[concurrent.futures.Future[Evaluation], tuple[int, Recipe, str]] = {}
        duplicates: dict[Recipe, list[str]] = {}
        exhausted = False
        with concurrent.futures.ThreadPoolExecutor(len(self.generators), thread_name_prefix="mbw-worker") as pool:
            try:
                while True:
                    self._wait_if_paused()
                    stop = self._stop_check()
                    if stop and self._stop_reason is None:
                        self._stop_reason, self._stop_message = stop
                    budget = self.stop_settings.max_evaluations - self._tracker.evaluations - len(running)
                    if not stop and not exhausted and idle and budget > 0:
                        proposals = self._propose(min(len(idle), budget))
                        exhausted = not proposals
                        for recipe, source in proposals:
                            if recipe in self._cache:
                                self._record_cached(recipe, source)
                            elif any(recipe == r for _, r, _ in running.values()):
                                duplicates.setdefault(recipe, []).append(source)
                            else:
                                worker = idle.pop(0)
                                future = pool.submit(self._evaluate, worker, self.generators[worker], recipe, self.payloads, "search")
                                running[future] = (worker, recipe, source)
                    if not running:
                        if stop:
                            return
                        if exhausted:
                            self._stop_reason, self._stop_message = StopReason.EXHAUSTED, "the optimizer has no new recipe to propose"
                            return
                        continue
                    done, _ = concurrent.futures.wait(running, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        worker, recipe, source = running.pop(future)
                        idle.append(worker)
                        evaluation = future.result()
                        if evaluation.status == "aborted":
                            continue
                        if evaluation.status == "unavailable":
                            self._requeue(recipe, source, evaluation.reason)
                            continue
                        self._record_search(evaluation, source)
                        for dup_source in duplicates.pop(recipe, []):
                            if recipe in self._cache:
                                self._record_cached(recipe, dup_source)
                            else:
                                self._record_search(dataclasses.replace(evaluation, images=[], reason="same recipe as a failed evaluation"), dup_source)
            except BaseException:
                self.request_stop()
                raise

    def _end_search(self) -> None:
        if self._stop_reason is None:
            self._stop_reason, self._stop_message = self._forced_stop or (StopReason.USER_ABORT, self._abort_message)
        skip_rescore = self._stop_reason in UNFINISHED or self.settings.rescore_top == 0 or self._best is None
        self._phase = "select" if skip_rescore else "rescore"
        if skip_rescore:
            self._candidates = []
        self._save_state()
        self.emit(Stopped(self._stop_reason, self._stop_message, self._tracker.evaluations))

    # ------------------------------------------------------------------ one evaluation

    def _name_workers(self) -> list[str]:
        names = [str(getattr(g, "name", type(g).__name__)) for g in self.generators]
        if len(names) == 1:
            return names
        return [f"{name}#{i}" for i, name in enumerate(names)]

    def _chunks(self, payloads: Sequence[Payload], allow_abandon: bool) -> list[list[Payload]]:
        """Payload groups scored together; several only when early abandon can act between them."""
        margin = self.settings.abandon.margin
        if not allow_abandon or margin is None or len(payloads) < 2:
            return [list(payloads)]
        after = self.settings.abandon.after or math.ceil(len(payloads) / 2)
        after = min(max(after, 1), len(payloads))
        return [list(payloads[:after])] + [[p] for p in payloads[after:]]

    def _tally_scores(self, image_scores: dict[str, list[float]]) -> tuple[float, dict[str, float]]:
        means = {name: sum(s) / len(s) for name, s in image_scores.items() if s}
        names = [n for n in self._names if n in means]
        return self.tally([means[n] for n in names], [self._weights[n] for n in names]), means

    def _evaluate(self, worker: int, generator: Generator, recipe: Recipe, payloads: Sequence[Payload], phase: str) -> Evaluation:
        """Render and score ``recipe``; never raises for generator/scorer failures (status ``failed``)."""
        worker_name = self._worker_names[worker]
        with self._control:
            self._launched += 1
            launch_index = self._launched
        self.emit(EvaluationStarted(launch_index, recipe, phase, worker_name))
        timings = Timings()
        image_scores: dict[str, list[float]] = {}
        images: list[GeneratedImage] = []
        evaluation = Evaluation(recipe, "failed", timings=timings, worker=worker_name, images=images)
        try:
            started = self._clock()
            applied = generator.apply(recipe)
            timings.merge_s = _apply_seconds(applied, self._clock() - started)
            done: set[str] = set()
            if self._screen is not None and phase == "search":
                if not self._screen_first(generator, evaluation, launch_index, image_scores, done):
                    return evaluation
                if evaluation.status == "screened":
                    return evaluation
            chunks = [[p for p in chunk if p.key not in done] for chunk in self._chunks(payloads, allow_abandon=phase == "search")]
            chunks = [chunk for chunk in chunks if chunk]
            done_payloads = len(done)
            for number, chunk in enumerate(chunks):
                chunk_images = self._render_scored(generator, chunk, self.scorer, launch_index, worker_name, timings, image_scores)
                if chunk_images is None:
                    evaluation.status = "aborted"
                    return evaluation
                images.extend(chunk_images)
                done_payloads += len(chunk)
                if number < len(chunks) - 1:
                    abandon = self._abandon_reason(image_scores, done_payloads, len(payloads))
                    if abandon:
                        evaluation.score, evaluation.payload_scores = self._tally_scores(image_scores)
                        evaluation.status, evaluation.reason = "abandoned", abandon
                        return evaluation
            evaluation.score, evaluation.payload_scores = self._tally_scores(image_scores)
            evaluation.status = "ok"
        except EvaluationFailed as exc:
            evaluation.reason = exc.reason
        except GenerationInterrupted as exc:
            # The user pressed Interrupt in the host: end the search, tell the optimizer nothing.
            self.request_stop(f"interrupted: {exc}")
            evaluation.status, evaluation.reason = "aborted", str(exc)
        except WorkerUnavailableError as exc:
            # A dead worker says nothing about the recipe: re-queue it and pause until the worker is back.
            evaluation.status, evaluation.reason = "unavailable", str(exc)
        except MBWError as exc:
            evaluation.reason = str(exc)
        except Exception as exc:  # a generator/scorer crash is one failed evaluation, not the end of a 2-day search
            log.debug("evaluation %d on %s failed", launch_index, worker_name, exc_info=True)  # the reason is in the history row
            evaluation.reason = f"{type(exc).__name__}: {exc}"
        if evaluation.status == "failed":
            evaluation.payload_scores = {n: sum(s) / len(s) for n, s in image_scores.items() if s}
        return evaluation

    def _render_scored(self, generator: Generator, chunk: Sequence[Payload], scorer: Scorer, index: int, worker: str, timings: Timings,
                       image_scores: dict[str, list[float]]) -> list[GeneratedImage] | None:
        """Render ``chunk`` (in one call where the generator batches), score it into ``image_scores``; None: stopped."""
        chunk_images: list[GeneratedImage] = []
        batched = len(chunk) > 1 and callable(getattr(generator, "generate_many", None))
        for group in [chunk] if batched else [[p] for p in chunk]:
            if self._stop_requested:
                return None
            if batched:
                chunk_images.extend(self._generate_many(generator, group, index, worker, timings))
            else:
                chunk_images.extend(self._generate(generator, group[0], index, worker, timings))
        started = self._clock()
        scores = list(scorer.score(chunk_images))
        timings.score_s += self._clock() - started
        if len(scores) != len(chunk_images):
            raise EvaluationFailed(f"scorer {getattr(scorer, 'name', '?')} returned {len(scores)} scores for {len(chunk_images)} images")
        for image, score in zip(chunk_images, scores):
            value = float(score)
            if not math.isfinite(value):
                raise EvaluationFailed(f"score {value} for payload {image.payload.key}, image {image.index}")
            image_scores.setdefault(image.payload.name, []).append(value)
        return chunk_images

    def _screen_first(self, generator: Generator, evaluation: Evaluation, index: int, image_scores: dict[str, list[float]], done: set[str]) -> bool:
        """The cheap rung of multi-fidelity screening (``fidelity``); False: stopped. Sets ``evaluation.status``
        to ``screened`` for a candidate that is not promoted; a promoted one keeps reusable images in ``image_scores``."""
        screen = self._screen
        assert screen is not None
        evaluation.rung = "screen"
        cheap_scores: dict[str, list[float]] = {}
        cheap_images = self._render_scored(generator, screen.payloads, screen.scorer, index, evaluation.worker, evaluation.timings, cheap_scores)
        if cheap_images is None:
            evaluation.status = "aborted"
            return False
        evaluation.screen_score, cheap_means = self._tally_scores(cheap_scores)
        decision = screen.decide(evaluation.screen_score)
        evaluation.reason = decision.reason
        if not decision.promote:
            assert decision.estimate is not None
            evaluation.status = "screened"
            evaluation.score, evaluation.payload_scores = self._sign * decision.estimate, cheap_means
            evaluation.images.extend(cheap_images)
            return True
        evaluation.rung = "full"
        if screen.reuses:
            image_scores.update(cheap_scores)
            evaluation.images.extend(cheap_images)
            done.update(p.key for p in screen.payloads)
        return True

    def _generate(self, generator: Generator, payload: Payload, index: int, worker: str, timings: Timings) -> list[GeneratedImage]:
        def progress(step: int, steps: int) -> None:
            self.emit(GenerationProgress(index, payload.key, step, steps, worker))

        started = self._clock()
        images = list(generator.generate(payload, progress=progress))
        timings.generate_s += self._clock() - started
        if len(images) != payload.batch_size:
            raise EvaluationFailed(f"generator returned {len(images)} images for payload {payload.key}, expected {payload.batch_size}")
        return images

    def _generate_many(self, generator: Any, payloads: Sequence[Payload], index: int, worker: str, timings: Timings) -> list[GeneratedImage]:
        """Payloads rendered in one go by a generator that batches them (``generate_many``); their images in order."""
        label = "+".join(p.key for p in payloads)

        def progress(step: int, steps: int) -> None:
            self.emit(GenerationProgress(index, label, step, steps, worker))

        started = self._clock()
        per_payload = list(generator.generate_many(payloads, progress=progress))
        timings.generate_s += self._clock() - started
        if len(per_payload) != len(payloads):
            raise EvaluationFailed(f"generator returned images for {len(per_payload)} payloads, expected {len(payloads)}")
        images: list[GeneratedImage] = []
        for payload, payload_images in zip(payloads, per_payload):
            if len(payload_images) != payload.batch_size:
                raise EvaluationFailed(f"generator returned {len(payload_images)} images for payload {payload.key}, expected {payload.batch_size}")
            images.extend(payload_images)
        return images

    def _abandon_reason(self, image_scores: dict[str, list[float]], done: int, total: int) -> str:
        margin = self.settings.abandon.margin
        if margin is None or self._best is None or not any(self._weights[n] > 0 for n in image_scores):
            return ""
        partial, _ = self._tally_scores(image_scores)
        best = self._best[1]
        if self._sign * partial < self._sign * best - margin:
            return f"abandoned after {done} of {total} payloads: {partial:.4g} is more than {margin:g} worse than the best {best:.4g}"
        return ""

    # ------------------------------------------------------------------ recording

    def _append(self, row: HistoryRow) -> None:
        self._write(lambda history: history.append(row))
        self._rows.append(row)

    def _write(self, action: Callable[[RunHistory], None]) -> None:
        """Write to the run folder; after a write error nothing more is written and the search stops.

        The history stays exactly as it was before the failed write (a state
        written after it would be ahead of the history, so none is).
        """
        if self.history is None or self._write_error is not None:
            return
        try:
            action(self.history)
        except HistoryWriteError as exc:
            self._write_error = str(exc)
            self._force_stop(
                StopReason.WRITE_ERROR,
                f"{exc}; free some space (or fix the folder), then continue with: python -m lib_mbw search --resume {self.history.folder}",
            )

    def _save_state(self) -> None:
        if self.history is None or self._write_error is not None:
            return
        state = LoopState(
            rows=len(self._rows),
            phase=self._phase,
            stop_reason=self._stop_reason.value if self._stop_reason else None,
            stop_message=self._stop_message,
            elapsed_s=self._elapsed(),
            candidates=list(self._candidates),
        )
        self._write(lambda history: history.write_state(state))

    def _record_cached(self, recipe: Recipe, source: str) -> None:
        score = self._cache[recipe]
        self.optimizer.tell(recipe, self._sign * score)
        self._note_optimizer_mode()
        row = HistoryRow(
            len(self._rows), "cached", source, recipe, score=score, payload_scores=dict.fromkeys(self._names), reason="recipe evaluated before; its score was reused"
        )
        self._append(row)
        self._account_search_row(row)
        self._save_state()
        self._emit_done(row, Evaluation(recipe, "cached", score, worker=""), is_new_best=False, phase="search")

    def _note_optimizer_mode(self) -> None:
        """Log when the optimizer starts or stops letting its model pick every recipe (scores found noise-free)."""
        describe = getattr(self.optimizer, "describe", None)
        led = bool(describe().get("model_led")) if callable(describe) else False
        if led == self._model_led:
            return
        self._model_led = led
        at = self._tracker.evaluations + 2  # this row is not counted yet; the change applies to the next
        if led:
            log.info("optimizer: the scores look noise-free; from evaluation %d its model picks every recipe", at)
        else:
            log.info("optimizer: the model found noise in the scores; from evaluation %d the search is shared again", at)

    def _record_search(self, evaluation: Evaluation, source: str) -> None:
        recipe = evaluation.recipe
        if evaluation.status == "failed":
            self.optimizer.tell_failed(recipe)
        else:
            assert evaluation.score is not None
            self.optimizer.tell(recipe, self._sign * evaluation.score)
        self._note_optimizer_mode()
        before = self._best
        row = self._row(evaluation, source)
        self._append(row)
        self._account_search_row(row)
        self._save_state()
        is_new_best = self._best is not before and self._best is not None and self._best[0] == recipe
        if is_new_best:
            self._images = {recipe: evaluation.images}
        self._emit_done(row, evaluation, is_new_best, phase="search")
        if is_new_best:
            self.emit(NewBest(row.index, recipe, evaluation.score))  # type: ignore[arg-type]
        if evaluation.status == "failed":
            self._after_failure(row)

    def _row(self, evaluation: Evaluation, source: str, status: str | None = None) -> HistoryRow:
        t = evaluation.timings
        return HistoryRow(
            index=len(self._rows),
            status=status or evaluation.status,
            source=source,
            recipe=evaluation.recipe,
            score=evaluation.score,
            payload_scores={name: evaluation.payload_scores.get(name) for name in self._names},
            merge_s=t.merge_s,
            generate_s=t.generate_s,
            score_s=t.score_s,
            worker=evaluation.worker,
            reason=evaluation.reason,
            rung=evaluation.rung,
            screen_score=evaluation.screen_score,
        )

    def _after_failure(self, row: HistoryRow) -> None:
        self._last_failure = row.reason
        self.emit(EvaluationFailure(row.index, row.recipe, row.reason, self._failures_in_row))  # type: ignore[arg-type]
        if self._failures_in_row >= self.settings.max_failures:
            self._pause_for_failures(row.reason)

    def _emit_done(self, row: HistoryRow, evaluation: Evaluation, is_new_best: bool, phase: str) -> None:
        self.emit(
            IterationDone(
                index=row.index,
                recipe=row.recipe,  # type: ignore[arg-type]
                status=row.status,
                score=row.score,
                payload_scores={k: v for k, v in row.payload_scores.items() if v is not None},
                images=evaluation.images,
                timings=evaluation.timings,
                is_new_best=is_new_best,
                best_score=self._best[1] if self._best else None,
                evaluations=self._tracker.evaluations,
                max_evaluations=self.stop_settings.max_evaluations,
                phase=phase,
                worker=evaluation.worker,
                reason=row.reason,
                rung=row.rung,
            )
        )

    # ------------------------------------------------------------------ re-scoring and the final choice

    def _rank_candidates(self) -> list[Recipe]:
        k = self.settings.rescore_top
        if hasattr(self.optimizer, "rank_for_rescoring"):
            ranked = list(self.optimizer.rank_for_rescoring(k))  # type: ignore[attr-defined]
        else:
            ranked = [r.recipe for r in sorted(self._search_rows("ok"), key=lambda r: -self._sign * r.score)]  # type: ignore[operator]
        unique: list[Recipe] = []
        for recipe in ranked:
            if recipe is not None and recipe not in unique:
                unique.append(recipe)
        return unique[:k]

    def _search_rows(self, *statuses: str) -> list[HistoryRow]:
        return [r for r in self._rows if r.source in SEARCH_SOURCES and r.status in statuses and r.score is not None]

    def _rescore(self) -> None:
        if not self._candidates:
            self._candidates = self._rank_candidates()
            self._save_state()
        rescored = {r.recipe for r in self._rows if r.source == "rescore" and r.status == "rescore"}
        pending = [r for r in self._candidates if r not in rescored]
        while pending:
            recipe = pending[0]
            self._wait_if_paused()
            if self._stop_requested:
                break
            evaluation = self._evaluate(0, self.generators[0], recipe, self._rescore_payloads, "rescore")
            if evaluation.status == "aborted":
                break
            if evaluation.status == "unavailable":
                self._requeue_pause(evaluation.reason)
                continue
            pending.pop(0)
            row = self._row(evaluation, "rescore", status="rescore" if evaluation.status == "ok" else "failed")
            self._append(row)
            self._failures_in_row = self._failures_in_row + 1 if row.status == "failed" else 0
            self._save_state()
            if evaluation.status == "ok":
                self._images[recipe] = evaluation.images
            self._emit_done(row, evaluation, is_new_best=False, phase="rescore")
            if row.status == "failed":
                self._after_failure(row)
        self._phase = "select"
        self._save_state()

    def _mean_score(self, recipe: Recipe) -> tuple[float | None, int]:
        scores = [r.score for r in self._rows if r.recipe == recipe and r.status in ("ok", "rescore") and r.score is not None]
        return (sum(scores) / len(scores), len(scores)) if scores else (None, 0)

    def _select(self) -> None:
        recipe, score, reason = self._choose()
        if recipe is not None:
            row = HistoryRow(len(self._rows), "selected", "final", recipe, score=score, payload_scores=dict.fromkeys(self._names), reason=reason)
            self._append(row)
        self._phase = "done"
        self._save_state()

    def _choose(self) -> tuple[Recipe | None, float | None, str]:
        if self._best is None:
            return None, None, "no evaluation succeeded"
        rescored = [c for c in self._candidates if any(r.recipe == c and r.status == "rescore" for r in self._rows)]
        if rescored:
            means = {c: self._mean_score(c) for c in rescored}
            best = max(rescored, key=lambda c: self._sign * means[c][0])  # type: ignore[operator]
            mean, count = means[best]
            return best, mean, (
                f"best mean score over {count} evaluations (search + re-score with new seeds) "
                f"among the top {len(rescored)} candidates"
            )
        if hasattr(self.optimizer, "recommend"):
            try:
                recommendation = self.optimizer.recommend()  # type: ignore[attr-defined]
            except Exception:
                log.warning("optimizer recommend() failed; returning the best observed recipe", exc_info=True)
            else:
                mean, count = self._mean_score(recommendation.recipe)
                if mean is None and self._screen is not None:
                    # a screened-out candidate has only an estimate: never return a recipe no full render has scored
                    recipe, score = self._best
                    return recipe, score, "best observed score (the optimizer recommended a candidate screened out at the cheap rung)"
                predicted = getattr(recommendation, "predicted_mean", None)
                score = mean if mean is not None else (self._sign * predicted if predicted is not None else None)
                return recommendation.recipe, score, f"optimizer recommendation: {recommendation.reason}"
        recipe, score = self._best
        return recipe, score, "best observed score (not re-scored)"

    def _result(self) -> SearchResult:
        selected = next((r for r in reversed(self._rows) if r.status == "selected"), None)
        recipe = selected.recipe if selected else None
        return SearchResult(
            recipe=recipe,
            score=selected.score if selected else None,
            reason=selected.reason if selected else "no evaluation succeeded",
            stop_reason=self._stop_reason,
            stop_message=self._stop_message,
            evaluations=self._tracker.evaluations,
            best_observed=self._best,
            images=list(self._images.get(recipe, [])) if recipe is not None else [],
            rows=list(self._rows),
            run_dir=self.history.folder if self.history is not None else None,
        )
