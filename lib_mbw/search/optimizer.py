"""The optimizer facade: one ask/tell interface over every search strategy.

The loop drives a search through this interface only::

    opt = make_optimizer("default", space, seed=1)
    for recipe in opt.ask(n):          # n > 1: a batch for parallel workers
        opt.tell(recipe, score)        # or opt.tell_failed(recipe)
    choice = opt.recommend()           # robust final choice (Recommendation)

What the facade owns, for every strategy alike (``Optimizer``):

* the initial design (``InitSettings``: explicit recipes, then grid, vertex
  and random points) and warm start from scored recipes (history rows);
* the score cache and de-duplication: scores are kept per snapped recipe
  (``ScoreCache``); ``ask`` never returns a recipe that was scored, failed or
  is still being evaluated, unless the engine asks for a re-score (below).
  When an engine proposes such a recipe, the facade answers the engine from
  the cache (no evaluation) and asks again; after ``MAX_ENGINE_RETRIES`` it
  falls back to an unseen neighbouring point.
  ``tell`` accepts any recipe (snapped to the grid), also one told before: a
  re-score is one more noisy observation of it, and its mean counts. An
  engine that wants a scored recipe evaluated again (to learn whether a
  recipe's score repeats) proposes it with a ``Repeat`` token;
* exact resume without saved engine state: every strategy is deterministic
  given its seed, so ``replay`` rebuilds an optimizer from its settings and
  the recorded ask/tell sequence (the run's history) and then asks what the
  uninterrupted run would have. Nothing an optimizer holds is ever written
  to or read back from a file (a run folder is data, never code);
* the robust final choice: evaluated recipes ranked by the posterior mean of
  a Gaussian process fitted to every score (``rank_for_rescoring``,
  ``recommend``), not by the luckiest single score.

Engines (see ``STRATEGIES``): gradient-free-optimizers' ask/tell classes and
optuna's samplers under the names Hyperactive 5 gives them, and auto-MBW's
own: the default ``PortfolioGP`` (``strategies.portfolio``), ``SurrogateCMA``
(``strategies.surrogate_cma``) and ``TrustRegionGP`` (``strategies.trust_region``).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np

from ..errors import MBWError
from ..recipe import Recipe
from .space import Point, SearchSpace

#: Strategy used when the user picks none: the winner of tests/bench/optimizer.py.
DEFAULT_STRATEGY = "PortfolioGP"
#: The seed's choice (auto-MBW-rt): kept selectable and used as the benchmark baseline.
SEED_STRATEGY = "BayesianOptimizer"

#: How often the facade asks an engine again when it proposes known recipes, before it falls back.
MAX_ENGINE_RETRIES = 8
#: Fewest scored recipes before the robust choice fits a model (fewer: mean observed score).
MIN_MODEL_POINTS = 8
#: Most scores a Gaussian process is fitted to (a fit costs n^3): beyond, the best half and the most recent.
MAX_MODEL_POINTS = 300

log = logging.getLogger(__name__)


class OptimizerError(MBWError):
    """A strategy cannot be created or used as asked (unknown name, bad option, exhausted space)."""


@dataclass(frozen=True)
class InitSettings:
    """The initial design, evaluated before the strategy takes over.

    ``recipes`` first (e.g. the user's favourite merges, snapped to the grid),
    then ``grid`` uniform recipes (0.5, 0.25, 0.75, ...), ``vertex`` corners
    (all-A, all-B, random corners) and ``random`` uniformly random points.
    """

    random: int = 10
    grid: int = 0
    vertex: int = 0
    recipes: tuple[Recipe, ...] = ()

    def __post_init__(self) -> None:
        for name in ("random", "grid", "vertex"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise OptimizerError(f"initial {name} points must be a whole number >= 0, got {value!r}")
        object.__setattr__(self, "recipes", tuple(self.recipes))

    @property
    def total(self) -> int:
        return len(self.recipes) + self.grid + self.vertex + self.random


@dataclass(frozen=True)
class StrategyInfo:
    """What a strategy is, for menus, ``--help`` and the run manifest."""

    name: str
    description: str
    engine: str
    hyperactive: str = ""
    seed_compatible: bool = False
    factory: Callable[..., "Optimizer"] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Repeat:
    """An engine's token for a proposal to evaluate although it was scored (the facade otherwise answers from the cache)."""

    token: Any = None


@dataclass(frozen=True)
class Recommendation:
    """The recipe a search returns, and why it was chosen."""

    recipe: Recipe
    reason: str
    predicted_mean: float | None
    observed_mean: float
    n_scores: int


class ScoreCache:
    """Scores per grid point. A point told twice (re-scored) keeps both; its mean is its value."""

    def __init__(self) -> None:
        self._scores: dict[Point, list[float]] = {}
        self.order: list[tuple[Point, float]] = []

    def add(self, point: Point, score: float) -> None:
        self._scores.setdefault(point, []).append(float(score))
        self.order.append((point, float(score)))

    def __contains__(self, point: object) -> bool:
        return point in self._scores

    def __len__(self) -> int:
        return len(self._scores)

    def scores(self, point: Point) -> list[float]:
        return list(self._scores.get(point, ()))

    def mean(self, point: Point) -> float:
        values = self._scores[point]
        return sum(values) / len(values)

    def points(self) -> list[Point]:
        """Distinct scored points, in the order they were first scored."""
        return list(self._scores)

    def repeated(self) -> list[list[float]]:
        """The scores of every point scored more than once."""
        return [list(values) for values in self._scores.values() if len(values) > 1]

    @property
    def n_observations(self) -> int:
        return len(self.order)

    def best_observed(self) -> tuple[Point, float] | None:
        """The single highest score and its point (what non-robust tools return)."""
        if not self.order:
            return None
        return max(self.order, key=lambda item: item[1])


class Optimizer:
    """Base of every strategy. Subclasses implement the ``_engine_*`` hooks; see the module docstring."""

    name: ClassVar[str] = ""

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        *,
        init: InitSettings = InitSettings(),
        warm_start: Sequence[tuple[Recipe, float]] = (),
        **options: Any,
    ) -> None:
        if not isinstance(space, SearchSpace):
            raise OptimizerError(f"space must be a SearchSpace, got {type(space).__name__}")
        self.space = space
        self.seed = int(seed)
        self.options = dict(options)
        self.cache = ScoreCache()
        self.failed: set[Point] = set()
        self.pending: dict[Point, list[Any]] = {}
        self.n_asked = 0
        self._rng = np.random.default_rng([self.seed, 27])
        self._gp_ard_from = 1  # ARD length scales from this many scores on (0: never)
        self._gp_pool = 0.0  # partial pooling of ARD length scales (0: independent)
        self._gp_additive = False  # add a kernel that sums one-dimensional effects (see strategies.gp)
        self._gp_hyper: Any = None
        self._gp_fits = 0
        self._gp: Any = None
        self._gp_n = -1
        self._init_counts = {"random": init.random, "grid": init.grid, "vertex": init.vertex, "recipes": len(init.recipes)}
        self._queue: deque[Point] = deque(self._initial_design(init))
        self._setup_engine(**options)
        for recipe, score in warm_start:
            self.tell(recipe, score)

    # ----- engine hooks (override) -----------------------------------------------------------
    def _setup_engine(self, **options: Any) -> None:
        if options:
            raise OptimizerError(f"strategy {self.name} takes no options, got {', '.join(sorted(options))}")

    def _engine_ask(self, n: int) -> list[tuple[Point, Any]]:
        """Up to ``n`` (point, token) proposals; known points are fine, the facade handles them."""
        raise NotImplementedError

    def _engine_tell(self, token: Any, score: float | None) -> None:
        """The result of an engine proposal (``None``: the evaluation failed)."""

    def _engine_observe(self, point: Point, score: float | None) -> None:
        """A result the engine did not propose (initial design, warm start, outside recipe)."""

    def _engine_describe(self) -> dict[str, Any]:
        return {}

    # ----- the interface the loop uses ------------------------------------------------------
    def ask(self, n: int = 1) -> list[Recipe]:
        """``n`` new recipes to evaluate (a batch for parallel workers when n > 1)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise OptimizerError(f"ask(n) needs a whole number n >= 1, got {n!r}")
        chosen: list[Point] = []
        tokens: dict[Point, list[Any]] = {}
        while len(chosen) < n and self._queue:
            point = self._queue.popleft()
            if not self._is_known(point) and point not in tokens:
                chosen.append(point)
                tokens[point] = []
        tries = 0
        while len(chosen) < n and tries < MAX_ENGINE_RETRIES:
            tries += 1
            for point, token in self._engine_ask(n - len(chosen)):
                point = self.space.check_point(point)
                if point in tokens:
                    tokens[point].append(token)
                elif self._is_known(point) and not self._repeatable(point, token):
                    self._answer_known(point, token)
                else:
                    chosen.append(point)
                    tokens[point] = [token]
        if len(chosen) < n:
            for point in self._fallback_points(n - len(chosen), set(tokens)):
                chosen.append(point)
                tokens[point] = []
        for point in chosen:
            self.pending[point] = tokens[point]
        self.n_asked += len(chosen)
        return [self.space.recipe(p) for p in chosen]

    def tell(self, recipe: Recipe, score: float) -> None:
        """The score of ``recipe`` (higher is better); any recipe is accepted and snapped to the grid."""
        try:
            value = float(score)
        except (TypeError, ValueError):
            raise OptimizerError(f"score must be a number, got {score!r}") from None
        if not math.isfinite(value):
            raise OptimizerError(f"score {score!r} is not finite; report a failed evaluation with tell_failed(recipe)")
        point = self.space.point_of(recipe)
        self.cache.add(point, value)
        self.failed.discard(point)
        tokens = self.pending.pop(point, None)
        if tokens:
            for token in tokens:
                self._engine_tell(token, value)
        else:
            self._engine_observe(point, value)

    def tell_failed(self, recipe: Recipe) -> None:
        """``recipe`` could not be evaluated: it gets no score and is never suggested again as it is."""
        point = self.space.point_of(recipe)
        tokens = self.pending.pop(point, None)
        if point in self.cache:  # a re-score failed: the earlier scores stand (a repeat asked for learned nothing)
            for token in tokens or ():
                self._engine_tell(token, None if isinstance(token, Repeat) else self.cache.mean(point))
            return
        self.failed.add(point)
        if tokens:
            for token in tokens:
                self._engine_tell(token, None)
        else:
            self._engine_observe(point, None)

    def cached_score(self, recipe: Recipe) -> float | None:
        """Mean score of ``recipe`` (snapped) if it was evaluated, else None."""
        point = self.space.point_of(recipe)
        return self.cache.mean(point) if point in self.cache else None

    def rank_for_rescoring(self, k: int) -> list[Recipe]:
        """The ``k`` evaluated recipes most likely to be best (model mean), to re-score before choosing."""
        return [self.space.recipe(p) for p, _, _ in self._ranked()[: max(0, int(k))]]

    def recommend(self) -> Recommendation:
        """The recipe to return: highest model mean among evaluated recipes (robust to lucky scores)."""
        ranked = self._ranked()
        if not ranked:
            raise OptimizerError("no recipe has been scored yet: nothing to recommend")
        point, predicted, how = ranked[0]
        scores = self.cache.scores(point)
        observed = sum(scores) / len(scores)
        best = self.cache.best_observed()
        assert best is not None
        times = "once" if len(scores) == 1 else f"{len(scores)} times"
        reason = f"{how}; scored {times}, mean {observed:.4g}"
        if best[0] != point:
            reason += f" (the single best score, {best[1]:.4g}, belongs to another recipe the model ranks lower)"
        return Recommendation(self.space.recipe(point), reason, predicted, observed, len(scores))

    def describe(self) -> dict[str, Any]:
        """Strategy, engine, settings and seed, for the history and the run manifest."""
        info = STRATEGIES.get(self.name)
        data: dict[str, Any] = {
            "strategy": self.name,
            "engine": info.engine if info else "",
            "seed": self.seed,
            "options": {k: _plain(v) for k, v in self.options.items()},
            "init": dict(self._init_counts),
            "space": self.space.to_dict(),
            "scored": len(self.cache),
            "failed": len(self.failed),
        }
        data.update(self._engine_describe())
        return data

    # ----- internals -------------------------------------------------------------------------
    def _is_known(self, point: Point) -> bool:
        return point in self.cache or point in self.pending or point in self.failed

    def _repeatable(self, point: Point, token: Any) -> bool:
        """Whether a known proposal is evaluated again: a ``Repeat`` of a scored recipe not being evaluated now."""
        return isinstance(token, Repeat) and point in self.cache and point not in self.pending

    def _answer_known(self, point: Point, token: Any) -> None:
        """Give the engine the result of a proposal that needs no evaluation."""
        if point in self.cache:
            self._engine_tell(token, self.cache.mean(point))
        elif point in self.pending:
            self.pending[point].append(token)
        else:
            self._engine_tell(token, None)

    def _initial_design(self, init: InitSettings) -> list[Point]:
        points = [self.space.point_of(r) for r in init.recipes]
        if init.grid:
            points += [tuple(int(v) for v in p) for p in self.space.grid_points(init.grid)]
        if init.vertex:
            points += [tuple(int(v) for v in p) for p in self.space.vertex_points(self._rng, init.vertex)]
        if init.random:
            points += [tuple(int(v) for v in p) for p in self.space.random_points(self._rng, init.random)]
        return points

    def _fallback_points(self, n: int, taken: set[Point]) -> list[Point]:
        """Unseen points near the best scored one (or random), when the engine keeps proposing known ones."""
        out: list[Point] = []
        if self.space.size <= 200_000:
            unseen = [p for p in _all_points(self.space) if not self._is_known(p) and p not in taken]
            if len(unseen) < n:
                raise OptimizerError(
                    f"the search space has {self.space.size} recipes and fewer than {n} are left unevaluated; "
                    "use more levels or stop the search"
                )
            picks = self._rng.choice(len(unseen), size=n, replace=False)
            return [unseen[i] for i in picks]
        best = self.cache.best_observed()
        center = np.array(best[0]) if best else self.space.random_points(self._rng, 1)[0]
        while len(out) < n:
            candidate = center.copy()
            moves = self._rng.integers(1, 4)
            dims = self._rng.choice(self.space.ndim, size=min(moves, self.space.ndim), replace=False)
            candidate[dims] += self._rng.choice([-2, -1, 1, 2], size=len(dims))
            point = tuple(int(v) for v in np.clip(candidate, 0, self.space.levels - 1))
            if not self._is_known(point) and point not in taken and point not in out:
                out.append(point)
            elif self._rng.random() < 0.1:
                center = self.space.random_points(self._rng, 1)[0]
        return out

    def _score_model(self, min_points: int = MIN_MODEL_POINTS) -> Any:
        """A Gaussian process fitted to every score so far, or None with fewer than ``min_points`` recipes.

        Kept between calls: refitted only when scores arrived, warm-started from
        the last fit, and every 10th fit also from fixed starting points. Past
        ``MAX_MODEL_POINTS`` scores it is fitted to ``model_subset``.
        """
        n = self.cache.n_observations
        if len(self.cache) < min_points:
            return None
        if self._gp is not None and self._gp_n == n:
            return self._gp
        from .strategies.gp import GaussianProcess

        keep = model_subset([s for _, s in self.cache.order], MAX_MODEL_POINTS)
        x = self.space.unit([self.cache.order[i][0] for i in keep])
        y = np.array([self.cache.order[i][1] for i in keep])
        restart = self._gp_fits % 10 == 0
        ard = bool(self._gp_ard_from) and n >= self._gp_ard_from
        additive = getattr(self, "_gp_additive", False)
        gp = GaussianProcess(self.space.ndim, hyper=self._gp_hyper, ard=ard, pool=self._gp_pool, additive=additive)
        gp.fit(x, y, max_iter=80 if restart else 30, restart=restart)
        gp.downweight_outliers()
        self._gp_hyper, self._gp_fits, self._gp, self._gp_n = gp.hyper, self._gp_fits + 1, gp, n
        return gp

    def _model_means(self, points: list[Point]) -> tuple[np.ndarray, str] | None:
        """Posterior means at ``points`` and a phrase saying which model; None if no model fits."""
        gp = self._score_model()
        if gp is None:
            return None
        mean, _ = gp.predict(self.space.unit(points))
        return mean, f"highest mean of a Gaussian process fitted to all {self.cache.n_observations} scores"

    def _ranked(self) -> list[tuple[Point, float | None, str]]:
        """Scored points, best first, with their model mean (None when ranked by mean score)."""
        points = self.cache.points()
        if not points:
            return []
        model = self._model_means(points)
        if model is None:
            order = sorted(points, key=lambda p: -self.cache.mean(p))
            how = f"highest mean score among {len(points)} evaluated recipes (too few for a model)"
            return [(p, None, how) for p in order]
        means, how = model
        order = np.argsort(-means, kind="stable")
        return [(points[i], float(means[i]), how) for i in order]


def model_subset(scores: Sequence[float], limit: int) -> np.ndarray:
    """Indices of the scores a model is fitted to: all up to ``limit``, else the best half and the most recent."""
    n = len(scores)
    if n <= limit:
        return np.arange(n)
    chosen = set(np.argsort(-np.asarray(scores, dtype=float), kind="stable")[: limit // 2].tolist())
    for index in range(n - 1, -1, -1):
        if len(chosen) >= limit:
            break
        chosen.add(index)
    return np.array(sorted(chosen))


def _all_points(space: SearchSpace) -> Iterable[Point]:
    import itertools

    return itertools.product(range(space.levels), repeat=space.ndim)


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return repr(value)


# ----- replay (exact resume) ---------------------------------------------------------------------
@dataclass(frozen=True)
class Told:
    """One recorded result, in the order the search produced it: what resume replays."""

    recipe: Recipe
    score: float | None  # None: the evaluation failed
    asked: bool  # the optimizer proposed it with ask(1) just before (not an initial recipe)
    row: int = -1  # the history row, for messages


@dataclass
class Replayed:
    """The rebuilt optimizer, and whether it made exactly the recorded proposals."""

    optimizer: Any
    exact: bool
    diverged_row: int | None = None


def tell_record(optimizer: Any, record: Told) -> None:
    if record.score is None:
        optimizer.tell_failed(record.recipe)
    else:
        optimizer.tell(record.recipe, record.score)


def replay(make: Callable[[], Any], records: Sequence[Told], rebuild: Callable[[], Any] | None = None) -> Replayed:
    """An optimizer in the state the recorded search left it in: ``make()``, then every ask/tell again.

    Strategies are deterministic given their seed, so each recorded proposal
    (``asked``) must come back from ``ask(1)``. When one does not (a history
    of another version or strategy), the replay stops asking: a fresh
    optimizer from ``rebuild`` (default ``make``) is told every record as a
    warm start, and ``exact`` is False.
    """
    optimizer = make()
    for position, record in enumerate(records):
        if record.asked:
            proposed = optimizer.ask(1)
            if not proposed or proposed[0] != record.recipe:
                fresh = (rebuild or make)()
                for earlier in records:
                    tell_record(fresh, earlier)
                return Replayed(fresh, False, record.row if record.row >= 0 else position)
        tell_record(optimizer, record)
    return Replayed(optimizer, True)


# ----- registry --------------------------------------------------------------------------------
STRATEGIES: dict[str, StrategyInfo] = {}


def register_strategy(info: StrategyInfo) -> None:
    STRATEGIES[info.name] = info


def _load_builtin_strategies() -> None:
    from .strategies import gfo, optuna_samplers, portfolio, surrogate_cma, trust_region  # noqa: F401  (they register themselves)


def strategy_names() -> list[str]:
    return list(STRATEGIES)


def resolve_strategy(name: str) -> StrategyInfo:
    """The strategy called ``name`` (case-insensitive; 'default', 'seed', 'gfo.X', 'optuna.X' accepted)."""
    wanted = str(name).strip()
    aliases = {"default": DEFAULT_STRATEGY, "seed": SEED_STRATEGY}
    wanted = aliases.get(wanted.lower(), wanted)
    for prefix in ("hyperactive.opt.", "gfo.", "optuna."):
        if wanted.lower().startswith(prefix):
            wanted = wanted[len(prefix) :]
    for key, info in STRATEGIES.items():
        if key.lower() == wanted.lower():
            return info
    raise OptimizerError(f"unknown optimizer strategy {name!r}; choose one of: {', '.join(STRATEGIES)} (or 'default')")


def make_optimizer(
    strategy: str,
    space: SearchSpace,
    seed: int,
    *,
    init: InitSettings = InitSettings(),
    warm_start: Sequence[tuple[Recipe, float]] = (),
    **strategy_options: Any,
) -> Optimizer:
    """A new optimizer of ``strategy`` over ``space`` (see ``STRATEGIES``; 'default' picks ``DEFAULT_STRATEGY``)."""
    info = resolve_strategy(strategy)
    assert info.factory is not None
    return info.factory(space, seed, init=init, warm_start=warm_start, **strategy_options)


_load_builtin_strategies()
