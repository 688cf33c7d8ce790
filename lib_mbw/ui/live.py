"""What the live view knows about the running search: search events folded into one ``LiveState``.

The search thread's listener calls ``apply_event(state, event)`` for every
event (cheap: it stores references and counters); the UI's streaming
callback renders a snapshot of the state (``views``). Each part of the view
has a version counter in ``LiveState.versions`` that ``apply_event`` bumps
when the part changes, so a renderer redraws only what changed.

Also here: the speed and ETA estimate and the status line, as pure functions
of a state and the current time.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..generators.base import GeneratedImage
from ..recipe import Recipe
from ..search import events as ev

#: Parts of the live view that are redrawn independently.
PARTS: tuple[str, ...] = ("status", "current", "best", "latest", "rows", "rating", "final")

#: Run states. ``ACTIVE`` ones have a search thread behind them.
ACTIVE: tuple[str, ...] = ("preparing", "running", "paused", "stopping")
STATE_LABELS: dict[str, str] = {
    "idle": "Idle",
    "preparing": "Preparing (loading models and scorer)",
    "running": "Running",
    "paused": "Paused",
    "stopping": "Stopping",
    "finished": "Finished",
    "stopped": "Stopped",
    "failed": "Failed",
}

#: Evaluations the speed estimate looks back over.
RATE_WINDOW = 10


@dataclass
class LiveRow:
    """One evaluation as the live table and convergence plot show it (``status``/``score`` as in history)."""

    index: int
    status: str
    score: float | None
    phase: str
    seconds: float
    is_new_best: bool = False
    reason: str = ""
    worker: str = ""
    rung: str = ""  # multi-fidelity screening: the rung the candidate reached (screen / full), "" without


@dataclass
class PendingRating:
    """Images waiting for a person's ratings (human scorer)."""

    request_id: int
    images: list[GeneratedImage]
    low: int
    high: int
    deadline: float | None = None  # time.time() after which missing ratings count as missing


@dataclass
class LiveState:
    """Everything the live view shows; mutated only by ``apply_event`` and the controller."""

    state: str = "idle"
    message: str = ""
    run_id: str = ""
    run_dir: str | None = None
    strategy: str = ""
    family: str | None = None
    higher_is_better: bool = True
    max_evaluations: int = 0
    resumed_evaluations: int = 0
    evaluations: int = 0
    rescore_top: int = 0
    max_minutes: float | None = None
    phase: str = "search"
    rows: list[LiveRow] = field(default_factory=list)
    current: Recipe | None = None
    current_index: int | None = None
    best: Recipe | None = None
    best_score: float | None = None
    best_index: int | None = None
    best_images: list[GeneratedImage] = field(default_factory=list)
    best_payload_scores: dict[str, float] = field(default_factory=dict)
    latest_images: list[GeneratedImage] = field(default_factory=list)
    latest_payload_scores: dict[str, float] = field(default_factory=dict)
    latest_index: int | None = None
    latest_score: float | None = None
    progress: tuple[str, int, int] | None = None  # payload, step, steps
    started_at: float | None = None
    paused_since: float | None = None
    paused_total: float = 0.0
    done_times: list[float] = field(default_factory=list)  # wall-clock time of each finished evaluation
    final_recipe: Recipe | None = None
    final_score: float | None = None
    final_reason: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    rating: PendingRating | None = None
    versions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PARTS, 0))

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def shown_best(self) -> Recipe | None:
        """The recipe the search returned, else the best observed so far."""
        return self.final_recipe or self.best

    def bump(self, *parts: str) -> None:
        for part in parts:
            self.versions[part] = self.versions.get(part, 0) + 1

    def snapshot(self) -> "LiveState":
        """A copy safe to render while the search goes on (lists copied, images and recipes shared)."""
        clone = copy.copy(self)
        clone.rows = list(self.rows)
        clone.done_times = list(self.done_times)
        clone.outputs = dict(self.outputs)
        clone.errors = list(self.errors)
        clone.versions = dict(self.versions)
        return clone


