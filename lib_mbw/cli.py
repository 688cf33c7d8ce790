"""The ``python -m lib_mbw`` command line: a dispatcher over subcommand modules.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds
its subcommands and sets ``func(args) -> int`` on them. Modules import their
heavy dependencies (torch, gradio) inside the handlers, so ``--help`` is fast.
Any ``MBWError`` becomes a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Sequence

from . import __version__
from .errors import MBWError

COMMAND_MODULES: tuple[str, ...] = (
    "lib_mbw.demo",
    "lib_mbw.recipe_cli",
    "lib_mbw.merge.cli",
    "lib_mbw.search.cli",
    "lib_mbw.search.mix_cli",
    "lib_mbw.ui.cli",
)

EPILOG = """examples:
  python -m lib_mbw demo                       full search on tiny offline models
  python -m lib_mbw merge A.safetensors B.safetensors -o AB.safetensors --alpha 0.5
  python -m lib_mbw recipe convert "0.5,0.5,..." --to rt
run "python -m lib_mbw COMMAND --help" for the options and examples of a command."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps example blocks as written and shows defaults (unless unset, or the help already states one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or unset or (isinstance(action.default, list) and not action.default):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lib_mbw",
        description="auto-MBW: find and build the best block-weighted merge of two Stable Diffusion checkpoints.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"auto-MBW {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # clip-anytorch (imported by image-reward) warns about pkg_resources on every start; it is pinned and harmless.
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MBWError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
