"""The embedded demo: a real search on tiny offline models, with a known answer.

``python -m lib_mbw demo`` builds two tiny SD1-layout checkpoints (nothing is
downloaded), picks a hidden target recipe, renders reference images with the
target merge, and then runs the same search a user runs — ``SearchSession``
with the optimizer, the runtime merger, the diffusers generator, the
reference-similarity scorer, the crash-safe history, plots and the merged
model — to find the target again. It ends by comparing the returned recipe's
score with the hidden recipe's and with random recipes':
``gap_closed = (returned - mean random) / (hidden - mean random)``.

The reference scorer is deterministic (same seeds, same images), so the demo
sets ``rescore_top = 0``: re-scoring with new seeds would compare against
references rendered with the old ones.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .blocks import present_blocks
from .recipe import Recipe, format_weight, to_positional

#: The demo's prompts: three payloads of one 64x64 image each.
DEMO_PROMPTS: tuple[tuple[str, str, int], ...] = (
    ("castle", "a castle on a hill at sunset, oil painting", 11),
    ("fox", "a red fox sitting in fresh snow, photo", 23),
    ("city", "a city street at night with neon lights", 37),
)
DEMO_FAMILY = "sd1"
LEVELS = 21

EXAMPLES = """examples:
  python -m lib_mbw demo                          # ~150 evaluations, about 1-3 minutes on 2 CPU cores
  python -m lib_mbw demo --evaluations 60 --seed 3
  python -m lib_mbw demo --strategy CmaEsOptimizer  # any strategy of `python -m lib_mbw search --list-strategies`
  python -m lib_mbw demo --output /tmp/mbw-demo   # models, payloads, references and runs go there"""


@dataclass
class DemoSettings:
    """What the demo runs: search length, seeds, strategy, and where files go."""

    evaluations: int = 150
    seed: int = 0
    strategy: str = "default"
    output: Path | None = None  # default: <data root>/demo-run (models in <data root>/demo)
    models: Path | None = None  # demo models folder; default: <output>/models, or <data root>/demo
    random_samples: int = 12
    steps: int = 4
    size: int = 64
    merge: bool = True
    quiet: bool = False


@dataclass
class DemoReport:
    """The demo's outcome, measured on the same payloads and scorer as the search."""

    run_dir: Path
    hidden: Recipe
    returned: Recipe | None
    returned_score: float | None
    hidden_score: float
    random_scores: list[float]
    evaluations: int
    seconds: float
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def random_mean(self) -> float:
        return statistics.fmean(self.random_scores)

    @property
    def gap_closed(self) -> float:
        """Fraction of the gap from the mean random recipe (0) to the hidden recipe (1) the search closed."""
        if self.returned_score is None:
            return 0.0
        gap = self.hidden_score - self.random_mean
        return (self.returned_score - self.random_mean) / gap if gap else 0.0


def hidden_recipe(seed: int) -> Recipe:
    """The target the demo hides: a random recipe on the search grid (not the uniform 0.5 point)."""
    rng = random.Random(f"auto-mbw-demo-target-{seed}")
    return Recipe({b: rng.randrange(LEVELS) / (LEVELS - 1) for b in present_blocks(DEMO_FAMILY)}, source="hidden demo recipe")


def random_recipes(seed: int, count: int) -> list[Recipe]:
    """Uniform random grid recipes: the baseline the gap is measured from."""
    rng = random.Random(f"auto-mbw-demo-random-{seed}")
    return [Recipe({b: rng.randrange(LEVELS) / (LEVELS - 1) for b in present_blocks(DEMO_FAMILY)}) for _ in range(count)]


def write_demo_payloads(folder: Path, settings: DemoSettings) -> Path:
    """The demo's payload files (JSON, as users write them) in ``folder``."""
    from .fileio import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    for name, prompt, seed in DEMO_PROMPTS:
        payload = {
            "prompt": prompt,
            "negative_prompt": "",
            "steps": settings.steps,
            "cfg_scale": 7.0,
            "sampler_name": "Euler",
            "width": settings.size,
            "height": settings.size,
            "seed": seed,
            "batch_size": 1,
        }
        write_atomic(folder / f"{name}.json", json.dumps(payload, indent=2) + "\n")
    return folder


