"""Runners of the optimizer benchmark: one search of one strategy on one problem, recorded step by step.

Every runner evaluates ``evals`` recipes one at a time and records the TRUE
value of the recipe the strategy would return if it stopped there
(``returned``), the noisy score it saw (``observed``) and the seconds it took
between two evaluations (``ask_s``). What a strategy "would return":

* the tools we compare with return their best single observed score (the
  seed's GFO ``best_para``, bayes_opt's ``max``, optuna's ``best_trial``,
  CMA-ES's best sample); recorded after every evaluation;
* auto-MBW's facade returns ``recommend()``: the evaluated recipe with the
  highest posterior mean, taken on a deep copy at ``facade_checkpoints``
  (``returned_at``) so that it neither costs the timed steps nor changes the
  search. Its best-observed value is recorded too (``best_observed``).

A facade run is driven as the loop drives it: ask, evaluate, tell, ask, ...;
``ask_s`` is ``tell`` plus the next ``ask`` (for optuna: ``ask`` plus
``tell``; the other tools' ``ask``).

Baselines run as their tools set them up, straight on their libraries (so the
cached baselines do not depend on auto-MBW's code): the seed's GFO
``BayesianOptimizer`` (ask/tell, its defaults) on the 21-level grid with 10
random initial points, a repeated proposal answered from a score memory as
Hyperactive's ``memory`` does; random search on the same grid; the peer
sd-webui-bayesian-merger's ``bayes_opt`` GP (its defaults: UCB kappa 2.576,
Matern-5/2, 5 restarts) and optuna TPE (its defaults); optuna TPE
multivariate and GPSampler; plain CMA-ES (``cmaes``). All but the seed's on
continuous weights, the model-based ones with 10 random initial points.

``bayes_opt`` spends nearly all its time in per-call overhead while it
optimises its acquisition with numerical gradients (seconds per step here).
``fast_bayes_opt`` swaps two pure functions for equivalent vectorized ones in
the runner's process only: bayes_opt's per-parameter kernel transform (the
identity for float parameters) and scikit-learn's ``predict`` input validation.
Suggestions stay bit-identical (checked at start of every run); a run takes a
third of the time.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from optimizer_families import PROBLEMS
from optimizer_objectives import DIM, LEVELS, Objective

INIT_POINTS = 10


def _limit_threads() -> None:
    """One BLAS/torch thread per job: the bench runs two jobs on two cores."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


class Recorder:
    """Per-step records of one run."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.returned: list[float] = []
        self.best_observed: list[float] = []
        self.observed: list[float] = []
        self.ask_s: list[float] = []
        self._best_score = -np.inf
        self._best_true = np.nan

    def observe(self, x: np.ndarray, score: float) -> None:
        self.observed.append(float(score))
        if score > self._best_score:
            self._best_score = float(score)
            self._best_true = float(self.objective.true(x[None])[0])
        self.best_observed.append(self._best_true)

    def result(self) -> dict[str, Any]:
        out = {
            "returned": [round(v, 6) for v in (self.returned or self.best_observed)],
            "observed": [round(v, 6) for v in self.observed],
            "ask_s": [round(v, 5) for v in self.ask_s],
        }
        if self.returned:
            out["best_observed"] = [round(v, 6) for v in self.best_observed]
        return out


def _grid(x: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(x) * (LEVELS - 1)) / (LEVELS - 1)


def run_gfo_seed(objective_name: str, seed: int, evals: int) -> dict[str, Any]:
    """The seed's optimizer: GFO ``BayesianOptimizer`` ask/tell over 27 x 21 levels, 10 random initial points."""
    _limit_threads()
    import warnings

    from gradient_free_optimizers.ask_tell import BayesianOptimizer

    objective = PROBLEMS[objective_name](seed)
    rng = np.random.default_rng([seed, 7])
    init_rng = np.random.default_rng([seed, 8])
    keys = [f"b{i:02d}" for i in range(DIM)]
    values = np.round(np.linspace(0.0, 1.0, LEVELS), 6)
    rec = Recorder(objective)
    memory: dict[tuple[float, ...], float] = {}
    initial = []
    for _ in range(INIT_POINTS):
        start = time.perf_counter()
        x = _grid(init_rng.random(DIM))
        rec.ask_s.append(time.perf_counter() - start)
        score = float(objective.noisy(x, rng)[0])
        memory[tuple(x)] = score
        rec.observe(x, score)
        initial.append((dict(zip(keys, x)), score))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = BayesianOptimizer({k: values for k in keys}, initial_evaluations=initial, random_state=seed)
        while len(rec.observed) < evals:
            start = time.perf_counter()
            params = optimizer.ask(1)[0]
            x = np.array([float(params[k]) for k in keys])
            known = memory.get(tuple(x))
            if known is not None:  # Hyperactive's memory: no new evaluation
                optimizer.tell([known])
                continue
            rec.ask_s.append(time.perf_counter() - start)
            score = float(objective.noisy(x, rng)[0])
            memory[tuple(x)] = score
            optimizer.tell([score])
            rec.observe(x, score)
    return rec.result()


