"""Synthetic noisy objectives over 27 block weights, each with a known optimum (optimizer benchmark).

They mimic what a merge search sees (scores of images from a merged model):

* ``smooth``: a smooth surface where every pair of blocks interacts (a rotated
  concave quadratic with a mild ripple), optimum at a random grid point in
  [0.15, 0.85]^27;
* ``sparse``: only 4 of the 27 blocks matter, each through a two-peaked
  curve, and two of them interact; the other 23 do nothing;
* ``near_uniform``: optimum within 0.15 of the uniform 0.5 merge, blocks
  coupled by a penalty on uneven weights (merges near uniform are good).

Each objective takes points in [0, 1]^27 (rows) and returns true values; its
global maximum over the whole cube lies on the 21-level grid (steps of 0.05)
and is known exactly (``optimum``). ``noisy`` adds Gaussian noise with a
standard deviation of 10 % of the objective's range, defined as optimum minus
the 1 % quantile of the values of uniformly random recipes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

DIM = 27
LEVELS = 21
NOISE_FRACTION = 0.10


@dataclass
class Objective:
    """A synthetic objective: true values, the known optimum, the random-recipe baseline and the noise level."""

    name: str
    true: Callable[[np.ndarray], np.ndarray]
    optimum: float
    optimum_point: np.ndarray
    random_mean: float = 0.0
    noise_sd: float = 0.0

    def noisy(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = np.atleast_2d(x)
        return self.true(x) + rng.normal(0.0, self.noise_sd, size=len(x))

    def gap_closed(self, value: float | np.ndarray) -> float | np.ndarray:
        """0 = a random recipe on average, 1 = the optimum."""
        return (np.asarray(value) - self.random_mean) / (self.optimum - self.random_mean)


def _on_grid(values: np.ndarray) -> np.ndarray:
    return np.round(values * (LEVELS - 1)) / (LEVELS - 1)


def _calibrate(obj: Objective, seed: int) -> Objective:
    rng = np.random.default_rng([seed, 99])
    sample = obj.true(_on_grid(rng.random((200_000, DIM))))
    obj.random_mean = float(sample.mean())
    obj.noise_sd = NOISE_FRACTION * (obj.optimum - float(np.quantile(sample, 0.01)))
    return obj


def smooth(seed: int = 0) -> Objective:
    rng = np.random.default_rng([seed, 1])
    center = _on_grid(rng.uniform(0.15, 0.85, DIM))
    rotation, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    curvature = np.exp(rng.uniform(np.log(0.2), np.log(5.0), DIM))
    q = rotation @ np.diag(curvature) @ rotation.T
    ripple = rng.uniform(0.0, 0.02, DIM)

    def true(x: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(x) - center
        quad = np.einsum("ni,ij,nj->n", z, q, z)
        return -quad + (ripple * (np.cos(3.0 * np.pi * z) - 1.0)).sum(axis=1)

    return _calibrate(Objective("smooth", true, 0.0, center), seed)


def sparse(seed: int = 0) -> Objective:
    rng = np.random.default_rng([seed, 2])
    active = rng.choice(DIM, size=4, replace=False)
    peaks = _on_grid(rng.uniform(0.1, 0.9, 4))
    heights = rng.uniform(0.6, 1.0, 4)
    widths = rng.uniform(0.06, 0.15, 4)
    side_peaks = np.where(peaks > 0.5, peaks - 0.45, peaks + 0.45)
    a, b = 0, 1
    gap = peaks[a] - peaks[b]

    def true(x: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(x)[:, active]
        main = heights * np.exp(-((z - peaks) ** 2) / (2 * widths**2))
        side = 0.6 * heights * np.exp(-((z - side_peaks) ** 2) / (2 * (1.5 * widths) ** 2))
        # the two curves overlap a little; the max of a sum of the main peak and the side peak
        # is still at the main peak because the side peak sits at least 0.45 away
        coupling = 0.5 * np.exp(-((z[:, a] - z[:, b] - gap) ** 2) / (2 * 0.08**2))
        return np.maximum(main, side).sum(axis=1) + coupling

    optimum_point = np.full(DIM, 0.5)
    optimum_point[active] = peaks
    optimum = float(heights.sum() + 0.5)
    obj = Objective("sparse", true, optimum, optimum_point)
    assert abs(float(true(optimum_point[None])[0]) - optimum) < 1e-9
    return _calibrate(obj, seed)


def near_uniform(seed: int = 0) -> Objective:
    rng = np.random.default_rng([seed, 3])
    center = _on_grid(0.5 + rng.uniform(-0.15, 0.15, DIM))
    weights = rng.uniform(0.2, 1.0, DIM)
    coupling = 1.0

    def true(x: np.ndarray) -> np.ndarray:
        z = np.atleast_2d(x) - center
        own = (weights * np.abs(z) ** 1.5).sum(axis=1)
        uneven = ((z - z.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
        return -own - coupling * uneven

    return _calibrate(Objective("near_uniform", true, 0.0, center), seed)


OBJECTIVES: dict[str, Callable[[int], Objective]] = {"smooth": smooth, "sparse": sparse, "near_uniform": near_uniform}
