"""The search space: which block weights a search varies, over which values.

A ``SearchSpace`` turns search settings (architecture, per-block ranges,
frozen blocks, groups of blocks sharing one weight, number of levels, an
optional BASE = text-encoder weight) into a list of ``Dimension``s, and maps
between optimizer coordinates and ``Recipe``s:

* a point is a tuple of level indices, one per dimension (``0 .. levels-1``);
* level ``i`` of a dimension is ``low + i * (high - low) / (levels - 1)``, so
  the levels span each block's range (21 levels over [0, 1] = steps of 0.05);
* ``unit(point)`` gives coordinates in [0, 1] for model-based optimizers.

Only the blocks of the architecture are dimensions (SDXL's absent blocks are
never searched), frozen blocks are not dimensions, and a group is one
dimension that sets all its blocks. Every recipe a search produces comes from
``recipe(point)``, so it is always on the grid; recipes from outside (warm
start, history) are snapped with ``point_of`` / ``snap``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..blocks import BASE, BLOCKS, present_blocks
from ..errors import MBWError
from ..recipe import Recipe, format_weight

DEFAULT_LEVELS = 21
MIN_LEVELS = 2
MAX_LEVELS = 1001
#: Decimals kept for level values, so 0.05 * 3 is stored as 0.15 (not 0.15000000000000002).
VALUE_DECIMALS = 6

Point = tuple[int, ...]


class SearchSpaceError(MBWError):
    """Search settings are inconsistent (unknown block, min > max, block in two groups, ...)."""


@dataclass(frozen=True)
class Dimension:
    """One searched weight: a block, a group of blocks sharing one weight, or BASE."""

    name: str
    blocks: tuple[str, ...]
    low: float
    high: float
    levels: int

    def values(self) -> np.ndarray:
        """The weight of every level, lowest first."""
        return np.round(np.linspace(self.low, self.high, self.levels), VALUE_DECIMALS)

    def value(self, index: int) -> float:
        """The weight of level ``index``."""
        if not 0 <= index < self.levels:
            raise SearchSpaceError(f"{self.name}: level {index} is outside 0..{self.levels - 1}")
        return float(round(self.low + index * (self.high - self.low) / (self.levels - 1), VALUE_DECIMALS))

    def index_of(self, weight: float) -> int:
        """The level nearest to ``weight`` (weights outside the range go to its nearest end)."""
        fraction = (float(weight) - self.low) / (self.high - self.low)
        return int(min(self.levels - 1, max(0, round(fraction * (self.levels - 1)))))


def _check_unit_weight(what: str, value: Any) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise SearchSpaceError(f"{what} must be a number between 0 and 1, got {value!r}") from None
    if not math.isfinite(weight) or not 0.0 <= weight <= 1.0:
        raise SearchSpaceError(f"{what} must be between 0 (model A) and 1 (model B), got {value!r}")
    return weight


@dataclass(frozen=True)
class SearchSpace:
    """Search settings, validated, and the dimensions they produce.

    ``ranges`` maps a block (or BASE) to its (min, max); unlisted blocks span
    [0, 1]. ``frozen`` maps a block (or BASE) to a fixed weight. ``groups`` lists
    blocks that share one weight (one dimension each; their ranges must agree).
    ``search_base`` adds the BASE (text-encoder) weight as a dimension.
    """

    family: str = "sd1"
    levels: int = DEFAULT_LEVELS
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    frozen: Mapping[str, float] = field(default_factory=dict)
    groups: Sequence[Sequence[str]] = ()
    search_base: bool = False

    def __post_init__(self) -> None:
        try:
            blocks = present_blocks(self.family)
        except ValueError:
            raise SearchSpaceError(f"unknown architecture family {self.family!r}; use sd1, sd2 or sdxl") from None
        if isinstance(self.levels, bool) or not isinstance(self.levels, (int, np.integer)):
            raise SearchSpaceError(f"levels must be a whole number from {MIN_LEVELS} to {MAX_LEVELS}, got {self.levels!r}")
        if not MIN_LEVELS <= int(self.levels) <= MAX_LEVELS:
            raise SearchSpaceError(f"levels must be from {MIN_LEVELS} to {MAX_LEVELS}, got {self.levels}")
        object.__setattr__(self, "levels", int(self.levels))
        known = set(blocks) | {BASE}

        def check_name(name: str, setting: str) -> str:
            if name in known:
                return name
            if name in BLOCKS:
                raise SearchSpaceError(f"{setting}: {self.family} has no block {name}; its blocks are {', '.join(blocks)}")
            raise SearchSpaceError(f"{setting}: unknown block {name!r}; use one of {', '.join(blocks)} or {BASE}")

        ranges: dict[str, tuple[float, float]] = {}
        for name, bounds in dict(self.ranges).items():
            name = check_name(str(name), "ranges")
            try:
                low, high = bounds
            except (TypeError, ValueError):
                raise SearchSpaceError(f"ranges: {name} needs (min, max), got {bounds!r}") from None
            low = _check_unit_weight(f"ranges: min of {name}", low)
            high = _check_unit_weight(f"ranges: max of {name}", high)
            if low > high:
                raise SearchSpaceError(f"ranges: {name} has min {format_weight(low)} > max {format_weight(high)}; swap them")
            if low == high:
                raise SearchSpaceError(
                    f"ranges: {name} has min = max = {format_weight(low)}; freeze the block at that value instead"
                )
            ranges[name] = (low, high)
        frozen = {check_name(str(n), "frozen"): _check_unit_weight(f"frozen: {n}", v) for n, v in dict(self.frozen).items()}
        both = sorted(set(ranges) & set(frozen))
        if both:
            raise SearchSpaceError(f"{', '.join(both)} both frozen and given a range; drop one of the two settings")
        if BASE in frozen and self.search_base:
            raise SearchSpaceError(f"{BASE} is frozen and searched at once; turn off searching BASE or unfreeze it")

        groups: list[tuple[str, ...]] = []
        seen: dict[str, int] = {}
        for number, group in enumerate(self.groups, start=1):
            if isinstance(group, str):
                raise SearchSpaceError(f"groups: group {number} must be a list of blocks, got the text {group!r}")
            members = tuple(check_name(str(b), f"groups: group {number}") for b in group)
            if len(members) < 2:
                raise SearchSpaceError(f"groups: group {number} ({', '.join(members)}) needs at least two blocks")
            for block in members:
                if block == BASE:
                    raise SearchSpaceError(f"groups: group {number}: {BASE} cannot share a weight with UNet blocks")
                if block in frozen:
                    raise SearchSpaceError(f"groups: {block} is frozen and in group {number}; unfreeze it or leave the group")
                if block in seen:
                    where = "twice in" if seen[block] == number else f"in group {seen[block]} and in"
                    raise SearchSpaceError(f"groups: {block} is {where} group {number}; a block can be in one group only")
                seen[block] = number
            spans = {ranges.get(b, (0.0, 1.0)) for b in members}
            if len(spans) > 1:
                raise SearchSpaceError(
                    f"groups: the blocks of group {number} ({', '.join(members)}) have different ranges; give them one range"
                )
            groups.append(members)

        object.__setattr__(self, "ranges", MappingProxyType(ranges))
        object.__setattr__(self, "frozen", MappingProxyType(frozen))
        object.__setattr__(self, "groups", tuple(groups))
        object.__setattr__(self, "_dimensions", self._build_dimensions(blocks))
        if not self._dimensions:
            raise SearchSpaceError("every block is frozen: nothing to search; unfreeze at least one block")

    def _build_dimensions(self, blocks: Sequence[str]) -> tuple[Dimension, ...]:
        group_of = {b: g for g in self.groups for b in g}
        dims: list[Dimension] = []
        for block in blocks:
            if block in self.frozen:
                continue
            group = group_of.get(block)
            if group is not None and group[0] != block and any(d.blocks == group for d in dims):
                continue
            members = group if group is not None else (block,)
            low, high = self.ranges.get(block, (0.0, 1.0))
            dims.append(Dimension("+".join(members), members, low, high, self.levels))
        if self.search_base:
            low, high = self.ranges.get(BASE, (0.0, 1.0))
            dims.append(Dimension(BASE, (BASE,), low, high, self.levels))
        return tuple(dims)

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickle as settings (the read-only mappings inside do not pickle)."""
        return (_space_from_dict, (self.to_dict(),))

    # ----- shape
    @property
    def dimensions(self) -> tuple[Dimension, ...]:
        return self._dimensions  # type: ignore[attr-defined]

    @property
    def ndim(self) -> int:
        return len(self.dimensions)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    @property
    def size(self) -> int:
        """Number of distinct recipes in the space (an exact integer, can be huge)."""
        return self.levels**self.ndim

    @property
    def blocks(self) -> tuple[str, ...]:
        """The UNet blocks a recipe of this space sets (the architecture's blocks)."""
        return present_blocks(self.family)

    # ----- points <-> recipes
    def check_point(self, point: Iterable[int]) -> Point:
        """``point`` as a tuple of ints, or SearchSpaceError if it does not fit the space."""
        values = tuple(int(i) for i in point)
        if len(values) != self.ndim:
            raise SearchSpaceError(f"a point of this space has {self.ndim} coordinates, got {len(values)}")
        for dim, index in zip(self.dimensions, values):
            if not 0 <= index < dim.levels:
                raise SearchSpaceError(f"{dim.name}: level {index} is outside 0..{dim.levels - 1}")
        return values

    def recipe(self, point: Iterable[int], source: str = "search") -> Recipe:
        """The recipe at ``point``: searched weights from the levels, frozen blocks at their values."""
        values = self.check_point(point)
        weights = {b: self.frozen[b] for b in self.blocks if b in self.frozen}
        base = self.frozen.get(BASE)
        for dim, index in zip(self.dimensions, values):
            weight = dim.value(index)
            for block in dim.blocks:
                if block == BASE:
                    base = weight
                else:
                    weights[block] = weight
        return Recipe(weights, base=base, source=source)

    def point_of(self, recipe: Recipe) -> Point:
        """The grid point nearest to ``recipe`` (a group takes the mean of its blocks' weights).

        Frozen blocks are ignored. Raises SearchSpaceError if the recipe lacks a
        searched weight (a block, or BASE when BASE is searched).
        """
        point: list[int] = []
        for dim in self.dimensions:
            weights = []
            for block in dim.blocks:
                if block == BASE:
                    if recipe.base is None:
                        raise SearchSpaceError(f"{recipe.source}: recipe has no {BASE} weight, which this search varies")
                    weights.append(recipe.base)
                elif block in recipe.weights:
                    weights.append(recipe.weights[block])
                else:
                    raise SearchSpaceError(f"{recipe.source}: recipe has no weight for {block}, which this search varies")
            point.append(dim.index_of(sum(weights) / len(weights)))
        return tuple(point)

    def snap(self, recipe: Recipe) -> Recipe:
        """``recipe`` moved onto the grid of this space (frozen blocks set to their values)."""
        return self.recipe(self.point_of(recipe), source=recipe.source)

    def contains(self, recipe: Recipe) -> bool:
        """True if ``recipe`` is exactly a grid recipe of this space."""
        try:
            return self.snap(recipe) == recipe
        except MBWError:
            return False

    # ----- coordinates for optimizers
    def unit(self, points: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
        """Points as coordinates in [0, 1] (shape (n, ndim)); level i -> i / (levels - 1)."""
        return np.asarray(points, dtype=float).reshape(-1, self.ndim) / (self.levels - 1)

    def from_unit(self, x: np.ndarray) -> np.ndarray:
        """Unit-cube coordinates (n, ndim) rounded to the nearest levels, as int indices."""
        scaled = np.rint(np.clip(np.asarray(x, dtype=float), 0.0, 1.0) * (self.levels - 1))
        return scaled.astype(np.int64).reshape(-1, self.ndim)

    def random_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` uniformly random points, shape (n, ndim)."""
        return rng.integers(0, self.levels, size=(n, self.ndim))

    def grid_points(self, n: int) -> np.ndarray:
        """``n`` points that spread over the space deterministically: the uniform recipes first.

        Point k sets every dimension to the same level, stepping through the
        levels from the middle outwards (0.5, then 0.25 / 0.75, ...), the way
        users start a merge search by hand.
        """
        fractions = _spread_fractions(n)
        return self.from_unit(np.repeat(np.array(fractions)[:, None], self.ndim, axis=1))

    def vertex_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` corners of the space: all-A, all-B, then random corners."""
        corners = [np.zeros(self.ndim, dtype=np.int64), np.full(self.ndim, self.levels - 1, dtype=np.int64)]
        while len(corners) < n:
            corners.append(rng.integers(0, 2, size=self.ndim) * (self.levels - 1))
        return np.array(corners[:n], dtype=np.int64).reshape(-1, self.ndim)

    # ----- description
    def to_dict(self) -> dict[str, Any]:
        """Settings as plain JSON data (round-trips through ``from_dict``)."""
        return {
            "family": self.family,
            "levels": self.levels,
            "ranges": {k: list(v) for k, v in self.ranges.items()},
            "frozen": dict(self.frozen),
            "groups": [list(g) for g in self.groups],
            "search_base": self.search_base,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchSpace":
        try:
            return cls(
                family=data.get("family", "sd1"),
                levels=data.get("levels", DEFAULT_LEVELS),
                ranges={k: tuple(v) for k, v in (data.get("ranges") or {}).items()},
                frozen=dict(data.get("frozen") or {}),
                groups=[tuple(g) for g in (data.get("groups") or [])],
                search_base=bool(data.get("search_base", False)),
            )
        except (AttributeError, TypeError) as exc:
            raise SearchSpaceError(f"search space settings are malformed ({exc})") from None

    def describe(self) -> str:
        """One line: how many dimensions, levels and what is frozen/grouped."""
        parts = [f"{self.ndim} dimensions x {self.levels} levels ({self.family})"]
        if self.frozen:
            parts.append("frozen " + ", ".join(f"{b}={format_weight(v)}" for b, v in self.frozen.items()))
        if self.groups:
            parts.append("groups " + "; ".join("+".join(g) for g in self.groups))
        if self.ranges:
            parts.append(
                "ranges " + ", ".join(f"{b}=[{format_weight(lo)},{format_weight(hi)}]" for b, (lo, hi) in self.ranges.items())
            )
        return ", ".join(parts)


def _space_from_dict(data: Mapping[str, Any]) -> SearchSpace:
    return SearchSpace.from_dict(data)


def _spread_fractions(n: int) -> list[float]:
    """0.5, 0.25, 0.75, 0.125, 0.375, ... : fractions that fill [0, 1] ever more finely."""
    fractions: list[float] = []
    depth = 1
    while len(fractions) < n:
        step = 1.0 / 2**depth
        fractions += [step * k for k in range(1, 2**depth, 2)]
        depth += 1
        if depth > 30:
            break
    return fractions[:n]
