"""Recipes: named block weights, and every text format they are read from or written to.

A ``Recipe`` maps block names to the fraction of model B (0 = A, 1 = B) and
may carry a BASE (text-encoder) weight, the merge method and its models.
Inside the code recipes are always named; positional number lists exist only
at the edges, and each positional format states its order:

* ``canonical``: IN00..IN11, M00, OUT00..OUT11, TIME_EMBED, OUT (27 values)
* ``rt``: auto-MBW-rt / runtime-block-merge: IN00..IN11, M00, TIME_EMBED, OUT00..OUT11, OUT
* ``rt-fork``: the fork with the swap: IN00..IN11, M00, OUT, OUT00..OUT11, TIME_EMBED
* MBW / supermerger presets: 25 values IN00..IN11, M00, OUT00..OUT11, or 26
  with BASE first (SDXL: 19 / 20). They have no TIME_EMBED and OUT; the
  ``fold`` convention says where those come from (``mbw``: TIME_EMBED = IN00,
  OUT = last OUT block, as MBW extensions and meh do; ``sd-mecha``:
  TIME_EMBED = BASE, OUT = last OUT block).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Iterable, Mapping

from .blocks import BASE, BLOCKS, IN_BLOCKS, MID_BLOCKS, OUT, OUT_BLOCKS, TIME_EMBED, last_out_block, present_blocks
from .errors import RecipeError
from .fileio import read_text_capped

RECIPE_FORMAT = "auto-mbw-recipe"
RECIPE_VERSION = 1

METHODS: tuple[str, ...] = ("weighted_sum", "add_difference")

ORDERS: dict[str, tuple[str, ...]] = {
    "canonical": BLOCKS,
    "rt": IN_BLOCKS + MID_BLOCKS + (TIME_EMBED,) + OUT_BLOCKS + (OUT,),
    "rt-fork": IN_BLOCKS + MID_BLOCKS + (OUT,) + OUT_BLOCKS + (TIME_EMBED,),
}

FOLDS: tuple[str, ...] = ("mbw", "sd-mecha")

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def format_weight(value: float) -> str:
    """Shortest decimal text for a weight, at most 6 decimals (0.5 -> '0.5', 1.0 -> '1')."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _check_weight(name: str, value: Any, source: str) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{source}: weight of {name} must be a number, got {value!r}") from None
    if not math.isfinite(weight) or not 0.0 <= weight <= 1.0:
        raise RecipeError(f"{source}: weight of {name} must be between 0 and 1 (0 = model A, 1 = model B), got {value!r}")
    return weight


