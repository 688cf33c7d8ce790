"""The optimizer facade: ask/tell over every engine, de-duplication, failures, batches, robust choice (exact resume: test_resume_exact.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lib_mbw.recipe import Recipe
from lib_mbw.search.optimizer import (
    DEFAULT_STRATEGY,
    SEED_STRATEGY,
    STRATEGIES,
    InitSettings,
    Optimizer,
    OptimizerError,
    Repeat,
    make_optimizer,
    model_subset,
    resolve_strategy,
)
from lib_mbw.search.space import SearchSpace
from lib_mbw.search.stopping import DEFAULT_PATIENCE

#: Strategies quick enough to run a few dozen steps in a unit test.
FAST = ["RandomSearch", "HillClimbing", "TPEOptimizer", "CmaEsOptimizer", "RandomOptimizer", DEFAULT_STRATEGY]
CENTER = np.array([0.3, 0.7, 0.5, 0.2, 0.9, 0.4] * 5)[:27]


def score_of(recipe: Recipe, space: SearchSpace, rng: np.random.Generator | None = None) -> float:
    x = np.array([recipe.weights[b] for b in space.blocks])
    value = -float(np.sum((x - CENTER[: len(x)]) ** 2))
    return value + (0.02 * rng.normal() if rng is not None else 0.0)


def drive(opt: Optimizer, steps: int, seed: int = 0, batch: int = 1) -> list[Recipe]:
    rng = np.random.default_rng(seed)
    asked: list[Recipe] = []
    for _ in range(steps):
        for recipe in opt.ask(batch):
            asked.append(recipe)
            opt.tell(recipe, score_of(recipe, opt.space, rng))
    return asked


def test_catalog_names_engines_and_the_seed_choice():
    for name in ("BayesianOptimizer", "TreeStructuredParzenEstimators", "HillClimbing", "RandomSearch"):
        assert STRATEGIES[name].engine == "gradient-free-optimizers"
        assert STRATEGIES[name].hyperactive == f"hyperactive.opt.gfo.{name}"
    for name in ("GPOptimizer", "TPEOptimizer", "CmaEsOptimizer", "RandomOptimizer"):
        assert STRATEGIES[name].engine.startswith("optuna")
        assert STRATEGIES[name].hyperactive == f"hyperactive.opt.optuna.{name}"
    assert STRATEGIES[SEED_STRATEGY].seed_compatible
    assert [n for n, info in STRATEGIES.items() if info.seed_compatible] == [SEED_STRATEGY]
    assert DEFAULT_STRATEGY in STRATEGIES and DEFAULT_STRATEGY != SEED_STRATEGY
    assert isinstance(DEFAULT_PATIENCE, int) and DEFAULT_PATIENCE > 27


def test_strategy_names_resolve_with_aliases_and_unknown_names_list_the_choices():
    assert resolve_strategy("default").name == DEFAULT_STRATEGY
    assert resolve_strategy("seed").name == SEED_STRATEGY
    assert resolve_strategy("gfo.hillclimbing").name == "HillClimbing"
    assert resolve_strategy("hyperactive.opt.optuna.TPEOptimizer").name == "TPEOptimizer"
    with pytest.raises(OptimizerError, match="unknown optimizer strategy 'bogus'.*CmaEsOptimizer"):
        make_optimizer("bogus", SearchSpace(), seed=0)


def test_unknown_strategy_options_are_refused():
    with pytest.raises(OptimizerError, match="no option"):
        make_optimizer("HillClimbing", SearchSpace(), seed=0, bogus=1)
    with pytest.raises(OptimizerError, match="no option"):
        make_optimizer(DEFAULT_STRATEGY, SearchSpace(), seed=0, bogus=1)


@pytest.mark.parametrize("strategy", FAST)
def test_never_suggests_a_recipe_twice_and_batches_are_distinct(strategy):
    space = SearchSpace(levels=5)
    opt = make_optimizer(strategy, space, seed=3, init=InitSettings(random=6))
    asked = drive(opt, 12, batch=1) + drive(opt, 4, batch=3)
    points = [space.point_of(r) for r in asked]
    probes = 1 if strategy == DEFAULT_STRATEGY else 0  # the default scores its best recipe once more (see below)
    assert len(points) == 24 and len(set(points)) == 24 - probes
    assert all(space.contains(r) for r in asked)
    assert opt.cache.n_observations == 24


def test_asynchronous_workers_gfo_rebuilds_and_nothing_is_suggested_twice():
    space = SearchSpace(levels=7)
    opt = make_optimizer("HillClimbing", space, seed=0, init=InitSettings(random=3))
    rng = np.random.default_rng(0)
    seen = []
    out = opt.ask(3)
    seen += out
    for _ in range(10):  # one result comes back, one new suggestion goes out, two stay in flight
        done = out.pop(0)
        opt.tell(done, score_of(done, space, rng))
        new = opt.ask(1)
        seen += new
        out += new
    assert len({space.point_of(r) for r in seen}) == len(seen)
    assert len(opt.pending) == 3


def test_outside_recipes_warm_start_rescore_and_cache():
    space = SearchSpace()
    warm = [(Recipe.uniform(0.5), -1.0), (Recipe.uniform(0.52), -2.0)]  # 0.52 snaps onto 0.5: one recipe, two scores
    opt = make_optimizer(DEFAULT_STRATEGY, space, seed=0, init=InitSettings(random=2), warm_start=warm)
    assert opt.cached_score(Recipe.uniform(0.5)) == -1.5
    assert opt.cache.scores(space.point_of(Recipe.uniform(0.5))) == [-1.0, -2.0]
    assert opt.cached_score(Recipe.uniform(0.25)) is None
    assert all(space.point_of(r) != space.point_of(Recipe.uniform(0.5)) for r in opt.ask(2))


def test_initial_design_order_recipes_grid_vertex_random():
    space = SearchSpace()
    favourite = Recipe.uniform(0.3)
    opt = make_optimizer("RandomSearch", space, seed=0, init=InitSettings(random=2, grid=2, vertex=2, recipes=(favourite,)))
    first = opt.ask(7)
    assert first[0] == favourite
    assert first[1] == Recipe.uniform(0.5) and first[2] == Recipe.uniform(0.25)
    assert first[3] == Recipe.uniform(0.0) and first[4] == Recipe.uniform(1.0)
    assert opt.describe()["init"] == {"random": 2, "grid": 2, "vertex": 2, "recipes": 1}


def test_failed_recipes_are_never_suggested_again_and_a_full_space_says_so():
    space = SearchSpace(levels=2, frozen={b: 0.5 for b in SearchSpace().names[2:]})
    assert space.size == 4
    opt = make_optimizer("RandomSearch", space, seed=0, init=InitSettings(random=0))
    first = opt.ask(1)[0]
    opt.tell_failed(first)
    rest = []
    for _ in range(3):
        recipe = opt.ask(1)[0]
        rest.append(recipe)
        opt.tell(recipe, 1.0)
    assert first not in rest and len(set(rest)) == 3
    with pytest.raises(OptimizerError, match="fewer than 1 are left"):
        opt.ask(1)


def test_bad_scores_and_counts_are_refused():
    opt = make_optimizer("RandomSearch", SearchSpace(), seed=0)
    recipe = opt.ask(1)[0]
    with pytest.raises(OptimizerError, match="tell_failed"):
        opt.tell(recipe, float("nan"))
    with pytest.raises(OptimizerError, match="must be a number"):
        opt.tell(recipe, "high")
    with pytest.raises(OptimizerError, match="n >= 1"):
        opt.ask(0)
    with pytest.raises(OptimizerError, match="nothing to recommend"):
        opt.recommend()


def test_recommend_is_robust_to_one_lucky_score():
    space = SearchSpace(frozen={b: 0.5 for b in SearchSpace().names[2:]})  # two blocks searched
    opt = make_optimizer("RandomSearch", space, seed=0, init=InitSettings(random=40))
    rng = np.random.default_rng(5)
    recipes = opt.ask(40)
    lucky = min(recipes, key=lambda r: score_of(r, space))  # the worst recipe gets a wildly lucky score
    for recipe in recipes:
        opt.tell(recipe, 10.0 if recipe == lucky else score_of(recipe, space, rng))
    choice = opt.recommend()
    assert choice.recipe != lucky
    assert "Gaussian process" in choice.reason and "single best score" in choice.reason
    assert score_of(choice.recipe, space) > score_of(lucky, space)
    assert opt.rank_for_rescoring(3)[0] == choice.recipe and len(opt.rank_for_rescoring(3)) == 3


def test_describe_is_json_for_the_manifest():
    opt = make_optimizer(DEFAULT_STRATEGY, SearchSpace(family="sdxl"), seed=4)
    asked = drive(opt, 12)
    data = json.loads(json.dumps(opt.describe()))
    assert data["strategy"] == DEFAULT_STRATEGY and data["seed"] == 4 and data["space"]["family"] == "sdxl"
    assert data["scored"] == len({opt.space.point_of(r) for r in asked}) == 11  # distinct recipes: one was re-scored
    assert data["scores_repeat"] is False  # drive's scores are noisy


def test_gfo_bayesian_optimizer_survives_fine_grids_with_a_note():
    opt = make_optimizer("BayesianOptimizer", SearchSpace(levels=101), seed=0, init=InitSettings(random=4))
    asked = drive(opt, 6)
    assert len(set(asked)) == 6
    assert "21 of the 101 levels" in opt.describe()["note"]


def test_default_handles_1001_levels():
    space = SearchSpace(levels=1001)
    opt = make_optimizer(DEFAULT_STRATEGY, space, seed=0)
    asked = drive(opt, 40)
    assert len({space.point_of(r) for r in asked}) == 39  # 40 evaluations, one of them the re-score probe
    assert any(0 < (r.weight("M00") * 1000) % 50 for r in asked)  # uses levels between the 21-level grid


def test_long_searches_fit_the_model_to_the_best_and_the_most_recent_scores():
    scores = [float(i % 7) for i in range(10)]
    assert model_subset(scores, 20).tolist() == list(range(10))
    assert model_subset(scores, 4).tolist() == [5, 6, 8, 9]  # the two best (5.0, 6.0), then the most recent


def test_recommend_after_many_scores_uses_a_bounded_model():
    space = SearchSpace(levels=1001)
    opt = make_optimizer("RandomSearch", space, seed=0, init=InitSettings(random=0))
    rng = np.random.default_rng(1)
    for recipe in opt.ask(400):
        opt.tell(recipe, score_of(recipe, space, rng))
    best = opt.recommend().recipe
    assert opt._score_model()._x.shape[0] == 300  # fitted to MAX_MODEL_POINTS scores, not 400
    ranked = sorted(opt.cache.points(), key=lambda p: -opt.cache.mean(p))
    assert space.point_of(best) in ranked[:30]


def test_default_strategy_refuses_an_additive_option_that_is_not_a_boolean():
    with pytest.raises(OptimizerError, match="additive must be true or false, got 'False'"):
        make_optimizer(DEFAULT_STRATEGY, SearchSpace(), seed=0, additive="False")
    plain = make_optimizer(DEFAULT_STRATEGY, SearchSpace(), seed=0, additive=False)
    assert plain._gp_additive is False


@pytest.mark.parametrize("strategy", [DEFAULT_STRATEGY, "SurrogateCMA"])
def test_the_plain_average_merge_is_tried_right_after_the_initial_design(strategy):
    """CMA-ES starts at the centre of the space; the first step after the initial design evaluates it (every block 0.5)."""
    space = SearchSpace()
    centre = {block: 0.5 for block in space.blocks}

    def first_weights(**options) -> list[dict[str, float]]:
        opt = make_optimizer(strategy, space, seed=3, init=InitSettings(random=10), **options)
        rng = np.random.default_rng(3)
        seen = []
        for _ in range(14):
            recipe = opt.ask(1)[0]
            seen.append(dict(recipe.weights))
            opt.tell(recipe, float(rng.normal()))
        return seen

    tried = first_weights()
    assert centre not in tried[:10]  # the initial design is random
    assert tried[10] == centre, list(tried[10].values())[:5]  # the 11th evaluation is the plain average merge
    assert centre not in first_weights(mean_first=False)
    with pytest.raises(OptimizerError, match="mean_first must be true or false"):
        make_optimizer(strategy, space, seed=0, mean_first="yes")


def _probe_run(noise: float, steps: int = 16, **options) -> tuple[Optimizer, list[tuple[int, float]]]:
    """The default driven ``steps`` evaluations on ``score_of`` with noise of sd ``noise``; (optimizer, (point, score) told)."""
    space = SearchSpace()
    opt = make_optimizer(DEFAULT_STRATEGY, space, seed=5, init=InitSettings(random=10), **options)
    rng = np.random.default_rng(5)
    told = []
    for _ in range(steps):
        recipe = opt.ask(1)[0]
        score = score_of(recipe, space) + noise * float(rng.normal())
        opt.tell(recipe, score)
        told.append((space.point_of(recipe), score))
    return opt, told


def test_default_scores_its_best_recipe_again_once_to_learn_whether_scores_repeat():
    """Fixed-seed payloads give a recipe the same score every time: one re-score shows it, and the model leads from then on."""
    opt, told = _probe_run(noise=0.0)
    points = [p for p, _ in told]
    best_of_first_11 = max(told[:11], key=lambda item: item[1])[0]
    assert points[11] == best_of_first_11 and points.count(best_of_first_11) == 2
    assert len(set(points)) == len(points) - 1
    assert opt.describe()["scores_repeat"] is True and opt.describe()["model_led"] is True
    assert opt.describe()["suggestions"]["ei"] == 4  # every suggestion after the probe is the model's

    noisy, _ = _probe_run(noise=0.5)
    assert noisy.describe()["scores_repeat"] is False and noisy.describe()["model_led"] is False
    assert noisy.describe()["suggestions"]["ei"] == 0  # CMA-ES alone until model_after scores

    never, told = _probe_run(noise=0.0, probe_after=0)
    assert len({p for p, _ in told}) == 16 and never.describe()["scores_repeat"] is None
    with pytest.raises(OptimizerError, match="probe_after must be a whole number"):
        make_optimizer(DEFAULT_STRATEGY, SearchSpace(), seed=0, probe_after=-1)


def test_a_failed_repeat_is_not_taken_for_a_repeated_score():
    space = SearchSpace()
    opt = make_optimizer(DEFAULT_STRATEGY, space, seed=5, init=InitSettings(random=10))
    for _ in range(11):
        recipe = opt.ask(1)[0]
        opt.tell(recipe, score_of(recipe, space))
    probe = opt.ask(1)[0]
    assert opt.cached_score(probe) is not None  # the re-score of a scored recipe
    opt.tell_failed(probe)
    assert opt.describe()["scores_repeat"] is None and opt.describe()["model_led"] is False
    assert opt.cache.n_observations == 11


class _ProposingEngine(Optimizer):
    """An engine that proposes what the test lines up and records what the facade tells it."""

    name = "test-proposing"

    def _setup_engine(self, **options) -> None:
        self.lined_up: list = []
        self.told: list = []

    def _engine_ask(self, n: int) -> list:
        return [self.lined_up.pop(0) for _ in range(min(n, len(self.lined_up)))]

    def _engine_tell(self, token, score) -> None:
        self.told.append((token, score))


def test_an_engine_has_a_scored_recipe_evaluated_again_only_with_a_repeat_token():
    space = SearchSpace(levels=5)
    opt = _ProposingEngine(space, seed=0, init=InitSettings(random=0))
    scored, new = (1,) * space.ndim, (2,) * space.ndim
    opt.tell(space.recipe(scored), 1.0)

    opt.lined_up = [(scored, "plain"), (new, "new")]
    asked = opt.ask(1)
    assert [space.point_of(r) for r in asked] == [new]  # a known recipe is answered from the cache
    assert opt.told == [("plain", 1.0)]
    opt.tell(asked[0], 0.5)

    opt.lined_up = [(scored, Repeat("again"))]
    asked = opt.ask(1)
    assert [space.point_of(r) for r in asked] == [scored]
    opt.tell(asked[0], 1.25)
    assert opt.told[-1] == (Repeat("again"), 1.25) and opt.cache.repeated() == [[1.0, 1.25]]

    opt.lined_up = [(scored, Repeat("once more"))]
    asked = opt.ask(1)
    opt.tell_failed(asked[0])
    assert opt.told[-1] == (Repeat("once more"), None)  # a failed repeat learned nothing: not the cached mean
    assert opt.cache.scores(scored) == [1.0, 1.25] and scored not in opt.failed
