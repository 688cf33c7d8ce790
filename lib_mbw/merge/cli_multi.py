"""``python -m lib_mbw merge A B C [D E] --recipe R``: the N-model block mix on the command line.

``merge`` hands over here when it is given more than two models, or a recipe
in the N-model format (``recipe_n``). The recipe comes from a file or text in
any ``recipe_n.read_recipe_n`` format (N-model JSON, N-1 chain lines, any
two-model format for N = 2), or from a ``.safetensors`` mixed by auto-MBW.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import RecipeError
from ..fileio import read_text_capped
from ..recipe_n import FORMAT_N, RecipeN, read_recipe_n


def wants_mix(args: argparse.Namespace) -> bool:
    """Whether a ``merge`` command line asks for an N-model mix (extra models, or an N-model recipe file)."""
    if getattr(args, "more", None):
        return True
    spec = getattr(args, "recipe", None)
    if not spec or not spec.lower().endswith(".json"):
        return False
    try:
        return FORMAT_N in read_text_capped(Path(spec))
    except (OSError, UnicodeDecodeError):
        return False


def load_mix_recipe(spec: str, order: str, fold: str) -> RecipeN:
    if spec.lower().endswith(".safetensors"):
        from .multi import read_mix_recipe

        if not Path(spec).is_file():
            raise RecipeError(f"{spec}: recipe file not found")
        return read_mix_recipe(spec)
    return read_recipe_n(spec, order=order, fold=fold)


def run_mix_command(args: argparse.Namespace) -> int:
    """The ``merge`` handler for 2-5 models with an N-model recipe."""
    from .cli import _hash_cache, _warn_pickle, _with_progress
    from .multi import mix_to_file

    models = [args.a, args.b, *args.more]
    if args.recipe is None:
        raise RecipeError("merging more than two models needs --recipe (an N-model recipe: JSON or chain lines)")
    if args.method not in (None, "weighted-sum") or args.c is not None:
        raise RecipeError("an N-model mix is a weighted sum per block; --method add-difference and --c do not apply")
    if args.base_from in ("b", "merge"):
        raise RecipeError("--base-from: an N-model mix takes the text encoder from model 1 (a) or from a donor file")
    recipe = load_mix_recipe(args.recipe, args.order, args.fold)
    if recipe.n_models != len(models):
        raise RecipeError(f"{recipe.source}: is a recipe for {recipe.n_models} models, but {len(models)} models were given")
    base = None if args.base_from == "a" else Path(args.base_from)
    _warn_pickle(args, models)
    report = _with_progress(
        args,
        lambda progress: mix_to_file(
            models, recipe, args.output, dtype=args.dtype, base_from=base, vae_from=args.vae_from,
            overwrite=args.overwrite, allow_pickle=args.allow_pickle, progress=progress, hash_cache=_hash_cache(args),
        ),
    )
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(report.summary())
    return 0