def render_payloads(generator: Any, payloads: Sequence[Any]) -> list[list[Any]]:
    """The images of each payload, rendered as the search loop renders them (batched where the generator can)."""
    if len(payloads) > 1 and callable(getattr(generator, "generate_many", None)):
        return list(generator.generate_many(payloads))
    return [list(generator.generate(payload)) for payload in payloads]


def _evaluate(generator: Any, scorer: Any, payloads: Sequence[Any], recipe: Recipe) -> float:
    """The arithmetic mean over payloads of the mean image score (the search's default tally)."""
    generator.apply(recipe)
    means = [statistics.fmean(scorer.score(images)) for images in render_payloads(generator, payloads)]
    return statistics.fmean(means)


def _say(settings: DemoSettings, text: str) -> None:
    if not settings.quiet:
        print(text, file=sys.stderr, flush=True)


def run_demo(settings: DemoSettings) -> DemoReport:
    """Build the tiny models, hide a recipe, search for it, and measure how close the search got."""
    from .demo_models import default_demo_folder, ensure_demo_models
    from .generators.diffusers import DiffusersGenerator, DiffusersOptions
    from .payloads import load_payloads, prepare_payloads
    from .scorers.reference import ReferenceScorer, save_references
    from .search.cli import ProgressPrinter
    from .search.session import start_search
    from .search.settings import SearchSettings, settings_from_dict

    started = time.perf_counter()
    root = Path(settings.output) if settings.output else default_demo_folder().parent / "demo-run"
    models_dir = settings.models or (root / "models" if settings.output else None)
    models = ensure_demo_models(models_dir, seed=settings.seed)
    _say(settings, f"demo models: {models.model_a.name}, {models.model_b.name} in {models.folder}")
    payload_dir = write_demo_payloads(root / f"payloads-{settings.seed}", settings)
    (root / "merged").mkdir(parents=True, exist_ok=True)
    payloads = prepare_payloads(load_payloads(payload_dir), None, settings.seed)
    hidden = hidden_recipe(settings.seed)
    options = DiffusersOptions(config_dir=models.config_dir, cpu_threads=1)
    generator = DiffusersGenerator(models.model_a, models.model_b, options=options)
    try:
        generator.apply(hidden)
        references = [image for images in render_payloads(generator, payloads) for image in images]
        ref_dir = root / f"references-{settings.seed}"
        save_references(ref_dir, references, overwrite=True)
        scorer = ReferenceScorer({(img.payload.name, img.index): img.image for img in references}, metric="ssim")
        hidden_score = _evaluate(generator, scorer, payloads, hidden)
        baseline = [_evaluate(generator, scorer, payloads, r) for r in random_recipes(settings.seed, settings.random_samples)]
        generator.restore()
        _say(settings, f"hidden recipe scores {hidden_score:.4f}; {len(baseline)} random recipes score {statistics.fmean(baseline):.4f} on average")

        search = settings_from_dict(
            {
                "name": f"demo-seed{settings.seed}",
                "seed": settings.seed,
                "models": {"a": str(models.model_a), "b": str(models.model_b), "family": DEMO_FAMILY},
                "payloads": {"folder": str(payload_dir), "wildcards": None},
                "strategy": settings.strategy,
                "stop": {"max_evaluations": settings.evaluations},
                "rescore_top": 0,
                "generator": {"name": "diffusers", "options": {"config_dir": str(models.config_dir), "cpu_threads": 1}},
                "scorer": {"name": "reference", "options": {"folder": str(ref_dir), "metric": "ssim"}},
                "history_dir": str(root / "history"),
                "output": {"model": str(root / "merged"), "merge": settings.merge, "dtype": "fp32", "overwrite": False},
            },
            source="demo settings",
        )
        assert isinstance(search, SearchSettings)
        printer = ProgressPrinter(quiet=settings.quiet)
        session = start_search(search, listeners=[printer], generators=[generator], scorer=scorer)
        outcome = session.execute()
        printer._close_bar()
    finally:
        generator.close()
    result = outcome.result
    returned_score = result.score
    if result.recipe is not None and not any(r.recipe == result.recipe and r.score is not None for r in result.rows if r.status == "ok"):
        # The optimizer recommended a recipe it never rendered: measure it for an honest number.
        check = DiffusersGenerator(models.model_a, models.model_b, options=options)
        try:
            returned_score = _evaluate(check, scorer, payloads, result.recipe)
        finally:
            check.close()
    for error in outcome.errors:
        _say(settings, f"warning: {error}")
    return DemoReport(
        run_dir=session.run_dir,
        hidden=hidden,
        returned=result.recipe,
        returned_score=returned_score,
        hidden_score=hidden_score,
        random_scores=baseline,
        evaluations=result.evaluations,
        seconds=time.perf_counter() - started,
        outputs=dict(outcome.outputs),
    )


