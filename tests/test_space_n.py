"""N-model search space: chain weights per block on the level grid, per-step settings, the optimizer facade on it."""

from __future__ import annotations

import numpy as np
import pytest

from lib_mbw.blocks import present_blocks
from lib_mbw.recipe import Recipe
from lib_mbw.recipe_n import RecipeN, to_chain_text
from lib_mbw.search.optimizer import InitSettings, Optimizer, Told, make_optimizer, replay
from lib_mbw.search.space import SearchSpace, SearchSpaceError
from lib_mbw.search.space_n import MixSearchSpace


def test_dimensions_are_the_chain_steps_of_every_block() -> None:
    space = MixSearchSpace(n_models=3)
    assert isinstance(space, SearchSpace) and space.ndim == 54
    assert space.names[:2] == ("IN00@m2", "IN01@m2") and space.names[27] == "IN00@m3"
    xl = MixSearchSpace(family="sdxl", n_models=5)
    assert xl.ndim == 4 * 21


@pytest.mark.parametrize("n", [2, 3, 5])
def test_every_point_is_a_recipe_that_finds_its_point_again_and_prints_exactly(n) -> None:
    space = MixSearchSpace(n_models=n)
    rng = np.random.default_rng(n)
    points = [tuple(int(v) for v in p) for p in space.random_points(rng, 50)] + [tuple(int(v) for v in p) for p in space.vertex_points(rng, 10)]
    for point in points:
        recipe = space.recipe(point)
        assert isinstance(recipe, RecipeN) and recipe.n_models == n
        assert space.point_of(recipe) == point
        _, problems = to_chain_text(recipe)
        assert problems == []
    # a recipe read back from its JSON (no chain kept) snaps to a point with the same recipe
    for point in points[:20]:
        recipe = space.recipe(point)
        again = RecipeN.from_dict(recipe.to_dict())
        assert space.recipe(space.point_of(again)) == recipe


def test_step_settings_freeze_range_and_group_per_model() -> None:
    space = MixSearchSpace(
        n_models=3,
        steps=[{"frozen": {"OUT": 0.0}, "groups": [["IN00", "IN01"]]}, {"ranges": {"M00": [0.2, 0.4]}}],
        frozen_shares={"TIME_EMBED": [0.5, 0.25, 0.25]},
    )
    assert "OUT@m2" not in space.names and "IN00+IN01@m2" in space.names and "TIME_EMBED@m3" not in space.names
    assert space.ndim == 27 - 3 + 27 - 1
    rng = np.random.default_rng(0)
    for point in space.random_points(rng, 30):
        recipe = space.recipe(point)
        assert recipe.shares["TIME_EMBED"] == (0.5, 0.25, 0.25)
        assert recipe.chain_weights("OUT")[0] == 0.0 or recipe.shares["OUT"][2] == 1.0
        assert recipe.search_chain("IN00")[0] == recipe.search_chain("IN01")[0]
        assert 0.2 <= recipe.search_chain("M00")[1] <= 0.4
    assert MixSearchSpace.from_dict(space.to_dict()) == space


def test_n2_space_equals_the_two_model_space() -> None:
    two = SearchSpace()
    mix = MixSearchSpace(n_models=2, models=("a", "b"))
    rng = np.random.default_rng(1)
    for point in two.random_points(rng, 20):
        point = tuple(int(v) for v in point)
        assert mix.recipe(point).to_two_model().weights == two.recipe(point).weights
        assert mix.point_of(two.recipe(point)) == point


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_models": 6}, "2 to 5 models"),
        ({"n_models": 3, "frozen": {"IN00": 0.5}}, "per step"),
        ({"n_models": 3, "steps": [{}, {}, {}]}, "3 models have 2 chain steps"),
        ({"n_models": 3, "steps": [{"ranges": {"IN00": [0.6, 0.2]}}]}, "step 1 \\(model 2\\): ranges: IN00 has min"),
        ({"n_models": 3, "steps": [{"ranges": {"IN00": [0.1, 0.2]}, "typo": 1}]}, "unknown setting"),
        ({"n_models": 3, "frozen_shares": {"IN00": [0.5, 0.6, 0.1]}}, "sum to"),
        ({"n_models": 3, "steps": [{"frozen": {b: 0.5 for b in present_blocks("sd1")}}] * 2}, "every block of every step"),
    ],
)
def test_bad_settings_get_one_clear_error(kwargs, message) -> None:
    with pytest.raises(SearchSpaceError, match=message):
        MixSearchSpace(**kwargs)


def test_optimizer_facade_searches_the_mix_space_and_resumes() -> None:
    space = MixSearchSpace(n_models=3, levels=11)
    rng = np.random.default_rng(3)
    target = np.array([space.recipe(tuple(int(v) for v in rng.integers(0, 11, space.ndim))).shares[b] for b in space.blocks])

    def score(recipe: RecipeN) -> float:
        shares = np.array([recipe.shares[b] for b in space.blocks])
        return -float(np.abs(shares - target).sum(axis=1).mean())

    def make() -> Optimizer:
        return make_optimizer("default", space, seed=0, init=InitSettings(grid=2, random=6))

    opt = make()
    first = opt.ask(1)[0]
    assert first == space.recipe(tuple(space.grid_points(1)[0]))
    assert all(abs(x - 1 / 3) <= 0.05 for shares in first.shares.values() for x in shares)  # the equal mix, snapped
    opt.tell(first, score(first))
    records = [Told(first, score(first), asked=True)]
    for _ in range(30):
        for recipe in opt.ask(1):
            opt.tell(recipe, score(recipe))
            records.append(Told(recipe, score(recipe), asked=True))
    resumed = replay(make, records)  # resume rebuilds the optimizer from the history
    assert resumed.exact and resumed.optimizer.ask(1) == opt.ask(1)
    best = opt.recommend()
    randoms = [score(space.recipe(tuple(int(v) for v in p))) for p in space.random_points(np.random.default_rng(9), 30)]
    assert isinstance(best.recipe, RecipeN) and best.observed_mean > max(randoms)


def test_a_two_model_recipe_does_not_fit_a_three_model_search() -> None:
    with pytest.raises(SearchSpaceError, match="two-model recipe"):
        MixSearchSpace(n_models=3).point_of(Recipe.uniform(0.5))
