"""The N-model (3-5 models) side of a run folder: chain-weight history columns, recipes read back, best-recipe files.

A search over N > 2 models records each evaluated ``RecipeN`` in
``history.csv`` as its **chain weights** (``recipe_n``): one column per
block and chain step, ``<BLOCK>@m<K>`` for K = 2..N (the weight of model K
when it is mixed into models 1..K-1), step by step in canonical block order.
The chain is stored rather than the shares because it is what the search
space's point is made of: a row read back gives exactly the recipe the
optimizer proposed (and so the same grid point), even where several chains
give the same shares (a step at weight 1 hides the steps before it). The
shares follow exactly (``RecipeN.from_chain``); the JSON outputs print them.

Recipes in a run's history are labelled ``model 1`` .. ``model N`` (the
model files are in the manifest); outputs relabel them with the file names.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..blocks import BLOCKS
from ..errors import RecipeError
from ..fileio import write_atomic
from ..recipe import Recipe, format_weight
from ..recipe_n import FORMAT_N, MAX_MODELS, MIN_MODELS, RecipeN, to_chain_text
from .history import HistoryError  # history.py imports this module lazily (inside its functions)

_COLUMN = re.compile(r"^([A-Z0-9_]+)@m([2-9])$")


class HistoryNError(HistoryError):
    """An N-model history row, column set or recipe does not fit the run."""


def model_labels(n_models: int) -> tuple[str, ...]:
    """The labels of the recipes an N-model search records (``model 1`` .. ``model N``)."""
    return tuple(f"model {i + 1}" for i in range(n_models))


def chain_columns(blocks: Sequence[str], n_models: int) -> list[str]:
    """The history columns of an N-model run: ``BLOCK@mK`` for K = 2..N, step-major, blocks in canonical order."""
    if not MIN_MODELS < n_models <= MAX_MODELS:
        raise HistoryNError(f"chain columns are for 3 to {MAX_MODELS} models, got {n_models}")
    ordered = [b for b in BLOCKS if b in blocks]
    return [f"{b}@m{k}" for k in range(2, n_models + 1) for b in ordered]


def parse_column(name: str) -> tuple[str, int] | None:
    """``(block, model)`` of a chain column (``IN00@m3`` -> ``("IN00", 3)``), else None."""
    match = _COLUMN.match(name)
    if match is None or match.group(1) not in BLOCKS:
        return None
    return match.group(1), int(match.group(2))


def models_of_columns(columns: Sequence[str], where: str) -> int:
    """N for a header with chain columns (0 without any); HistoryNError when the set is not complete."""
    parsed = [p for c in columns if (p := parse_column(c)) is not None]
    if not parsed:
        return 0
    n = max(k for _, k in parsed)
    if n < 3:
        raise HistoryNError(f"{where}: chain columns of a 2-model search (a two-model history has block columns); the history is damaged")
    blocks = sorted({b for b, _ in parsed}, key=BLOCKS.index)
    expected = chain_columns(blocks, n)
    got = [c for c in columns if parse_column(c) is not None]
    if got != expected:
        missing = [c for c in expected if c not in got]
        raise HistoryNError(
            f"{where}: the chain columns are not a complete {n}-model set"
            + (f" (missing {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''})" if missing else " (order or duplicates differ)")
            + "; the history was edited or damaged: restore it, or start a new search"
        )
    return n


def recipe_from_cells(cells: Mapping[str, str], columns: Sequence[str], n_models: int, where: str) -> RecipeN | None:
    """The recipe of one row's chain cells (None when every cell is empty: a row without a recipe)."""
    filled = {c: cells[c] for c in columns if cells[c] != ""}
    if not filled:
        return None
    empty = [c for c in columns if cells[c] == ""]
    if empty:
        raise HistoryNError(f"{where}: chain weight(s) {', '.join(empty[:6])} are empty while others are set; the history is damaged")
    chain: dict[str, list[float]] = {}
    for column in columns:
        block, _ = parse_column(column)  # type: ignore[misc]
        try:
            value = float(cells[column])
        except ValueError:
            raise HistoryNError(f"{where}: {column} must be a number, got {cells[column][:20]!r}; the history is damaged") from None
        chain.setdefault(block, []).append(value)
    try:
        return RecipeN.from_chain(model_labels(n_models), chain, where)
    except RecipeError as exc:
        raise HistoryNError(f"{exc}; the history is damaged") from None


