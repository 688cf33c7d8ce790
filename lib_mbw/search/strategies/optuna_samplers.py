"""Strategies on optuna samplers, under the names of Hyperactive's ``hyperactive.opt.optuna`` classes.

Each search owns an in-memory optuna study driven with ``study.ask()`` /
``study.tell()``; results optuna did not propose (initial design, warm start,
outside recipes) enter as ``study.add_trial``. Every dimension is a continuous
``FloatDistribution`` over the block's range, as Hyperactive builds it from a
``(low, high)`` tuple; the facade snaps each suggestion to the nearest level,
so optuna's model sees scores at points at most half a level from where it
asked. (Integer level indices instead make GPSampler's discrete acquisition
search take about 15 s per suggestion on 27 blocks.)
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, ClassVar

from ..optimizer import Optimizer, OptimizerError, StrategyInfo, register_strategy
from ..space import Point


class OptunaStrategy(Optimizer):
    """An optuna sampler behind the facade."""

    make_sampler: ClassVar[Callable[..., Any]]

    def _setup_engine(self, **options: Any) -> None:
        import optuna
        from optuna.distributions import FloatDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._distributions = {dim.name: FloatDistribution(dim.low, dim.high) for dim in self.space.dimensions}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                sampler = type(self).make_sampler(seed=self.seed, **options)
            except TypeError as exc:
                raise OptimizerError(f"{self.name}: optuna refused the options ({exc})") from None
        self._study = optuna.create_study(direction="maximize", sampler=sampler)

    def _point(self, params: dict[str, float]) -> Point:
        return tuple(dim.index_of(params[dim.name]) for dim in self.space.dimensions)

    def _engine_ask(self, n: int) -> list[tuple[Point, Any]]:
        import optuna

        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for _ in range(n):
                trial = self._study.ask(self._distributions)
                out.append((self._point(trial.params), trial.number))
        return out

    def _engine_tell(self, token: Any, score: float | None) -> None:
        from optuna.trial import TrialState

        if score is None:
            self._study.tell(token, state=TrialState.FAIL)
        else:
            self._study.tell(token, score)

    def _engine_observe(self, point: Point, score: float | None) -> None:
        import optuna
        from optuna.trial import TrialState

        params = {dim.name: dim.value(i) for dim, i in zip(self.space.dimensions, point)}
        if score is None:
            trial = optuna.trial.create_trial(params=params, distributions=self._distributions, state=TrialState.FAIL)
        else:
            trial = optuna.trial.create_trial(params=params, distributions=self._distributions, value=score)
        self._study.add_trial(trial)


def _sampler(kind: str, defaults: dict[str, Any]) -> Callable[..., Any]:
    def make(seed: int, **options: Any) -> Any:
        import optuna

        return getattr(optuna.samplers, kind)(seed=seed, **{**defaults, **options})

    return make


def _define(name: str, sampler: str, defaults: dict[str, Any], description: str) -> None:
    strategy = type(name, (OptunaStrategy,), {"name": name, "make_sampler": staticmethod(_sampler(sampler, defaults))})
    register_strategy(
        StrategyInfo(
            name=name,
            description=description,
            engine=f"optuna ({sampler})",
            hyperactive=f"hyperactive.opt.optuna.{name}",
            factory=strategy,
        )
    )
    globals()[name] = strategy


_define(
    "GPOptimizer",
    "GPSampler",
    {},
    "optuna's Gaussian process: strong on smooth objectives, but slow (seconds per suggestion after 200 evaluations)",
)
_define(
    "TPEOptimizer",
    "TPESampler",
    {"multivariate": True},
    "optuna's multivariate TPE: fast, the peer sd-webui-bayesian-merger's second optimizer",
)
_define("CmaEsOptimizer", "CmaEsSampler", {}, "optuna's CMA-ES: fast, good when the optimum is near the middle")
_define("RandomOptimizer", "RandomSampler", {}, "optuna's random sampler: every recipe equally likely")
