"""A small Gaussian-process regression model for noisy scores on the unit cube.

Owns the surrogate of the default strategy and of every strategy's robust
final choice: an exact GP with a constant mean, a learned noise level and a
Matern-5/2 kernel, with one length scale per dimension (ARD) or one shared
length scale (isotropic), optionally plus a quadratic kernel (Bayesian
quadratic regression on centred inputs), which captures the bowl shape of a
merge score around its best weights from few points.

Optionally plus an additive kernel (``additive``): a sum over dimensions of a
one-dimensional curve each, written in 11 Gaussian bumps per dimension, with
one learned weight per dimension (the variance of that block's own effect),
so the model learns per-block effects from every score and can tell the few
blocks that matter from the rest (additive GPs: Duvenaud, Nickisch &
Rasmussen, NeurIPS 2011). Fixed bumps make it one matrix product; a fit
costs about twice as long as without (27 more hyperparameters).

Hyperparameters are MAP estimates under priors that keep the model sensible in
high dimensions with few points: the length-scale prior grows with sqrt(#dims)
(Hvarfner, Hellsten & Nardi, "Vanilla Bayesian Optimization Performs Great in
High Dimensions", ICML 2024; BoTorch's default since 0.12). Fitting uses
scipy's L-BFGS-B on gradients from torch autograd (float64), from the previous
fit or from a few fixed starting points (one start often ends in the optimum
that calls every score noise). Predictions return the latent mean and
variance (without the observation noise), in the units of the scores.

``downweight_outliers`` gives scores that the rest of the data contradicts
(leave-one-out residual beyond a threshold) a large extra noise variance, so
one wildly lucky or unlucky score does not become a spike in the posterior
mean that the robust final choice would pick.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, TypeVar
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch

_F = TypeVar("_F", bound=Callable[..., Any])

_SQRT5 = math.sqrt(5.0)
_JITTER = 1e-8
_MIN_NOISE = 1e-6


@dataclass
class GPHyper:
    """Hyperparameters (log length scales, log output scale, log noise variance, mean, log quadratic scale).

    All refer to standardized scores (zero mean, unit variance).
    """

    log_lengthscales: np.ndarray
    log_outputscale: float = 0.0
    log_noise: float = math.log(0.1)
    mean: float = 0.0
    log_quadscale: float = -1.0
    log_addweights: np.ndarray | None = None


#: log-normal prior (mu, sigma) of each dimension's additive weight (variance of its own effect, standardized scores)
_ADD_PRIOR = (-3.0, 2.0)


def _addweights(h: GPHyper, dim: int) -> np.ndarray:
    w = getattr(h, "log_addweights", None)
    return np.full(dim, _ADD_PRIOR[0]) if w is None else np.asarray(w, dtype=float)


def lengthscale_prior(dim: int) -> tuple[float, float]:
    """(mu, sigma) of the log-normal length-scale prior for ``dim`` dimensions (Hvarfner et al. 2024)."""
    return math.sqrt(2.0) + 0.5 * math.log(dim), math.sqrt(3.0)


def start_points(dim: int) -> list[GPHyper]:
    """Starting hyperparameters for a fit from scratch."""
    mu, _ = lengthscale_prior(dim)
    return [
        GPHyper(np.full(dim, mu), log_outputscale=1.0, log_noise=math.log(0.05)),
        GPHyper(np.zeros(dim), log_outputscale=0.0, log_noise=math.log(0.1)),
        GPHyper(np.full(dim, mu - 1.5), log_outputscale=0.5, log_noise=math.log(0.3)),
    ]


def single_threaded(func: _F) -> _F:
    """Run ``func`` with one torch thread: GP matrices are small, and with every core busy (two
    benchmark jobs, a WebUI) torch's thread pool made fits 4x slower than one thread (measured)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        threads = torch.get_num_threads()
        if threads == 1:
            return func(*args, **kwargs)
        torch.set_num_threads(1)
        try:
            return func(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper  # type: ignore[return-value]


def _kernel(
    x1: torch.Tensor,
    x2: torch.Tensor,
    ls: torch.Tensor,
    os_: torch.Tensor,
    qs: torch.Tensor | None,
    aw: torch.Tensor | None = None,
    features: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    a = x1 / ls
    b = x2 / ls
    sq = ((a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * a @ b.T).clamp_min(0.0)
    r = torch.sqrt(sq + 1e-12)
    k = os_ * (1.0 + _SQRT5 * r + (5.0 / 3.0) * sq) * torch.exp(-_SQRT5 * r)
    if qs is not None:
        scale = 2.0 / math.sqrt(x1.shape[-1])
        u1, u2 = (x1 - 0.5) * scale, (x2 - 0.5) * scale
        k = k + qs * (1.0 + u1 @ u2.T) ** 2
    if aw is not None:
        f1, f2 = features if features is not None else (_features(x1), _features(x2))
        k = k + (f1 * aw[None, :, None]).flatten(1) @ f2.flatten(1).T
    return k


_CENTRES = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
_WIDTH = 0.1


def _features(x: torch.Tensor) -> torch.Tensor:
    """Gaussian bumps along each dimension, (n, dim, 11), scaled so a feature vector has about unit length."""
    f = torch.exp(-((x[..., None] - _CENTRES) ** 2) / (2 * _WIDTH**2))
    return f / math.sqrt(2.2)


class GaussianProcess:
    """Exact GP on inputs in [0, 1]^dim; ``fit`` learns hyperparameters, ``predict`` gives latent mean/variance.

    ``ard=False`` ties all length scales to one; ``quadratic=True`` adds the quadratic kernel.
    """

    def __init__(
        self,
        dim: int,
        hyper: GPHyper | None = None,
        ard: bool = True,
        quadratic: bool = False,
        pool: float = 0.0,
        additive: bool = False,
        lengthscale_prior: tuple[float, float] | None = None,
    ) -> None:
        self.dim = dim
        self.ls_prior = lengthscale_prior  # (mu, sigma) of the log length scales; None: ``lengthscale_prior(dim)``
        self._extra_noise: torch.Tensor | None = None
        self.ard = ard
        self.quadratic = quadratic
        self.additive = additive
        self.pool = pool if ard else 0.0
        self.hyper = hyper if hyper is not None else start_points(dim)[0]
        self._x: torch.Tensor | None = None
        self._alpha: torch.Tensor | None = None
        self._chol: torch.Tensor | None = None
        self._y: torch.Tensor | None = None
        self._y_mean = 0.0
        self._y_std = 1.0

    def __getstate__(self) -> dict:
        """Tensors as numpy arrays, so a saved optimizer state holds no torch storage."""
        state = dict(self.__dict__)
        state.pop("_fx", None)
        for key in ("_x", "_y", "_alpha", "_chol", "_extra_noise"):
            if state.get(key) is not None:
                state[key] = state[key].numpy()
        return state

    def __setstate__(self, state: dict) -> None:
        for key in ("_x", "_y", "_alpha", "_chol", "_extra_noise"):
            if state.get(key) is not None:
                state[key] = torch.from_numpy(state[key])
        self.__dict__.update(state)

    # ----- hyperparameter vector:
    # [log length scale(s), log output scale, log noise, mean, (log quad scale), (log additive weight per dimension)]
    def _pack(self, h: GPHyper) -> np.ndarray:
        ls = h.log_lengthscales if self.ard else [float(np.mean(h.log_lengthscales))]
        tail = [h.log_outputscale, h.log_noise, h.mean] + ([h.log_quadscale] if self.quadratic else [])
        add = list(_addweights(h, self.dim)) if self.additive else []
        return np.concatenate([ls, tail, add])

    def _unpack(self, v: np.ndarray) -> GPHyper:
        n = self.dim if self.ard else 1
        ls = np.array(v[:n], dtype=float) if self.ard else np.full(self.dim, float(v[0]))
        quad = float(v[n + 3]) if self.quadratic else self.hyper.log_quadscale
        add = np.array(v[-self.dim :], dtype=float) if self.additive else getattr(self.hyper, "log_addweights", None)
        return GPHyper(ls, float(v[n]), float(v[n + 1]), float(v[n + 2]), quad, add)

    def _bounds(self) -> list[tuple[float, float]]:
        n = self.dim if self.ard else 1
        bounds = [(-4.0, 4.0)] * n + [(-4.0, 4.0), (math.log(1e-5), math.log(2.0)), (-3.0, 3.0)]
        return bounds + ([(-6.0, 3.0)] if self.quadratic else []) + ([(-10.0, 2.0)] * self.dim if self.additive else [])

    def _neg_log_posterior(
        self, v: torch.Tensor, x: torch.Tensor, y: torch.Tensor, fx: torch.Tensor | None = None
    ) -> torch.Tensor:
        n_ls = self.dim if self.ard else 1
        log_ls, log_os, log_noise, mean = v[:n_ls], v[n_ls], v[n_ls + 1], v[n_ls + 2]
        qs = torch.exp(v[n_ls + 3]) if self.quadratic else None
        aw = torch.exp(v[-self.dim :]) if self.additive else None
        n = x.shape[0]
        k = _kernel(x, x, torch.exp(log_ls), torch.exp(log_os), qs, aw, None if fx is None else (fx, fx))
        k = k + (torch.exp(log_noise) + _MIN_NOISE + _JITTER) * torch.eye(n, dtype=x.dtype)
        chol = torch.linalg.cholesky(k)
        resid = (y - mean)[:, None]
        alpha = torch.cholesky_solve(resid, chol)
        nll = 0.5 * (resid * alpha).sum() + torch.log(torch.diagonal(chol)).sum() + 0.5 * n * math.log(2 * math.pi)
        mu, sigma = self.ls_prior or lengthscale_prior(self.dim)
        if self.pool > 0:  # partial pooling: length scales scatter (sd ``pool``) around a shared centre
            centre = log_ls.mean()
            prior = (centre - mu) ** 2 / (2 * sigma**2) + ((log_ls - centre) ** 2).sum() / (2 * self.pool**2)
        else:
            prior = ((log_ls - mu) ** 2).sum() / (2 * sigma**2)  # log-normal on the length scales (up to constants)
        prior = prior + log_os**2 / 2.0  # output scale ~ LogNormal(0, 1)
        prior = prior + (log_noise + 4.0) ** 2 / 2.0  # noise variance ~ LogNormal(-4, 1) (BoTorch's default)
        prior = prior + mean**2 / 2.0  # mean ~ N(0, 1) on standardized scores
        if self.quadratic:
            prior = prior + (v[n_ls + 3] + 1.0) ** 2 / 2.0  # quadratic scale ~ LogNormal(-1, 1)
        if self.additive:
            prior = prior + ((v[-self.dim :] - _ADD_PRIOR[0]) ** 2).sum() / (2 * _ADD_PRIOR[1] ** 2)
        return nll + prior

    @single_threaded
    def fit(self, x: np.ndarray, y: np.ndarray, max_iter: int = 60, restart: bool = False) -> float:
        """Learn hyperparameters (MAP) and condition on the data; returns the negative log posterior reached.

        Starts from the current hyperparameters; with ``restart`` also from
        ``start_points`` and keeps the best fit.
        """
        xt, yt = self._set_data(x, y)
        starts = [self.hyper] + (start_points(self.dim) if restart else [])
        best: tuple[float, GPHyper] | None = None
        for start in starts:
            if start is not self.hyper:
                start.log_quadscale = self.hyper.log_quadscale
                start.log_addweights = getattr(self.hyper, "log_addweights", None)
            loss, hyper = self._optimize(self._pack(start), xt, yt, max_iter)
            if hyper is not None and (best is None or loss < best[0]):
                best = (loss, hyper)
        if best is not None:
            self.hyper = best[1]
        self._condition(xt, yt)
        return best[0] if best is not None else math.inf

    def _optimize(self, start: np.ndarray, xt: torch.Tensor, yt: torch.Tensor, max_iter: int) -> tuple[float, GPHyper | None]:
        bounds = self._bounds()
        start = np.clip(start, [b[0] for b in bounds], [b[1] for b in bounds])
        fx = _features(xt) if self.additive else None

        def objective(v: np.ndarray) -> tuple[float, np.ndarray]:
            vt = torch.tensor(v, dtype=torch.float64, requires_grad=True)
            try:
                loss = self._neg_log_posterior(vt, xt, yt, fx)
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
            return float(result.fun), self._unpack(result.x)
        return math.inf, None

    @single_threaded
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

    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        h = self.hyper
        qs = torch.tensor(math.exp(h.log_quadscale), dtype=torch.float64) if self.quadratic else None
        aw = torch.exp(torch.as_tensor(_addweights(h, self.dim))) if getattr(self, "additive", False) else None
        return torch.exp(torch.as_tensor(h.log_lengthscales)), torch.tensor(math.exp(h.log_outputscale), dtype=torch.float64), qs, aw

    def _condition(self, x: torch.Tensor, y: torch.Tensor) -> None:
        h = self.hyper
        with torch.no_grad():
            k = _kernel(x, x, *self._tensors())
            k = k + (math.exp(h.log_noise) + _MIN_NOISE + _JITTER) * torch.eye(x.shape[0], dtype=x.dtype)
            if self._extra_noise is not None and len(self._extra_noise) == x.shape[0]:
                k = k + torch.diag(self._extra_noise)
            chol, info = torch.linalg.cholesky_ex(k)
            if int(info) != 0:
                k = k + 1e-4 * torch.eye(x.shape[0], dtype=x.dtype)
                chol = torch.linalg.cholesky(k)
            self._x = x
            self._fx = None
            self._y = y
            self._chol = chol
            self._alpha = torch.cholesky_solve((y - h.mean)[:, None], chol)

    # ----- predictions
    @property
    def noise_std(self) -> float:
        """Standard deviation of the observation noise the model believes in, in score units."""
        return math.sqrt(math.exp(self.hyper.log_noise) + _MIN_NOISE) * self._y_std

    @property
    def noise_fraction(self) -> float:
        """The observation noise variance the model believes in, as a fraction of the scores' variance."""
        return math.exp(self.hyper.log_noise) + _MIN_NOISE

    @single_threaded
    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Latent mean and variance at ``x`` (n, dim), in score units."""
        with torch.no_grad():
            mean, var = self.predict_tensor(torch.as_tensor(np.asarray(x, dtype=float), dtype=torch.float64))
        return mean.numpy(), var.numpy()

    def predict_tensor(self, xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``predict`` on a float64 tensor, differentiable with respect to ``xs``."""
        if self._x is None:
            raise RuntimeError("GaussianProcess.predict before fit/set_data")
        xs = xs.reshape(-1, self.dim)
        ls, os_, qs, aw = self._tensors()
        fs = _features(xs) if aw is not None else None
        ks = _kernel(xs, self._x, ls, os_, qs, aw, None if fs is None else (fs, self._train_features()))
        mean = self.hyper.mean + (ks @ self._alpha)[:, 0]
        v = torch.linalg.solve_triangular(self._chol, ks.T, upper=False)
        prior_var = os_ if qs is None else os_ + qs * (1.0 + (((xs - 0.5) * (2.0 / math.sqrt(self.dim))) ** 2).sum(-1)) ** 2
        if aw is not None:
            prior_var = prior_var + ((fs**2).sum(-1) * aw).sum(-1)
        var = (prior_var - (v * v).sum(0)).clamp_min(1e-12)
        return mean * self._y_std + self._y_mean, var * self._y_std**2

    def _train_features(self) -> torch.Tensor:
        """The additive part's bump features of the training inputs, computed once per conditioning."""
        cached = getattr(self, "_fx", None)
        if cached is None or cached.shape[0] != self._x.shape[0]:
            cached = _features(self._x)
            self._fx = cached
        return cached

    @single_threaded
    def downweight_outliers(self, threshold: float = 4.0, extra: float = 1e4) -> int:
        """Condition again with ``extra`` noise variance on scores whose leave-one-out residual exceeds ``threshold``.

        The residual is in leave-one-out standard deviations (Rasmussen &
        Williams, eq. 5.12); returns how many scores were down-weighted.
        """
        if self._chol is None or self._x is None:
            raise RuntimeError("GaussianProcess.downweight_outliers before fit/set_data")
        with torch.no_grad():
            inv_diag = torch.diagonal(torch.cholesky_inverse(self._chol))
            z = (self._alpha[:, 0] / inv_diag) * torch.sqrt(inv_diag)
            flagged = z.abs() > threshold
        if not bool(flagged.any()):
            return 0
        self._extra_noise = flagged.to(torch.float64) * extra
        self._condition(self._x, self._y)
        return int(flagged.sum())

    def loo_log_likelihood(self) -> float:
        """Mean leave-one-out log predictive density of the (standardized) scores, R&W eq. 5.10-5.12.

        How well the model predicts each score from all the others; comparable
        between kernels conditioned on the same scores.
        """
        if self._chol is None or self._alpha is None:
            raise RuntimeError("GaussianProcess.loo_log_likelihood before fit/set_data")
        with torch.no_grad():
            inv_diag = torch.diagonal(torch.cholesky_inverse(self._chol))
            residual = self._alpha[:, 0] / inv_diag
            log_p = 0.5 * torch.log(inv_diag) - 0.5 * residual**2 * inv_diag - 0.5 * math.log(2.0 * math.pi)
        return float(log_p.mean())

    def lengthscales(self) -> np.ndarray:
        return np.exp(self.hyper.log_lengthscales)
