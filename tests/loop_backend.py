"""Cheap deterministic test doubles for the search loop (not collected by pytest).

* ``FakeGenerator``: renders a 27x1 float image ("F" mode) whose pixels are
  the applied recipe's weights plus a payload-dependent shift, so images
  depend on the recipe; counts calls; can sleep, fail, or advance a virtual
  clock by a known time per payload.
* ``FakeScorer``: turns each image back into a known objective:
  ``-10 * mean((w - TARGET)²) + shift``; can fail on chosen calls.
* ``RandomGridOptimizer``: seeded random search on the grid of the given
  blocks, implementing the optimizer facade (ask/tell/tell_failed/
  rank_for_rescoring/recommend), deterministic given its seed (resume replays it).

The CLI loads them by ``package.module:factory``: ``tests.loop_backend:make_generator``,
``tests.loop_backend:make_scorer``, ``tests.loop_backend:make_optimizer``.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from PIL import Image

from lib_mbw.blocks import BLOCKS, present_blocks
from lib_mbw.errors import EvaluationFailed
from lib_mbw.generators.base import GeneratedImage
from lib_mbw.payloads import Payload
from lib_mbw.recipe import Recipe

#: The optimum of the fake objective: a ramp over the canonical blocks.
TARGET = {b: round(((i * 7) % 21) / 20, 2) for i, b in enumerate(BLOCKS)}


def true_score(recipe: Recipe) -> float:
    """The fake objective without the payload shift (what a perfect evaluation would say)."""
    diffs = [(recipe.weights[b] - TARGET[b]) ** 2 for b in recipe.weights]
    return -10.0 * sum(diffs) / len(diffs)


def payload_shift(payload: Payload, index: int) -> float:
    return ((payload.seed + index) % 7) * 0.01


class VirtualClock:
    """A clock that only moves when the fake generator renders (known time per payload)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


@dataclass
class FakeGenerator:
    name: str = "fake"
    delay: float = 0.0
    virtual_seconds: float = 0.0
    clock: VirtualClock | None = None
    fail_when: Callable[[Recipe, Payload], bool] | None = None
    on_generate: Callable[["FakeGenerator", Payload], None] | None = None
    applied: Recipe | None = None
    applies: int = 0
    generated: int = 0
    restores: int = 0
    closed: bool = False
    log: list[tuple[str, str]] = field(default_factory=list)

    def apply(self, recipe: Recipe) -> float:
        self.applied = recipe
        self.applies += 1
        self.log.append(("apply", json.dumps(dict(recipe.weights))))
        return 0.001

    def generate(self, payload: Payload, progress: Any = None) -> list[GeneratedImage]:
        assert self.applied is not None, "generate() before apply()"
        if self.on_generate is not None:
            self.on_generate(self, payload)
        if self.fail_when is not None and self.fail_when(self.applied, payload):
            raise RuntimeError(f"fake generator crashed on {payload.key}")
        if self.delay:
            time.sleep(self.delay)
        if self.clock is not None:
            self.clock.advance(self.virtual_seconds)
        self.generated += 1
        self.log.append(("generate", payload.key))
        images = []
        for index in range(payload.batch_size):
            image = Image.new("F", (len(BLOCKS), 1))
            shift = payload_shift(payload, index)
            image.putdata([self.applied.weights.get(b, TARGET[b]) + shift for b in BLOCKS])
            image.info["shift"] = shift
            images.append(GeneratedImage(image, payload, payload.prompt, payload.negative_prompt, payload.seed + index, index))
            if progress:
                progress(index + 1, payload.batch_size)
        return images

    def restore(self) -> None:
        self.restores += 1
        self.applied = None

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeScorer:
    name: str = "fake-scorer"
    higher_is_better: bool = True
    fail_calls: set[int] = field(default_factory=set)
    calls: int = 0
    images_scored: int = 0

    def score(self, images: Sequence[GeneratedImage]) -> list[float]:
        self.calls += 1
        if self.calls in self.fail_calls:
            raise EvaluationFailed(f"fake scorer: all-black image in {images[0].payload.key}")
        out = []
        for item in images:
            values = list(item.image.getdata())
            shift = payload_shift(item.payload, item.index)
            weights = [v - shift for v in values]
            err = sum((w - TARGET[b]) ** 2 for w, b in zip(weights, BLOCKS)) / len(BLOCKS)
            value = -10.0 * err + shift
            out.append(value if self.higher_is_better else -value)
        self.images_scored += len(images)
        return out

    def unload(self) -> None:
        pass


