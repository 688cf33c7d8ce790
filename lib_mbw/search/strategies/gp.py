"""A small Gaussian-process regression model for noisy scores on the unit cube.

Owns the surrogate of the default strategy and of every strategy's robust
final choice: an exact GP with a Matern-5/2 kernel that has one length scale
per dimension (ARD), a constant mean and a learned noise level. Hyperparameters
are MAP estimates under priors that keep the model sensible in high
dimensions with few points: the length-scale prior grows with sqrt(#dims)
(Hvarfner, Hellsten & Nardi, "Vanilla Bayesian Optimization Performs Great in
High Dimensions", ICML 2024; BoTorch's default since 0.12), so 27 weakly
informed dimensions do not make the model interpolate noise.

Fitting uses scipy's L-BFGS-B on gradients from torch autograd (float64) and
can start from the previous fit with few iterations, which keeps a refit at
270 points in tens of milliseconds. Predictions return the latent mean and
variance (without the observation noise), in the units of the scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

_SQRT5 = math.sqrt(5.0)
_JITTER = 1e-8
_MIN_NOISE = 1e-6


@dataclass
class GPHyper:
    """Hyperparameters in log space (length scales, output scale, noise variance) and the mean, all standardized."""

    log_lengthscales: np.ndarray
    log_outputscale: float = 0.0
    log_noise: float = math.log(0.1)
    mean: float = 0.0

    def vector(self) -> np.ndarray:
        return np.concatenate([self.log_lengthscales, [self.log_outputscale, self.log_noise, self.mean]])

    @classmethod
    def from_vector(cls, v: np.ndarray, dim: int) -> "GPHyper":
        return cls(np.array(v[:dim], dtype=float), float(v[dim]), float(v[dim + 1]), float(v[dim + 2]))


def lengthscale_prior(dim: int) -> tuple[float, float]:
    """(mu, sigma) of the log-normal length-scale prior for ``dim`` dimensions (Hvarfner et al. 2024)."""
    return math.sqrt(2.0) + 0.5 * math.log(dim), math.sqrt(3.0)


def default_hyper(dim: int) -> GPHyper:
    mu, _ = lengthscale_prior(dim)
    return GPHyper(np.full(dim, mu))


def _matern52(x1: torch.Tensor, x2: torch.Tensor, lengthscales: torch.Tensor, outputscale: torch.Tensor) -> torch.Tensor:
    a = x1 / lengthscales
    b = x2 / lengthscales
    sq = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * a @ b.T
    r = torch.sqrt(sq.clamp_min(1e-12))
    return outputscale * (1.0 + _SQRT5 * r + (5.0 / 3.0) * sq.clamp_min(0.0)) * torch.exp(-_SQRT5 * r)


class GaussianProcess:
    """Exact GP on inputs in [0, 1]^dim; ``fit`` learns hyperparameters, ``predict`` gives latent mean/variance."""

    def __init__(self, dim: int, hyper: GPHyper | None = None) -> None:
        self.dim = dim
        self.hyper = hyper if hyper is not None else default_hyper(dim)
        self._x: torch.Tensor | None = None
        self._alpha: torch.Tensor | None = None
        self._chol: torch.Tensor | None = None
        self._y_mean = 0.0
        self._y_std = 1.0

    def __getstate__(self) -> dict:
        """Tensors as numpy arrays, so a saved optimizer state holds no torch storage."""
        state = dict(self.__dict__)
        for key in ("_x", "_alpha", "_chol"):
            if state[key] is not None:
                state[key] = state[key].numpy()
        return state

    def __setstate__(self, state: dict) -> None:
        for key in ("_x", "_alpha", "_chol"):
            if state[key] is not None:
                state[key] = torch.from_numpy(state[key])
        self.__dict__.update(state)

    # ----- hyperparameters
    def _neg_log_posterior(self, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = self.dim
        log_ls, log_os, log_noise, mean = v[:d], v[d], v[d + 1], v[d + 2]
        k = _matern52(x, x, torch.exp(log_ls), torch.exp(log_os))
        n = x.shape[0]
        k = k + (torch.exp(log_noise) + _MIN_NOISE + _JITTER) * torch.eye(n, dtype=x.dtype)
        chol = torch.linalg.cholesky(k)
        resid = (y - mean)[:, None]
        alpha = torch.cholesky_solve(resid, chol)
        nll = 0.5 * (resid * alpha).sum() + torch.log(torch.diagonal(chol)).sum() + 0.5 * n * math.log(2 * math.pi)
        mu, sigma = lengthscale_prior(d)
        prior = ((log_ls - mu) ** 2).sum() / (2 * sigma**2)  # log-normal on the length scales (up to constants)
        prior = prior + log_os**2 / 2.0  # output scale ~ LogNormal(0, 1)
        prior = prior + (log_noise + 4.0) ** 2 / 2.0  # noise variance ~ LogNormal(-4, 1) (BoTorch's default)
        prior = prior + mean**2 / 2.0  # mean ~ N(0, 1) on standardized scores
        return nll + prior

    def fit(self, x: np.ndarray, y: np.ndarray, max_iter: int = 60, restart: bool = False) -> "GaussianProcess":
        """Learn hyperparameters (MAP), starting from the current ones unless ``restart``; then condition on the data."""
        xt, yt = self._set_data(x, y)
        start = default_hyper(self.dim).vector() if restart else self.hyper.vector()
        bounds = [(-4.0, 4.0)] * self.dim + [(-4.0, 4.0), (math.log(1e-5), math.log(2.0)), (-3.0, 3.0)]
        start = np.clip(start, [b[0] for b in bounds], [b[1] for b in bounds])

        def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
            vt = torch.tensor(v, dtype=torch.float64, requires_grad=True)
            try:
                loss = self._neg_log_posterior(vt, xt, yt)
                loss.backward()
            except torch.linalg.LinAlgError:  # numerically singular: steer the search away
                return 1e10, np.zeros_like(v)
            grad = vt.grad.numpy().copy()
            if not np.all(np.isfinite(grad)) or not math.isfinite(loss.item()):
                return 1e10, np.zeros_like(v)
            return float(loss.item()), grad

        result = scipy.optimize.minimize(
            objective, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": max_iter}
        )
        if math.isfinite(result.fun) and result.fun < 1e9:
            self.hyper = GPHyper.from_vector(result.x, self.dim)
        self._condition(xt, yt)
        return self

    def set_data(self, x: np.ndarray, y: np.ndarray) -> "GaussianProcess":
        """Condition on new data with the current hyperparameters (no refit)."""
        xt, yt = self._set_data(x, y)
        self._condition(xt, yt)
        return self

    def _set_data(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        y = np.asarray(y, dtype=float)
        self._y_mean = float(y.mean())
        std = float(y.std())
        self._y_std = std if std > 1e-12 else 1.0
        xt = torch.as_tensor(np.asarray(x, dtype=float), dtype=torch.float64)
        yt = torch.as_tensor((y - self._y_mean) / self._y_std, dtype=torch.float64)
        return xt, yt

    def _condition(self, x: torch.Tensor, y: torch.Tensor) -> None:
        h = self.hyper
        with torch.no_grad():
            k = _matern52(x, x, torch.exp(torch.as_tensor(h.log_lengthscales)), torch.tensor(math.exp(h.log_outputscale)))
            k = k + (math.exp(h.log_noise) + _MIN_NOISE + _JITTER) * torch.eye(x.shape[0], dtype=x.dtype)
            chol, info = torch.linalg.cholesky_ex(k)
            if int(info) != 0:
                k = k + 1e-4 * torch.eye(x.shape[0], dtype=x.dtype)
                chol = torch.linalg.cholesky(k)
            self._x = x
            self._chol = chol
            self._alpha = torch.cholesky_solve((y - h.mean)[:, None], chol)

    # ----- predictions
    @property
    def noise_std(self) -> float:
        """Standard deviation of the observation noise the model believes in, in score units."""
        return math.sqrt(math.exp(self.hyper.log_noise) + _MIN_NOISE) * self._y_std

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latent mean and variance at ``x`` (n, dim), in score units."""
        if self._x is None:
            raise RuntimeError("GaussianProcess.predict before fit/set_data")
        h = self.hyper
        with torch.no_grad():
            xs = torch.as_tensor(np.asarray(x, dtype=float), dtype=torch.float64).reshape(-1, self.dim)
            ls = torch.exp(torch.as_tensor(h.log_lengthscales))
            os_ = torch.tensor(math.exp(h.log_outputscale))
            ks = _matern52(xs, self._x, ls, os_)
            mean = h.mean + (ks @ self._alpha)[:, 0]
            v = torch.linalg.solve_triangular(self._chol, ks.T, upper=False)
            var = (os_ - (v * v).sum(0)).clamp_min(1e-12)
        return (mean.numpy() * self._y_std + self._y_mean), var.numpy() * self._y_std**2

    def lengthscales(self) -> np.ndarray:
        return np.exp(self.hyper.log_lengthscales)
