"""The N-model demo: ``python -m lib_mbw demo --n-models 3`` (2-5 tiny models, a hidden N-model recipe).

Like the two-model demo (``demo``), but every block mixes N tiny fine-tunes
of one base: it builds the models (models 1 and 2 are the two-model demo's A
and B; the others are more fine-tunes of the same base), hides a random
N-model recipe on the search grid, renders reference images with it through
the runtime mix (``runtime.multi.MultiMerger`` inside the diffusers
generator), and searches for it with ``search.mix_search.run_mix_search``
(the loop of ``mix-search``: the default strategy over a ``MixSearchSpace``,
the same evaluations per dimension as the two-model demo, 150 x (N - 1)),
which records ``history.jsonl``, writes the returned recipe as JSON and chain
lines, mixes it offline into a ``.safetensors`` and verifies that bit for bit. The last line is ``demo gap_closed=<x> seconds=<s>``, measured as
in the two-model demo.

Not done here (the two-model demo does it through ``SearchSession``): plots,
resume of an interrupted demo search, and the UI.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .demo import DEMO_FAMILY, LEVELS, DemoSettings, write_demo_payloads
from .recipe_n import RecipeN

NAMES = "abcde"


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class MixDemoModels:
    folder: Path
    models: tuple[Path, ...]
    config_dir: Path
    seed: int


def demo_state_dicts_n(seed: int, n: int) -> list[dict[str, torch.Tensor]]:
    """N demo fine-tunes of one base; the first two are ``demo_models.demo_state_dicts(seed)``."""
    from .demo_models import DemoShape, demo_config, demo_state_dicts, shape_unet, smooth_vae_decoder
    from .keyspec import UNET_PREFIX, checkpoint_layout
    from .synthetic import random_state_dict

    shape = DemoShape()
    first, second = demo_state_dicts(seed, shape)
    models = [first, second]
    if n > 2:
        layout = checkpoint_layout(demo_config())
        base = random_state_dict(layout, 3 * seed)
        if shape.smooth_vae:
            smooth_vae_decoder(base)
        unet_layout = {k: s for k, s in layout.items() if k.startswith(UNET_PREFIX)}
        for k in range(3, n + 1):
            own = random_state_dict(unet_layout, 1_000_003 + 10 * seed + k)  # apart from every 3*seed+offset
            state = dict(base)
            for key, tensor in own.items():
                state[key] = torch.lerp(base[key], tensor, shape.finetune)
            shape_unet(state, shape)
            models.append(state)
    return models[:n]


def ensure_mix_demo_models(folder: Path, seed: int, n: int) -> MixDemoModels:
    """``n`` demo models and their config folder in ``folder``, built once (a stamp says what is there)."""
    from safetensors.torch import save_file

    from .demo_models import FAMILY, demo_config
    from .errors import OutputExistsError
    from .generators.diffusers_files import publish_folder, write_config_folder

    stamp = {"format": "auto-mbw-mix-demo", "version": 1, "seed": seed, "n": n}
    paths = tuple(folder / f"tiny-sd1-{NAMES[i]}.safetensors" for i in range(n))
    result = MixDemoModels(folder, paths, folder / "config", seed)
    try:
        if json.loads((folder / "demo.json").read_text(encoding="utf-8")) == stamp:
            return result
    except (OSError, ValueError):
        pass
    if folder.exists() and any(folder.iterdir()):
        raise OutputExistsError(f"{folder}: exists and is not an auto-MBW N-model demo folder; choose another folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=".mixdemo-", dir=folder.parent))
    write_config_folder(demo_config(), FAMILY, build / "config")
    for i, state in enumerate(demo_state_dicts_n(seed, n)):
        meta = {"auto_mbw_demo": json.dumps({"model": NAMES[i], "seed": seed}, sort_keys=True)}
        save_file(state, str(build / paths[i].name), metadata=meta)
    (build / "demo.json").write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    if folder.exists():
        folder.rmdir()
    publish_folder(build, folder)
    return result


# ---------------------------------------------------------------- recipes


def hidden_mix_recipe(seed: int, n: int, models: Sequence[str]) -> RecipeN:
    """The target: random chain weights on the search grid, per block and step."""
    from .blocks import present_blocks

    rng = random.Random(f"auto-mbw-mix-demo-target-{n}-{seed}")
    chain = {b: tuple(rng.randrange(LEVELS) / (LEVELS - 1) for _ in range(n - 1)) for b in present_blocks(DEMO_FAMILY)}
    return RecipeN.from_chain(models, chain, "hidden demo recipe")


def random_mix_recipes(seed: int, n: int, models: Sequence[str], count: int) -> list[RecipeN]:
    from .blocks import present_blocks

    rng = random.Random(f"auto-mbw-mix-demo-random-{n}-{seed}")
    return [
        RecipeN.from_chain(models, {b: tuple(rng.randrange(LEVELS) / (LEVELS - 1) for _ in range(n - 1)) for b in present_blocks(DEMO_FAMILY)})
        for _ in range(count)
    ]


# ---------------------------------------------------------------- the run


@dataclass
class MixDemoReport:
    run_dir: Path
    n_models: int
    hidden: RecipeN
    returned: RecipeN | None
    returned_score: float | None
    hidden_score: float
    random_scores: list[float]
    evaluations: int
    seconds: float
    verified: bool = False
    outputs: dict[str, Path] = field(default_factory=dict)

    @property
    def random_mean(self) -> float:
        return statistics.fmean(self.random_scores)

    @property
    def gap_closed(self) -> float:
        if self.returned_score is None:
            return 0.0
        gap = self.hidden_score - self.random_mean
        return (self.returned_score - self.random_mean) / gap if gap else 0.0


def _say(settings: DemoSettings, text: str) -> None:
    if not settings.quiet:
        print(text, file=sys.stderr, flush=True)


def run_mix_demo(settings: DemoSettings, n_models: int, evaluations: int | None = None) -> MixDemoReport:
    """Build N tiny models, hide an N-model recipe, search for it, merge and verify the result."""
    from .demo_models import default_demo_folder
    from .errors import MBWError
    from .generators.diffusers import DiffusersOptions
    from .payloads import load_payloads, prepare_payloads
    from .scorers.reference import ReferenceScorer, save_references
    from .search.mix_search import MixSearchSettings, evaluate, mix_generator, run_mix_search

    if not 2 <= n_models <= 5:
        raise MBWError(f"--n-models must be 2 to 5, got {n_models}")
    started = time.perf_counter()
    root = Path(settings.output) if settings.output else default_demo_folder().parent / "demo-run"
    models = ensure_mix_demo_models((settings.models or root / "models") / f"mix{n_models}-seed{settings.seed}", settings.seed, n_models)
    names = [p.name for p in models.models]
    _say(settings, f"demo models: {', '.join(names)} in {models.folder}")
    payload_dir = write_demo_payloads(root / f"payloads-{settings.seed}", settings)
    payloads = prepare_payloads(load_payloads(payload_dir), None, settings.seed)
    hidden = hidden_mix_recipe(settings.seed, n_models, names)
    run_dir = root / f"mix{n_models}-seed{settings.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=False)
    generator = mix_generator(models.models, DiffusersOptions(config_dir=models.config_dir, cpu_threads=1))
    try:
        generator.apply(hidden)
        references = [image for payload in payloads for image in generator.generate(payload)]
        save_references(run_dir / "references", references, overwrite=True)
        scorer = ReferenceScorer({(img.payload.name, img.index): img.image for img in references}, metric="ssim")
        hidden_score = evaluate(generator, scorer, payloads, hidden)
        randoms = random_mix_recipes(settings.seed, n_models, names, settings.random_samples)
        baseline = [evaluate(generator, scorer, payloads, r) for r in randoms]
        _say(settings, f"hidden recipe scores {hidden_score:.4f}; {len(baseline)} random recipes score {statistics.fmean(baseline):.4f} on average")
        search = MixSearchSettings(
            models=models.models, run_dir=run_dir, family=DEMO_FAMILY, levels=LEVELS, strategy=settings.strategy,
            seed=settings.seed, evaluations=evaluations, merge=settings.merge, dtype="fp32",
        )
        result = run_mix_search(search, generator, scorer, payloads, say=lambda text: _say(settings, text))
    finally:
        generator.close()
    return MixDemoReport(
        run_dir, n_models, hidden, result.recipe, result.score, hidden_score, baseline, result.evaluations,
        time.perf_counter() - started, bool(result.verified), result.outputs,
    )


def print_mix_report(report: MixDemoReport) -> None:
    print(f"auto-MBW demo ({report.n_models} models)")
    print(f"  run folder:        {report.run_dir}")
    print(f"  evaluations:       {report.evaluations}")
    if report.returned is not None:
        diffs = [abs(x - y) for b in report.hidden.shares for x, y in zip(report.returned.shares[b], report.hidden.shares[b])]
        print(f"  mean |share difference|: {statistics.fmean(diffs):.4f} per block and model")
    score = "-" if report.returned_score is None else f"{report.returned_score:.4f}"
    print(f"  score (SSIM):      returned {score}, hidden {report.hidden_score:.4f}, random recipes {report.random_mean:.4f} (mean of {len(report.random_scores)})")
    for name, path in sorted(report.outputs.items()):
        print(f"  {name + ':':<18} {path}")
    if "model" in report.outputs:
        print(f"  verify:            {'identical (offset counter 0)' if report.verified else 'DIFFERS'}")
    print(f"demo gap_closed={report.gap_closed:.3f} seconds={report.seconds:.1f}")


__all__ = ["run_mix_demo", "print_mix_report", "MixDemoReport", "ensure_mix_demo_models", "demo_state_dicts_n"]
