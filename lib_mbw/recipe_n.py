"""Recipes for block-weighted merges of 2 to 5 models: per block, the share of each model.

A ``RecipeN`` names its models (in merge order) and gives each block a point
of the simplex: N non-negative shares that sum to 1. The merged block is
``sum_i share_i * model_i``. It is computed, offline and at run time alike, as
a chain of N-1 two-model weighted sums (``chain_mix``)::

    r_1 = model_1;   r_k = lerp(r_{k-1}, model_k, w_{k-1})   (k = 2..N)

with the chain weight ``w_{k-1} = share_k / (share_1 + ... + share_k)``, the
share of model k in the merge of the first k models. Conversely
``share_k = w_{k-1} * (1 - w_k) * ... * (1 - w_{N-1})`` (``w_0 = 1``). A
block whose first k shares are all zero has no defined ``w_{k-1}``; it is 0
here (any value gives the same merge), so a pure model stays a bit-exact copy.

Conversions are done in exact rational arithmetic on the decimal a float
prints as (``Fraction(repr(x))``), so a recipe on a decimal grid converts
both ways without float drift. The chain can be printed as N-1 lines of 27
values (the canonical order; ``to_chain_text``); that text is exact when
every chain weight has at most 6 decimals, and ``chain_is_exact`` /
``to_chain_text`` say so when it is not (the JSON is always exact).

Every two-model recipe is the N = 2 case: ``from_two_model`` /
``to_two_model`` (share of model 2 = the fraction of B), and ``read_recipe_n``
accepts every format ``recipe.read_recipe`` reads.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from .blocks import BLOCKS, present_blocks
from .errors import RecipeError
from .fileio import read_text_capped
from .recipe import Recipe, format_weight, parse_numbers, parse_recipe_text

FORMAT_N = "auto-mbw-recipe-n"
VERSION_N = 1
MIN_MODELS = 2
MAX_MODELS = 5
#: Shares may sum to 1 within this (text with 6 decimals: 1/3 + 1/3 + 1/3 = 0.999999).
SUM_TOLERANCE = 1e-5
#: Decimals of the printed chain weights (``recipe.format_weight``).
CHAIN_DECIMALS = 6

Shares = tuple[float, ...]
Chain = tuple[float, ...]


def _exact(value: float) -> Fraction:
    """The decimal ``value`` prints as, exactly (0.1 -> 1/10, not the binary float's value)."""
    return Fraction(repr(float(value)))


def chain_of(shares: Sequence[float]) -> Chain:
    """The N-1 chain weights of a simplex point (undefined ones, where the prefix is all zero, are 0)."""
    exact = [_exact(s) for s in shares]
    chain: list[float] = []
    prefix = exact[0]
    for share in exact[1:]:
        prefix += share
        chain.append(float(share / prefix) if prefix else 0.0)
    return tuple(chain)


def shares_of(chain: Sequence[float]) -> Shares:
    """The N shares of a chain of N-1 weights (each in [0, 1])."""
    exact = [_exact(w) for w in chain]
    shares: list[Fraction] = []
    rest = Fraction(1)
    for w in reversed(exact):
        shares.append(w * rest)
        rest *= 1 - w
    shares.append(rest)
    return tuple(float(s) for s in reversed(shares))


def _check_share(block: str, index: int, value: Any, source: str) -> float:
    try:
        share = float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{source}: share of model {index + 1} in {block} must be a number, got {value!r}") from None
    if not math.isfinite(share) or not 0.0 <= share <= 1.0:
        raise RecipeError(f"{source}: share of model {index + 1} in {block} must be between 0 and 1, got {value!r}")
    return share


@dataclass(frozen=True)
class RecipeN:
    """Per-block shares of N models (2 <= N <= 5); see the module docstring.

    ``models``: one label per model, in merge order (file names or paths;
    informational). ``shares``: block -> N shares summing to 1. ``chain``:
    optional chain weights the recipe was built from (they pick the chain
    where a prefix of shares is zero; the search uses them to find its point
    again); the merge always uses ``chain_of(shares)``.
    """

    models: tuple[str, ...]
    shares: Mapping[str, Shares]
    source: str = "recipe"
    chain: Mapping[str, Chain] = field(default_factory=dict, compare=False)
    method: str = "weighted_sum"

    def __post_init__(self) -> None:
        models = tuple(str(m) for m in self.models)
        if not MIN_MODELS <= len(models) <= MAX_MODELS:
            raise RecipeError(f"{self.source}: an N-model recipe has {MIN_MODELS} to {MAX_MODELS} models, got {len(models)}")
        object.__setattr__(self, "models", models)
        unknown = [b for b in self.shares if b not in BLOCKS]
        if unknown:
            raise RecipeError(f"{self.source}: unknown block name(s) {', '.join(unknown)}; known: {', '.join(BLOCKS)}")
        if self.method != "weighted_sum":
            raise RecipeError(f"{self.source}: an N-model recipe is a weighted sum, not {self.method!r}")
        ordered: dict[str, Shares] = {}
        for block in BLOCKS:
            if block not in self.shares:
                continue
            values = self.shares[block]
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise RecipeError(f"{self.source}: {block} needs a list of {len(models)} shares, got {values!r}")
            shares = tuple(_check_share(block, i, v, self.source) for i, v in enumerate(values))
            if len(shares) != len(models):
                raise RecipeError(f"{self.source}: {block} has {len(shares)} shares for {len(models)} models")
            total = math.fsum(shares)
            if abs(total - 1.0) > SUM_TOLERANCE:
                raise RecipeError(
                    f"{self.source}: the shares of {block} sum to {total:.6g}, not 1; "
                    "each block's shares say how much of each model it takes"
                )
            ordered[block] = shares
        object.__setattr__(self, "shares", MappingProxyType(ordered))
        chains = {b: tuple(float(w) for w in c) for b, c in dict(self.chain).items() if b in ordered}
        object.__setattr__(self, "chain", MappingProxyType(chains))

    def __reduce__(self) -> tuple[Any, ...]:
        return (RecipeN, (self.models, dict(self.shares), self.source, dict(self.chain), self.method))

    def __hash__(self) -> int:
        return hash((self.models, tuple(self.shares.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecipeN):
            return NotImplemented
        return self.models == other.models and dict(self.shares) == dict(other.shares)

    # ----- shape
    @property
    def n_models(self) -> int:
        return len(self.models)

    @property
    def blocks(self) -> tuple[str, ...]:
        return tuple(self.shares)

    def share(self, block: str, model: int) -> float:
        """Share of model ``model`` (0-based) in ``block``."""
        try:
            return self.shares[block][model]
        except KeyError:
            raise RecipeError(f"{self.source}: no shares for block {block}") from None

    def chain_weights(self, block: str) -> Chain:
        """The chain weights the merge of ``block`` uses (``chain_of`` its shares)."""
        if block not in self.shares:
            raise RecipeError(f"{self.source}: no shares for block {block}")
        return chain_of(self.shares[block])

    def search_chain(self, block: str) -> Chain:
        """The chain the recipe was built from, else ``chain_weights``."""
        return self.chain.get(block) or self.chain_weights(block)

    def for_family(self, family: str) -> "RecipeN":
        """This recipe restricted to the blocks of ``family``; error if one is missing."""
        blocks = present_blocks(family)
        missing = [b for b in blocks if b not in self.shares]
        if missing:
            raise RecipeError(f"{self.source}: recipe has no shares for {', '.join(missing)} (needed for {family})")
        return RecipeN(self.models, {b: self.shares[b] for b in blocks}, self.source, dict(self.chain))

    def with_models(self, models: Sequence[str]) -> "RecipeN":
        """The same shares with other model labels (same count)."""
        if len(models) != self.n_models:
            raise RecipeError(f"{self.source}: has {self.n_models} models, got {len(models)} to name them")
        return RecipeN(tuple(models), self.shares, self.source, dict(self.chain))

    def changed_blocks(self, other: "RecipeN | None") -> list[str]:
        if other is None:
            return list(self.shares)
        return [b for b, s in self.shares.items() if other.shares.get(b) != s]

    # ----- constructors
    @classmethod
    def from_chain(
        cls, models: Sequence[str], chain: Mapping[str, Sequence[float]], source: str = "recipe"
    ) -> "RecipeN":
        """A recipe from chain weights per block (each in [0, 1], N-1 per block)."""
        checked: dict[str, Chain] = {}
        for block, weights in chain.items():
            values = tuple(float(w) for w in weights)
            if len(values) != len(models) - 1:
                raise RecipeError(f"{source}: {block} needs {len(models) - 1} chain weights, got {len(values)}")
            for step, w in enumerate(values, start=1):
                if not math.isfinite(w) or not 0.0 <= w <= 1.0:
                    raise RecipeError(f"{source}: chain weight {step} of {block} must be between 0 and 1, got {w!r}")
            checked[block] = values
        return cls(tuple(models), {b: shares_of(c) for b, c in checked.items()}, source, checked)

    @classmethod
    def uniform(cls, models: Sequence[str], blocks: Iterable[str] = BLOCKS, source: str = "uniform") -> "RecipeN":
        """Every model at the same share 1/N in every block (the chain 1/2, 1/3, ...)."""
        n = len(models)
        return cls.from_chain(models, {b: tuple(1.0 / (k + 1) for k in range(1, n)) for b in blocks}, source)

    @classmethod
    def from_two_model(cls, recipe: Recipe, models: Sequence[str] = ("a", "b")) -> "RecipeN":
        """The N = 2 case of a two-model recipe: shares (1 - w, w)."""
        return cls.from_chain(models, {b: (w,) for b, w in recipe.weights.items()}, recipe.source)

    def to_two_model(self) -> Recipe:
        """The two-model recipe (fraction of model 2 per block); RecipeError unless N = 2."""
        if self.n_models != 2:
            raise RecipeError(f"{self.source}: has {self.n_models} models; only a 2-model recipe is a two-model recipe")
        return Recipe({b: self.search_chain(b)[0] for b in self.shares}, models={"a": self.models[0], "b": self.models[1]}, source=self.source)

    # ----- JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_N,
            "version": VERSION_N,
            "method": self.method,
            "models": list(self.models),
            "shares": {b: list(s) for b, s in self.shares.items()},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "recipe") -> "RecipeN":
        if not isinstance(data, Mapping):
            raise RecipeError(f"{source}: a JSON recipe must be an object, got {type(data).__name__}")
        if data.get("format") != FORMAT_N:
            return cls.from_two_model(Recipe.from_dict(data, source), _two_model_names(data))
        version = data.get("version", VERSION_N)
        if version != VERSION_N:
            raise RecipeError(f"{source}: N-model recipe version {version!r} is not supported (this auto-MBW reads {VERSION_N})")
        models = data.get("models")
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise RecipeError(f"{source}: an N-model recipe needs 'models': a list of {MIN_MODELS}-{MAX_MODELS} model names")
        shares = data.get("shares")
        if not isinstance(shares, Mapping):
            raise RecipeError(f"{source}: an N-model recipe needs a 'shares' object of block name -> list of shares")
        return cls(tuple(models), dict(shares), source, method=data.get("method", "weighted_sum"))

    # ----- chain text
    def chain_is_exact(self) -> list[str]:
        """Why the printed chain lines would not give this recipe back (empty: they do)."""
        problems = []
        scale = 10**CHAIN_DECIMALS
        for block, shares in self.shares.items():
            exact = [_exact(s) for s in shares]
            prefix = exact[0]
            for step, share in enumerate(exact[1:], start=1):
                prefix += share
                w = share / prefix if prefix else Fraction(0)
                if (w * scale).denominator != 1:
                    problems.append(f"{block} step {step}: chain weight {float(w):.10g} has more than {CHAIN_DECIMALS} decimals")
        return problems

    def describe(self) -> str:
        """Human-readable text: models, then one block per line with every model's share."""
        lines = [f"# model {i + 1}: {m}" for i, m in enumerate(self.models)]
        lines += [f"{b + ':':<12}" + " ".join(f"{format_weight(s):>8}" for s in shares) for b, shares in self.shares.items()]
        return "\n".join(lines)


def _two_model_names(data: Mapping[str, Any]) -> tuple[str, str]:
    models = data.get("models")
    if isinstance(models, Mapping):
        return (str(models.get("a", "a")), str(models.get("b", "b")))
    return ("a", "b")


def to_chain_text(recipe: RecipeN, fill: float = 0.0) -> tuple[str, list[str]]:
    """The recipe as N-1 lines of 27 chain weights (canonical order) with comments, and why it is not exact.

    Blocks the recipe lacks (SDXL) are written as ``fill``. Line k is the
    weight of model k+1 when it is merged into the merge of models 1..k.
    """
    lines = [f"# auto-MBW {recipe.n_models}-model recipe as {recipe.n_models - 1} chained weighted-sum merges"]
    lines += [f"# model {i + 1}: {m}" for i, m in enumerate(recipe.models)]
    chains = {b: recipe.chain_weights(b) for b in recipe.shares}
    for step in range(recipe.n_models - 1):
        left = "model 1" if step == 0 else f"merge {step}"
        lines.append(f"# merge {step + 1} = lerp({left}, model {step + 2}, w) per block")
        lines.append(",".join(format_weight(chains[b][step]) if b in chains else format_weight(fill) for b in BLOCKS))
    return "\n".join(lines) + "\n", recipe.chain_is_exact()


_MODEL_COMMENT = re.compile(r"^#\s*model\s+(\d+)\s*:\s*(.*?)\s*$", re.IGNORECASE)


def parse_chain_text(text: str, family: str | None = None, source: str = "recipe") -> RecipeN:
    """N-1 lines of 27 chain weights (canonical order) -> RecipeN; ``# model k: name`` comments name the models.

    ``family`` restricts the recipe to that architecture's blocks (SDXL's absent
    blocks are then ignored).
    """
    names: dict[int, str] = {}
    rows: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            match = _MODEL_COMMENT.match(stripped)
            if match:
                names[int(match.group(1))] = match.group(2)
            continue
        values = parse_numbers(stripped, f"{source} line {number}")
        if len(values) != len(BLOCKS):
            raise RecipeError(f"{source} line {number}: a chain line has {len(BLOCKS)} values (canonical order), got {len(values)}")
        rows.append(values)
    if not MIN_MODELS - 1 <= len(rows) <= MAX_MODELS - 1:
        raise RecipeError(f"{source}: {len(rows)} chain lines; {MIN_MODELS}-{MAX_MODELS} models need 1-{MAX_MODELS - 1} lines")
    n = len(rows) + 1
    models = tuple(names.get(i + 1, f"model {i + 1}") for i in range(n))
    blocks = present_blocks(family) if family else BLOCKS
    chain = {b: tuple(row[BLOCKS.index(b)] for row in rows) for b in blocks}
    return RecipeN.from_chain(models, chain, source)


def parse_recipe_n_text(text: str, source: str = "recipe", **two_model_options: Any) -> RecipeN:
    """Any recipe text: N-model JSON, chain lines (two or more lines of 27), or any two-model format."""
    stripped = text.strip()
    if not stripped:
        raise RecipeError(f"{source}: empty recipe")
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"{source}: invalid JSON ({exc})") from None
        return RecipeN.from_dict(data, source)
    data_lines = [ln for ln in stripped.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    named = any(_MODEL_COMMENT.match(ln.strip()) for ln in stripped.splitlines())
    chain_lines = all(_numeric(ln) and len(parse_numbers(ln, source)) == len(BLOCKS) for ln in data_lines)
    if chain_lines and (len(data_lines) >= 2 or named):
        return parse_chain_text(stripped, source=source)
    return RecipeN.from_two_model(parse_recipe_text(text, source=source, **two_model_options))


def _numeric(line: str) -> bool:
    return bool(re.fullmatch(r"[\d.,;\s+\-eE]+", line))


def read_recipe_n(spec: str, **two_model_options: Any) -> RecipeN:
    """An N-model recipe from a file (JSON or text) or from the text itself; two-model recipes give N = 2."""
    from pathlib import Path

    path = Path(spec)
    looks_like_path = "\n" not in spec and not spec.lstrip().startswith("{") and not _numeric(spec)
    if looks_like_path and path.is_file():
        try:
            text = read_text_capped(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{path}: cannot read recipe file ({exc})") from None
        return parse_recipe_n_text(text, source=str(path), **two_model_options)
    if looks_like_path and (spec.endswith((".json", ".txt")) or "/" in spec):
        raise RecipeError(f"{spec}: recipe file not found")
    return parse_recipe_n_text(spec, source="recipe text", **two_model_options)