@dataclass(frozen=True)
class Recipe:
    """Block weights as fractions of model B, plus optional BASE weight, method and models.

    ``weights`` covers the blocks the recipe sets (all 27 when read from a
    positional format; SDXL recipes may omit the blocks SDXL lacks).
    """

    weights: Mapping[str, float]
    base: float | None = None
    method: str = "weighted_sum"
    models: Mapping[str, str] = field(default_factory=dict)
    source: str = "recipe"

    def __post_init__(self) -> None:
        unknown = [name for name in self.weights if name not in BLOCKS]
        if unknown:
            raise RecipeError(f"{self.source}: unknown block name(s) {', '.join(unknown)}; known: {', '.join(BLOCKS)}")
        ordered = {b: _check_weight(b, self.weights[b], self.source) for b in BLOCKS if b in self.weights}
        object.__setattr__(self, "weights", MappingProxyType(ordered))
        if self.base is not None:
            object.__setattr__(self, "base", _check_weight(BASE, self.base, self.source))
        if self.method not in METHODS:
            raise RecipeError(f"{self.source}: unknown merge method {self.method!r}; use one of {', '.join(METHODS)}")
        object.__setattr__(self, "models", MappingProxyType(dict(self.models)))

    def __reduce__(self) -> tuple[Any, ...]:
        # MappingProxyType cannot be pickled; rebuild from plain dicts (optimizer state, worker threads).
        return (Recipe, (dict(self.weights), self.base, self.method, dict(self.models), self.source))

    def __hash__(self) -> int:
        return hash((tuple(self.weights.items()), self.base, self.method, tuple(self.models.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Recipe):
            return NotImplemented
        return (
            dict(self.weights) == dict(other.weights)
            and self.base == other.base
            and self.method == other.method
            and dict(self.models) == dict(other.models)
        )

    @classmethod
    def uniform(cls, alpha: float, blocks: Iterable[str] = BLOCKS, **kwargs: Any) -> "Recipe":
        """Every block at the same weight ``alpha``."""
        return cls({b: alpha for b in blocks}, **kwargs)

    def weight(self, block: str) -> float:
        """Weight of ``block``; RecipeError if the recipe does not set it."""
        try:
            return self.weights[block]
        except KeyError:
            raise RecipeError(f"{self.source}: no weight for block {block}") from None

    def for_family(self, family: str) -> "Recipe":
        """This recipe restricted to the blocks of ``family``; error if one is missing."""
        blocks = present_blocks(family)
        missing = [b for b in blocks if b not in self.weights]
        if missing:
            raise RecipeError(f"{self.source}: recipe has no weight for {', '.join(missing)} (needed for {family})")
        return self.replace(weights={b: self.weights[b] for b in blocks})

    def replace(self, **changes: Any) -> "Recipe":
        fields = {"weights": self.weights, "base": self.base, "method": self.method, "models": self.models, "source": self.source}
        fields.update(changes)
        return Recipe(**fields)

    def changed_blocks(self, other: "Recipe | None") -> list[str]:
        """Blocks whose weight differs from ``other`` (all of them if ``other`` is None)."""
        if other is None:
            return list(self.weights)
        return [b for b, w in self.weights.items() if other.weights.get(b) != w]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": RECIPE_FORMAT,
            "version": RECIPE_VERSION,
            "method": self.method,
            "weights": dict(self.weights),
        }
        if self.base is not None:
            data["base"] = self.base
        if self.models:
            data["models"] = dict(self.models)
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "recipe") -> "Recipe":
        if not isinstance(data, Mapping):
            raise RecipeError(f"{source}: a JSON recipe must be an object, got {type(data).__name__}")
        fmt = data.get("format", RECIPE_FORMAT)
        if fmt != RECIPE_FORMAT:
            raise RecipeError(f"{source}: unknown recipe format {fmt!r} (expected {RECIPE_FORMAT!r})")
        weights = data.get("weights")
        if not isinstance(weights, Mapping):
            raise RecipeError(f"{source}: JSON recipe needs a 'weights' object of block name -> weight")
        return cls(
            dict(weights),
            base=data.get("base"),
            method=data.get("method", "weighted_sum"),
            models=dict(data.get("models") or {}),
            source=source,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "recipe") -> "Recipe":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{source}: invalid JSON ({exc})") from None
        return cls.from_dict(data, source)

    def describe(self) -> str:
        """Human-readable multi-line text: one block and weight per line."""
        lines = [f"# method: {self.method}"]
        lines += [f"# model {role}: {name}" for role, name in self.models.items()]
        lines += [f"{b + ':':<12}{format_weight(w)}" for b, w in self.weights.items()]
        if self.base is not None:
            lines.append(f"{BASE + ':':<12}{format_weight(self.base)}")
        return "\n".join(lines)


def parse_numbers(text: str, source: str = "recipe") -> list[float]:
    """The numbers of a comma/space separated list; RecipeError on anything else."""
    parts = [p for p in re.split(r"[,\s]+", text.strip()) if p]
    values: list[float] = []
    for i, part in enumerate(parts):
        if not re.fullmatch(_NUMBER, part):
            raise RecipeError(f"{source}: item {i + 1} is not a number: {part!r}")
        values.append(float(part))
    return values


def from_positional(values: Iterable[float] | str, order: str = "canonical", source: str = "recipe") -> Recipe:
    """A recipe from 27 values in the named ``order`` (see ORDERS)."""
    if order not in ORDERS:
        raise RecipeError(f"{source}: unknown order {order!r}; use one of {', '.join(ORDERS)}")
    numbers = parse_numbers(values, source) if isinstance(values, str) else [float(v) for v in values]
    names = ORDERS[order]
    if len(numbers) != len(names):
        raise RecipeError(
            f"{source}: the {order!r} order needs {len(names)} values ({', '.join(names)}), got {len(numbers)}"
        )
    return Recipe(dict(zip(names, numbers)), source=source)


def to_positional(recipe: Recipe, order: str = "canonical", fill: float = 0.0) -> str:
    """27 comma-separated values in ``order``; blocks the recipe lacks (SDXL) are written as ``fill``."""
    if order not in ORDERS:
        raise RecipeError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
    return ",".join(format_weight(recipe.weights.get(b, fill)) for b in ORDERS[order])


def preset_blocks(family: str) -> tuple[str, ...]:
    """Blocks of an MBW/supermerger preset for ``family`` (no TIME_EMBED, no OUT)."""
    return tuple(b for b in present_blocks(family) if b not in (TIME_EMBED, OUT))


