"""Batched rendering: the payloads of one evaluation in as few pipeline calls as possible, same seeds, same images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lib_mbw.blocks import BLOCKS
from lib_mbw.generators.diffusers import DiffusersGenerator, DiffusersOptions, options_from, plan_batches
from lib_mbw.payloads import Payload
from lib_mbw.recipe import Recipe
from lib_mbw.search.loop import LoopSettings, SearchRun
from lib_mbw.search.settings import AbandonSettings
from lib_mbw.search.stopping import StopSettings
from tests.loop_backend import FakeGenerator, FakeScorer, ScriptedOptimizer
from tests.runtime_double import merger_factory

pytestmark = pytest.mark.usefixtures("single_cpu_thread")


def payload(name: str, **fields) -> Payload:
    values = dict(name=name, prompt=f"a painting of {name}", steps=3, width=64, height=64, sampler="Euler", seed=7, cfg_scale=7.0)
    values.update(fields)
    return Payload(**values)


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# --- planning (no model) ---


def test_payloads_that_share_call_settings_go_into_one_call_in_order() -> None:
    payloads = [payload("a"), payload("b", steps=5), payload("c", seed=9), payload("d", steps=5), payload("e", cfg_scale=5.0)]
    assert plan_batches(payloads, 8) == [[0, 2], [1, 3], [4]]


def test_size_sampler_clip_skip_and_a_missing_negative_prompt_split_calls() -> None:
    base = payload("a")
    others = [dataclasses.replace(base, name=str(i), **change) for i, change in enumerate(
        [{"width": 128}, {"sampler": "Euler a"}, {"scheduler": "Karras"}, {"clip_skip": 2}, {"negative_prompt": "blurry"}])]
    assert plan_batches([base, *others], 8) == [[0], [1], [2], [3], [4], [5]]
    with_negative = [dataclasses.replace(base, name=str(i), negative_prompt=t) for i, t in enumerate(["blurry", "dark"])]
    assert plan_batches(with_negative, 8) == [[0, 1]], "different negative prompts share a call"


def test_a_call_holds_at_most_max_batch_images_and_a_large_payload_goes_alone() -> None:
    payloads = [payload("a", batch_size=3), payload("b", batch_size=3), payload("c", batch_size=3), payload("d", batch_size=10)]
    assert plan_batches(payloads, 6) == [[0, 1], [2], [3]]
    assert plan_batches(payloads, 1) == [[0], [1], [2], [3]]
    assert plan_batches(payloads, 0) == [[0, 1, 2, 3]], "max_batch 0: no limit"


def test_max_batch_is_a_generator_option() -> None:
    assert options_from({"max_batch": "1"}).max_batch == 1
    assert DiffusersOptions().max_batch == 8
    with pytest.raises(Exception, match="max_batch"):
        options_from({"max_batch": "many"})


# --- rendering on the tiny demo models ---


@pytest.fixture(scope="module")
def generator(demo_models):
    with DiffusersGenerator(
        demo_models.model_a, demo_models.model_b,
        options=DiffusersOptions(config_dir=demo_models.config_dir), merger_factory=merger_factory(),
    ) as gen:
        gen.apply(Recipe.uniform(0.3))
        yield gen


@pytest.fixture()
def count_calls(generator, monkeypatch):
    """Counts the pipeline's calls and the images each asked for."""
    calls: list[int] = []
    pipe_class = type(generator.pipe)
    original = pipe_class.__call__

    def counting(self, *args, **kwargs):
        calls.append(len(kwargs["generator"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pipe_class, "__call__", counting)
    return calls


def assert_same_images(batched, single) -> None:
    """Within one grey level anywhere and on almost no pixel: floating-point differences of the batch size only."""
    for a, b in zip(batched, single):
        assert (a.seed, a.index, a.payload.name) == (b.seed, b.index, b.payload.name)
        diff = np.abs(pixels(a.image) - pixels(b.image))
        assert diff.max() <= 1 and diff.mean() < 0.01, f"{a.payload.name} image {a.index}: max {diff.max()}, mean {diff.mean()}"


@pytest.mark.parametrize("sampler", ["Euler", "Euler a"])
def test_batched_images_are_the_one_by_one_images(generator, count_calls, sampler: str) -> None:
    payloads = [payload("castle", seed=11, sampler=sampler), payload("fox", seed=23, sampler=sampler, batch_size=2),
                payload("city", seed=37, sampler=sampler)]
    single = [generator.generate(p) for p in payloads]
    assert count_calls == [1, 2, 1]
    count_calls.clear()
    batched = generator.generate_many(payloads)
    assert count_calls == [4], "one pipeline call for the whole evaluation"
    assert [len(images) for images in batched] == [1, 2, 1]
    for got, want in zip(batched, single):
        assert_same_images(got, want)
    assert np.abs(pixels(batched[1][0].image) - pixels(batched[1][1].image)).mean() > 10, "seed + i per image"
    assert np.abs(pixels(batched[0][0].image) - pixels(batched[2][0].image)).mean() > 10, "each payload its own prompt and seed"


def test_payloads_with_other_settings_render_in_their_own_calls(generator, count_calls) -> None:
    payloads = [payload("a", seed=1), payload("b", seed=2, steps=2), payload("c", seed=3, negative_prompt="blurry"), payload("d", seed=4)]
    seen: list[tuple[int, int]] = []
    batched = generator.generate_many(payloads, progress=lambda done, total: seen.append((done, total)))
    assert sorted(count_calls) == [1, 1, 2]
    assert seen[-1] == (8, 8) and len(seen) == 8, "progress counts the steps of all calls"
    count_calls.clear()
    for got, p in zip(batched, payloads):
        assert_same_images(got, generator.generate(p))
        assert got[0].params["steps"] == p.steps and got[0].negative_prompt == p.negative_prompt


def test_max_batch_one_renders_payload_by_payload(demo_models, count_calls, generator) -> None:
    generator.options = dataclasses.replace(generator.options, max_batch=1)
    try:
        generator.generate_many([payload("a"), payload("b")])
    finally:
        generator.options = dataclasses.replace(generator.options, max_batch=8)
    assert count_calls == [1, 1]


def test_a_bad_payload_is_named_before_anything_renders(generator, count_calls) -> None:
    with pytest.raises(Exception, match="'bad'.*width"):
        generator.generate_many([payload("good"), payload("bad", width=60)])
    assert count_calls == []


# --- the loop uses it ---


@dataclasses.dataclass
class BatchingFakeGenerator(FakeGenerator):
    """The loop's fake generator with ``generate_many``: records which payloads were rendered together."""

    batches: list[list[str]] = dataclasses.field(default_factory=list)

    def generate_many(self, payloads, progress=None):
        self.batches.append([p.key for p in payloads])
        return [self.generate(p, progress) for p in payloads]


def run_search(generator, abandon: float | None = None) -> SearchRun:
    recipes = [Recipe.uniform(v / 10) for v in range(6)]
    payloads = [Payload(name=f"p{i}", prompt=f"prompt {i}", seed=100 + i) for i in range(4)]
    run = SearchRun(payloads, ScriptedOptimizer(recipes, BLOCKS), generator, FakeScorer(),
                    stop=StopSettings(max_evaluations=len(recipes), patience=None),
                    settings=LoopSettings(rescore_top=0, abandon=AbandonSettings(margin=abandon)))
    run.run()
    return run


def test_the_loop_renders_an_evaluation_in_one_batch_with_the_same_scores() -> None:
    plain = run_search(FakeGenerator())
    batching = BatchingFakeGenerator()
    batched = run_search(batching)
    assert batching.batches[0] == ["p0", "p1", "p2", "p3"] and len(batching.batches) == 6
    assert [(r.status, r.score) for r in batched.rows] == [(r.status, r.score) for r in plain.rows]


def test_with_early_abandon_the_loop_batches_each_chunk() -> None:
    batching = BatchingFakeGenerator()
    run_search(batching, abandon=0.01)
    assert batching.batches[0] == ["p0", "p1"], "the first half is rendered together before abandon can act"
    assert all(len(batch) <= 2 for batch in batching.batches)
