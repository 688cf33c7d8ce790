"""Weighted combinations of scorers, on a common scale.

Scorers live on different scales (ImageReward's raw reward about -2..2, the
aesthetic predictor about 3..8, CLIP cosine similarity about 0.1..0.4, human
ratings 1..10), so a plain weighted sum lets the widest scale dominate. With
``normalise="range"`` (the default) each component's score is first mapped
linearly from a fixed range ``(low, high)`` to 0..1 (flipped for
lower-is-better scorers): the range given with the component, or the
scorer's ``typical_range``. The result is ``sum(w_i * s_i) / sum(w_i)``.

The ranges are fixed on purpose: normalising by the statistics of each batch
(z-scores, min-max of the iteration) would make every iteration's mean the
same and hide exactly the differences between merges the search looks for.
Values outside the range are not clipped, so a better image still scores
higher. ``normalise="none"`` sums the raw scores (lower-is-better ones
negated) with the weights as given.
"""

from __future__ import annotations

from typing import Literal, Sequence, Union

from ..errors import ScorerError
from ..generators.base import GeneratedImage
from .base import Scorer
from .checks import check_scores

Normalise = Literal["range", "none"]
Range = tuple[float, float]
Component = Union[tuple[Scorer, float], tuple[Scorer, float, Range]]


class CombinedScorer:
    """``sum(weight * normalised score) / sum(weights)`` over component scorers; higher is better."""

    higher_is_better = True
    typical_range: Range = (0.0, 1.0)

    def __init__(self, components: Sequence[Component], normalise: Normalise = "range") -> None:
        if not components:
            raise ScorerError("combined: give at least one (scorer, weight) component")
        if normalise not in ("range", "none"):
            raise ScorerError(f"combined: normalise must be 'range' or 'none', not {normalise!r}")
        self.normalise = normalise
        self.components: list[tuple[Scorer, float, Range | None]] = []
        for component in components:
            scorer, weight = component[0], float(component[1])
            given = component[2] if len(component) > 2 else None  # type: ignore[misc]
            if weight < 0:
                raise ScorerError(f"combined: weight of {scorer.name} is {weight}; weights must be >= 0")
            span = given if given is not None else getattr(scorer, "typical_range", None)
            if normalise == "range":
                if span is None:
                    raise ScorerError(
                        f"combined: {scorer.name} has no typical_range; give (scorer, weight, (low, high))"
                    )
                if not span[0] < span[1]:
                    raise ScorerError(
                        f"combined: range of {scorer.name} must be (low, high) with low < high, got {span}"
                    )
            span = (float(span[0]), float(span[1])) if span is not None else None
            self.components.append((scorer, weight, span))
        self.total_weight = sum(weight for _, weight, _ in self.components)
        if self.total_weight <= 0:
            raise ScorerError("combined: at least one weight must be positive")
        self.name = "combined(" + "+".join(f"{s.name}*{w:g}" for s, w, _ in self.components) + ")"
        if normalise == "none":
            self.typical_range = self._raw_range()

    def _raw_range(self) -> Range:
        """The weighted range of raw scores (for ``normalise="none"``); 0..1 if a component has no range."""
        low = high = 0.0
        for scorer, weight, span in self.components:
            if span is None:
                return (0.0, 1.0)
            sign = 1.0 if scorer.higher_is_better else -1.0
            ends = sorted((sign * span[0], sign * span[1]))
            low, high = low + weight * ends[0], high + weight * ends[1]
        return (low / self.total_weight, high / self.total_weight)

    def normalised(self, scorer: Scorer, span: Range | None, value: float) -> float:
        """One component's score on the common scale (higher is better)."""
        if self.normalise == "none" or span is None:
            return value if scorer.higher_is_better else -value
        low, high = span
        fraction = (value - low) / (high - low)
        return fraction if scorer.higher_is_better else 1.0 - fraction

    def score(self, images: Sequence[GeneratedImage]) -> list[float]:
        """The weighted mean of the components' normalised scores, per image.

        Components with weight 0 are not run. A component's failure is the combination's failure.
        """
        if not images:
            return []
        totals = [0.0] * len(images)
        for scorer, weight, span in self.components:
            if weight == 0:
                continue
            for position, value in enumerate(scorer.score(images)):
                totals[position] += weight * self.normalised(scorer, span, value)
        return check_scores(self.name, images, [total / self.total_weight for total in totals])

    def unload(self) -> None:
        """Unload every component."""
        for scorer, _, _ in self.components:
            scorer.unload()