def cells_of(recipe: Any, n_models: int, where: str) -> dict[str, str]:
    """The chain cells of ``recipe`` for an N-model history (exact: ``repr`` of each chain weight)."""
    if not isinstance(recipe, RecipeN) or recipe.n_models != n_models:
        got = f"a {recipe.n_models}-model recipe" if isinstance(recipe, RecipeN) else f"a {type(recipe).__name__}"
        raise HistoryNError(f"{where}: a {n_models}-model history cannot record {got}")
    cells: dict[str, str] = {}
    for block in recipe.shares:
        for step, weight in enumerate(recipe.search_chain(block)):
            cells[f"{block}@m{step + 2}"] = repr(float(weight))
    return cells


def record_of(recipe: Recipe | RecipeN) -> dict[str, Any]:
    """The JSON object of a recipe for a manifest; an N-model one keeps the chain it was built from (``chain``)."""
    data = recipe.to_dict()
    if isinstance(recipe, RecipeN) and recipe.chain:
        data["chain"] = {b: list(c) for b, c in recipe.chain.items()}
    return data


def recipe_from_record(data: Any, source: str) -> Recipe | RecipeN:
    """A recipe from its JSON object: an N-model one for ``"format": "auto-mbw-recipe-n"``, else a two-model one.

    An N-model object's ``chain`` (``record_of``) must give its shares; the recipe keeps it.
    """
    if not (isinstance(data, Mapping) and data.get("format") == FORMAT_N):
        return Recipe.from_dict(data, source)
    recipe = RecipeN.from_dict(data, source)
    chain = data.get("chain")
    if chain is None:
        return recipe
    if not isinstance(chain, Mapping):
        raise RecipeError(f"{source}: 'chain' must be an object of block name -> chain weights")
    rebuilt = RecipeN.from_chain(recipe.models, chain, source)
    if rebuilt != recipe:
        raise RecipeError(f"{source}: the recipe's 'chain' does not give its 'shares'; the file was edited")
    return rebuilt


# --------------------------------------------------------------------------- outputs


def best_recipe_text_n(recipe: RecipeN, *, score: float | None = None, reason: str = "") -> tuple[str, list[str]]:
    """The human-readable best-recipe file of an N-model search: shares per block (comments), then the chain
    lines, which ``recipe_n.read_recipe_n`` reads back."""
    lines = [f"# auto-MBW best {recipe.n_models}-model recipe"]
    if score is not None:
        lines.append(f"# score: {score:.6g}")
    if reason:
        lines.append(f"# chosen: {reason}")
    lines.append("# share of each model per block (they sum to 1):")
    lines.extend(line if line.startswith("#") else f"#   {line}" for line in recipe.describe().splitlines() if not line.startswith("# model"))
    lines.append("")
    chain, problems = to_chain_text(recipe)
    lines.append(chain.rstrip("\n"))
    lines.extend(f"# warning: the chain lines are rounded: {p}" for p in problems)
    return "\n".join(lines) + "\n", problems


def write_best_recipe_n(
    folder: str | Path, recipe: RecipeN, models: Sequence[str], *, score: float | None = None, reason: str = "",
    run_id: str = "", overwrite: bool = False,
) -> dict[str, Path]:
    """``best.recipe.json`` (shares, model file names, search facts) and ``best.recipe.txt`` (shares + chain lines)."""
    folder = Path(folder)
    named = recipe.with_models([Path(m).name for m in models])
    data = named.to_dict()
    data["search"] = {"run_id": run_id, "score": score, "reason": reason}
    text, _ = best_recipe_text_n(named, score=score, reason=reason)
    return {
        "recipe_json": write_atomic(folder / "best.recipe.json", json.dumps(data, indent=2) + "\n", overwrite=overwrite),
        "recipe_txt": write_atomic(folder / "best.recipe.txt", text, overwrite=overwrite),
    }


def shares_line(recipe: RecipeN, block: str) -> str:
    """``0.5 / 0.25 / 0.25``: one block's shares, for progress lines and tables."""
    return " / ".join(format_weight(s) for s in recipe.shares[block])


__all__ = [
    "HistoryNError", "best_recipe_text_n", "cells_of", "chain_columns", "model_labels", "models_of_columns",
    "parse_column", "record_of", "recipe_from_cells", "recipe_from_record", "shares_line", "write_best_recipe_n",
]