def print_report(report: DemoReport) -> None:
    """The summary a newcomer reads: what was hidden, what was found, where the files are."""
    print("auto-MBW demo")
    print(f"  run folder:        {report.run_dir}")
    print(f"  evaluations:       {report.evaluations}")
    print(f"  hidden recipe:     {to_positional(report.hidden)}")
    if report.returned is not None:
        print(f"  returned recipe:   {to_positional(report.returned)}")
        diffs = [abs(report.returned.weights[b] - w) for b, w in report.hidden.weights.items()]
        print(f"  mean |difference|: {format_weight(statistics.fmean(diffs))} per block")
    score = "-" if report.returned_score is None else f"{report.returned_score:.4f}"
    print(f"  score (SSIM):      returned {score}, hidden {report.hidden_score:.4f}, random recipes {report.random_mean:.4f} (mean of {len(report.random_scores)})")
    for name, path in sorted(report.outputs.items()):
        print(f"  {name + ':':<18} {path}")
    print(f"demo gap_closed={report.gap_closed:.3f} seconds={report.seconds:.1f}")


def register(subparsers: argparse._SubParsersAction) -> None:
    from .cli import HelpFormatter

    parser = subparsers.add_parser(
        "demo",
        help="run a full search on tiny offline models that tries to find a hidden recipe",
        description=(
            "Build two tiny SD1-layout models (no download), hide a target recipe, render reference images with it, "
            "then run a real search (optimizer, runtime merge, diffusers generator, reference scorer, history, plots, "
            "merged model) that tries to find it. The last line reads 'demo gap_closed=<fraction> seconds=<s>': the "
            "fraction of the score gap between random recipes and the hidden one that the search closed."
        ),
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    defaults = DemoSettings()
    parser.add_argument("--evaluations", type=int, default=defaults.evaluations, help="maximum evaluations of the search")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the models, the hidden recipe and the search")
    parser.add_argument("--strategy", default=defaults.strategy, help="optimizer strategy (see `search --list-strategies`)")
    parser.add_argument("--output", type=Path, default=None, help="folder for models, payloads, references, history and the merged model (default: data/demo-run)")
    parser.add_argument("--models", type=Path, default=None, help="folder of the demo models (built there if missing; default: data/demo)")
    parser.add_argument("--random-samples", type=int, default=defaults.random_samples, help="random recipes scored for the baseline")
    parser.add_argument("--no-merge", action="store_true", help="skip writing the merged model at the end")
    parser.add_argument("--n-models", type=int, default=2, choices=range(2, 6), metavar="N",
                        help="mix N tiny models (2-5); with N > 2, --evaluations counts per chain step (N-1 times it in all)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = DemoSettings(
        evaluations=args.evaluations,
        seed=args.seed,
        strategy=args.strategy,
        output=args.output,
        models=args.models,
        random_samples=args.random_samples,
        merge=not args.no_merge,
        quiet=args.quiet,
    )
    if args.n_models > 2:  # the N-model demo (lib_mbw.demo_n)
        from .demo_n import print_mix_report, run_mix_demo

        print_mix_report(run_mix_demo(settings, args.n_models, args.evaluations * (args.n_models - 1)))
        return 0
    print_report(run_demo(settings))
    return 0
