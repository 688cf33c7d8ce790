"""Tallies: how the per-payload scores of one evaluation become the one number the optimizer sees.

The loop first averages the image scores of each payload (all its images and
wildcard variants), then tallies those per-payload scores with the payloads'
``weight``\\ s (a weight of 0 leaves a payload out of the tally). Methods:

* ``arithmetic``: Σ wᵢxᵢ / Σ wᵢ (the seed tool's default).
* ``geometric``, ``harmonic``, ``quadratic``: weighted power means with
  p = 0, -1, 2. Geometric and harmonic means reward consistency (one bad
  payload pulls them down more), quadratic rewards peaks.
* ``median``: weighted median (the value at half the total weight; the mean
  of the two neighbours when it falls exactly between them).
* ``min``: the worst payload (weights only decide which payloads count).
* ``trimmed``: weighted mean after cutting ``trim`` of the total weight from
  each end (default 10 %); robust to one outlier payload.

Power means need positive numbers, but ImageReward scores are often
negative. Taking a geometric mean of raw rewards would crash (log of a
negative number) or silently flip the order (a power mean of negatives is
positive). So with ``positive="sigmoid"`` (the default) power means are taken
of σ(x) = 1 / (1 + e⁻ˣ), which keeps the order of the scores, and the result
is mapped back with the logit, so it is on the scorer's own scale again (a
run whose payloads all score x tallies to x under every method). Inputs are
clipped to ±30 first (σ is 1.0 in float64 beyond about 37). With
``positive="none"`` scores are used as they are and a score ≤ 0 fails the
evaluation with a message saying so (for scorers that are always positive,
e.g. aesthetic 1-10, if you want the plain power mean of the raw scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import EvaluationFailed, MBWError

TALLIES: dict[str, str] = {
    "arithmetic": "weighted arithmetic mean",
    "geometric": "weighted geometric mean (of sigmoid-mapped scores by default)",
    "harmonic": "weighted harmonic mean (of sigmoid-mapped scores by default)",
    "quadratic": "weighted quadratic mean / RMS (of sigmoid-mapped scores by default)",
    "median": "weighted median",
    "min": "minimum (the worst payload)",
    "trimmed": "weighted mean after trimming `trim` of the weight from each end",
}

POSITIVE_MAPS: tuple[str, ...] = ("sigmoid", "none")

_POWERS = {"geometric": 0.0, "harmonic": -1.0, "quadratic": 2.0}
_CLIP = 30.0


class TallyError(MBWError):
    """Tally settings are invalid (unknown method, trim out of range, bad weights)."""


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _logit_from_log(log_s: float) -> float:
    """logit(s) given log(s), stable for s close to 1."""
    return log_s - math.log(-math.expm1(log_s))


def _power_mean_sigmoid(values: Sequence[float], weights: Sequence[float], p: float) -> float:
    total = sum(weights)
    logs = [_log_sigmoid(max(-_CLIP, min(_CLIP, x))) for x in values]
    if p == 0:
        mean_log = sum(w * lg for w, lg in zip(weights, logs)) / total
    else:
        # log of (Σ w sᵖ / Σ w)^(1/p), computed in log space to stay exact near s = 1
        terms = [math.log(w) + p * lg for w, lg in zip(weights, logs) if w > 0]
        top = max(terms)
        log_sum = top + math.log(sum(math.exp(t - top) for t in terms))
        mean_log = (log_sum - math.log(total)) / p
    mean_log = min(mean_log, _log_sigmoid(_CLIP))
    return _logit_from_log(mean_log)


def _power_mean_raw(values: Sequence[float], weights: Sequence[float], p: float, method: str) -> float:
    bad = [x for x in values if not x > 0]
    if bad:
        raise EvaluationFailed(
            f"the {method} tally with positive='none' needs scores > 0, got {bad[0]:g}; "
            "use positive='sigmoid' (the default) for scorers such as ImageReward that give negative scores"
        )
    total = sum(weights)
    if p == 0:
        return math.exp(sum(w * math.log(x) for w, x in zip(weights, values)) / total)
    return (sum(w * x**p for w, x in zip(weights, values)) / total) ** (1.0 / p)


def _weighted_median(values: Sequence[float], weights: Sequence[float]) -> float:
    pairs = sorted(zip(values, weights))
    half = sum(weights) / 2.0
    cumulative = 0.0
    for i, (value, weight) in enumerate(pairs):
        cumulative += weight
        if math.isclose(cumulative, half, rel_tol=1e-12, abs_tol=1e-15) and i + 1 < len(pairs):
            return (value + pairs[i + 1][0]) / 2.0
        if cumulative > half:
            return value
    return pairs[-1][0]


def _trimmed_mean(values: Sequence[float], weights: Sequence[float], trim: float) -> float:
    pairs = sorted(zip(values, weights))
    total = sum(weights)
    low, high = trim * total, (1.0 - trim) * total
    kept_sum = kept_weight = 0.0
    start = 0.0
    for value, weight in pairs:
        end = start + weight
        kept = max(0.0, min(end, high) - max(start, low))
        kept_sum += kept * value
        kept_weight += kept
        start = end
    return kept_sum / kept_weight


@dataclass(frozen=True)
class Tally:
    """A tally method and its options; call it with per-payload scores and weights."""

    method: str = "arithmetic"
    trim: float = 0.1
    positive: str = "sigmoid"

    def __post_init__(self) -> None:
        if self.method not in TALLIES:
            raise TallyError(f"unknown tally {self.method!r}; use one of {', '.join(TALLIES)}")
        if not 0.0 <= self.trim < 0.5:
            raise TallyError(f"tally trim must be in [0, 0.5) (fraction cut from each end), got {self.trim!r}")
        if self.positive not in POSITIVE_MAPS:
            raise TallyError(f"tally positive mapping must be one of {', '.join(POSITIVE_MAPS)}, got {self.positive!r}")

    def __call__(self, scores: Sequence[float], weights: Sequence[float] | None = None) -> float:
        """The tally of ``scores`` (one per payload) with ``weights`` (default: all 1)."""
        weights = [1.0] * len(scores) if weights is None else [float(w) for w in weights]
        if len(weights) != len(scores):
            raise TallyError(f"tally got {len(scores)} scores but {len(weights)} weights")
        if any(not math.isfinite(w) or w < 0 for w in weights):
            raise TallyError(f"tally weights must be finite and ≥ 0, got {weights}")
        kept = [(float(s), w) for s, w in zip(scores, weights) if w > 0]
        if not kept:
            raise TallyError("nothing to tally: no scores with a weight > 0")
        bad = [s for s, _ in kept if not math.isfinite(s)]
        if bad:
            raise EvaluationFailed(f"cannot tally a non-finite score ({bad[0]})")
        values = [s for s, _ in kept]
        ws = [w for _, w in kept]
        if self.method == "arithmetic":
            return sum(w * x for w, x in zip(ws, values)) / sum(ws)
        if self.method in _POWERS:
            p = _POWERS[self.method]
            if self.positive == "sigmoid":
                return _power_mean_sigmoid(values, ws, p)
            return _power_mean_raw(values, ws, p, self.method)
        if self.method == "median":
            return _weighted_median(values, ws)
        if self.method == "min":
            return min(values)
        return _trimmed_mean(values, ws, self.trim)

    def describe(self) -> str:
        text = TALLIES[self.method]
        if self.method == "trimmed":
            text += f" (trim {self.trim:g})"
        if self.method in _POWERS and self.positive == "none":
            text = text.replace(" (of sigmoid-mapped scores by default)", " of raw scores")
        return text


def tally(scores: Sequence[float], weights: Sequence[float] | None = None, method: str = "arithmetic", **options: float | str) -> float:
    """Shortcut: ``Tally(method, **options)(scores, weights)``."""
    return Tally(method, **options)(scores, weights)  # type: ignore[arg-type]
