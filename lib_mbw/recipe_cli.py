"""``python -m lib_mbw recipe ...``: read a recipe in any format and print it in another."""

from __future__ import annotations

import argparse
import math
import sys

from .blocks import present_blocks
from .errors import RecipeError
from .recipe import FOLDS, ORDERS, Recipe, read_recipe, to_positional, to_preset

EXAMPLES = """examples:
  # the seed auto-MBW-rt order (TIME_EMBED after M00) to our canonical order
  python -m lib_mbw recipe convert "0.1,0.2,...,0.27" --order rt --to canonical
  # a 26-value supermerger preset (BASE first) to our JSON recipe
  python -m lib_mbw recipe convert "0.5,1,1,...,0" --to json
  # our JSON recipe to an MBW preset; warns if TIME_EMBED/OUT are lost
  python -m lib_mbw recipe convert best.recipe.json --to preset
  # every form at once
  python -m lib_mbw recipe show best.recipe.json
  # a partial recipe: the blocks it does not name get 0.5 (without --fill it is refused, as merge refuses it)
  python -m lib_mbw recipe convert "IN00:0.2, OUT11:1" --fill 0.5 --to rt"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from .cli import HelpFormatter

    parser = subparsers.add_parser(
        "recipe",
        help="convert and show recipes (JSON, 27-value lines in any order, MBW presets)",
        description="Read a recipe (file or inline text) in any supported format and print it in another.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    actions = parser.add_subparsers(dest="recipe_command", metavar="ACTION", required=True)
    for name, help_text in (("convert", "print a recipe in one format"), ("show", "print a recipe in every format")):
        action = actions.add_parser(name, help=help_text, epilog=EXAMPLES, formatter_class=HelpFormatter)
        action.add_argument("recipe", help="recipe file or inline text")
        action.add_argument("--order", choices=list(ORDERS), default="canonical", help="order of a 27-value input")
        action.add_argument("--fold", choices=list(FOLDS), default="mbw", help="convention of a 25/26-value preset")
        action.add_argument("--family", choices=["sd1", "sd2", "sdxl"], default="sd1", help="architecture for presets")
        action.add_argument("--fill", type=float, metavar="W",
                            help="weight for blocks the recipe does not name (default: refuse an incomplete recipe, as merge does)")
        if name == "convert":
            action.add_argument(
                "--to",
                choices=["json", "text", "preset", "preset25", *ORDERS],
                default="json",
                help="output format (preset = 26 values with BASE first, preset25 = without BASE)",
            )
        action.set_defaults(func=run_convert if name == "convert" else run_show)


def render(recipe: Recipe, fmt: str, family: str, fold: str) -> tuple[str, list[str]]:
    """A recipe as text in ``fmt``, with warnings about what the format loses."""
    if fmt == "json":
        return recipe.to_json(), []
    if fmt == "text":
        return recipe.describe(), []
    if fmt in ORDERS:
        return to_positional(recipe, fmt), []
    return to_preset(recipe, family, with_base=fmt == "preset", fold=fold)


def complete(recipe: Recipe, family: str, fill: float | None) -> Recipe:
    """``recipe`` with every block of ``family``: missing ones get ``fill``; RecipeError naming them without it."""
    missing = [b for b in present_blocks(family) if b not in recipe.weights]
    if not missing:
        return recipe
    if fill is None:
        raise RecipeError(
            f"{recipe.source}: no weight for {', '.join(missing)} ({len(missing)} of {len(present_blocks(family))} {family} blocks); "
            "give every block, or pass --fill W to set the missing ones to W"
        )
    if not math.isfinite(fill):
        raise RecipeError(f"--fill must be a finite number, got {fill}")
    return recipe.replace(weights={**recipe.weights, **dict.fromkeys(missing, fill)})


def run_convert(args: argparse.Namespace) -> int:
    recipe = complete(read_recipe(args.recipe, args.order, args.fold), args.family, args.fill)
    text, warnings = render(recipe, args.to, args.family, args.fold)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(text)
    return 0


def run_show(args: argparse.Namespace) -> int:
    recipe = complete(read_recipe(args.recipe, args.order, args.fold), args.family, args.fill)
    print(recipe.describe())
    for order in ORDERS:
        print(f"{order + ':':<12}{to_positional(recipe, order)}")
    preset, warnings = to_preset(recipe, args.family, with_base=True, fold=args.fold)
    print(f"{'preset:':<12}{preset}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
