"""``python -m lib_mbw mix-search M1 M2 M3 [M4 M5] --payloads DIR``: search an N-model block mix from the command line.

Thin argument handling over ``mix_search.run_mix_search`` with the diffusers
generator (model 1 loaded, the others mixed in at run time) and any
registered scorer. Heavy imports happen inside the handler, so ``--help``
stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import MBWError
from ..fileio import read_text_capped
from .stopping import DEFAULT_PATIENCE

EXAMPLES = """examples:
  python -m lib_mbw mix-search A.safetensors B.safetensors C.safetensors --payloads payloads
  # reference images instead of ImageReward, 600 evaluations, run folder to resume later
  python -m lib_mbw mix-search A.safetensors B.safetensors C.safetensors D.safetensors --payloads payloads \\
      --scorer reference --scorer-option folder=refs --evaluations 600 --run csv/history/mix-abcd
  # freeze OUT to model 1 and search model 3's step of M00 only within [0, 0.5]
  python -m lib_mbw mix-search A.safetensors B.safetensors C.safetensors --payloads payloads --space space.json
    (space.json: {"frozen_shares": {"OUT": [1, 0, 0]}, "steps": [{}, {"ranges": {"M00": [0, 0.5]}}]})
Running it again with the same --run resumes from that folder's history.jsonl."""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import HelpFormatter

    parser = subparsers.add_parser(
        "mix-search",
        help="search the per-block shares of a mix of 2-5 checkpoints (diffusers backend)",
        description=(
            "Search, per UNet block, how much of each of 2-5 models to take (the shares sum to 1), by rendering "
            "the payloads with each candidate mixed in at run time and scoring the images. Writes history.jsonl "
            "(one row per evaluation), the best recipe as JSON and as chain lines, and the mixed, verified model."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("models", type=Path, nargs="+", help="2-5 checkpoints in mix order (model 1 is loaded)")
    parser.add_argument("--payloads", type=Path, required=True, help="folder of payload files (*.json)")
    parser.add_argument("--wildcards", type=Path, default=None, help="wildcards folder for the payloads")
    parser.add_argument("--run", type=Path, default=None, help="run folder (default: csv/history/mix-<time>); an existing one resumes")
    parser.add_argument("--scorer", default="imagereward", help="registered scorer name")
    parser.add_argument("--scorer-option", action="append", default=[], metavar="KEY=VALUE", help="scorer setting (VALUE as JSON, else text); repeatable")
    parser.add_argument("--strategy", default="default", help="optimizer strategy (see `search --list-strategies`)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the optimizer and the payloads")
    parser.add_argument("--levels", type=int, default=21, help="grid levels per chain weight")
    parser.add_argument("--evaluations", type=int, default=None, help="maximum evaluations (default 150 x (N-1))")
    parser.add_argument("--patience", type=int, default=None, help=f"stop after this many without a new best (default {DEFAULT_PATIENCE} x (N-1); 0: never)")
    parser.add_argument("--space", type=Path, default=None, help="JSON file with steps (ranges/frozen/groups per step) and frozen_shares")
    parser.add_argument("--config-dir", type=Path, default=None, help="diffusers config folder for the checkpoints")
    parser.add_argument("--device", default="auto", help="device to render on")
    parser.add_argument("--merge-mode", default="auto", choices=["auto", "device", "stream", "cpu"], help="where the runtime mix keeps the models")
    parser.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16", help="dtype of the mixed model written at the end")
    parser.add_argument("--no-merge", action="store_true", help="do not write the mixed model at the end")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.set_defaults(func=_run)


def _option(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise MBWError(f"--scorer-option {item!r}: use KEY=VALUE")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _space_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = json.loads(read_text_capped(path))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MBWError(f"{path}: cannot read the space settings ({exc})") from None
    if not isinstance(data, dict) or set(data) - {"steps", "frozen_shares"}:
        raise MBWError(f"{path}: space settings are an object with 'steps' and/or 'frozen_shares'")
    return data


def _run(args: argparse.Namespace) -> int:
    from ..generators.diffusers import DiffusersOptions
    from ..payloads import load_payloads, prepare_payloads
    from ..scorers.registry import make_scorer
    from .mix_search import MixSearchSettings, mix_generator, run_mix_search

    if not 2 <= len(args.models) <= 5:
        raise MBWError(f"mix-search takes 2 to 5 models, got {len(args.models)}")
    missing = [str(m) for m in args.models if not m.is_file()]
    if missing:
        raise MBWError(f"model file(s) not found: {', '.join(missing)}")
    space = _space_file(args.space)
    run_dir = args.run or Path("csv") / "history" / f"mix-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = MixSearchSettings(
        models=list(args.models), run_dir=run_dir, levels=args.levels, strategy=args.strategy, seed=args.seed,
        evaluations=args.evaluations, patience=args.patience, steps=space.get("steps") or (),
        frozen_shares=space.get("frozen_shares") or {}, merge=not args.no_merge, dtype=args.dtype,
    )
    settings.space()  # refuse bad space settings before loading any model
    payloads = prepare_payloads(load_payloads(args.payloads), args.wildcards, args.seed)
    scorer = make_scorer(args.scorer, **dict(_option(o) for o in args.scorer_option))
    options = DiffusersOptions(config_dir=args.config_dir, device=args.device, merge_mode=args.merge_mode)
    generator = mix_generator(settings.models, options)
    try:
        settings.family = generator.family
        say = (lambda text: None) if args.quiet else (lambda text: print(text, file=sys.stderr, flush=True))
        result = run_mix_search(settings, generator, scorer, payloads, say=say)
    finally:
        generator.close()
    print(f"run folder: {result.run_dir} ({result.evaluations} evaluations, {result.resumed} from an earlier run)")
    if result.recipe is not None:
        print(f"best score: {result.score:.4f}")
        print(result.recipe.describe())
    for name, path in sorted(result.outputs.items()):
        print(f"{name}: {path}")
    if result.verified is not None:
        print(f"verify: {'identical' if result.verified else 'DIFFERS'}")
    return 0 if result.verified in (None, True) else 1