def new_run_state(state: str = "preparing", *, max_evaluations: int = 0, rescore_top: int = 0, max_minutes: float | None = None,
                  family: str | None = None, message: str = "", previous: LiveState | None = None) -> LiveState:
    """A fresh state for a run about to start; versions continue from ``previous`` so every part redraws."""
    fresh = LiveState(state=state, message=message, max_evaluations=max_evaluations, rescore_top=rescore_top,
                      max_minutes=max_minutes, family=family)
    if previous is not None:
        fresh.versions = {part: previous.versions.get(part, 0) + 1 for part in PARTS}
    return fresh


def apply_event(state: LiveState, event: ev.SearchEvent, now: float | None = None) -> LiveState:
    """Fold one search event into ``state`` (in place; returns it)."""
    now = event.time if now is None else now
    if isinstance(event, ev.RunStarted):
        if state.state != "stopping":
            state.state = "running"
        state.run_id, state.run_dir, state.strategy = event.run_id, event.run_dir, event.strategy
        state.max_evaluations = event.max_evaluations
        state.resumed_evaluations = state.evaluations = event.resumed_evaluations
        state.started_at = now
        state.message = f"resumed after {event.resumed_evaluations} evaluations" if event.resumed_evaluations else ""
        state.bump("status")
    elif isinstance(event, ev.EvaluationStarted):
        state.current, state.current_index, state.phase = event.recipe, event.index, event.phase
        state.progress = None
        state.bump("status", "current")
    elif isinstance(event, ev.GenerationProgress):
        state.progress = (event.payload, event.step, event.steps)
        state.bump("status")
    elif isinstance(event, ev.IterationDone):
        _apply_iteration(state, event, now)
    elif isinstance(event, ev.NewBest):
        if state.best_index != event.index:
            state.best, state.best_score, state.best_index = event.recipe, event.score, event.index
            state.bump("best", "status")
    elif isinstance(event, ev.EvaluationFailure):
        state.message = f"evaluation {event.index} failed ({event.consecutive} in a row): {event.reason}"
        state.bump("status")
    elif isinstance(event, ev.Paused):
        if state.state != "stopping":
            state.state = "paused"
        state.paused_since = now
        state.message = event.reason
        state.bump("status")
    elif isinstance(event, ev.Resumed):
        if state.paused_since is not None:
            state.paused_total += now - state.paused_since
        state.paused_since = None
        if state.state != "stopping":
            state.state = "running"
        state.message = "resumed"
        state.bump("status")
    elif isinstance(event, ev.Stopped):
        reason = getattr(event.reason, "value", event.reason)
        state.message = f"search stopped ({reason}): {event.message}"
        state.phase = "rescore" if state.rescore_top and reason != "user_abort" else "select"
        state.bump("status")
    elif isinstance(event, ev.FinalRecommendation):
        state.final_recipe, state.final_score, state.final_reason = event.recipe, event.score, event.reason
        state.current, state.progress, state.phase = None, None, "done"
        if event.recipe is not None and event.score is not None:
            state.rows.append(LiveRow(len(state.rows), "selected", event.score, "final", 0.0, reason=event.reason))
        state.bump("final", "best", "current", "rows", "status")
    elif isinstance(event, ev.OutputsWritten):
        state.outputs = dict(event.paths)
        state.bump("final", "status")
    return state


def _apply_iteration(state: LiveState, event: ev.IterationDone, now: float) -> None:
    state.rows.append(
        LiveRow(event.index, event.status, event.score, event.phase, event.timings.total_s, event.is_new_best, event.reason, event.worker,
                event.rung)
    )
    state.done_times.append(now)
    state.phase = event.phase
    if event.phase == "search":
        state.evaluations = event.evaluations
        state.max_evaluations = event.max_evaluations
    if event.images:
        state.latest_images = list(event.images)
        state.latest_payload_scores = dict(event.payload_scores)
        state.latest_index, state.latest_score = event.index, event.score
        state.bump("latest")
    if event.is_new_best and event.score is not None:
        state.best, state.best_score, state.best_index = event.recipe, event.score, event.index
        state.best_images = list(event.images)
        state.best_payload_scores = dict(event.payload_scores)
        state.bump("best")
    elif event.best_score is not None and state.best_score is None:
        state.best_score = event.best_score
    state.progress = None
    state.bump("rows", "status")


# --------------------------------------------------------------------------- speed and ETA


