"""Multi-fidelity screening: judge a candidate cheaply first, render it in full only when it looks promising.

Owns the ``fidelity`` setting, the cheap rung's payloads, the promotion rule
and the value the optimizer is told for a candidate that was not promoted.
The loop (``loop.SearchRun``) only asks :class:`Screen` three things: which
payloads and scorer make the cheap rung, whether a cheap score is promoted
(``decide``), and to account every recorded search row (``observe``), live
or replayed on resume.

Two rungs:

* **screen**: the first ``payloads`` payloads (default: all), at most
  ``images`` images each (default: all; the first seeds), at ``steps_fraction``
  of their steps (at least 1 step);
* **full**: the run's payloads as configured.

A candidate is promoted to the full rung when it is one of the first
``warmup`` screened candidates, or its cheap score is at or above the
``promote_quantile`` quantile of the cheap scores of the earlier screened
candidates (all of them: the median stopping rule for ``0.5``; or the last
``window`` ones, so the bar rises with an improving optimizer), or fewer than
``min_promote`` of the screened candidates so far would be promoted without
it. A candidate that is not promoted is recorded with status ``screened``,
rung ``screen``, its cheap score in ``screen_score``, and as its score the
cheap score mapped onto the full-score scale by an isotonic (monotone) fit of
the full scores on the cheap scores of the candidates that have both. That
estimate is what the optimizer is told: a raw cheap score is on another scale
(fewer steps give other images and other references), so telling it would
put false hills and valleys into the optimizer's model; a fixed penalty would
tell it that every unpromoted region is equally bad. The fit's values are
means of full scores, so an estimate never exceeds the best full score, and
a ``screened`` row is never the best (only ``ok`` rows are).

When the cheap rung keeps every step and image (``steps_fraction`` 1), its
payloads are the first of the full render and their images are reused: the
promoted candidate renders only the rest. Early abandon (``abandon.margin``)
composes with screening: it acts inside the full render, on the payloads
after the screen.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import MBWError
from ..payloads import Payload

MODES: tuple[str, ...] = ("off", "screen")
#: History values of the ``rung`` column: "" (no screening; every history written before it), screen, full.
RUNGS: tuple[str, ...] = ("", "screen", "full")


class FidelityError(MBWError):
    """The screening rung cannot be built for this run (no cheaper rung, no references for it)."""


@dataclass
class FidelitySettings:
    """Multi-fidelity screening (see the module docstring); ``mode`` "off" renders every candidate in full."""

    mode: str = "off"
    steps_fraction: float = 0.5
    payloads: int | None = None
    images: int | None = None
    promote_quantile: float = 0.5
    min_promote: float = 0.1
    warmup: int = 5
    window: int | None = None

    @property
    def on(self) -> bool:
        return self.mode == "screen"


def fidelity_checks(settings: FidelitySettings) -> list[tuple[bool, str, str]]:
    """(ok, dotted key, what it must be) for ``SearchSettings.validate``."""
    return [
        (settings.mode in MODES, "fidelity.mode", f"one of {', '.join(MODES)}"),
        (math.isfinite(settings.steps_fraction) and 0.0 < settings.steps_fraction <= 1.0, "fidelity.steps_fraction", "in (0, 1]"),
        (settings.payloads is None or settings.payloads >= 1, "fidelity.payloads", "≥ 1 (or unset for all)"),
        (settings.images is None or settings.images >= 1, "fidelity.images", "≥ 1 (or unset for all)"),
        (math.isfinite(settings.promote_quantile) and 0.0 <= settings.promote_quantile < 1.0, "fidelity.promote_quantile", "in [0, 1)"),
        (math.isfinite(settings.min_promote) and 0.0 <= settings.min_promote <= 1.0, "fidelity.min_promote", "in [0, 1]"),
        (settings.warmup >= 2, "fidelity.warmup", "≥ 2 (the map onto the full scale needs candidates with both scores)"),
        (settings.window is None or settings.window >= 2, "fidelity.window", "≥ 2 (or unset for every earlier candidate)"),
    ]


def screen_steps(steps: int, fraction: float) -> int:
    return max(1, round(steps * fraction))


def screen_payloads(payloads: Sequence[Payload], settings: FidelitySettings) -> list[Payload]:
    """The cheap rung: the first ``payloads`` payloads, ``images`` images each, at ``steps_fraction`` of their steps."""
    count = min(settings.payloads or len(payloads), len(payloads))
    out = []
    for payload in payloads[:count]:
        batch = min(settings.images or payload.batch_size, payload.batch_size)
        out.append(dataclasses.replace(payload, steps=screen_steps(payload.steps, settings.steps_fraction), batch_size=batch))
    return out


def reference_label(settings: FidelitySettings, payloads: Sequence[Payload]) -> str | None:
    """The name of the cheap rung's references (``steps0.5``), or None when its images are full-fidelity ones."""
    if all(screen_steps(p.steps, settings.steps_fraction) == p.steps for p in payloads):
        return None
    return f"steps{settings.steps_fraction:g}"


