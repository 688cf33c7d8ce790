"""When a search stops: evaluation count, no improvement for a while, time budget, target score, abort.

``StopTracker`` is fed every evaluation of the search phase (in history
order, so a resumed run rebuilds the same state) and answers ``check()``
between evaluations. Scores are compared as the optimizer sees them
("objective": higher is better; the loop negates scores of lower-is-better
scorers before they get here).

Early stop counts evaluations since the last *improvement*: an objective
above the best so far by more than ``max(tol_abs, tol_rel * |best|)``.
Every evaluation counts (failed, abandoned and cached ones too), so a
search that keeps failing or keeps proposing known recipes also ends.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from ..errors import MBWError

#: The seed tool's search length.
DEFAULT_MAX_EVALUATIONS = 270
#: Evaluations without a new best score before a search stops early: the optimizer benchmark's replay of the default
#: strategy's runs (docs/optimizer.md "Early stop"; 54 gave up a median 0.17 of the gap on the multimodal family).
DEFAULT_PATIENCE = 81


class StopReason(str, enum.Enum):
    """Why the search phase ended (the value is what history and events record)."""

    MAX_EVALUATIONS = "max_evaluations"
    NO_IMPROVEMENT = "no_improvement"
    TIME_BUDGET = "time_budget"
    TARGET_SCORE = "target_score"
    USER_ABORT = "user_abort"
    EXHAUSTED = "optimizer_exhausted"
    FAILURES = "failures"  #: evaluations kept failing (``max_failures`` in a row); the message has the cause
    WRITE_ERROR = "write_error"  #: the run folder could not be written (full disk, ...); the history is intact


#: Stops after which a resumed run goes on searching (the search itself was not finished).
UNFINISHED: tuple[StopReason, ...] = (StopReason.USER_ABORT, StopReason.FAILURES, StopReason.WRITE_ERROR)


class StopSettingsError(MBWError):
    """A stopping setting is out of range."""


@dataclass(frozen=True)
class StopSettings:
    """When to end the search phase. ``None`` disables a criterion (max_evaluations is always on)."""

    max_evaluations: int = DEFAULT_MAX_EVALUATIONS
    patience: int | None = DEFAULT_PATIENCE
    tol_abs: float = 0.0
    tol_rel: float = 0.0
    max_minutes: float | None = None
    target_score: float | None = None

    def __post_init__(self) -> None:
        for name in ("tol_abs", "tol_rel", "max_minutes", "target_score"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise StopSettingsError(f"stop.{name} must be a finite number, got {value}")
        if self.max_evaluations < 1:
            raise StopSettingsError(f"stop.max_evaluations must be ≥ 1, got {self.max_evaluations}")
        if self.patience is not None and self.patience < 1:
            raise StopSettingsError(f"stop.patience must be ≥ 1 (or None to disable early stop), got {self.patience}")
        if self.tol_abs < 0 or self.tol_rel < 0:
            raise StopSettingsError(f"stop.tol_abs and stop.tol_rel must be ≥ 0, got {self.tol_abs}, {self.tol_rel}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise StopSettingsError(f"stop.max_minutes must be > 0 (or None for no time budget), got {self.max_minutes}")


@dataclass
class StopTracker:
    """Counts evaluations and improvements; says when to stop."""

    settings: StopSettings
    sign: float = 1.0
    evaluations: int = 0
    best: float | None = None
    since_improvement: int = 0

    def record(self, objective: float | None) -> bool:
        """Count one evaluation (``None``: failed); True if it improved the best by more than the tolerance."""
        self.evaluations += 1
        if objective is None:
            self.since_improvement += 1
            return False
        if self.best is None or objective > self.best + self._tolerance():
            self.best = objective
            self.since_improvement = 0
            return True
        self.since_improvement += 1
        return False

    def _tolerance(self) -> float:
        assert self.best is not None
        return max(self.settings.tol_abs, self.settings.tol_rel * abs(self.best))

    def check(self, elapsed_s: float) -> tuple[StopReason, str] | None:
        """The reason to stop now, with a message for people, or None to go on."""
        s = self.settings
        if self.evaluations >= s.max_evaluations:
            return StopReason.MAX_EVALUATIONS, f"reached {s.max_evaluations} evaluations"
        if s.target_score is not None and self.best is not None and self.best >= self.sign * s.target_score:
            return StopReason.TARGET_SCORE, f"reached the target score {s.target_score:g}"
        if s.patience is not None and self.since_improvement >= s.patience:
            return StopReason.NO_IMPROVEMENT, f"no improvement in the last {self.since_improvement} evaluations"
        if s.max_minutes is not None and elapsed_s >= s.max_minutes * 60.0:
            return StopReason.TIME_BUDGET, f"used the time budget of {s.max_minutes:g} minutes"
        return None

    def remaining(self) -> int:
        """Evaluations left before ``max_evaluations``."""
        return max(0, self.settings.max_evaluations - self.evaluations)
