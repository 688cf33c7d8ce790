"""The Gaussian process behind the default strategy and every robust choice (lib_mbw/search/strategies/gp.py)."""

from __future__ import annotations

import pickle

import numpy as np

from lib_mbw.search.strategies.gp import GaussianProcess, GPHyper

DIM = 27


def _additive_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores that depend on blocks 0 and 3 only, each through a curve with two bumps, plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, DIM))
    return x, _additive_truth(x) + 0.2 * rng.normal(size=n)


def _additive_truth(x: np.ndarray) -> np.ndarray:
    return np.sin(6.0 * x[:, 0]) + np.cos(5.0 * x[:, 3])


def _correlation(gp: GaussianProcess, seed: int) -> float:
    x = np.random.default_rng([seed, 1]).random((400, DIM))
    mean, _ = gp.predict(x)
    return float(np.corrcoef(mean, _additive_truth(x))[0, 1])


def test_additive_kernel_learns_per_block_effects_that_the_plain_kernel_misses():
    x, y = _additive_data(150, seed=0)
    plain = GaussianProcess(DIM, ard=False)
    plain.fit(x, y, restart=True)
    additive = GaussianProcess(DIM, ard=False, additive=True)
    additive.fit(x, y, restart=True)
    assert _correlation(additive, 0) > 0.9
    assert _correlation(additive, 0) > _correlation(plain, 0) + 0.15
    weights = np.asarray(additive.hyper.log_addweights)
    others = np.delete(weights, [0, 3])
    assert min(weights[0], weights[3]) > others.max() + 2.0, weights  # the two blocks that matter stand out


def test_additive_model_survives_pickling_and_predicts_the_same():
    x, y = _additive_data(60, seed=1)
    gp = GaussianProcess(DIM, ard=False, additive=True)
    gp.fit(x, y)
    copy = pickle.loads(pickle.dumps(gp))
    probe = np.random.default_rng(2).random((5, DIM))
    np.testing.assert_allclose(copy.predict(probe)[0], gp.predict(probe)[0])


def test_hyperparameters_saved_before_the_additive_kernel_still_load():
    old = GPHyper(np.zeros(DIM))
    del old.log_addweights  # a state written before the field existed
    x, y = _additive_data(40, seed=3)
    gp = GaussianProcess(DIM, hyper=old, ard=False, additive=True)
    gp.fit(x, y)
    assert np.asarray(gp.hyper.log_addweights).shape == (DIM,)
    assert np.all(np.isfinite(gp.predict(x[:3])[0]))


def test_leave_one_out_likelihood_equals_refitting_without_each_score():
    x, y = _additive_data(25, seed=4)
    gp = GaussianProcess(DIM, ard=True)
    gp.fit(x, y)
    k = (gp._chol @ gp._chol.T).numpy()  # the scores' covariance, noise included (standardized scores)
    z = (y - y.mean()) / y.std() - gp.hyper.mean
    log_p = []
    for i in range(len(y)):
        rest = np.delete(np.arange(len(y)), i)
        weights = np.linalg.solve(k[np.ix_(rest, rest)], k[rest, i])
        mean, var = weights @ z[rest], k[i, i] - weights @ k[rest, i]
        log_p.append(-0.5 * np.log(2 * np.pi * var) - (z[i] - mean) ** 2 / (2 * var))
    assert abs(gp.loo_log_likelihood() - float(np.mean(log_p))) < 1e-6


def test_leave_one_out_likelihood_prefers_the_additive_kernel_when_many_blocks_add_up():
    """The default's model-led mode keeps the kernel that predicts held-out scores better: with per-block
    curves on 12 blocks, one length scale per block over all of them cannot follow what the additive part can."""
    rng = np.random.default_rng(5)
    x = rng.random((80, DIM))
    phase = rng.uniform(0.0, 2.0 * np.pi, 12)
    y = np.sin(6.0 * x[:, :12] + phase).sum(axis=1)
    plain = GaussianProcess(DIM, ard=True)
    plain.fit(x, y, restart=True)
    additive = GaussianProcess(DIM, ard=True, additive=True)
    additive.fit(x, y, restart=True)
    assert additive.loo_log_likelihood() > plain.loo_log_likelihood() + 0.1, (additive.loo_log_likelihood(), plain.loo_log_likelihood())
