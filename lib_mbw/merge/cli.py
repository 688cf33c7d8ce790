"""``python -m lib_mbw merge | uniform | verify | inspect``: the offline merge commands.

Thin argument handling over ``engine.merge_to_file``/``uniform_to_file``,
``verify.verify_file`` and ``inspect.inspect_models``; torch is imported only
inside the handlers so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from ..errors import RecipeError
from ..recipe import FOLDS, ORDERS, Recipe, read_recipe

DTYPE_CHOICES = ("fp16", "bf16", "fp32")

MERGE_EXAMPLES = """examples:
  # the same weight for every block (and for the text encoder with --base-from merge)
  python -m lib_mbw merge A.safetensors B.safetensors -o AB.safetensors --alpha 0.5
  # a block recipe: our JSON, NAME=value pairs, 27 values (--order), or an MBW preset (--fold)
  python -m lib_mbw merge A.safetensors B.safetensors -o best.safetensors --recipe best.recipe.json
  python -m lib_mbw merge A.safetensors B.safetensors -o m.safetensors --recipe "0.1,0.2,...,0.27" --order rt
  # a block mix of 3 models (2-5): an N-model recipe, JSON or N-1 chain lines
  python -m lib_mbw merge A.safetensors B.safetensors C.safetensors -o ABC.safetensors --recipe abc.recipe.json
  # reuse the recipe stored in a file merged by auto-MBW
  python -m lib_mbw merge A.safetensors C.safetensors -o AC.safetensors --recipe best.safetensors
  # add difference: A + w * (B - C), text encoder from another model, VAE baked in, bf16
  python -m lib_mbw merge A.safetensors B.safetensors --method add-difference --c C.safetensors \\
      -o out.safetensors --alpha 1 --base-from sd14.safetensors --vae-from vae-ft-mse.safetensors --dtype bf16"""

UNIFORM_EXAMPLES = """examples:
  # the AstolfoMix uniform merge: the plain mean of all models (order does not matter)
  python -m lib_mbw uniform m1.safetensors m2.safetensors m3.safetensors -o mean.safetensors
  # keep one model's text encoder instead of averaging it (the "TE reset")
  python -m lib_mbw uniform models/*.safetensors -o mix.safetensors --base-from sd-v1-4.safetensors"""

VERIFY_EXAMPLES = """examples:
  python -m lib_mbw verify best.safetensors
  # sources moved since the merge
  python -m lib_mbw verify best.safetensors --search-dir /models/Stable-diffusion
  python -m lib_mbw verify best.safetensors --source a=/new/place/A.safetensors
exit status: 0 when every tensor is identical, 1 when some differ, 2 on errors."""

INSPECT_EXAMPLES = """examples:
  python -m lib_mbw inspect model.safetensors
  # per-block L2 distance and cosine similarity, and a bar chart
  python -m lib_mbw inspect A.safetensors B.safetensors --plot ab.png
  # distance matrix of several models
  python -m lib_mbw inspect m1.safetensors m2.safetensors m3.safetensors --plot matrix.png"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import HelpFormatter

    merge = subparsers.add_parser(
        "merge",
        help="merge two checkpoints block by block into a new .safetensors file",
        description=(
            "Merge model A and model B with one weight per UNet block (the fraction of B: 0 = A, 1 = B). "
            "The text encoder (BASE) comes from A unless --base-from says otherwise, the VAE from A unless "
            "--vae-from, every other key from A. Tensors are streamed: memory stays near one model's size."
        ),
        epilog=MERGE_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    merge.add_argument("a", type=Path, help="model A (weight 0)")
    merge.add_argument("b", type=Path, help="model B (weight 1)")
    merge.add_argument("more", type=Path, nargs="*", metavar="MODEL",
                       help="models 3-5 of an N-model block mix (needs an N-model --recipe; see docs/formats.md)")
    merge.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors file to write")
    weights = merge.add_mutually_exclusive_group(required=True)
    weights.add_argument("--recipe", help="recipe file or text in any supported format, or a .safetensors merged by auto-MBW")
    weights.add_argument("--alpha", type=float, help="one weight for every block (and BASE with --base-from merge)")
    merge.add_argument("--order", choices=list(ORDERS), default="canonical", help="order of a 27-value recipe")
    merge.add_argument("--fold", choices=list(FOLDS), default="mbw", help="convention of a 25/26-value preset")
    merge.add_argument(
        "--method", choices=["weighted-sum", "add-difference"], default=None,
        help="weighted-sum: lerp(A, B, w); add-difference: A + w*(B - C) (default: the recipe's, else weighted-sum)",
    )
    merge.add_argument("--c", type=Path, default=None, help="model C for add-difference")
    merge.add_argument("--base-from", default="a", metavar="a|b|merge|MODEL",
                       help="text encoder from A, B, merged with the recipe's BASE weight, or from another checkpoint")
    merge.add_argument("--vae-from", type=Path, default=None, metavar="MODEL", help="checkpoint or VAE file whose VAE to bake in")
    _common_output_options(merge)
    merge.set_defaults(func=run_merge_command)

    uniform = subparsers.add_parser(
        "uniform",
        help="the parameterless uniform merge (plain mean) of two or more checkpoints",
        description=(
            "Average N checkpoints with equal weight (AstolfoMix's uniform merge, weights 1/x, which equals the "
            "plain mean), accumulated in fp32 in one pass. UNet, text encoder and VAE are averaged, other keys "
            "copied; the models are ordered by sha256 first, so the output does not depend on their order."
        ),
        epilog=UNIFORM_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    uniform.add_argument("models", type=Path, nargs="+", help="two or more checkpoints")
    uniform.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors file to write")
    uniform.add_argument("--base-from", type=Path, default=None, metavar="MODEL", help="copy the text encoder from this checkpoint")
    uniform.add_argument("--vae-from", type=Path, default=None, metavar="MODEL", help="copy the VAE from this checkpoint or VAE file")
    _common_output_options(uniform)
    uniform.set_defaults(func=run_uniform_command)

    verify = subparsers.add_parser(
        "verify",
        help="recompute a merged file from its recorded sources and count differing tensors",
        description=(
            "Read the recipe and the source models (paths and sha256) recorded in a file merged by auto-MBW, "
            "recompute every tensor and compare it bit for bit (the 'offset counter')."
        ),
        epilog=VERIFY_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    verify.add_argument("file", type=Path, help="a .safetensors file merged by auto-MBW")
    verify.add_argument("--source", action="append", default=[], metavar="ROLE=PATH",
                        help="use PATH for source ROLE (a, b, c, m1.., base, vae); repeatable")
    verify.add_argument("--search-dir", action="append", type=Path, default=[], metavar="DIR",
                        help="folder to look for moved sources by file name; repeatable")
    verify.add_argument("--allow-pickle", action="store_true", help="allow .ckpt sources (pickle can run code)")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(func=run_verify_command)

    inspect = subparsers.add_parser(
        "inspect",
        help="architecture, dtypes, parameters per block, hashes, and distances between models",
        description=(
            "Describe checkpoints; with two or more, print the per-block L2 distance and cosine similarity of "
            "every pair of the same architecture."
        ),
        epilog=INSPECT_EXAMPLES,
        formatter_class=HelpFormatter,
    )
    inspect.add_argument("models", type=Path, nargs="+", help="one or more checkpoints")
    inspect.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                         help="bar chart (two models) or distance matrix (more)")
    inspect.add_argument("--overwrite", action="store_true", help="replace an existing plot")
    inspect.add_argument("--no-hashes", action="store_true", help="skip the (full-file) hashes")
    inspect.add_argument("--allow-pickle", action="store_true", help="allow .ckpt files (pickle can run code)")
    inspect.add_argument("--quiet", action="store_true", help="no progress bar")
    _hash_cache_option(inspect)
    inspect.set_defaults(func=run_inspect_command)


def _common_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default="fp16", help="dtype of every floating tensor written")
    parser.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow .ckpt/.pt inputs (unpickling can run arbitrary code: only for files you trust)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    _hash_cache_option(parser)


def _hash_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-hash-cache", action="store_true",
        help="hash every input again instead of reusing hashes remembered for unchanged files "
        "(~/.cache/auto-mbw/hashes.json, or $AUTO_MBW_HASH_CACHE; 'off' disables it)",
    )


def _hash_cache(args: argparse.Namespace) -> Any:
    from .hashes import default_hash_cache

    return None if args.no_hash_cache else default_hash_cache()


def load_recipe(spec: str, order: str, fold: str) -> Recipe:
    """A recipe from text or a file in any ``read_recipe`` format, or from the record of a merged .safetensors."""
    if spec.lower().endswith(".safetensors"):
        from ..checkpoint import read_safetensors_header
        from ..errors import ModelFormatError
        from .metadata import read_our_record

        path = Path(spec)
        if not path.is_file():
            raise RecipeError(f"{spec}: recipe file not found")
        try:
            _, metadata = read_safetensors_header(path)
        except ModelFormatError as exc:
            raise RecipeError(str(exc)) from None
        record = read_our_record(metadata, spec)
        if record is None or record.get("recipe") is None:
            raise RecipeError(f"{spec}: holds no auto-MBW block recipe in its metadata (not a two-model merge by auto-MBW)")
        return Recipe.from_dict(record["recipe"], spec)
    return read_recipe(spec, order, fold)


def _warn_pickle(args: argparse.Namespace, paths: list[Path]) -> None:
    from ..checkpoint import PICKLE_SUFFIXES

    if args.allow_pickle and any(p.suffix.lower() in PICKLE_SUFFIXES for p in paths):
        print(
            "warning: loading pickle checkpoints (.ckpt/.pt): unpickling can run arbitrary code; "
            "use only files you trust, and prefer .safetensors",
            file=sys.stderr,
        )


class _Progress:
    """A tqdm bar on stderr per phase (off with --quiet or when stderr is not a terminal)."""

    LABELS = {"hash": "hashing sources", "merge": "merging", "verify": "verifying", "compare": "comparing"}

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None
        self.phase = ""

    def __call__(self, event: Any) -> None:
        if self.quiet:
            return
        from tqdm import tqdm

        if event.phase != self.phase:
            self.close()
            self.phase = event.phase
            self.bar = tqdm(total=event.total, desc=self.LABELS.get(event.phase, event.phase), unit="file" if event.phase == "hash" else "tensor",
                            file=sys.stderr, leave=False, disable=None)
        self.bar.update(event.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _with_progress(args: argparse.Namespace, run: Callable[[_Progress], Any]) -> Any:
    progress = _Progress(args.quiet)
    try:
        return run(progress)
    finally:
        progress.close()


def run_merge_command(args: argparse.Namespace) -> int:
    from .cli_multi import run_mix_command, wants_mix
    from .engine import merge_to_file
    from .methods import method_by_cli_name

    if wants_mix(args):
        return run_mix_command(args)
    if args.alpha is not None:
        if not 0.0 <= args.alpha <= 1.0:
            raise RecipeError(f"--alpha must be between 0 and 1 (0 = model A, 1 = model B), got {args.alpha}")
        recipe: Recipe | float = args.alpha
    else:
        recipe = load_recipe(args.recipe, args.order, args.fold)
    method = method_by_cli_name(args.method).name if args.method else None
    if method is None and args.c is not None:
        method = "add_difference"
    _warn_pickle(args, [p for p in (args.a, args.b, args.c) if p is not None])
    report = _with_progress(
        args,
        lambda progress: merge_to_file(
            args.a, args.b, recipe, args.output, c=args.c, method=method, dtype=args.dtype,
            base_from=args.base_from, vae_from=args.vae_from, overwrite=args.overwrite,
            allow_pickle=args.allow_pickle, progress=progress, hash_cache=_hash_cache(args),
        ),
    )
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(report.summary())
    return 0


def run_uniform_command(args: argparse.Namespace) -> int:
    from .engine import uniform_to_file

    _warn_pickle(args, list(args.models))
    report = _with_progress(
        args,
        lambda progress: uniform_to_file(
            args.models, args.output, dtype=args.dtype, base_from=args.base_from, vae_from=args.vae_from,
            overwrite=args.overwrite, allow_pickle=args.allow_pickle, progress=progress, hash_cache=_hash_cache(args),
        ),
    )
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(report.summary())
    return 0


def _parse_sources(items: list[str]) -> dict[str, Path]:
    sources: dict[str, Path] = {}
    for item in items:
        role, sep, path = item.partition("=")
        if not sep or not role or not path:
            raise RecipeError(f"--source {item!r}: use ROLE=PATH, e.g. --source a=/models/A.safetensors")
        sources[role.strip()] = Path(path)
    return sources


def run_verify_command(args: argparse.Namespace) -> int:
    from .verify import verify_file

    report = _with_progress(
        args,
        lambda progress: verify_file(
            args.file, sources=_parse_sources(args.source), search_dirs=args.search_dir,
            allow_pickle=args.allow_pickle, progress=progress,
        ),
    )
    print(report.table())
    return 0 if report.identical else 1


def run_inspect_command(args: argparse.Namespace) -> int:
    from .inspect import inspect_models, plot

    if args.plot is not None and args.plot.exists() and not args.overwrite:
        from ..errors import OutputExistsError

        raise OutputExistsError(f"{args.plot}: already exists; pass --overwrite to replace it")
    report = _with_progress(
        args,
        lambda progress: inspect_models(
            args.models, with_hashes=not args.no_hashes, allow_pickle=args.allow_pickle, progress=progress,
            hash_cache=_hash_cache(args),
        ),
    )
    print(report.text())
    if args.plot is not None:
        print(f"plot written to {plot(report, args.plot, overwrite=args.overwrite)}")
    return 0