def run_random(objective_name: str, seed: int, evals: int) -> dict[str, Any]:
    """Random search on the 21-level grid."""
    objective = PROBLEMS[objective_name](seed)
    rng = np.random.default_rng([seed, 7])
    init_rng = np.random.default_rng([seed, 8])
    rec = Recorder(objective)
    for _ in range(evals):
        start = time.perf_counter()
        x = _grid(init_rng.random(DIM))
        rec.ask_s.append(time.perf_counter() - start)
        rec.observe(x, float(objective.noisy(x, rng)[0]))
    return rec.result()


def fast_bayes_opt() -> None:
    """Make bayes_opt 3.4 about 3x faster with bit-identical suggestions (module docstring)."""
    from bayes_opt.target_space import TargetSpace
    from scipy.linalg import solve_triangular
    from sklearn.gaussian_process import GaussianProcessRegressor

    original = GaussianProcessRegressor.predict

    def predict(self: Any, X: Any, return_std: bool = False, return_cov: bool = False) -> Any:
        if return_cov or not hasattr(self, "X_train_") or np.ndim(self._y_train_std) != 0:
            return original(self, X, return_std=return_std, return_cov=return_cov)
        X = np.atleast_2d(np.asarray(X, dtype=float))
        k_trans = self.kernel_(X, self.X_train_)
        mean = self._y_train_std * (k_trans @ self.alpha_) + self._y_train_mean
        if not return_std:
            return mean
        v = solve_triangular(self.L_, k_trans.T, lower=True, check_finite=False)
        var = self.kernel_.diag(X).copy() - np.einsum("ij,ji->i", v.T, v)
        var[var < 0] = 0.0
        return mean, np.sqrt(var * self._y_train_std**2)

    def kernel_transform(self: Any, value: Any) -> Any:
        return np.atleast_2d(value)

    GaussianProcessRegressor.predict = predict
    TargetSpace.kernel_transform = kernel_transform
    GaussianProcessRegressor._original_predict = original


def _check_fast_predict(optimizer: Any) -> None:
    """The patched predict must equal scikit-learn's on the fitted GP."""
    gp = optimizer._gp
    original = type(gp)._original_predict
    x = np.random.default_rng(0).random((7, DIM))
    fast_mean, fast_std = gp.predict(x, return_std=True)
    mean, std = original(gp, x, return_std=True)
    if not (np.array_equal(fast_mean, mean) and np.array_equal(fast_std, std)):
        raise AssertionError("fast bayes_opt predict differs from scikit-learn's")


def run_bayes_opt(objective_name: str, seed: int, evals: int) -> dict[str, Any]:
    """The peer's GP: ``bayes_opt.BayesianOptimization`` with its defaults, 10 random initial points."""
    _limit_threads()
    import warnings

    fast_bayes_opt()
    from bayes_opt import BayesianOptimization

    objective = PROBLEMS[objective_name](seed)
    rng = np.random.default_rng([seed, 7])
    init_rng = np.random.default_rng([seed, 8])
    keys = [f"b{i:02d}" for i in range(DIM)]
    optimizer = BayesianOptimization(f=None, pbounds={k: (0.0, 1.0) for k in keys}, random_state=seed, verbose=0)
    rec = Recorder(objective)
    for step in range(evals):
        start = time.perf_counter()
        if step < INIT_POINTS:
            params = dict(zip(keys, init_rng.random(DIM)))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                params = optimizer.suggest()
        rec.ask_s.append(time.perf_counter() - start)
        x = np.array([params[k] for k in keys])
        score = float(objective.noisy(x, rng)[0])
        optimizer.register(params=params, target=score)
        rec.observe(x, score)
        if step == INIT_POINTS:
            _check_fast_predict(optimizer)
    return rec.result()


