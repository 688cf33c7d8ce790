"""CMA-ES assisted by a Gaussian process: the default strategy's cma arm (and the default before ``PortfolioGP``).

CMA-ES (the ``cmaes`` package; Hansen's covariance matrix adaptation) keeps a
search distribution N(m, sigma^2 C) over the unit cube of block weights and
moves it toward better recipes; it copes with interacting blocks (it learns
their correlations), with blocks that do not matter and with noise. The GP
of ``strategies.gp`` makes each evaluation count more:

* screening: each generation, CMA-ES samples ``oversample`` x lambda
  candidates; the GP ranks them (expected improvement) and keeps the best
  lambda as the generation; only the best ``screen`` of those are evaluated
  (all of them while the GP has fewer than ``model_after`` scores);
* fitness: CMA-ES is told the GP's posterior mean of every member of the
  generation (not the raw noisy scores), so one lucky score does not drag the
  distribution, and unevaluated members still count;
* the returned recipe is the evaluated one with the highest posterior mean
  (the facade's robust choice);
* a (re)start first evaluates its own mean (``mean_first``): at the first
  start that is the centre of every block's range (with the default ranges
  0.5 everywhere: the plain average merge), often a good merge already,
  which CMA-ES's samples would only surround. On the benchmark's tuning
  seeds this was ahead in 31 of 48 paired searches at 90 evaluations
  (docs/optimizer.md).

The GP's kernel is a Matern kernel over all blocks plus an additive part, a
sum of one learned curve per block with its own weight (``additive``): a
merge score is often close to a sum of per-block effects (each block shapes
different features), and the additive part learns each block's curve from
every score, not only from neighbours in all 27 weights. On the benchmark's
sparse objective this found the good peak of blocks that CMA-ES alone left
on a side peak (docs/optimizer.md).

Each generation starts with one GP fit (warm-started; tens of milliseconds at
270 scores), so a suggestion costs far less than 0.5 s at step 270.
CMA-ES samples continuous weights; each is snapped to the grid for
evaluation, and CMA-ES is told the continuous sample (as optuna does).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..optimizer import MAX_MODEL_POINTS, Optimizer, OptimizerError, StrategyInfo, model_subset, register_strategy
from ..space import Point
from .trust_region import log_expected_improvement


class SurrogateCMA(Optimizer):
    """CMA-ES whose generations are screened and scored by a GP; see the module docstring."""

    name = "SurrogateCMA"

    def _setup_engine(
        self,
        sigma0: float = 1.0 / 6.0,
        start: str = "center",
        population: int = 0,
        oversample: int = 4,
        screen: int = 3,
        model_after: int = 20,
        fitness: str = "model",
        ard: int = 0,
        pool: float = 0.0,
        additive: bool = True,
        mean_first: bool = True,
        **options: Any,
    ) -> None:
        if options:
            raise OptimizerError(
                f"{self.name} has no option {', '.join(sorted(options))}; it accepts sigma0, start, population, "
                "oversample, screen, model_after, fitness, ard, pool, additive, mean_first"
            )
        if not 0.0 < float(sigma0) <= 1.0:
            raise OptimizerError(f"{self.name}: sigma0 must be in (0, 1] (a fraction of each block's range), got {sigma0!r}")
        if start not in ("center", "best"):
            raise OptimizerError(f"{self.name}: start must be 'center' or 'best', got {start!r}")
        if not isinstance(additive, (bool, int)):
            raise OptimizerError(f"{self.name}: additive must be true or false, got {additive!r}")
        if not isinstance(mean_first, (bool, int)):
            raise OptimizerError(f"{self.name}: mean_first must be true or false, got {mean_first!r}")
        if fitness not in ("model", "observed"):
            raise OptimizerError(f"{self.name}: fitness must be 'model' or 'observed', got {fitness!r}")
        self.sigma0 = float(sigma0)
        self.start = start
        self.population = int(population)
        self.oversample = max(1, int(oversample))
        self.screen = max(1, int(screen))
        self.model_after = int(model_after)
        self.fitness = fitness
        self._gp_ard_from = int(ard)
        self._gp_pool = float(pool)
        self._gp_additive = bool(additive)
        self.mean_first = bool(mean_first)
        self._cma: Any = None
        self._restarts = 0
        self._fitted_noise: tuple[int, float] | None = None  # (scores, noise fraction) of the last hyperparameter fit
        self._generation: list[tuple[np.ndarray, Point]] = []
        self._to_evaluate: list[Point] = []
        self._rng = np.random.default_rng([self.seed, 3])

    def __getstate__(self) -> dict[str, Any]:
        """The state, with the CMA-ES random generator that ``cmaes`` leaves out of its pickles (exact resume)."""
        state = dict(self.__dict__)
        state["_cma_rng_state"] = self._cma._rng.get_state() if self._cma is not None else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        rng_state = state.pop("_cma_rng_state", None)
        self.__dict__.update(state)
        if self._cma is not None and rng_state is not None:
            self._cma._rng.set_state(rng_state)

    # ----- model ------------------------------------------------------------------------------------
    def _search_model(self) -> Any:
        """The GP the search steers by, conditioned on every score; None with fewer than 3 recipes.

        Its hyperparameters are refitted (warm-started; from fixed starting
        points too every 10th fit) only every ``_refit_interval`` new scores;
        in between it is only conditioned on the new scores (one Cholesky
        factorisation), which keeps a step far under 0.3 s at 270 scores.
        """
        from .gp import GaussianProcess

        n = self.cache.n_observations
        if len(self.cache) < 3:
            return None
        cached = getattr(self, "_search_gp", None)
        if cached is not None and cached[0] == n:
            return cached[1]
        keep = model_subset([s for _, s in self.cache.order], MAX_MODEL_POINTS)
        x = self.space.unit([self.cache.order[i][0] for i in keep])
        y = np.array([self.cache.order[i][1] for i in keep])
        fitted_at = getattr(self, "_search_fitted_at", -(10**9))
        if self._gp_hyper is None or n - fitted_at >= _refit_interval(n):
            gp = self._fit_search_gp(x, y, n)
            self._gp_hyper, self._gp_fits, self._search_fitted_at = gp.hyper, self._gp_fits + 1, n
            self._fitted_noise = (n, gp.noise_fraction)
        else:
            ard, additive = self._search_kernel(n)
            gp = GaussianProcess(self.space.ndim, hyper=self._gp_hyper, ard=ard, pool=self._gp_pool, additive=additive)
            gp.set_data(x, y)
        if not self._exact_scores():
            gp.downweight_outliers()
        self._search_gp = (n, gp)
        return gp

    def _fit_search_gp(self, x: np.ndarray, y: np.ndarray, n: int, additive: bool | None = None) -> Any:
        """The search GP with hyperparameters refitted (warm-started; every 10th fit also from fixed starts)."""
        from .gp import GaussianProcess

        ard, default_additive = self._search_kernel(n)
        additive = default_additive if additive is None else additive
        gp = GaussianProcess(
            self.space.ndim, hyper=self._gp_hyper, ard=ard, pool=self._gp_pool, additive=additive, lengthscale_prior=self._lengthscale_prior()
        )
        restart = self._gp_fits % 10 == 0
        gp.fit(x, y, max_iter=80 if restart else 30, restart=restart)
        return gp

    def _search_kernel(self, n: int) -> tuple[bool, bool]:
        """(one length scale per block, additive part) of the search GP at ``n`` scores: the ``ard`` and ``additive`` options."""
        return bool(self._gp_ard_from) and n >= self._gp_ard_from, self._gp_additive

    def _lengthscale_prior(self) -> tuple[float, float] | None:
        """(mu, sigma) of the search GP's log-normal length-scale prior; None: the GP's default for the dimension."""
        return None

    def _exact_scores(self) -> bool:
        """Whether the scores are taken as noise-free: no score is down-weighted as a lucky outlier."""
        return False

    # ----- CMA-ES -----------------------------------------------------------------------------------
    def _start_mean(self) -> np.ndarray:
        """Where a (re)start centres CMA-ES: the centre of the unit cube, or the best recipe so far."""
        if self.start == "best" or self._restarts:
            ranked = self._ranked()
            if ranked:
                return self.space.unit([ranked[0][0]])[0]
        return np.full(self.space.ndim, 0.5)

    def _new_cma(self, mean: np.ndarray) -> Any:
        from cmaes import CMA

        d = self.space.ndim
        population = self.population or None
        if population is not None and self._restarts:
            population *= 2**self._restarts
        return CMA(
            mean=np.clip(mean, 1e-6, 1 - 1e-6),
            sigma=self.sigma0,
            bounds=np.tile([0.0, 1.0], (d, 1)),
            seed=int(self._rng.integers(2**31 - 1)),
            population_size=population,
        )

    def _start_generation(self) -> None:
        mean_point: Point | None = None
        if self._cma is None:
            mean = self._start_mean()
            self._cma = self._new_cma(mean)
            if self.mean_first:
                mean_point = tuple(int(v) for v in self.space.from_unit(mean[None])[0])
        lam = self._cma.population_size
        gp = self._search_model() if len(self.cache) >= self.model_after else None
        samples = np.array([self._cma.ask() for _ in range(lam * (self.oversample if gp is not None else 1))])
        points = self.space.from_unit(samples)
        if gp is None:
            order = np.arange(lam)
            evaluate = lam
        else:
            mean, var = gp.predict(self.space.unit(points))
            best = float(np.max(gp.predict(self.space.unit(self.cache.points()))[0]))
            score = log_expected_improvement(mean, np.sqrt(var), best)
            order = np.argsort(-score)[:lam]
            evaluate = self.screen
        self._generation = [(samples[i], tuple(int(v) for v in points[i])) for i in order]
        queue: list[Point] = []
        for _, point in self._generation:
            if len(queue) >= evaluate:
                break
            if point not in queue and not self._is_known(point):
                queue.append(point)
        if mean_point is not None and mean_point not in queue and not self._is_known(mean_point):
            queue.insert(0, mean_point)
        self._to_evaluate = queue

    def _finish_generation(self) -> None:
        """Tell CMA-ES the generation's fitness (GP mean, or the observed mean score) and restart it if it stalled."""
        gp = self._search_model()
        points = [p for _, p in self._generation]
        if self.fitness == "model" and gp is not None:
            values, _ = gp.predict(self.space.unit(points))
        else:
            fallback = np.mean([s for _, s in self.cache.order]) if self.cache.order else 0.0
            values = np.array([self.cache.mean(p) if p in self.cache else fallback for p in points])
        self._cma.tell([(x, -float(v)) for (x, _), v in zip(self._generation, values)])
        self._generation = []
        if self._cma.should_stop():
            self._restarts += 1
            self._cma = None

    def _engine_ask(self, n: int) -> list[tuple[Point, Any]]:
        out: list[tuple[Point, Any]] = []
        guard = 0
        while len(out) < n and guard < 50:
            guard += 1
            if not self._to_evaluate:
                if self._generation:
                    self._finish_generation()
                self._start_generation()
                continue
            point = self._to_evaluate.pop(0)
            if not self._is_known(point) and all(point != p for p, _ in out):
                out.append((point, None))
        return out

    def _engine_describe(self) -> dict[str, Any]:
        data: dict[str, Any] = {"cma_restarts": self._restarts}
        if self._cma is not None:
            data["cma_sigma"] = round(float(self._cma._sigma), 5)
            data["cma_generation"] = int(self._cma.generation)
        return data


def _refit_interval(n: int) -> int:
    """New scores between hyperparameter fits at ``n`` scores: every generation early, every 12th score from 200 on."""
    return 1 if n < 60 else 3 if n < 120 else 6 if n < 200 else 12


register_strategy(
    StrategyInfo(
        name=SurrogateCMA.name,
        description=(
            "CMA-ES (cmaes) whose candidates a Gaussian process screens and scores, so few evaluations move it far; "
            "returns the recipe with the best posterior mean. The default until issue 17 (now the default's cma arm)"
        ),
        engine="cmaes + auto-mbw Gaussian process (torch)",
        factory=SurrogateCMA,
    )
)
