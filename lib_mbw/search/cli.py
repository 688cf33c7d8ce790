"""``python -m lib_mbw search ...``: run or resume a block-merge search from flags or a config file.

Settings come from a JSON/TOML file (``--config``) with flags on top; the
effective settings are recorded in the run's manifest, so ``--resume RUN``
needs nothing else (flags given with it may change stopping, failures,
workers and outputs). Progress is a tqdm bar with ETA; Ctrl-C stops cleanly
(the model is restored, outputs of the best so far are written, the run can
be resumed), a second Ctrl-C aborts at once.

Exit codes: 0 finished, 2 bad input, or the run folder or an output could
not be written (full disk: the history stays intact, resume once there is
room), 3 stopped because evaluations kept failing or none succeeded, 130
stopped by Ctrl-C. Every check that can run before the first evaluation
runs before the run folder is created (``preflight``).
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from typing import Any, Callable

from ..blocks import BASE, BLOCKS
from ..errors import MBWError
from .stopping import DEFAULT_MAX_EVALUATIONS, DEFAULT_PATIENCE

EXAMPLES = """examples:
  # search with the diffusers backend and ImageReward, write the merged model to models/
  python -m lib_mbw search -a models/A.safetensors -b models/B.safetensors -o models/

  # a block mix of three models (2-5 in all; model 1 is loaded, the others are mixed in; docs/multi.md)
  python -m lib_mbw search A.safetensors B.safetensors C.safetensors --payloads payloads -o models/

  # settings from a file (JSON or TOML), a few of them changed by flags
  python -m lib_mbw search --config search.toml --max-evals 150 --patience 40

  # only some payloads, geometric tally, early abandon, blocks frozen/ranged/grouped
  python -m lib_mbw search -a A.safetensors -b B.safetensors --payload portrait --payload landscape \\
      --tally geometric --abandon-margin 0.5 --freeze OUT=0 --range IN00=0:0.5 --group IN01,IN02

  # warm start from an earlier run, or from the seed tool's history CSV (block order rt)
  python -m lib_mbw search -a A.safetensors -b B.safetensors --warm-start csv/history/20240101-120000-old-1a2b3c
  python -m lib_mbw search -a A.safetensors -b B.safetensors --warm-start old/run.csv --order rt

  # two remote WebUI workers (each renders one candidate at a time)
  python -m lib_mbw search -a A.safetensors -b B.safetensors --generator http \\
      --worker url=http://127.0.0.1:7860 --worker url=http://192.168.1.20:7860

  # the optimizer strategies (the default, the seed's GFO BayesianOptimizer, optuna's samplers, ...)
  python -m lib_mbw search --list-strategies

  # resume a run that was stopped or killed, allowing more evaluations
  python -m lib_mbw search --resume csv/history/20240101-120000-search-1a2b3c --max-evals 400

  # your own generator/scorer/strategy: package.module:factory
  python -m lib_mbw search --family sd1 --generator mypkg.gen:make --scorer mypkg.score:make"""


def _value(text: str) -> Any:
    """A ``K=V`` value: JSON if it parses (numbers, true/false, lists), else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        for part in item.split(",") if flag == "--worker" else [item]:
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise SystemExit(f"error: {flag} takes KEY=VALUE, got {item!r}")
            out[key.strip()] = _value(value)
    return out