def run_optuna_tpe(objective_name: str, seed: int, evals: int) -> dict[str, Any]:
    """The peer's TPE: optuna ``TPESampler`` with its defaults (10 startup trials), continuous weights."""
    _limit_threads()
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = PROBLEMS[objective_name](seed)
    rng = np.random.default_rng([seed, 7])
    dists = {f"b{i:02d}": FloatDistribution(0.0, 1.0) for i in range(DIM)}
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=INIT_POINTS))
    rec = Recorder(objective)
    for _ in range(evals):
        start = time.perf_counter()
        trial = study.ask(dists)
        rec.ask_s.append(time.perf_counter() - start)
        x = np.array([trial.params[k] for k in dists])
        score = float(objective.noisy(x, rng)[0])
        study.tell(trial, score)
        rec.observe(x, score)
    return rec.result()


def run_optuna_tpe_mv(objective_name: str, seed: int, evals: int) -> dict[str, Any]:
    """optuna ``TPESampler(multivariate=True)`` (a joint density over all blocks), 10 startup trials."""
    return _run_optuna(objective_name, seed, evals, "tpe-mv")


def run_optuna_gp(objective_name: str, seed: int, evals: int) -> dict[str, Any]:
    """optuna ``GPSampler`` (its GP with log-EI, optimised by its own acquisition search), 10 startup trials."""
    return _run_optuna(objective_name, seed, evals, "gp")


def _run_optuna(objective_name: str, seed: int, evals: int, kind: str) -> dict[str, Any]:
    _limit_threads()
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    objective = PROBLEMS[objective_name](seed)
    rng = np.random.default_rng([seed, 7])
    dists = {f"b{i:02d}": FloatDistribution(0.0, 1.0) for i in range(DIM)}
    if kind == "tpe-mv":
        sampler: Any = optuna.samplers.TPESampler(seed=seed, n_startup_trials=INIT_POINTS, multivariate=True)
    else:
        sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=INIT_POINTS)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    rec = Recorder(objective)
    for _ in range(evals):
        start = time.perf_counter()
        trial = study.ask(dists)
        rec.ask_s.append(time.perf_counter() - start)
        x = np.array([trial.params[k] for k in dists])
        score = float(objective.noisy(x, rng)[0])
        start = time.perf_counter()
        study.tell(trial, score)
        rec.ask_s[-1] += time.perf_counter() - start
        rec.observe(x, score)
    return rec.result()


def run_cma(objective_name: str, seed: int, evals: int) -> dict[str, Any]:
    """Plain CMA-ES (``cmaes.CMA``, its default population) from the centre, step 0.25 of the range, on continuous weights."""
    from cmaes import CMA

    objective = PROBLEMS[objective_name](seed)
    rng = np.random.default_rng([seed, 7])
    cma = CMA(mean=np.full(DIM, 0.5), sigma=0.25, bounds=np.tile([0.0, 1.0], (DIM, 1)), seed=seed)
    rec = Recorder(objective)
    generation: list[tuple[np.ndarray, float]] = []
    while len(rec.observed) < evals:
        start = time.perf_counter()
        if cma.should_stop():
            cma = CMA(mean=np.full(DIM, 0.5), sigma=0.25, bounds=np.tile([0.0, 1.0], (DIM, 1)), seed=seed + len(rec.observed))
        x = cma.ask()
        rec.ask_s.append(time.perf_counter() - start)
        score = float(objective.noisy(x, rng)[0])
        rec.observe(x, score)
        generation.append((x, -score))
        if len(generation) == cma.population_size:
            cma.tell(generation)
            generation = []
    return rec.result()


NEVERGRAD_VERSION = "1.0.12"


def _import_nevergrad() -> Any:
    """nevergrad from its own folder (requirements-nevergrad.txt): it pins bayesian-optimization 1.4.0, our set 3.4.0.

    NGOpt never picks bayes_opt's BO in this setting; blocking the module lets
    nevergrad import as it does where bayes_opt is absent.
    """
    import sys

    folder = os.environ.get("AUTO_MBW_BENCH_NEVERGRAD", os.path.expanduser("~/.cache/auto-mbw/bench-nevergrad"))
    if not os.path.isdir(os.path.join(folder, "nevergrad")):
        raise RuntimeError(f"nevergrad is not installed in {folder}: pip install --no-deps --target {folder} "
                           "-r tests/bench/requirements-nevergrad.txt (or set AUTO_MBW_BENCH_NEVERGRAD)")
    sys.modules["bayes_opt"] = None  # type: ignore[assignment]
    sys.path.insert(0, folder)
    import nevergrad

    if nevergrad.__version__ != NEVERGRAD_VERSION:
        raise RuntimeError(f"nevergrad {nevergrad.__version__} in {folder}, the bench's runs are keyed to {NEVERGRAD_VERSION}")
    return nevergrad


