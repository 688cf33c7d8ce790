"""``python -m lib_mbw ui``: the standalone app (the WebUI tab's interface on a local web server, no WebUI needed)."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

EXAMPLES = """examples:
  # models from ./models, payloads from ./payloads, runs in ./csv/history; open http://127.0.0.1:7861
  python -m lib_mbw ui

  # try it on tiny offline demo models (nothing downloaded): press Search, watch it find a hidden recipe
  python -m lib_mbw ui --demo

  # another models folder and port, reachable from the local network
  python -m lib_mbw ui --models /data/sd-models --host 0.0.0.0 --port 7870

  # a generator from your own code (package.module:factory) with options
  python -m lib_mbw ui --generator mypkg.gen:make --generator-option device=cuda:1

  # let the form's users pick your own scorer (plugins are enabled only here, never by a client)
  python -m lib_mbw ui --plugin mypkg.scores:make_scorer

  # start with the form filled from a settings file (the format of "search --config")
  python -m lib_mbw ui --config search.toml"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import HelpFormatter

    parser = subparsers.add_parser(
        "ui",
        help="the search interface as a standalone web app (no WebUI needed)",
        description=(
            "Serve the auto-MBW interface (the same one as the WebUI tab) on a local web server. Models A and B are "
            "picked from the .safetensors files (and diffusers folders) in --models; images are rendered with the "
            "diffusers backend unless --generator names another. Ctrl-C stops a running search cleanly (the model is "
            "restored and the run can be resumed from 'Past runs') and shuts the server down."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (0.0.0.0 = every interface: anyone who reaches this port can run searches; "
                             "see docs/ui.md 'Security')")
    parser.add_argument("--port", type=int, default=7861, help="port to listen on")
    parser.add_argument("--models", default="models", help="folder with the checkpoints to merge (searched recursively); merged models are saved here")
    parser.add_argument("--payloads", default="payloads", help="payload folder (wildcards in its wildcards/ subfolder)")
    parser.add_argument("--history-dir", default="csv/history", help="where run folders are created and read")
    parser.add_argument("--generator", default="diffusers", help="generator name or package.module:factory")
    parser.add_argument("--generator-option", action="append", metavar="K=V", help="option for the generator (repeat)")
    parser.add_argument("--plugin", action="append", metavar="PKG.MODULE:FACTORY",
                        help="a scorer/strategy of your own code the form may use (repeat); clients can pick only registered "
                             "names and these")
    parser.add_argument("--config", help="fill the search form from this settings file (JSON or TOML, as for 'search --config')")
    parser.add_argument("--demo", action="store_true",
                        help="use the demo's tiny offline models, payloads and references (built on first use) instead of "
                             "--models/--payloads/--history-dir/--generator; the form is set to find the demo's hidden recipe")
    parser.add_argument("--demo-dir", help="folder for the demo's files (default: data/demo-ui, or $AUTO_MBW_DATA/demo-ui)")
    parser.set_defaults(func=run_ui)


def make_host(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from ..hosts.base import HostPaths
    from ..hosts.standalone import StandaloneHost
    from ..search.cli import _pairs

    payloads = Path(args.payloads)
    paths = HostPaths(payloads=payloads, wildcards=payloads / "wildcards", history=Path(args.history_dir), models=Path(args.models))
    return StandaloneHost(args.models, generator=args.generator, generator_options=_pairs(args.generator_option, "--generator-option"), paths=paths)


def form_defaults(path: str, host: Any) -> Any:
    """The search form filled from a settings file; models are matched to the host's titles by file."""
    from pathlib import Path

    from ..errors import MBWError
    from ..search.settings import SearchSettings, from_mapping, read_settings_file
    from .controller import title_for_path
    from .form import form_from_settings

    settings = from_mapping(SearchSettings, read_settings_file(path), path).validate()

    def title_of(model: str) -> str | None:
        candidates = [model, str(Path(host.models_dir) / model)] if not Path(model).is_absolute() else [model]
        for candidate in candidates:
            try:
                return title_for_path(host, candidate)
            except MBWError:
                continue
        return None

    return form_from_settings(settings, title_of)


def run_ui(args: argparse.Namespace) -> int:
    from . import compat
    from .app import build_ui, controller_for

    defaults = None
    if args.demo:
        from .demo import prepare_demo

        print("preparing the demo models, payloads and references (first time: a few seconds)", file=sys.stderr)
        demo = prepare_demo(args.demo_dir)
        host, defaults = demo.host, demo.defaults
    else:
        host = make_host(args)
    if args.config:
        defaults = form_defaults(args.config, host)
    from ..search.plugins import parse_plugins, plugins_from_env

    plugins = parse_plugins(args.plugin or ()) | plugins_from_env()
    blocks = build_ui(host, defaults, plugins=plugins)
    compat.enable_queue(blocks)
    if not host.list_models():
        print(f"note: no .safetensors checkpoints in {host.models_dir}; put models A and B there (or pass --models DIR) "
              "and press 'Refresh model list'", file=sys.stderr)
    print(f"auto-MBW UI on http://{args.host}:{args.port} (models from {host.models_dir}); Ctrl-C to quit", file=sys.stderr)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops a running search cleanly, like Ctrl-C
    try:
        paths = host.paths
        compat.launch(blocks, server_name=args.host, server_port=args.port, block=True, quiet=True,
                      private=[host.models_dir, paths.models, paths.history, paths.payloads])
    except KeyboardInterrupt:
        pass
    finally:
        controller = controller_for(host)
        if controller.active:
            print("stopping the running search (the model is restored; resume it later from Past runs)", file=sys.stderr)
            controller.stop()
            controller.wait(120)
        blocks.close()
    return 0
