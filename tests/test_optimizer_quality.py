"""The default strategy must find good recipes in a short search (tests that can fail).

Two cheap noisy objectives over the 27 blocks, like the benchmark's
(tests/bench/optimizer_objectives.py, optimizer_families.py), noise 10 % of
their range; what counts is the true value of the recipe the strategy
returns (``recommend()``):

* a rotated concave quadratic (every pair of blocks interacts): the default
  must beat random search clearly;
* a smooth multimodal landscape (each block's effect a sum of 2-3 bumps, so
  a few local optima per block, and interacting pairs of blocks): the
  landscape an outside benchmark found the old default (SurrogateCMA) weak
  on. The default must close a gap the old default did not reach.

The same multimodal landscape without noise checks the default's model-led
mode (scores from fixed seeds are exact).
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
    return true, noise, float(np.mean(random_values)), 0.0


def make_multimodal(seed: int):
    """Per-block sums of 2-3 bumps (widths 0.1-0.25) plus 4 interacting pairs; the grid optimum is exact."""
    rng = np.random.default_rng([seed, 43])
    centres = rng.uniform(0.0, 1.0, (27, 3))
    heights = rng.uniform(0.3, 1.0, (27, 3)) * (rng.random((27, 3)) < [1.0, 1.0, 0.5])
    widths = rng.uniform(0.10, 0.25, (27, 3))
    pairs = rng.permutation(27)[:8].reshape(4, 2)
    offsets = rng.uniform(-0.4, 0.4, 4)

    def own(v: np.ndarray, b: int) -> np.ndarray:
        return (heights[b] * np.exp(-((v[..., None] - centres[b]) ** 2) / (2 * widths[b] ** 2))).sum(-1)

    def couple(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
        return 0.8 * np.exp(-((a - b - offsets[k]) ** 2) / (2 * 0.1**2))

    def true(x: np.ndarray) -> float:
        total = sum(float(own(x[b], b)) for b in range(27))
        return total + sum(float(couple(x[i], x[j], k)) for k, (i, j) in enumerate(pairs))

    levels = np.linspace(0.0, 1.0, 21)
    paired = set(pairs.ravel().tolist())
    optimum = sum(float(own(levels, b).max()) for b in range(27) if b not in paired)
    for k, (i, j) in enumerate(pairs):
        a, b = np.meshgrid(levels, levels, indexing="ij")
        optimum += float((own(a, i) + own(b, j) + couple(a, b, k)).max())
    random_values = [true(np.round(rng.random(27) * 20) / 20) for _ in range(1000)]
    noise = 0.1 * (optimum - float(np.quantile(random_values, 0.01)))
    return true, noise, float(np.mean(random_values)), optimum


def search(strategy: str, seed: int, maker, evaluations: int = EVALUATIONS, noisy: bool = True, **options):
    """(gap closed by the recipe ``strategy`` returns: 0 = mean random recipe, 1 = optimum; the optimizer)."""
    true, noise, random_mean, optimum = maker(seed)
    space = SearchSpace()
    opt = make_optimizer(strategy, space, seed=seed, init=InitSettings(random=10), **options)
    rng = np.random.default_rng([seed, 5])
    for _ in range(evaluations):
        recipe = opt.ask(1)[0]
        x = np.array([recipe.weights[b] for b in space.blocks])
        opt.tell(recipe, true(x) + (noise * rng.normal() if noisy else 0.0))
    chosen = opt.recommend().recipe
    value = true(np.array([chosen.weights[b] for b in space.blocks]))
    return (value - random_mean) / (optimum - random_mean), opt


def gap_closed(strategy: str, seed: int, maker, evaluations: int = EVALUATIONS) -> float:
    return search(strategy, seed, maker, evaluations)[0]


def test_default_strategy_beats_random_search():
    default = [gap_closed(DEFAULT_STRATEGY, s, make_objective) for s in SEEDS]
    random = [gap_closed("RandomSearch", s, make_objective) for s in SEEDS]
    assert np.median(default) > np.median(random) + 0.15, (default, random)
    assert all(d > r for d, r in zip(default, random)), (default, random)  # on every instance (same seed)


def test_default_strategy_climbs_a_smooth_multimodal_landscape():
    runs = [search(DEFAULT_STRATEGY, s, make_multimodal) for s in SEEDS]
    default = [gap for gap, _ in runs]
    random = [gap_closed("RandomSearch", s, make_multimodal) for s in SEEDS]
    assert not any(opt.describe()["model_led"] for _, opt in runs), "noisy scores must not hand the search to the model"
    # measured at 60 evaluations: default 0.48, 0.34, 0.31 (median 0.34; 0.52, 0.29, 0.39 before the cma arm tried
    # the centre first); random search 0.26, -0.04, 0.10
    assert np.median(default) > 0.3, default
    assert np.median(default) > np.median(random) + 0.2, (default, random)


def test_default_lets_its_model_lead_when_scores_are_noise_free():
    """A payload with fixed seeds scores a recipe the same every time; the default notices (a re-scored recipe
    scores the same) and lets expected improvement on a per-block model pick every recipe (on the benchmark's
    real pipeline that closed more of the gap; docs/optimizer.md). Here, on an additive landscape where the
    CMA-ES/EI portfolio it runs on noisy scores is strong, it must stay close to it and keep the additive kernel."""
    led = [search(DEFAULT_STRATEGY, s, make_multimodal, 90, noisy=False) for s in SEEDS]
    unled = [search(DEFAULT_STRATEGY, s, make_multimodal, 90, noisy=False, quiet_noise=0.0) for s in SEEDS]
    assert all(opt.describe()["model_led"] and opt.describe()["scores_repeat"] for _, opt in led)
    assert not any(opt.describe()["model_led"] for _, opt in unled)  # quiet_noise=0: never model-led
    gaps, portfolio = [gap for gap, _ in led], [gap for gap, _ in unled]
    # measured at 90 evaluations, seeds 0-2: model-led 0.885, 0.934, 0.709; the portfolio 0.884, 0.883, 0.824
    # (seeds 0-7: medians 0.853 and 0.884). Without the additive kernel model-led closed only 0.69, 0.64, 0.67.
    assert np.median(gaps) > np.median(portfolio) - 0.05, (gaps, portfolio)
    assert np.median(gaps) > 0.8, (gaps, portfolio)