def run_ngopt(objective_name: str, seed: int, evals: int) -> dict[str, Any]:
    """nevergrad's NGOpt (its algorithm selector) on continuous weights, told the function is noisy, budget ``evals``;
    returns its own ``provide_recommendation()`` (taken outside the timed steps)."""
    import warnings

    ng = _import_nevergrad()
    objective = PROBLEMS[objective_name](seed)
    rng = np.random.default_rng([seed, 7])
    parametrization = ng.p.Array(shape=(DIM,), lower=0.0, upper=1.0)
    parametrization.function.deterministic = False
    parametrization.random_state = np.random.RandomState(seed)
    rec = Recorder(objective)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer = ng.optimizers.NGOpt(parametrization=parametrization, budget=evals, num_workers=1)
        while len(rec.observed) < evals:
            start = time.perf_counter()
            candidate = optimizer.ask()
            rec.ask_s.append(time.perf_counter() - start)
            x = np.asarray(candidate.value, dtype=float)
            score = float(objective.noisy(x, rng)[0])
            rec.observe(x, score)
            start = time.perf_counter()
            optimizer.tell(candidate, -score)
            rec.ask_s[-1] += time.perf_counter() - start
            chosen = np.asarray(optimizer.provide_recommendation().value, dtype=float)
            rec.returned.append(float(objective.true(chosen[None])[0]))
    result = rec.result()
    result["selected"] = optimizer.optim.name if hasattr(optimizer, "optim") else type(optimizer).__name__
    return result


BOTORCH_VERSION = "0.18.1"


def run_botorch(objective_name: str, seed: int, evals: int) -> dict[str, Any]:
    """BoTorch's standard loop (the field's strongest GP): ``SingleTaskGP`` (its default priors, learned noise,
    standardized scores) refitted every step, ``qLogNoisyExpectedImprovement`` maximised by ``optimize_acqf``
    (10 restarts, 512 raw samples), 10 random initial points, continuous weights. Returns the evaluated recipe with
    the highest posterior mean (as ours does; its best observed is recorded too). Installed apart
    (requirements-botorch.txt); several seconds a step here, so it runs at 90 evaluations (optimizer_botorch.py)."""
    _limit_threads()
    import sys
    import warnings

    folder = os.environ.get("AUTO_MBW_BENCH_BOTORCH", os.path.expanduser("~/.cache/auto-mbw/bench-botorch"))
    if not os.path.isdir(os.path.join(folder, "botorch")):
        raise RuntimeError(f"botorch is not installed in {folder}: pip install --no-deps --target {folder} "
                           "-r tests/bench/requirements-botorch.txt (or set AUTO_MBW_BENCH_BOTORCH)")
    sys.path.insert(0, folder)
    import botorch
    import torch
    from botorch.acquisition.logei import qLogNoisyExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from botorch.optim import optimize_acqf
    from gpytorch.mlls import ExactMarginalLogLikelihood

    if botorch.__version__ != BOTORCH_VERSION:
        raise RuntimeError(f"botorch {botorch.__version__} in {folder}, the bench's runs are keyed to {BOTORCH_VERSION}")
    torch.manual_seed(seed)
    objective = PROBLEMS[objective_name](seed)
    rng = np.random.default_rng([seed, 7])
    init_rng = np.random.default_rng([seed, 8])
    bounds = torch.stack([torch.zeros(DIM), torch.ones(DIM)]).double()
    rec = Recorder(objective)
    xs: list[np.ndarray] = []
    ys: list[float] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while len(rec.observed) < evals:
            start = time.perf_counter()
            model = None
            if len(xs) < INIT_POINTS:
                x = init_rng.random(DIM)
            else:
                train_x = torch.tensor(np.array(xs), dtype=torch.double)
                train_y = torch.tensor(ys, dtype=torch.double).unsqueeze(-1)
                model = SingleTaskGP(train_x, train_y, outcome_transform=Standardize(m=1))
                fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
                acquisition = qLogNoisyExpectedImprovement(model, X_baseline=train_x, prune_baseline=True)
                candidate, _ = optimize_acqf(acquisition, bounds=bounds, q=1, num_restarts=10, raw_samples=512)
                x = candidate.detach().numpy()[0]
            rec.ask_s.append(time.perf_counter() - start)
            score = float(objective.noisy(x, rng)[0])
            rec.observe(x, score)
            xs.append(np.asarray(x, dtype=float))
            ys.append(score)
            if model is None:
                chosen = xs[int(np.argmax(ys))]
            else:
                with torch.no_grad():
                    mean = model.posterior(torch.tensor(np.array(xs), dtype=torch.double)).mean.squeeze(-1).numpy()
                chosen = xs[int(np.argmax(mean))] if len(mean) == len(xs) else xs[int(np.argmax(ys))]
            rec.returned.append(float(objective.true(chosen[None])[0]))
    return rec.result()