def scorer_at(scorer: Any, label: str | None) -> Any:
    """The scorer that judges cheap images like with like: references rendered at the same fidelity.

    Scorers that judge an image alone (ImageReward, aesthetic) are used as they are; a scorer with
    ``for_fidelity(label)`` (``ReferenceScorer``) gives one over the references of that fidelity.
    """
    if label is None or not callable(getattr(scorer, "for_fidelity", None)):
        return scorer
    return scorer.for_fidelity(label)


def isotonic_fit(pairs: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Non-decreasing least-squares fit of y on x (scikit-learn's ``IsotonicRegression``): its knots (xs, ys)."""
    from sklearn.isotonic import IsotonicRegression

    x, y = zip(*pairs)
    fit = IsotonicRegression(out_of_bounds="clip").fit(x, y)
    return [float(v) for v in fit.X_thresholds_], [float(v) for v in fit.y_thresholds_]


@dataclass(frozen=True)
class Decision:
    """Whether a cheap score is promoted; for one that is not, the objective to tell (full scale)."""

    promote: bool
    reason: str
    estimate: float | None = None


class Screen:
    """The cheap rung of one run and the state its promotion rule needs (rebuilt from the history on resume).

    Scores here are objectives (higher is better: the loop's ``sign`` times the score).
    """

    def __init__(self, settings: FidelitySettings, payloads: Sequence[Payload], scorer: Any, sign: float = 1.0) -> None:
        self.settings = settings
        self.payloads = screen_payloads(payloads, settings)
        if sum(p.steps * p.batch_size for p in self.payloads) >= sum(p.steps * p.batch_size for p in payloads):
            raise FidelityError(
                f"fidelity: the screening rung ({len(self.payloads)} of {len(payloads)} payloads, steps x{settings.steps_fraction:g}) "
                "renders as much as a full evaluation; lower fidelity.steps_fraction, fidelity.payloads or fidelity.images"
            )
        self.label = reference_label(settings, payloads)
        self.scorer = scorer_at(scorer, self.label)
        #: The cheap images are the full render's first ones (same steps, seeds and scorer): a promoted candidate reuses them.
        self.reuses = self.label is None and all(s.batch_size == p.batch_size for s, p in zip(self.payloads, payloads))
        self.sign = sign
        self._cheap: list[float] = []
        self._pairs: list[tuple[float, float]] = []
        self._promoted = 0
        self._lock = threading.Lock()

    @property
    def screened(self) -> int:
        return len(self._cheap)

    @property
    def promoted(self) -> int:
        return self._promoted

    def observe(self, rung: str, status: str, screen_score: float | None, score: float | None) -> None:
        """Account one recorded search row (scores on the scorer's scale); rows without a cheap score are ignored."""
        if rung not in ("screen", "full") or screen_score is None:
            return
        with self._lock:
            self._cheap.append(self.sign * screen_score)
            if rung == "full":
                self._promoted += 1
                if status == "ok" and score is not None:
                    self._pairs.append((self.sign * screen_score, self.sign * score))

    def decide(self, cheap_score: float) -> Decision:
        """Promote ``cheap_score`` (scorer scale) to the full rung, or say what to tell the optimizer instead."""
        with self._lock:
            cheap = self.sign * cheap_score
            seen = len(self._cheap)
            if seen < self.settings.warmup:
                return Decision(True, f"promoted: warm-up ({seen + 1} of the first {self.settings.warmup} screened candidates)")
            if not self._pairs:
                return Decision(True, "promoted: no candidate has both a cheap and a full score yet")
            q = self.settings.promote_quantile
            window = self._cheap[-self.settings.window:] if self.settings.window else self._cheap
            bar = float(np.quantile(window, q))
            of = f"{len(window)} cheap scores" if len(window) == seen else f"the last {len(window)} cheap scores"
            if cheap >= bar:
                return Decision(True, f"promoted: cheap score {cheap_score:.4g} ≥ the {q:g} quantile {self.sign * bar:.4g} of {of}")
            if self._promoted < self.settings.min_promote * (seen + 1):
                return Decision(True, f"promoted: keeps the promotion rate at {self.settings.min_promote:g} or more")
            xs, ys = isotonic_fit(self._pairs)
            estimate = float(np.interp(cheap, xs, ys))  # flat beyond the knots
            return Decision(
                False,
                f"screened out: cheap score {cheap_score:.4g} < the {q:g} quantile {self.sign * bar:.4g} of {of}; "
                f"told {self.sign * estimate:.4g}, its full-scale estimate (monotone fit on {len(self._pairs)} promoted candidates)",
                estimate,
            )


def make_screen(settings: FidelitySettings | None, payloads: Sequence[Payload], scorer: Any, sign: float = 1.0) -> Screen | None:
    """The run's screen, or None when screening is off."""
    if settings is None or not settings.on:
        return None
    return Screen(settings, payloads, scorer, sign)


__all__ = [
    "Decision",
    "FidelityError",
    "FidelitySettings",
    "MODES",
    "RUNGS",
    "Screen",
    "fidelity_checks",
    "isotonic_fit",
    "make_screen",
    "reference_label",
    "scorer_at",
    "screen_payloads",
]
