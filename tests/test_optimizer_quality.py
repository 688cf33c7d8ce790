"""The default strategy must find better recipes than random search in a short search (a test that can fail).

A cheap noisy objective over the 27 blocks like the benchmark's "smooth" one
(tests/bench/optimizer_objectives.py): a rotated concave quadratic around a
random optimum, noise of 10 % of its range. Both strategies get 60
evaluations on three seeds; what counts is the true value of the recipe each
would return (``recommend()``).
"""

from __future__ import annotations

import numpy as np

from lib_mbw.search.optimizer import DEFAULT_STRATEGY, InitSettings, make_optimizer
from lib_mbw.search.space import SearchSpace

EVALUATIONS = 60
SEEDS = (0, 1, 2)


def make_objective(seed: int):
    rng = np.random.default_rng([seed, 42])
    center = np.round(rng.uniform(0.15, 0.85, 27) * 20) / 20
    rotation, _ = np.linalg.qr(rng.standard_normal((27, 27)))
    q = rotation @ np.diag(np.exp(rng.uniform(np.log(0.2), np.log(5.0), 27))) @ rotation.T

    def true(x: np.ndarray) -> float:
        z = x - center
        return -float(z @ q @ z)

    random_values = [true(np.round(rng.random(27) * 20) / 20) for _ in range(2000)]
    noise = 0.1 * (0.0 - float(np.quantile(random_values, 0.01)))
    return true, noise, float(np.mean(random_values))


def returned_value(strategy: str, seed: int) -> tuple[float, float]:
    """True value of the recipe ``strategy`` returns after the search, and the mean true value of random recipes."""
    true, noise, random_mean = make_objective(seed)
    space = SearchSpace()
    opt = make_optimizer(strategy, space, seed=seed, init=InitSettings(random=10))
    rng = np.random.default_rng([seed, 5])
    for _ in range(EVALUATIONS):
        recipe = opt.ask(1)[0]
        x = np.array([recipe.weights[b] for b in space.blocks])
        opt.tell(recipe, true(x) + noise * rng.normal())
    chosen = opt.recommend().recipe
    return true(np.array([chosen.weights[b] for b in space.blocks])), random_mean


def test_default_strategy_beats_random_search():
    default = [returned_value(DEFAULT_STRATEGY, s) for s in SEEDS]
    random = [returned_value("RandomSearch", s) for s in SEEDS]
    gap_default = [(v - base) / (0.0 - base) for v, base in default]
    gap_random = [(v - base) / (0.0 - base) for v, base in random]
    assert np.median(gap_default) > np.median(gap_random) + 0.15, (gap_default, gap_random)
    assert min(gap_default) > max(gap_random), (gap_default, gap_random)