#: evaluation counts at which a facade run records its returned recipe (recommend() on a copy)
def facade_checkpoints(evals: int) -> list[int]:
    return sorted({k for k in range(10, evals + 1, 10)} | {k for k in (15, 20, 25, 30, 90, 270, evals) if k <= evals})


def run_facade(strategy: str, objective_name: str, seed: int, evals: int) -> dict[str, Any]:
    """A facade strategy on the 21-level grid, driven as the loop drives it (ask, evaluate, tell, ask, ...).

    ``step_s[k]``: the seconds the optimizer took between evaluation k and k+1
    (``tell`` of k plus ``ask`` of k+1; the first entry is the first ask).
    The returned recipe (``recommend()``) is taken at ``facade_checkpoints``
    on a deep copy, untimed, so that its model fit neither helps the timed
    steps nor changes the search.
    """
    _limit_threads()
    import copy

    from lib_mbw.search.optimizer import InitSettings, make_optimizer
    from lib_mbw.search.space import SearchSpace

    objective = PROBLEMS[objective_name](seed)
    space = SearchSpace(levels=LEVELS)
    rng = np.random.default_rng([seed, 7])
    optimizer = make_optimizer(strategy, space, seed=seed, init=InitSettings(random=INIT_POINTS))
    rec = Recorder(objective)
    checkpoints = set(facade_checkpoints(evals))
    returned_at: list[int] = []
    start = time.perf_counter()
    recipe = optimizer.ask(1)[0]
    for k in range(1, evals + 1):
        rec.ask_s.append(time.perf_counter() - start)
        x = np.array([recipe.weights[b] for b in space.blocks])
        score = float(objective.noisy(x, rng)[0])
        rec.observe(x, score)
        start = time.perf_counter()
        optimizer.tell(recipe, score)
        if k < evals:
            recipe = optimizer.ask(1)[0]
        pause = time.perf_counter()
        if k in checkpoints:
            chosen = copy.deepcopy(optimizer).recommend().recipe
            xr = np.array([chosen.weights[b] for b in space.blocks])
            rec.returned.append(float(objective.true(xr[None])[0]))
            returned_at.append(k)
        start += time.perf_counter() - pause
    result = rec.result()
    result["returned_at"] = returned_at
    return result


#: label -> (runner, the functions of this module its result depends on, for the cache key)
RUNNERS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "seed": (run_gfo_seed, ("run_gfo_seed",)),
    "random": (run_random, ("run_random",)),
    "peer-gp": (run_bayes_opt, ("run_bayes_opt", "fast_bayes_opt", "_check_fast_predict")),
    "peer-tpe": (run_optuna_tpe, ("run_optuna_tpe",)),
    "tpe-mv": (run_optuna_tpe_mv, ("run_optuna_tpe_mv", "_run_optuna")),
    "optuna-gp": (run_optuna_gp, ("run_optuna_gp", "_run_optuna")),
    "cma": (run_cma, ("run_cma",)),
    "ngopt": (run_ngopt, ("run_ngopt", "_import_nevergrad", "NEVERGRAD_VERSION")),
    "botorch": (run_botorch, ("run_botorch", "BOTORCH_VERSION")),
}
COMMON = ("_limit_threads", "Recorder", "_grid", "INIT_POINTS")


def run(label: str, objective_name: str, seed: int, evals: int) -> dict[str, Any]:
    start = time.perf_counter()
    if label.startswith("facade:"):
        result = run_facade(label.split(":", 1)[1], objective_name, seed, evals)
    elif label in RUNNERS:
        result = RUNNERS[label][0](objective_name, seed, evals)
    else:
        raise ValueError(f"unknown strategy label {label!r}")
    result["wall_s"] = round(time.perf_counter() - start, 2)
    return result
