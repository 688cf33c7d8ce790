"""The search space of an N-model block mix (2-5 models): per block a point of the simplex.

Parametrization: per block, the N-1 **chain weights** (``recipe_n``): step k
is the weight of model k+1 when it is merged into the mix of models 1..k.
Every point of the box [0, 1]^(N-1) is a valid simplex point and every
simplex point has one (a unique one inside the simplex), so an unconstrained
box optimizer needs no constraint handling or projection, the grid of levels
is the two-model grid per step, and the recipes it proposes print exactly as
chain lines. (Softmax logits need an unbounded range and map many points to
one recipe; a renormalized box wastes the corners; docs/optimizer.md has the
measurement that compared them.)

A ``MixSearchSpace`` is a ``SearchSpace`` (the optimizer facade and every
strategy take it unchanged) whose dimensions are those of N-1 two-model
spaces, one per step, named ``BLOCK@mK`` (K = 2..N: the model that step
adds). Each step has its own ranges, frozen weights and groups, with the
meaning and the checks of ``SearchSpace``; ``frozen_shares`` freezes a
block's whole simplex point. ``recipe(point)`` gives a ``RecipeN`` that keeps
the chain it came from, so ``point_of`` finds the same point again even where
the chain is not unique (a step at weight 1 hides the steps before it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..blocks import BASE
from ..recipe import Recipe
from ..recipe_n import MAX_MODELS, MIN_MODELS, RecipeN, chain_of
from .space import DEFAULT_LEVELS, Dimension, Point, SearchSpace, SearchSpaceError


@dataclass(frozen=True)
class StepSettings:
    """Ranges, frozen weights and groups of one chain step (the weight of model K in the mix of models 1..K)."""

    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    frozen: Mapping[str, float] = field(default_factory=dict)
    groups: Sequence[Sequence[str]] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"ranges": {k: list(v) for k, v in self.ranges.items()}, "frozen": dict(self.frozen), "groups": [list(g) for g in self.groups]}


@dataclass(frozen=True)
class MixSearchSpace(SearchSpace):
    """A ``SearchSpace`` over the chain weights of ``n_models`` models; see the module docstring.

    ``steps``: ``StepSettings`` (or dicts of them) for steps 1..N-1 (fewer:
    the rest unconstrained). ``frozen_shares``: block -> N shares, frozen.
    ``models``: labels of the models for the recipes (default ``model 1``..).
    The two-model fields ``ranges``/``frozen``/``groups``/``search_base`` are
    not used here: give them per step.
    """

    n_models: int = 3
    steps: Sequence[StepSettings | Mapping[str, Any]] = ()
    frozen_shares: Mapping[str, Sequence[float]] = field(default_factory=dict)
    models: Sequence[str] = ()

    def __post_init__(self) -> None:
        if isinstance(self.n_models, bool) or not isinstance(self.n_models, (int, np.integer)):
            raise SearchSpaceError(f"n_models must be a whole number from {MIN_MODELS} to {MAX_MODELS}, got {self.n_models!r}")
        if not MIN_MODELS <= int(self.n_models) <= MAX_MODELS:
            raise SearchSpaceError(f"a block mix searches {MIN_MODELS} to {MAX_MODELS} models, got {self.n_models}")
        n = int(self.n_models)
        object.__setattr__(self, "n_models", n)
        if self.ranges or self.frozen or self.groups or self.search_base:
            raise SearchSpaceError("an N-model search takes ranges, frozen weights and groups per step (steps=...), not for the whole space")
        super().__post_init__()  # checks family and levels
        models = tuple(str(m) for m in self.models) or tuple(f"model {i + 1}" for i in range(n))
        if len(models) != n:
            raise SearchSpaceError(f"{len(models)} model names for {n} models")
        object.__setattr__(self, "models", models)
        steps = [s if isinstance(s, StepSettings) else _step_from_dict(s, i + 1) for i, s in enumerate(self.steps)]
        if len(steps) > n - 1:
            raise SearchSpaceError(f"{n} models have {n - 1} chain steps, got settings for {len(steps)}")
        steps += [StepSettings() for _ in range(n - 1 - len(steps))]
        frozen_shares: dict[str, tuple[float, ...]] = {}
        if self.frozen_shares:
            try:
                fixed = RecipeN(models, dict(self.frozen_shares), "frozen_shares")
            except Exception as exc:
                raise SearchSpaceError(str(exc)) from None
            for block, shares in fixed.shares.items():
                if block not in self.blocks:
                    raise SearchSpaceError(f"frozen_shares: {self.family} has no block {block}")
                frozen_shares[block] = shares
                chain = chain_of(shares)
                for k, step in enumerate(steps):
                    if block in step.frozen or block in step.ranges:
                        raise SearchSpaceError(f"frozen_shares: {block} also has settings in step {k + 1}; drop one of the two")
                    steps[k] = StepSettings(step.ranges, {**dict(step.frozen), block: chain[k]}, step.groups)
        object.__setattr__(self, "frozen_shares", frozen_shares)
        object.__setattr__(self, "steps", tuple(steps))
        subspaces: list[SearchSpace | None] = []
        dims: list[Dimension] = []
        for k, step in enumerate(steps):
            sub = _step_space(self.family, self.levels, step, k + 1)
            subspaces.append(sub)
            if sub is not None:
                dims += [Dimension(f"{d.name}@m{k + 2}", d.blocks, d.low, d.high, d.levels) for d in sub.dimensions]
        if not dims:
            raise SearchSpaceError("every block of every step is frozen: nothing to search; unfreeze at least one")
        object.__setattr__(self, "_subspaces", tuple(subspaces))
        object.__setattr__(self, "_dimensions", tuple(dims))

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        return (_mix_space_from_dict, (self.to_dict(),))

    @property
    def subspaces(self) -> tuple[SearchSpace | None, ...]:
        """One two-model space per chain step (None where every block of that step is frozen)."""
        return self._subspaces  # type: ignore[attr-defined]

    def _split(self, values: Sequence[int]) -> list[tuple[int, ...]]:
        parts, start = [], 0
        for sub in self.subspaces:
            size = sub.ndim if sub is not None else 0
            parts.append(tuple(values[start : start + size]))
            start += size
        return parts

    # ----- points <-> recipes
    def recipe(self, point: Sequence[int], source: str = "search") -> RecipeN:  # type: ignore[override]
        """The N-model recipe at ``point``: chain weights from the levels, frozen ones at their values."""
        values = self.check_point(point)
        chains: dict[str, list[float]] = {b: [] for b in self.blocks}
        for sub, step, part in zip(self.subspaces, self.steps, self._split(values)):
            weights = sub.recipe(part).weights if sub is not None else step.frozen
            for block in self.blocks:
                chains[block].append(float(weights[block]))
        recipe = RecipeN.from_chain(self.models, chains, source)
        if not self.frozen_shares:
            return recipe
        # frozen shares whose chain has more digits than a float keeps stay exactly as given
        return RecipeN(self.models, {**dict(recipe.shares), **self.frozen_shares}, source, dict(recipe.chain))

    def point_of(self, recipe: RecipeN | Recipe) -> Point:  # type: ignore[override]
        """The grid point nearest to ``recipe`` (its own chain where it has one; frozen weights ignored)."""
        if isinstance(recipe, Recipe):
            if self.n_models != 2:
                raise SearchSpaceError(f"{recipe.source}: a two-model recipe does not fit a {self.n_models}-model search")
            recipe = RecipeN.from_two_model(recipe, self.models)
        if not isinstance(recipe, RecipeN) or recipe.n_models != self.n_models:
            got = recipe.n_models if isinstance(recipe, RecipeN) else type(recipe).__name__
            raise SearchSpaceError(f"{getattr(recipe, 'source', 'recipe')}: a recipe for {got} models does not fit a {self.n_models}-model search")
        missing = [b for b in self.blocks if b not in recipe.shares]
        if missing:
            raise SearchSpaceError(f"{recipe.source}: recipe has no shares for {', '.join(missing)}, which this search varies")
        point: list[int] = []
        for k, sub in enumerate(self.subspaces):
            if sub is not None:
                point += sub.point_of(Recipe({b: recipe.search_chain(b)[k] for b in self.blocks}, source=recipe.source))
        return tuple(point)

    def grid_points(self, n: int) -> np.ndarray:
        """The equal mix (every model 1/N in every block, snapped) first, then the two-model spread points."""
        if n <= 0:
            return np.zeros((0, self.ndim), dtype=np.int64)
        uniform = self.point_of(RecipeN.uniform(self.models, self.blocks))
        rest = super().grid_points(n - 1) if n > 1 else np.zeros((0, self.ndim), dtype=np.int64)
        return np.vstack([np.array([uniform], dtype=np.int64), rest])

    # ----- description
    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "levels": self.levels,
            "n_models": self.n_models,
            "models": list(self.models),
            "steps": [s.to_dict() for s in self.steps if isinstance(s, StepSettings)],
            "frozen_shares": {b: list(s) for b, s in self.frozen_shares.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MixSearchSpace":
        try:
            shares = dict(data.get("frozen_shares") or {})
            steps = [dict(s) for s in (data.get("steps") or [])]
            for step in steps:  # frozen shares were folded into the steps; give them once
                step["frozen"] = {b: w for b, w in dict(step.get("frozen") or {}).items() if b not in shares}
            return cls(
                family=data.get("family", "sd1"),
                levels=data.get("levels", DEFAULT_LEVELS),
                n_models=data.get("n_models", 3),
                models=tuple(data.get("models") or ()),
                steps=steps,
                frozen_shares=shares,
            )
        except (AttributeError, TypeError) as exc:
            raise SearchSpaceError(f"N-model search space settings are malformed ({exc})") from None

    def describe(self) -> str:
        parts = [f"{self.ndim} dimensions x {self.levels} levels ({self.family}, {self.n_models} models, chain weights per block)"]
        if self.frozen_shares:
            parts.append("frozen shares " + ", ".join(self.frozen_shares))
        for k, step in enumerate(self.steps, start=1):
            sub = SearchSpace(self.family, self.levels, step.ranges, {}, step.groups).describe().split(", ", 1)
            frozen = {b: w for b, w in step.frozen.items() if b not in self.frozen_shares}
            extra = ([sub[1]] if len(sub) > 1 else []) + ([f"frozen {', '.join(frozen)}"] if frozen else [])
            if extra:
                parts.append(f"step {k} (model {k + 1}): " + ", ".join(extra))
        return "; ".join(parts)


def _step_from_dict(data: Mapping[str, Any], number: int) -> StepSettings:
    if not isinstance(data, Mapping):
        raise SearchSpaceError(f"steps: step {number} must be an object with ranges, frozen and groups, got {data!r}")
    unknown = sorted(set(data) - {"ranges", "frozen", "groups"})
    if unknown:
        raise SearchSpaceError(f"steps: step {number} has unknown setting(s) {', '.join(unknown)}; use ranges, frozen, groups")
    return StepSettings(
        {k: tuple(v) for k, v in dict(data.get("ranges") or {}).items()},
        dict(data.get("frozen") or {}),
        [tuple(g) for g in (data.get("groups") or [])],
    )


def _step_space(family: str, levels: int, step: StepSettings, number: int) -> SearchSpace | None:
    """The two-model space of one step (its checks and messages), or None when every block is frozen."""
    if BASE in step.frozen or BASE in step.ranges:
        raise SearchSpaceError(f"step {number}: the runtime mix merges the UNet only; BASE has no weight here")
    try:
        return SearchSpace(family, levels, step.ranges, step.frozen, step.groups)
    except SearchSpaceError as exc:
        if str(exc).startswith("every block is frozen"):
            return None
        raise SearchSpaceError(f"step {number} (model {number + 1}): {exc}") from None


def _mix_space_from_dict(data: Mapping[str, Any]) -> MixSearchSpace:
    return MixSearchSpace.from_dict(data)
