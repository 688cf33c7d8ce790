"""What a running search tells its listeners (CLI progress bar, UI live view, logs).

Every event is a small dataclass; ``SearchRun`` calls each listener with it
on the thread that produced it (the search thread, or a worker thread while a
payload renders: ``GenerationProgress``). ``to_dict()`` gives a JSON-safe view
(recipes as named weights, images left out) for hosts that stream events.
A listener that raises is logged and ignored: it never stops a search.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..generators.base import GeneratedImage
from ..recipe import Recipe


@dataclass
class SearchEvent:
    """Base of all events; ``time`` is the wall-clock time it was made."""

    time: float = field(default_factory=time.time, init=False)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            data[f.name] = _json_safe(getattr(self, f.name))
        return data


def _json_safe(value: Any) -> Any:
    if isinstance(value, Recipe):
        data = dict(value.weights)
        if value.base is not None:
            data["BASE"] = value.base
        return data
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, GeneratedImage):
        return {"payload": value.payload.key, "seed": value.seed, "index": value.index}
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@dataclass
class RunStarted(SearchEvent):
    run_id: str
    run_dir: str | None
    strategy: str
    payloads: int
    images_per_evaluation: int
    max_evaluations: int
    resumed_evaluations: int


@dataclass
class EvaluationStarted(SearchEvent):
    index: int
    recipe: Recipe
    phase: str
    worker: str


@dataclass
class GenerationProgress(SearchEvent):
    index: int
    payload: str
    step: int
    steps: int
    worker: str


@dataclass
class Timings:
    merge_s: float = 0.0
    generate_s: float = 0.0
    score_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.merge_s + self.generate_s + self.score_s


@dataclass
class IterationDone(SearchEvent):
    """One evaluation finished (any status): what it scored and how long each step took."""

    index: int
    recipe: Recipe
    status: str
    score: float | None
    payload_scores: dict[str, float]
    images: list[GeneratedImage]
    timings: Timings
    is_new_best: bool
    best_score: float | None
    evaluations: int
    max_evaluations: int
    phase: str
    worker: str
    reason: str = ""
    rung: str = ""  #: multi-fidelity screening: the rung reached (screen / full); "" without screening


@dataclass
class NewBest(SearchEvent):
    index: int
    recipe: Recipe
    score: float


@dataclass
class EvaluationFailure(SearchEvent):
    index: int
    recipe: Recipe
    reason: str
    consecutive: int


@dataclass
class Paused(SearchEvent):
    reason: str
    by_user: bool


@dataclass
class Resumed(SearchEvent):
    pass


@dataclass
class Stopped(SearchEvent):
    """The search phase ended (re-scoring and the final choice may follow)."""

    reason: Any  # stopping.StopReason
    message: str
    evaluations: int


@dataclass
class FinalRecommendation(SearchEvent):
    recipe: Recipe | None
    score: float | None
    reason: str
    candidates: int


@dataclass
class OutputsWritten(SearchEvent):
    paths: dict[str, str]


Listener = Callable[[SearchEvent], None]