@dataclass
class Recommendation:
    recipe: Recipe
    reason: str
    predicted_mean: float | None = None


class RandomGridOptimizer:
    """Seeded random search on a grid; exact state (RNG + observations) through JSON bytes."""

    name = "test-random"

    def __init__(self, blocks: Sequence[str], levels: int = 21, seed: int = 0, warm_start: Sequence[tuple[Recipe, float]] = ()) -> None:
        self.blocks = list(blocks)
        self.levels = levels
        self.rng = random.Random(seed)
        self.observations: list[tuple[dict[str, float], float | None]] = [(dict(r.weights), s) for r, s in warm_start]
        self.asks = 0

    def _random_recipe(self) -> Recipe:
        return Recipe({b: self.rng.randrange(self.levels) / (self.levels - 1) for b in self.blocks})

    def ask(self, n: int = 1) -> list[Recipe]:
        self.asks += n
        return [self._random_recipe() for _ in range(n)]

    def tell(self, recipe: Recipe, score: float) -> None:
        assert math.isfinite(score)
        self.observations.append((dict(recipe.weights), score))

    def tell_failed(self, recipe: Recipe) -> None:
        self.observations.append((dict(recipe.weights), None))

    def _scored(self) -> list[tuple[Recipe, float]]:
        return [(Recipe(w), s) for w, s in self.observations if s is not None]

    def rank_for_rescoring(self, k: int) -> list[Recipe]:
        ranked = sorted(self._scored(), key=lambda rs: -rs[1])
        out: list[Recipe] = []
        for recipe, _ in ranked:
            if recipe not in out:
                out.append(recipe)
        return out[:k]

    def recommend(self) -> Recommendation:
        recipe, score = max(self._scored(), key=lambda rs: rs[1])
        return Recommendation(recipe, "best observed (test optimizer)", score)


class ScriptedOptimizer(RandomGridOptimizer):
    """Proposes the recipes it is given, in order, then random ones."""

    def __init__(self, script: Sequence[Recipe], blocks: Sequence[str] = BLOCKS, seed: int = 0) -> None:
        super().__init__(blocks, seed=seed)
        self.script = list(script)

    def ask(self, n: int = 1) -> list[Recipe]:
        out = []
        for _ in range(n):
            out.append(self.script.pop(0) if self.script else self._random_recipe())
        self.asks += n
        return out


# ---------------------------------------------------------------- CLI factories (package.module:factory)


def make_generator(model_a: str | None = None, model_b: str | None = None, delay: float = 0.0, name: str = "fake", fail: bool = False,
                   fail_after: int | None = None, **_: Any) -> FakeGenerator:
    """``fail``: every render fails; ``fail_after=N``: renders fail once N have succeeded."""
    generator = FakeGenerator(name=name, delay=float(delay), fail_when=(lambda recipe, payload: True) if fail else None)
    if fail_after is not None:
        generator.fail_when = lambda recipe, payload: generator.generated >= int(fail_after)
    return generator


def make_scorer(higher_is_better: bool = True, **_: Any) -> FakeScorer:
    return FakeScorer(higher_is_better=bool(higher_is_better))


def make_optimizer(space: Any, family: str, seed: int, init: Any = None, warm_start: Sequence[tuple[Recipe, float]] = (), **_: Any) -> RandomGridOptimizer:
    blocks = [b for b in present_blocks(family) if b not in space.frozen]
    return RandomGridOptimizer(blocks, levels=space.levels, seed=seed, warm_start=warm_start)
