"""Strategies on gradient-free-optimizers (GFO) 1.13, the engine behind Hyperactive's ``hyperactive.opt.gfo``.

GFO's ask/tell classes (``gradient_free_optimizers.ask_tell``) want every
initial evaluation at construction and a strict ask(n) -> tell(n scores)
rhythm. The adapter keeps one GFO object while the loop follows that rhythm
and rebuilds it from every score so far when it cannot (results that GFO did
not propose, or a new ask while an earlier batch is still out: asynchronous
workers).

GFO draws from Python's and numpy's *global* random generators and reseeds
them when it is built. The adapter swaps in its own generator states around
every GFO call, so a search is reproducible, does not disturb other code, and
its state can be saved and restored exactly.

GFO's model-based optimizers (BayesianOptimizer, TreeStructuredParzenEstimators)
build their candidate set as a random sub-grid with numpy's meshgrid: at 21
levels per block over 27 blocks it holds 1-2 values per block, and at 101
levels it does not finish (measured: no suggestion within 200 s). They are
given a sub-grid of at most ``SMBO_MAX_LEVELS`` levels per dimension (the
user's levels nearest to an even spread), which ``describe()`` reports.
"""

from __future__ import annotations

import inspect
import math
import random
import warnings
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator

import numpy as np

from ..optimizer import Optimizer, OptimizerError, StrategyInfo, register_strategy
from ..space import Point

#: Most levels per dimension GFO's model-based optimizers are given (their candidate sampler hangs above).
SMBO_MAX_LEVELS = 21

_UNSET = object()


class GFOStrategy(Optimizer):
    """A gradient-free-optimizers ask/tell class behind the facade."""

    gfo_class: ClassVar[str] = ""
    model_based: ClassVar[bool] = False

    def _setup_engine(self, **options: Any) -> None:
        from gradient_free_optimizers import ask_tell

        cls = getattr(ask_tell, self.gfo_class)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "search_space", "initial_evaluations", "random_state"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise OptimizerError(
                f"{self.name} has no option {', '.join(unknown)}; gradient-free-optimizers accepts {', '.join(sorted(accepted))}"
            )
        self._gfo_options = options
        self._gfo: Any = None
        self._builds = 0
        self._stale = True
        self._batch: list[Any] | None = None
        self._batch_id = 0
        self._global_rng: tuple[Any, Any] | None = None
        levels = self.space.levels
        if self.model_based and levels > SMBO_MAX_LEVELS:
            self._sub_levels = np.unique(np.rint(np.linspace(0, levels - 1, SMBO_MAX_LEVELS)).astype(np.int64))
            self.note = (
                f"{self.name} (gradient-free-optimizers) hangs on fine grids; it searches {len(self._sub_levels)} "
                f"of the {levels} levels per block"
            )
        else:
            self._sub_levels = np.arange(levels, dtype=np.int64)
            self.note = ""
        self._search_space = {
            dim.name: np.array([dim.value(int(i)) for i in self._sub_levels]) for dim in self.space.dimensions
        }

    # ----- global random generators ------------------------------------------------------------
    @contextmanager
    def _own_global_rng(self) -> Iterator[None]:
        """Run GFO code on this search's own global random states (and without its warnings)."""
        saved = (random.getstate(), np.random.get_state())
        if self._global_rng is not None:
            random.setstate(self._global_rng[0])
            np.random.set_state(self._global_rng[1])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scikit-learn's GP convergence warnings, once per step
                yield
        finally:
            self._global_rng = (random.getstate(), np.random.get_state())
            random.setstate(saved[0])
            np.random.set_state(saved[1])

    # ----- conversions ---------------------------------------------------------------------------
    def _params(self, point: Point) -> dict[str, float]:
        params = {}
        for dim, index in zip(self.space.dimensions, point):
            sub = int(np.abs(self._sub_levels - index).argmin())
            params[dim.name] = float(self._search_space[dim.name][sub])
        return params

    def _point(self, params: dict[str, Any]) -> Point:
        return tuple(dim.index_of(float(params[dim.name])) for dim in self.space.dimensions)

    # ----- engine hooks ----------------------------------------------------------------------------
    def _build(self) -> bool:
        from gradient_free_optimizers import ask_tell

        evaluations = [(self._params(p), s) for p, s in self.cache.order]
        if not evaluations:
            return False
        cls = getattr(ask_tell, self.gfo_class)
        with self._own_global_rng():
            try:
                self._gfo = cls(
                    self._search_space,
                    initial_evaluations=evaluations,
                    random_state=self.seed * 1000 + self._builds,
                    **self._gfo_options,
                )
            except (TypeError, ValueError) as exc:
                raise OptimizerError(f"{self.name}: gradient-free-optimizers refused the settings ({exc})") from None
        self._builds += 1
        self._stale = False
        self._batch = None
        return True

    def _engine_ask(self, n: int) -> list[tuple[Point, Any]]:
        if (self._gfo is None or self._stale or self._batch is not None) and not self._build():
            return []
        with self._own_global_rng():
            params = self._gfo.ask(n)
        self._batch_id += 1
        self._batch = [_UNSET] * len(params)
        return [(self._point(p), (self._batch_id, i)) for i, p in enumerate(params)]

    def _engine_tell(self, token: Any, score: float | None) -> None:
        batch_id, index = token
        if self._batch is None or batch_id != self._batch_id:
            self._stale = True  # an answer to a batch that a rebuild replaced: the next build includes it
            return
        self._batch[index] = math.nan if score is None else float(score)
        if all(value is not _UNSET for value in self._batch):
            scores, self._batch = self._batch, None
            with self._own_global_rng():
                self._gfo.tell(scores)

    def _engine_observe(self, point: Point, score: float | None) -> None:
        if score is not None:
            self._stale = True

    def _engine_describe(self) -> dict[str, Any]:
        return {"note": self.note} if self.note else {}


def _define(name: str, gfo_class: str, model_based: bool, description: str, seed_compatible: bool = False) -> None:
    strategy = type(name, (GFOStrategy,), {"name": name, "gfo_class": gfo_class, "model_based": model_based})
    register_strategy(
        StrategyInfo(
            name=name,
            description=description,
            engine="gradient-free-optimizers",
            hyperactive=f"hyperactive.opt.gfo.{name}",
            seed_compatible=seed_compatible,
            factory=strategy,
        )
    )
    globals()[name] = strategy


_define(
    "BayesianOptimizer",
    "BayesianOptimizer",
    True,
    "the seed's choice (auto-MBW-rt): GFO's Gaussian-process optimizer over a fixed random candidate set. "
    "Slow (3–14 s per suggestion by step 270 on 2 CPU cores) and below random search on the benchmark; kept for comparison",
    seed_compatible=True,
)
_define(
    "TreeStructuredParzenEstimators",
    "TreeStructuredParzenEstimators",
    True,
    "GFO's TPE over a fixed random candidate set (same limits as its BayesianOptimizer)",
)
_define("HillClimbing", "HillClimbingOptimizer", False, "GFO's hill climbing: small random steps from the current point")
_define("RandomSearch", "RandomSearchOptimizer", False, "GFO's random search: every recipe equally likely")