def _float_pairs(items: list[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().upper()
        if not sep or key not in (*BLOCKS, BASE):
            raise SystemExit(f"error: {flag} takes BLOCK=VALUE with a block of {', '.join(BLOCKS)} or BASE, got {item!r}")
        if flag == "--range":
            low, colon, high = value.partition(":")
            try:
                out[key] = [float(low), float(high)]
            except ValueError:
                raise SystemExit(f"error: --range takes BLOCK=MIN:MAX, got {item!r}") from None
            if not colon:
                raise SystemExit(f"error: --range takes BLOCK=MIN:MAX, got {item!r}")
        else:
            try:
                out[key] = float(value)
            except ValueError:
                raise SystemExit(f"error: {flag} takes BLOCK=VALUE with a number, got {item!r}") from None
        if not all(math.isfinite(v) for v in (out[key] if isinstance(out[key], list) else [out[key]])):
            raise FlagError(f"{flag} takes finite numbers, got {item!r}")
    return out


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..cli import HelpFormatter

    parser = subparsers.add_parser(
        "search",
        help="search the best block weights for merging two models, or mixing 3-5 (or resume a search)",
        description=(
            "Search the block weights of a merge of model A and model B: each candidate is applied to the live UNet, "
            "the payloads are rendered and scored, and the optimizer proposes the next candidate until a stop "
            "criterion. Every evaluation is written to csv/history/<run-id>/history.csv at once; --resume continues "
            "a stopped or killed run. Unset flags take their value from --config, else the defaults shown."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    g = parser.add_argument_group("run")
    g.add_argument("--config", help="settings file (JSON or TOML) with the keys of the manifest's 'settings'")
    g.add_argument("--resume", metavar="RUN", help="continue the run in this folder (or with this run-id under --history-dir)")
    g.add_argument("--name", help="short name in the run-id (default: search)")
    g.add_argument("--seed", type=int, help="seed of the optimizer and of payload seeds of -1 (default: 0)")
    g.add_argument("--history-dir", help="where run folders are created (default: csv/history)")
    g.add_argument("--print-settings", action="store_true", help="print the effective settings as JSON and exit")
    g.add_argument("--list-strategies", action="store_true", help="list the optimizer strategies and exit")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g.add_argument("--plugin", action="append", metavar="PKG.MODULE:FACTORY",
                   help="enable this plugin (your own generator/scorer/strategy code) named in --config or in the run to resume; "
                        "files never enable code by themselves (repeat)")
    g = parser.add_argument_group("models")
    g.add_argument("models", nargs="*", metavar="MODEL",
                   help="2-5 checkpoints in mix order, instead of -a/-b (3-5: a block mix, models.c .. models.e)")
    g.add_argument("-a", "--model-a", help="model A (weight 0), a .safetensors file or a name the generator knows")
    g.add_argument("-b", "--model-b", help="model B (weight 1)")
    g.add_argument("--family", choices=["sd1", "sd2", "sdxl"], help="architecture (default: detected from model A)")
    g = parser.add_argument_group("payloads")
    g.add_argument("--payloads", help="payload folder (default: payloads)")
    g.add_argument("--payload", action="append", metavar="NAME", help="use this payload (repeat; default: all in the folder)")
    g.add_argument("--wildcards", help="wildcard folder for __name__ (default: payloads/wildcards)")
    g = parser.add_argument_group("search space and optimizer")
    g.add_argument("--strategy", help="optimizer strategy name, or package.module:factory (default: default)")
    g.add_argument("--strategy-option", action="append", metavar="K=V", help="option for the strategy (repeat)")
    g.add_argument("--levels", type=int, help="grid levels per block (default: 21 = steps of 0.05)")
    g.add_argument("--freeze", action="append", metavar="BLOCK=V", help="fix a block's weight (repeat)")
    g.add_argument("--range", action="append", metavar="BLOCK=LO:HI", help="search a block only within [LO, HI] (repeat)")
    g.add_argument("--group", action="append", metavar="B1,B2,...", help="blocks sharing one weight (repeat)")
    g.add_argument("--search-base", action="store_true", default=None, help="also search the text encoder (BASE) weight")
    g.add_argument("--init-random", type=int, help="random initial points (default: 10)")
    g.add_argument("--init-grid", type=int, help="grid initial points (default: 0)")
    g.add_argument("--init-vertex", type=int, help="vertex initial points (default: 0)")
    g.add_argument("--warm-start", action="append", metavar="PATH", help="run folder, history CSV (ours or the seed's) or recipe to learn from (repeat)")
    g.add_argument("--initial-recipe", action="append", metavar="RECIPE", help="recipe (file or text) to evaluate first (repeat)")
    g.add_argument("--order", choices=["canonical", "rt", "rt-fork"], help="block order of 27-value input such as seed CSVs (default: rt)")
    g.add_argument("--fold", choices=["mbw", "sd-mecha"], help="convention of 25/26-value presets (default: mbw)")
    g = parser.add_argument_group("stopping")
    g.add_argument("--max-evals", type=int, help=f"most evaluations (default: {DEFAULT_MAX_EVALUATIONS})")
    g.add_argument("--patience", type=int, help=f"stop after this many evaluations without improvement (default: {DEFAULT_PATIENCE}); 0 = never")
    g.add_argument("--tol-abs", type=float, help="an improvement must exceed this (score units)")
    g.add_argument("--tol-rel", type=float, help="an improvement must exceed this fraction of |best|")
    g.add_argument("--max-minutes", type=float, help="time budget in minutes")
    g.add_argument("--target-score", type=float, help="stop once the best score reaches this")
    g.add_argument("--max-failures", type=int, help="failed evaluations in a row before the run stops (default: 3)")
    g = parser.add_argument_group("scoring")
    g.add_argument("--scorer", help="scorer name or package.module:factory (default: imagereward)")
    g.add_argument("--scorer-option", action="append", metavar="K=V", help="option for the scorer (repeat)")
    g.add_argument("--tally", choices=["arithmetic", "geometric", "harmonic", "quadratic", "median", "min", "trimmed"], help="how per-payload scores combine (default: arithmetic)")
    g.add_argument("--tally-trim", type=float, help="fraction cut from each end for --tally trimmed (default: 0.1)")
    g.add_argument("--tally-positive", choices=["sigmoid", "none"], help="how power means handle negative scores (default: sigmoid)")
    g.add_argument("--abandon-margin", type=float, help="early abandon: skip the rest of a candidate this far below the best (score units)")
    g.add_argument("--abandon-after", type=int, help="payloads rendered before the first abandon check (default: half)")
    g.add_argument("--fidelity", choices=["off", "screen"], help="multi-fidelity screening: render candidates cheaply first, in full only the promising ones (default: off)")
    g.add_argument("--fidelity-steps", type=float, metavar="FRACTION", help="screening: fraction of the steps the cheap render uses (default: 0.5)")
    g.add_argument("--fidelity-payloads", type=int, metavar="N", help="screening: the cheap render uses the first N payloads (default: all)")
    g.add_argument("--fidelity-quantile", type=float, metavar="Q", help="screening: promote a candidate whose cheap score is at or above this quantile of the earlier ones (default: 0.5)")
    g.add_argument("--rescore-top", type=int, help="re-score this many top candidates on new seeds before choosing; 0 = off (default: 3)")
    g = parser.add_argument_group("generator")
    g.add_argument("--generator", help="generator name or package.module:factory (default: diffusers)")
    g.add_argument("--generator-option", action="append", metavar="K=V", help="option for every generator (repeat)")
    g.add_argument("--worker", action="append", metavar="K=V[,K=V]", help="one more generator with these options, e.g. url=http://host:7860 (repeat)")
    g = parser.add_argument_group("outputs")
    g.add_argument("-o", "--output", help="merged model: a .safetensors path or a folder (default: no merged model)")
    g.add_argument("--no-merge", action="store_true", default=None, help="do not write the merged model even with --output")
    g.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], help="dtype of the merged model (default: fp16)")
    g.add_argument("--base-from", help="text encoder of the merged model: a, b, merge or a model file (default: a)")
    g.add_argument("--vae-from", help="VAE of the merged model from this file (default: model A's)")
    g.add_argument("--overwrite", action="store_true", default=None, help="replace an existing merged model file")
    g.add_argument("--no-images", action="store_true", default=None, help="do not save the best recipe's images")
    parser.set_defaults(func=run_search)


class FlagError(MBWError):
    """A command-line flag has a value no search can use; the message names the flag."""


#: Numeric flags: (flag, attribute, lowest, lowest allowed itself?, highest, what the bound means).
_NUMBER_FLAGS: tuple[tuple[str, str, float | None, bool, float | None, str], ...] = (
    ("--seed", "seed", 0, True, 2**63 - 1, ""),
    ("--levels", "levels", 2, True, 1001, " (grid levels per block)"),
    ("--init-random", "init_random", 0, True, None, ""),
    ("--init-grid", "init_grid", 0, True, None, ""),
    ("--init-vertex", "init_vertex", 0, True, None, ""),
    ("--max-evals", "max_evals", 1, True, None, ""),
    ("--patience", "patience", 0, True, None, " (0 turns early stop off)"),
    ("--tol-abs", "tol_abs", 0, True, None, ""),
    ("--tol-rel", "tol_rel", 0, True, None, ""),
    ("--max-minutes", "max_minutes", 0, False, None, ""),
    ("--target-score", "target_score", None, True, None, ""),
    ("--max-failures", "max_failures", 1, True, None, ""),
    ("--tally-trim", "tally_trim", 0, True, 0.5, " (fraction cut from each end; below 0.5)"),
    ("--abandon-margin", "abandon_margin", 0, True, None, " (score units)"),
    ("--abandon-after", "abandon_after", 1, True, None, " (payloads)"),
    ("--fidelity-steps", "fidelity_steps", 0, False, 1, " (a fraction of the steps)"),
    ("--fidelity-payloads", "fidelity_payloads", 1, True, None, " (payloads)"),
    ("--fidelity-quantile", "fidelity_quantile", 0, True, 1, " (a quantile, below 1)"),
    ("--rescore-top", "rescore_top", 0, True, None, " (0 turns re-scoring off)"),
)


def check_flags(args: argparse.Namespace) -> None:
    """Refuse a numeric flag that is not finite or out of range, naming the flag (before any file is read)."""
    for flag, attribute, low, low_ok, high, meaning in _NUMBER_FLAGS:
        value = getattr(args, attribute, None)
        if value is None:
            continue
        if not math.isfinite(value):
            raise FlagError(f"{flag} must be a finite number, got {value}")
        too_low = low is not None and (value < low or (value == low and not low_ok))
        too_high = high is not None and (value > high or (value == high and attribute in ("tally_trim", "fidelity_quantile")))
        if too_low or too_high:
            if high is None:
                bound = f"{'≥' if low_ok else '>'} {low:g}"
            elif low is None:
                bound = f"≤ {high:g}"
            else:
                bound = f"from {low:g} to {high:g}"
            raise FlagError(f"{flag} must be {bound}{meaning}, got {value:g}")


def _positional_models(args: argparse.Namespace) -> list[str]:
    """The MODEL arguments (2-5), checked against -a/-b."""
    models = list(getattr(args, "models", None) or [])
    if not models:
        return []
    if args.model_a or args.model_b:
        raise FlagError("give the models either as MODEL arguments or with -a/-b, not both")
    if not 2 <= len(models) <= 5:
        raise FlagError(f"search takes 2 to 5 models (MODEL arguments), got {len(models)}")
    return models


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Settings given by flags (only the flags that were set), as a nested mapping."""
    out: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    put("name", args.name)
    put("seed", args.seed)
    put("history_dir", args.history_dir)
    put("models.a", args.model_a)
    put("models.b", args.model_b)
    for role, model in zip("abcde", _positional_models(args)):
        put(f"models.{role}", model)
    put("models.family", args.family)
    put("payloads.folder", args.payloads)
    put("payloads.names", args.payload)
    put("payloads.wildcards", args.wildcards)
    put("strategy", args.strategy)
    put("strategy_options", _pairs(args.strategy_option, "--strategy-option") or None)
    put("space.levels", args.levels)
    put("space.frozen", _float_pairs(args.freeze, "--freeze") or None)
    put("space.ranges", _float_pairs(args.range, "--range") or None)
    put("space.groups", [[b.strip().upper() for b in g.split(",") if b.strip()] for g in args.group] if args.group else None)
    put("space.search_base", args.search_base)
    put("init.random", args.init_random)
    put("init.grid", args.init_grid)
    put("init.vertex", args.init_vertex)
    put("warm_start", args.warm_start)
    put("initial_recipes", args.initial_recipe)
    put("recipe_order", args.order)
    put("recipe_fold", args.fold)
    put("stop.max_evaluations", args.max_evals)
    if args.patience is not None:  # 0 turns early stop off, which is None in the settings (check_flags refused < 0)
        out.setdefault("stop", {})["patience"] = args.patience if args.patience > 0 else None
    put("stop.tol_abs", args.tol_abs)
    put("stop.tol_rel", args.tol_rel)
    put("stop.max_minutes", args.max_minutes)
    put("stop.target_score", args.target_score)
    put("max_failures", args.max_failures)
    put("scorer.name", args.scorer)
    put("scorer.options", _pairs(args.scorer_option, "--scorer-option") or None)
    put("tally.method", args.tally)
    put("tally.trim", args.tally_trim)
    put("tally.positive", args.tally_positive)
    put("abandon.margin", args.abandon_margin)
    put("abandon.after", args.abandon_after)
    put("fidelity.mode", args.fidelity)
    put("fidelity.steps_fraction", args.fidelity_steps)
    put("fidelity.payloads", args.fidelity_payloads)
    put("fidelity.promote_quantile", args.fidelity_quantile)
    put("rescore_top", args.rescore_top)
    put("generator.name", args.generator)
    put("generator.options", _pairs(args.generator_option, "--generator-option") or None)
    put("generator.workers", [_pairs([w], "--worker") for w in args.worker] if args.worker else None)
    put("output.model", args.output)
    put("output.merge", False if args.no_merge else None)
    put("output.dtype", args.dtype)
    put("output.base_from", args.base_from)
    put("output.vae_from", args.vae_from)
    put("output.overwrite", args.overwrite)
    put("output.save_images", False if args.no_images else None)
    return out


class ProgressPrinter:
    """A listener that draws a tqdm bar (with ETA) and prints the notable events."""

    def __init__(self, quiet: bool = False, on_failure_pause: Callable[[str], None] | None = None) -> None:
        self.quiet = quiet
        self.on_failure_pause = on_failure_pause
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        from . import events as ev

        if isinstance(event, ev.RunStarted):
            self._say(f"run {event.run_id} in {event.run_dir}: {event.payloads} payload(s), {event.images_per_evaluation} image(s) per evaluation, strategy {event.strategy}")
            if event.resumed_evaluations:
                self._say(f"resuming after {event.resumed_evaluations} evaluation(s)")
            if not self.quiet:
                from tqdm import tqdm

                self.bar = tqdm(total=event.max_evaluations, initial=event.resumed_evaluations, unit="eval", dynamic_ncols=True, file=sys.stderr)
        elif isinstance(event, ev.IterationDone):
            if event.phase == "search":
                if self.bar is not None:
                    self.bar.update(max(0, event.evaluations - self.bar.n))
                    best = "-" if event.best_score is None else f"{event.best_score:.4g}"
                    last = event.status if event.score is None else f"{event.score:.4g}"
                    self.bar.set_postfix_str(f"best {best}, last {last}", refresh=True)
            else:
                score = "failed" if event.score is None else f"{event.score:.4g}"
                self._say(f"re-score of a top candidate (history row {event.index}): {score}")
        elif isinstance(event, ev.EvaluationFailure):
            self._say(f"evaluation {event.index} failed: {event.reason}")
        elif isinstance(event, ev.Paused):
            if not event.by_user and self.on_failure_pause is not None:
                self.on_failure_pause(event.reason)
            else:
                self._say(f"paused: {event.reason}")
        elif isinstance(event, ev.Stopped):
            self._close_bar()
            if event.reason.value not in ("failures", "write_error"):  # those end with an error line
                self._say(f"search stopped ({event.reason.value}): {event.message}")
        elif isinstance(event, ev.FinalRecommendation):
            self._close_bar()
            if event.recipe is None:
                self._say(f"no recipe: {event.reason}")
            else:
                self._say(f"returned recipe (score {event.score:.4g}): {event.reason}")

    def _say(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def strategy_table() -> str:
    """One line per optimizer strategy: name, engine, description; the default and the seed's marked."""
    from .optimizer import DEFAULT_STRATEGY, SEED_STRATEGY, STRATEGIES
    width = max(len(name) for name in STRATEGIES)
    lines = []
    for name, info in STRATEGIES.items():
        mark = " (default)" if name == DEFAULT_STRATEGY else " (seed's choice)" if name == SEED_STRATEGY else ""
        lines.append(f"{name:<{width}}  [{info.engine}]{mark}\n{'':<{width}}  {info.description}")
    return "\n".join(lines) + "\n\nAliases: 'default', 'seed'. Your own: --strategy package.module:factory."


def enabled_plugins(args: argparse.Namespace) -> frozenset[str]:
    """Plugins the command line enables: ``--plugin`` and plugins named directly in --generator/--scorer/--strategy."""
    from .plugins import is_plugin, parse_plugins

    named = [name for name in (args.generator, args.scorer, args.strategy) if name and is_plugin(name)]
    return parse_plugins([*(args.plugin or ()), *named])


def run_search(args: argparse.Namespace) -> int:
    if args.list_strategies:
        print(strategy_table())
        return 0
    from pathlib import Path

    from ..recipe import Recipe, to_positional
    from .history import read_manifest
    from .preflight import check_output, preflight
    from .runlock import check_run_free
    from .session import find_run, resume_search, start_search
    from .settings import SearchSettings, from_mapping, merge_mappings, read_settings_file

    check_flags(args)
    overrides = overrides_from_args(args)
    plugins = enabled_plugins(args)
    session_ref: dict[str, Any] = {}

    def stop_for_failures(reason: str) -> None:
        session_ref["session"].run.stop_after_failures()

    printer = ProgressPrinter(quiet=args.quiet, on_failure_pause=stop_for_failures)
    if args.resume:
        if args.config:
            raise SystemExit("error: --resume takes its settings from the run's manifest; leave out --config")
        folder = find_run(args.resume, overrides.get("history_dir", "csv/history"))
        if args.print_settings:
            source = f"{folder}/manifest.json"
            settings = from_mapping(SearchSettings, merge_mappings(read_manifest(folder)["settings"], overrides), source).validate(source)
            check_output(settings, None, create=False)
            print(settings.to_json())
            return 0
        check_run_free(folder)  # refused at once, not after the models are loaded
        session = resume_search(folder, overrides=overrides, listeners=[printer], plugins=plugins)
    else:
        source = args.config or "command line"
        base = read_settings_file(args.config) if args.config else {}
        settings = from_mapping(SearchSettings, merge_mappings(base, overrides), source).validate(source)
        if args.print_settings:
            preflight(settings, create=False)  # everything the search would check, nothing created
            print(settings.to_json())
            return 0
        session = start_search(settings, listeners=[printer], plugins=plugins)
    session_ref["session"] = session

    def on_interrupt(signum: int, frame: Any) -> None:
        if session.run.stop_requested:
            raise KeyboardInterrupt
        session.run.request_stop(f"stopped by user (Ctrl-C); continue with: python -m lib_mbw search --resume {session.run_dir}")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        outcome = session.execute()
    finally:
        signal.signal(signal.SIGINT, previous)
        printer._close_bar()
    result = outcome.result
    reason = result.stop_reason.value if result.stop_reason is not None else None
    print(f"run folder: {session.run_dir}")
    if result.recipe is not None:
        print(f"best recipe ({result.reason}):")
        print(f"  score:     {result.score:.6g}")
        if isinstance(result.recipe, Recipe):
            print(f"  canonical: {to_positional(result.recipe, 'canonical')}")
        else:
            named = result.recipe.with_models([Path(m).name for m in session.settings.models.listed()])
            print("\n".join("  " + line for line in named.describe().splitlines()))
    for name, path in outcome.outputs.items():
        print(f"  {name}: {path}")
    if reason in ("failures", "write_error"):
        print(f"error: search stopped ({reason}): {result.stop_message}", file=sys.stderr)
    elif result.recipe is None:
        failed = sum(r.status == "failed" for r in result.rows)
        last = next((r.reason for r in reversed(result.rows) if r.status == "failed"), "")
        cause = f": {failed} of {result.evaluations} evaluations failed (last: {last})" if failed else ""
        print(f"error: no evaluation succeeded{cause}; nothing to merge", file=sys.stderr)
    for error in outcome.errors:
        print(f"error: {error}", file=sys.stderr)
    if reason == "write_error":
        return 2
    if reason == "failures" or result.recipe is None:
        return 3
    if reason == "user_abort":
        return 130
    return 2 if outcome.errors else 0