def from_preset(values: Iterable[float] | str, fold: str = "mbw", family: str | None = None, source: str = "preset") -> Recipe:
    """A recipe from an MBW/supermerger preset: 25/26 values (SD1/SD2) or 19/20 (SDXL).

    ``fold`` says where TIME_EMBED and OUT come from (module docstring).
    """
    if fold not in FOLDS:
        raise RecipeError(f"{source}: unknown fold convention {fold!r}; use one of {', '.join(FOLDS)}")
    numbers = parse_numbers(values, source) if isinstance(values, str) else [float(v) for v in values]
    by_count = {25: ("sd1", False), 26: ("sd1", True), 19: ("sdxl", False), 20: ("sdxl", True)}
    if len(numbers) not in by_count:
        raise RecipeError(f"{source}: a preset has 25 or 26 values (SDXL: 19 or 20), got {len(numbers)}")
    count_family, has_base = by_count[len(numbers)]
    fam = family or count_family
    if (fam == "sdxl") != (count_family == "sdxl"):
        raise RecipeError(f"{source}: {len(numbers)} values do not fit a {fam} preset")
    base = numbers.pop(0) if has_base else None
    names = preset_blocks(fam)
    weights = dict(zip(names, numbers))
    if fold == "mbw":
        weights[TIME_EMBED] = weights["IN00"]
    elif base is None:
        raise RecipeError(f"{source}: the 'sd-mecha' convention takes TIME_EMBED from BASE, but this preset has no BASE value")
    else:
        weights[TIME_EMBED] = base
    weights[OUT] = weights[last_out_block(fam)]
    return Recipe(weights, base=base, source=source)


def to_preset(recipe: Recipe, family: str = "sd1", with_base: bool = True, fold: str = "mbw") -> tuple[str, list[str]]:
    """An MBW/supermerger preset string and the warnings about what it loses.

    The export is lossy when TIME_EMBED or OUT differ from the block they fold into.
    """
    names = preset_blocks(family)
    values = [recipe.weight(b) for b in names]
    warnings: list[str] = []
    base = recipe.base if recipe.base is not None else 0.0
    if with_base:
        values.insert(0, base)
    time_source, time_value = ("IN00", recipe.weight("IN00")) if fold == "mbw" else (BASE, base)
    if recipe.weights.get(TIME_EMBED, time_value) != time_value:
        warnings.append(
            f"TIME_EMBED ({format_weight(recipe.weight(TIME_EMBED))}) differs from {time_source} "
            f"({format_weight(time_value)}), into which this preset folds it: the preset loses it"
        )
    last = last_out_block(family)
    if recipe.weights.get(OUT, recipe.weight(last)) != recipe.weight(last):
        warnings.append(
            f"OUT ({format_weight(recipe.weight(OUT))}) differs from {last} ({format_weight(recipe.weight(last))}), "
            "into which this preset folds it: the preset loses it"
        )
    return ",".join(format_weight(v) for v in values), warnings


_NAMED_PAIR = re.compile(r"^\s*([A-Z]+[0-9]*|TIME_EMBED)\s*[:=]?\s*(" + _NUMBER + r")\s*$", re.IGNORECASE)


def parse_recipe_text(text: str, order: str = "canonical", fold: str = "mbw", source: str = "recipe") -> Recipe:
    """Read a recipe from text in any supported format.

    JSON (ours); ``NAME=value`` / ``NAME: value`` pairs; or a list of numbers:
    27 in ``order``, 25/26/19/20 as a preset under ``fold``.
    """
    stripped = "\n".join(line for line in text.strip().splitlines() if not line.lstrip().startswith("#")).strip()
    if not stripped:
        raise RecipeError(f"{source}: empty recipe")
    if stripped.startswith("{"):
        return Recipe.from_json(stripped, source)
    items = [p for p in re.split(r"[,\n;]+", stripped) if p.strip()]
    pairs = [_NAMED_PAIR.match(item) for item in items]
    if all(pairs):
        weights: dict[str, float] = {}
        base: float | None = None
        for match in pairs:
            assert match is not None
            name, value = match.group(1).upper(), match.group(2)
            if name == BASE:
                base = float(value)
            else:
                weights[name] = float(value)
        return Recipe(weights, base=base, source=source)
    numbers = parse_numbers(stripped, source)
    if len(numbers) == len(BLOCKS):
        return from_positional(numbers, order, source)
    if len(numbers) in (19, 20, 25, 26):
        return from_preset(numbers, fold, source=source)
    raise RecipeError(
        f"{source}: {len(numbers)} numbers is no known recipe format "
        "(27 block weights, or an MBW preset of 25/26 values, 19/20 for SDXL)"
    )


def read_recipe(spec: str, order: str = "canonical", fold: str = "mbw") -> Recipe:
    """A recipe from a file path (JSON or text) or from recipe text given inline."""
    from pathlib import Path

    path = Path(spec)
    looks_like_path = "\n" not in spec and not spec.lstrip().startswith("{") and not re.fullmatch(r"[\d.,;\s+-eE]+", spec)
    if looks_like_path and path.is_file():
        try:
            text = read_text_capped(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{path}: cannot read recipe file ({exc})") from None
        return parse_recipe_text(text, order, fold, source=str(path))
    if looks_like_path and (spec.endswith((".json", ".txt")) or "/" in spec):
        raise RecipeError(f"{spec}: recipe file not found")
    return parse_recipe_text(spec, order, fold, source="recipe text")
