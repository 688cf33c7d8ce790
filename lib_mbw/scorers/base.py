"""The Scorer protocol: one float per image, for a batch, or an explicit failure.

Scorers load lazily and once, score a whole iteration's images in as few
forward passes as memory allows, and raise ``errors.EvaluationFailed`` with a
reason for NaN/inf scores, all-black (NSFW-filtered) images, wrong sizes or
out-of-memory: a failure is never turned into a score.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from ..generators.base import GeneratedImage


@runtime_checkable
class Scorer(Protocol):
    """What the search loop needs from a scorer."""

    name: str
    higher_is_better: bool

    def score(self, images: Sequence[GeneratedImage]) -> list[float]:
        """One score per image, in order. Raises EvaluationFailed instead of returning NaN."""
        ...

    def unload(self) -> None:
        """Give the scorer's memory back (it reloads lazily on the next ``score``)."""
        ...
