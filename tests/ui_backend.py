"""Test doubles for the UI tests (not collected by pytest): a generator with visible images and scorers.

* ``StripeGenerator`` renders one image per payload image (at the payload's size): 27 vertical stripes,
  each coloured between blue (model A, weight 0) and orange (model B, weight 1)
  by its block's weight, so the galleries show what changed. It records the
  applied weights in the image's params; it can sleep per image (``delay``).
* ``RecipeScorer`` scores from those params with the objective of
  ``tests.loop_backend`` (best at ``TARGET``), plus a payload shift.
* ``RatingScorer`` asks a rater (the UI passes its own through ``rater=``) and
  returns the ratings: the human-rating path without the scorer registry.

Load them by ``package.module:factory``: ``tests.ui_backend:make_generator``,
``tests.ui_backend:make_scorer``, ``tests.ui_backend:make_rating_scorer``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Sequence

from PIL import Image

from lib_mbw.blocks import BLOCKS
from lib_mbw.errors import EvaluationFailed, GenerationInterrupted
from lib_mbw.generators.base import GeneratedImage
from lib_mbw.payloads import Payload
from lib_mbw.recipe import Recipe
from tests.loop_backend import TARGET, payload_shift

SIDE = 96
_A = (31, 119, 180)
_B = (255, 127, 14)


def stripes(weights: dict[str, float], width: int = SIDE, height: int = SIDE) -> Image.Image:
    """The picture of a recipe: one stripe per block, blue (A) to orange (B)."""
    image = Image.new("RGB", (width, height))
    stripe = width / len(BLOCKS)
    pixels = image.load()
    for x in range(width):
        block = BLOCKS[min(int(x / stripe), len(BLOCKS) - 1)]
        w = weights.get(block, 0.0)
        color = tuple(int(a + (b - a) * w) for a, b in zip(_A, _B))
        for y in range(height):
            shade = 0.75 + 0.25 * (y / height)
            pixels[x, y] = tuple(int(c * shade) for c in color)
    return image


@dataclass
class StripeGenerator:
    name: str = "stripes"
    delay: float = 0.0
    family: str = "sd1"
    applied: Recipe | None = None
    closed: bool = False
    restores: int = 0
    renders: int = 0
    interrupt_after: int | None = None  #: renders after which the next one is interrupted (the WebUI's Interrupt)

    def apply(self, recipe: Recipe) -> float:
        self.applied = recipe
        return 0.0

    def generate(self, payload: Payload, progress: Any = None) -> list[GeneratedImage]:
        assert self.applied is not None, "generate() before apply()"
        if self.interrupt_after is not None and self.renders >= self.interrupt_after:
            raise GenerationInterrupted("generation was interrupted in the WebUI; the search stops and the model is restored")
        self.renders += 1
        images = []
        for index in range(payload.batch_size):
            if self.delay:
                time.sleep(self.delay)
            weights = dict(self.applied.weights)
            images.append(GeneratedImage(stripes(weights, payload.width, payload.height), payload, payload.prompt, payload.negative_prompt, payload.seed + index, index,
                                         params={"weights": weights}))
            if progress:
                progress(index + 1, payload.batch_size)
        return images

    def restore(self) -> None:
        self.restores += 1
        self.applied = None

    def close(self) -> None:
        self.closed = True


@dataclass
class RecipeScorer:
    name: str = "recipe-scorer"
    higher_is_better: bool = True

    def score(self, images: Sequence[GeneratedImage]) -> list[float]:
        out = []
        for item in images:
            weights = item.params["weights"]
            err = sum((weights.get(b, TARGET[b]) - TARGET[b]) ** 2 for b in BLOCKS) / len(BLOCKS)
            out.append(-10.0 * err + payload_shift(item.payload, item.index))
        return out

    def unload(self) -> None:
        pass


@dataclass
class RatingScorer:
    """Returns a person's ratings (through ``rater``); images without a rating fail the evaluation."""

    rater: Any
    low: int = 1
    high: int = 10
    timeout_s: float | None = None
    name: str = "test-rating"
    higher_is_better: bool = True
    requests: list[int] = field(default_factory=list)

    def score(self, images: Sequence[GeneratedImage]) -> list[float]:
        request = SimpleNamespace(images=list(images), low=self.low, high=self.high, timeout_s=self.timeout_s)
        ratings = list(self.rater(request))
        self.requests.append(len(images))
        if any(r is None for r in ratings):
            raise EvaluationFailed("test-rating: an image got no rating")
        return [float(r) for r in ratings]

    def unload(self) -> None:
        pass


def make_generator(model_a: str | None = None, model_b: str | None = None, delay: float = 0.0, family: str = "sd1",
                   interrupt_after: int | None = None, **_: Any) -> StripeGenerator:
    return StripeGenerator(delay=float(delay), family=family, interrupt_after=interrupt_after)


def make_broken_scorer(**_: Any) -> Any:
    """A model scorer whose model cannot load (as ImageReward offline without its weights)."""
    from lib_mbw.errors import ScorerError
    from lib_mbw.scorers.base import ModelScorer

    def cannot_load() -> Any:
        raise ScorerError("broken: cannot load the test model")

    class BrokenScorer(ModelScorer):
        name = "broken"
        higher_is_better = True

        def _forward(self, model: Any, images: Sequence[GeneratedImage]) -> list[float]:
            return [0.0 for _ in images]

    return BrokenScorer(cannot_load, "cpu", None, None)


def make_scorer(**_: Any) -> RecipeScorer:
    return RecipeScorer()


def make_rating_scorer(rater: Any = None, low: int = 1, high: int = 10, timeout_s: float | None = None, **_: Any) -> RatingScorer:
    if rater is None:
        raise ValueError("make_rating_scorer needs rater=")
    return RatingScorer(rater, int(low), int(high), timeout_s)
