"""PortfolioGP: one Gaussian process arbitrates between CMA-ES, trust-region and global candidates.

Each suggestion:

1. the GP of ``strategies.gp`` (Matern-5/2 over all blocks plus the additive
   per-block curves) is conditioned on every score; its hyperparameters are
   refitted on a schedule (every score early, every 3rd from 60 scores,
   every 5th from 150), warm-started, so most steps only condition (one
   Cholesky factorisation);
2. candidates come from three generators that are good on different
   landscapes:
   * CMA-ES (``cmaes``): a search distribution that learns which blocks
     interact, stepped once per suggestion on the GP's posterior mean of its
     samples (so it follows the model, not single noisy scores);
   * trust region (``TrustRegionGP``'s perturbations of the 3 best recipes,
     TuRBO-like), which climbs out of a block's local optimum to its next
     peak;
   * uniform random recipes, so a distant basin can still win;
3. the best candidates by expected improvement (log-EI, on the common GP)
   are refined by gradient ascent of the acquisition over continuous
   weights and by one-block moves over the levels; the best unseen one is
   suggested. Recipes still being evaluated are fantasised at their
   predicted mean ("kriging believer"), so a batch spreads out.

The returned recipe (``recommend``) is the evaluated one with the highest
posterior mean of the same GP after scores the rest contradict were
down-weighted (``GaussianProcess.downweight_outliers``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..optimizer import OptimizerError, StrategyInfo, register_strategy
from ..space import Point
from .gp import GaussianProcess
from .trust_region import TrustRegionGP, log_expected_improvement


class PortfolioGP(TrustRegionGP):
    """GP-arbitrated CMA-ES + trust-region + random candidates; see the module docstring."""

    name = "PortfolioGP"

    def _setup_engine(  # type: ignore[override]
        self,
        cma_oversample: int = 4,
        sigma0: float = 0.25,
        local_candidates: int = 512,
        random_candidates: int = 256,
        refine: int = 2,
        additive: bool = True,
        ard: int = 0,
        **options: Any,
    ) -> None:
        if options:
            raise OptimizerError(
                f"{self.name} has no option {', '.join(sorted(options))}; it accepts cma_oversample, sigma0, "
                "local_candidates, random_candidates, refine, additive, ard"
            )
        if not isinstance(additive, (bool, int)):
            raise OptimizerError(f"{self.name}: additive must be true or false, got {additive!r}")
        if not 0.0 < float(sigma0) <= 1.0:
            raise OptimizerError(f"{self.name}: sigma0 must be in (0, 1] (a fraction of each block's range), got {sigma0!r}")
        super()._setup_engine(
            local_candidates=local_candidates, random_candidates=random_candidates, refine=refine, ard=ard, continuous=0
        )
        self.additive = bool(additive)
        self.cma_oversample = max(1, int(cma_oversample))
        self.sigma0 = float(sigma0)
        self._cma: Any = None
        self._cma_restarts = 0
        self._cma_rng = np.random.default_rng([self.seed, 5])

    def __getstate__(self) -> dict[str, Any]:
        """The state, with the CMA-ES random generator that ``cmaes`` leaves out of its pickles."""
        state = dict(self.__dict__)
        state["_cma_rng_state"] = self._cma._rng.get_state() if self._cma is not None else None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        rng_state = state.pop("_cma_rng_state", None)
        self.__dict__.update(state)
        if self._cma is not None and rng_state is not None:
            self._cma._rng.set_state(rng_state)

    # ----- model ------------------------------------------------------------------------------------
    def _new_model(self, n: int) -> GaussianProcess:
        ard = bool(self.ard) and n >= self.ard
        return GaussianProcess(self.space.ndim, hyper=self._hyper, ard=ard, additive=self.additive)

    def _refit_interval(self, n: int) -> int:
        """Hyperparameters move little once there are many scores: refit every 10th score from 200 on."""
        return 1 if n < 60 else 3 if n < 120 else 5 if n < 200 else 10

    def _model_means(self, points: list[Point]) -> tuple[np.ndarray, str] | None:
        if len(self.cache) < 3:
            return None
        search = self._fitted()
        x, y = self._data()
        robust = GaussianProcess(self.space.ndim, hyper=search.hyper, ard=search.ard, additive=self.additive).set_data(x, y)
        flagged = robust.downweight_outliers()
        mean, _ = robust.predict(self.space.unit(points))
        note = f", {flagged} contradicted score(s) down-weighted" if flagged else ""
        return mean, f"highest posterior mean of the search's Gaussian process ({self.cache.n_observations} scores{note})"

    # ----- CMA-ES -----------------------------------------------------------------------------------
    def _cma_candidates(self, gp: GaussianProcess, best_mean: float) -> np.ndarray:
        """This step's CMA-ES generation (grid points), after stepping CMA-ES on the GP's posterior mean."""
        from cmaes import CMA

        d = self.space.ndim
        if self._cma is None:
            ranked = self._ranked_by(gp)
            mean = self.space.unit([ranked[0]])[0] if self._cma_restarts and ranked else np.full(d, 0.5)
            self._cma = CMA(
                mean=np.clip(mean, 1e-6, 1 - 1e-6),
                sigma=self.sigma0,
                bounds=np.tile([0.0, 1.0], (d, 1)),
                seed=int(self._cma_rng.integers(2**31 - 1)),
            )
        lam = self._cma.population_size
        samples = np.array([self._cma.ask() for _ in range(lam * self.cma_oversample)])
        mean, var = gp.predict(samples)
        keep = np.argsort(-log_expected_improvement(mean, np.sqrt(var), best_mean), kind="stable")[:lam]
        self._cma.tell([(samples[i], -float(mean[i])) for i in keep])
        if self._cma.should_stop():
            self._cma_restarts += 1
            self._cma = None
        return self.space.from_unit(samples[keep])

    def _ranked_by(self, gp: GaussianProcess) -> list[Point]:
        points = self.cache.points()
        mean, _ = gp.predict(self.space.unit(points))
        return [points[i] for i in np.argsort(-mean, kind="stable")]

    # ----- suggestions -------------------------------------------------------------------------------
    def _extra_candidates(self, model: GaussianProcess, best_mean: float) -> np.ndarray:
        return self._cma_candidates(model, best_mean)

    def _block_moves(self, point: np.ndarray) -> np.ndarray:
        """One-block moves to every level of an even spread of up to 21 levels, plus the small steps.

        A block whose curve has several peaks can jump to another peak in one
        move (the moves by 1, 2, 4, ... levels only climb the peak it is on).
        """
        d, levels = self.space.ndim, self.space.levels
        spread = np.unique(np.round(np.linspace(0, levels - 1, min(levels, 21))).astype(np.int64))
        jumps = np.repeat(point[None, :], d * len(spread), axis=0)
        rows = np.arange(len(jumps))
        jumps[rows, rows // len(spread)] = np.tile(spread, d)
        return np.unique(np.vstack([super()._block_moves(point), jumps]), axis=0)

    def _engine_describe(self) -> dict[str, Any]:
        data = super()._engine_describe()
        data["cma_restarts"] = self._cma_restarts
        if self._cma is not None:
            data["cma_sigma"] = round(float(self._cma._sigma), 5)
        return data


register_strategy(
    StrategyInfo(
        name=PortfolioGP.name,
        description=(
            "a Gaussian process (Matern + per-block curves) picks each recipe by expected improvement among CMA-ES, "
            "trust-region and random candidates, refined by gradient and one-block moves; returns the best posterior mean"
        ),
        engine="cmaes + auto-mbw Gaussian process (torch)",
        factory=PortfolioGP,
    )
)
