"""A whole small search inside the fake WebUI: SearchRun over the in-process generator, under host.exclusive()."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lib_mbw.blocks import BLOCKS
from lib_mbw.recipe import Recipe
from tests.webui_support import host, payload, unet_hash, webui  # noqa: F401

loop = pytest.importorskip("lib_mbw.search.loop", reason="the search loop (lib_mbw/search/loop.py) is not on this branch yet")


class RandomOptimizer:
    """A seeded random-search stand-in for lib_mbw.search.optimizer (this test is about the WebUI path)."""

    name = "random-test"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.told: list[tuple[Recipe, float]] = []
        self.failed: list[Recipe] = []

    def ask(self, n: int = 1) -> list[Recipe]:
        return [Recipe({b: round(self.rng.random(), 2) for b in BLOCKS}) for _ in range(n)]

    def tell(self, recipe: Recipe, score: float) -> None:
        self.told.append((recipe, score))

    def tell_failed(self, recipe: Recipe) -> None:
        self.failed.append(recipe)

    def get_state(self) -> bytes:
        return repr(self.rng.getstate()).encode()


class BrightnessScorer:
    name = "brightness"
    higher_is_better = True

    def score(self, images):
        return [float(np.asarray(g.image, dtype=np.float64).mean()) for g in images]

    def unload(self) -> None:
        pass


def test_a_search_runs_through_the_webui_and_leaves_the_model_as_it_was(host, webui):
    from modules import call_queue, shared

    from lib_mbw.search.stopping import StopSettings

    webui.sd_model()
    before = unet_hash(webui.unet())
    optimizer = RandomOptimizer(seed=3)
    payloads = [payload("fox", batch_size=2), payload("city", prompt="a city at night", seed=99, batch_size=1)]
    generator = host.make_generator("a.safetensors", "b.safetensors", {})
    run = loop.SearchRun(payloads, optimizer, generator, BrightnessScorer(), stop=StopSettings(max_evaluations=6, patience=None),
                         settings=loop.LoopSettings(rescore_top=0))
    with host.exclusive():
        assert call_queue.queue_lock.locked()
        result = run.run()
    assert len(optimizer.told) == 6 and not optimizer.failed
    scores = [score for _, score in optimizer.told]
    assert len(set(scores)) > 1, "different recipes render differently"
    assert result.recipe is not None and result.score == max(scores)
    assert unet_hash(webui.unet()) == before and not call_queue.queue_lock.locked()
    assert shared.state.job == ""