def active_seconds(state: LiveState, now: float) -> float:
    """Seconds since the run started, without paused time."""
    if state.started_at is None:
        return 0.0
    paused = state.paused_total + (now - state.paused_since if state.paused_since is not None else 0.0)
    return max(0.0, now - state.started_at - paused)


def seconds_per_evaluation(state: LiveState) -> float | None:
    """Wall-clock seconds per evaluation over the last ``RATE_WINDOW`` ones (the first one counts from the start)."""
    times = state.done_times[-(RATE_WINDOW + 1):]
    if len(times) >= 2:
        return (times[-1] - times[0]) / (len(times) - 1)
    if len(times) == 1 and state.started_at is not None:
        return max(times[0] - state.started_at, 1e-9)
    return None


def remaining_evaluations(state: LiveState) -> int:
    """Evaluations left at most: the search's remaining budget plus the re-scores after it."""
    if state.phase == "search":
        return max(0, state.max_evaluations - state.evaluations) + state.rescore_top
    if state.phase == "rescore":
        done = sum(1 for r in state.rows if r.phase == "rescore")
        return max(0, state.rescore_top - done)
    return 0


def eta_seconds(state: LiveState, now: float) -> float | None:
    """Estimated seconds to the end (an upper bound: early stop may end the search sooner); None if unknown."""
    per = seconds_per_evaluation(state)
    if per is None or not state.active:
        return None
    eta = remaining_evaluations(state) * per
    if state.max_minutes and state.phase == "search":
        budget_left = max(0.0, state.max_minutes * 60.0 - active_seconds(state, now))
        eta = min(eta, budget_left + state.rescore_top * per)
    return eta


def format_duration(seconds: float | None) -> str:
    """``h:mm:ss`` (or ``d days h:mm:ss``); '–' when unknown."""
    if seconds is None:
        return "–"
    seconds = int(round(max(0.0, seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days} d {text}" if days else text


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def status_line(state: LiveState, now: float | None = None) -> str:
    """The one-paragraph status (Markdown): state, iteration, best score, speed, elapsed, ETA, last message."""
    now = time.time() if now is None else now
    parts = [f"**{STATE_LABELS.get(state.state, state.state)}**"]
    if state.run_id:
        parts.append(f"run `{state.run_id}`")
    if state.max_evaluations:
        parts.append(f"evaluation {state.evaluations} / {state.max_evaluations}")
    if state.phase == "rescore" and state.active:
        parts.append("re-scoring the top candidates")
    if state.best_score is not None:
        best_at = f" (evaluation {state.best_index})" if state.best_index is not None else ""
        parts.append(f"best {_score(state.best_score)}{best_at}")
    if state.rows:
        last = next((r for r in reversed(state.rows) if r.status != "selected"), None)
        if last is not None:
            parts.append(f"last {_score(last.score) if last.score is not None else last.status}")
    per = seconds_per_evaluation(state)
    if per:
        parts.append(f"{1.0 / per:.3g} evaluations/s ({per:.3g} s each)")
    if state.started_at is not None:
        parts.append(f"elapsed {format_duration(active_seconds(state, now))}")
    if state.active and state.state != "preparing":
        parts.append(f"ETA {format_duration(eta_seconds(state, now))}")
    line = " · ".join(parts)
    if state.progress and state.state == "running":
        payload, step, steps = state.progress
        line += f"\n\nrendering `{payload}`: step {step} / {steps}"
    if state.final_recipe is not None:
        line += f"\n\nreturned recipe: score {_score(state.final_score)} ({state.final_reason})"
    if state.message:
        line += f"\n\n{state.message}"
    for error in state.errors:
        line += f"\n\n⚠ {error}"
    if state.outputs:
        folder = state.run_dir or ""
        names = [Path(p).name if folder and Path(p).parent == Path(folder) else p for p in state.outputs.values()]
        line += f"\n\noutputs in `{folder}`: " + ", ".join(f"`{n}`" for n in names)
    return line


__all__ = [
    "ACTIVE",
    "LiveRow",
    "LiveState",
    "PARTS",
    "PendingRating",
    "active_seconds",
    "apply_event",
    "eta_seconds",
    "format_duration",
    "new_run_state",
    "remaining_evaluations",
    "seconds_per_evaluation",
    "status_line",
]
