"""A search over an N-model block mix (2-5 models): ask, mix at run time, render, score, tell, record.

``run_mix_search`` is the N-model loop behind ``python -m lib_mbw mix-search``
and ``demo --n-models``: the optimizer facade over a ``MixSearchSpace``, a
generator whose merger is a ``runtime.multi.MultiMerger`` (the diffusers
generator by default), a scorer, and ``history.jsonl`` in the run folder with
one row per evaluation (flushed and fsync'd before the next evaluation). A
run folder with a history resumes: its rows warm-start the optimizer (they
are read as data: numbers and an N-model recipe per row). At the end the
recommended recipe is written as JSON and chain lines, and (unless turned
off) mixed offline into a ``.safetensors`` and verified bit for bit.

Compared with the two-model ``SearchSession`` it has no UI, plots, parallel
workers, re-scoring of the top candidates, early abandon or time budget.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..errors import MBWError
from .. import fileio
from ..recipe_n import RecipeN, to_chain_text
from .optimizer import InitSettings, make_optimizer
from .space_n import MixSearchSpace
from .stopping import DEFAULT_PATIENCE

#: Evaluations and early-stop patience per chain step: the two-model defaults per 27 dimensions.
EVALUATIONS_PER_STEP = 150
HISTORY = "history.jsonl"


class MixSearchError(MBWError):
    """An N-model search cannot start or resume as asked."""


@dataclass
class MixSearchSettings:
    """What an N-model search runs: models in mix order, payloads, scorer, strategy, stop rules, outputs."""

    models: Sequence[Path]
    run_dir: Path
    family: str = "sd1"
    levels: int = 21
    strategy: str = "default"
    seed: int = 0
    evaluations: int | None = None  #: default EVALUATIONS_PER_STEP x (N - 1)
    patience: int | None = None  #: default DEFAULT_PATIENCE x (N - 1); 0 = no early stop
    steps: Sequence[Mapping[str, Any]] = ()
    frozen_shares: Mapping[str, Sequence[float]] = field(default_factory=dict)
    init_random: int = 10
    merge: bool = True
    dtype: str = "fp16"

    @property
    def n_models(self) -> int:
        return len(self.models)

    def space(self) -> MixSearchSpace:
        return MixSearchSpace(
            family=self.family, levels=self.levels, n_models=self.n_models, models=[Path(m).name for m in self.models],
            steps=list(self.steps), frozen_shares=dict(self.frozen_shares),
        )


@dataclass
class MixSearchResult:
    run_dir: Path
    recipe: RecipeN | None
    score: float | None
    evaluations: int
    resumed: int
    outputs: dict[str, Path] = field(default_factory=dict)
    verified: bool | None = None


def evaluate(generator: Any, scorer: Any, payloads: Sequence[Any], recipe: RecipeN) -> float:
    """Apply ``recipe`` and return the mean over payloads of the mean image score (the default tally)."""
    generator.apply(recipe)
    return statistics.fmean(statistics.fmean(scorer.score(generator.generate(p))) for p in payloads)


def read_history(path: Path, space: MixSearchSpace) -> list[tuple[RecipeN, float]]:
    """The scored rows of a history file; MixSearchError names the line of a bad row."""
    rows: list[tuple[RecipeN, float]] = []
    if not path.exists():
        return rows
    try:
        lines = fileio.read_text_capped(path, fileio.MAX_HISTORY_TEXT).splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MixSearchError(f"{path}: cannot read the history ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            recipe = RecipeN.from_dict(row["recipe"], f"{path} line {number}")
            score = float(row["score"])
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines):
                break  # a row cut off by a crash: the evaluation in flight is lost, nothing else
            raise MixSearchError(f"{path} line {number}: not a history row ({exc}); move the file away to start afresh") from None
        if recipe.n_models != space.n_models:
            raise MixSearchError(f"{path} line {number}: a {recipe.n_models}-model row in a {space.n_models}-model search")
        rows.append((recipe, score))
    return rows


def _append(path: Path, row: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def mix_generator(models: Sequence[Path], options: Any = None) -> Any:
    """A diffusers generator with model 1 loaded and the other models mixed in by a ``MultiMerger``."""
    from ..generators.diffusers import DiffusersGenerator, DiffusersOptions, mix_merger_factory

    return DiffusersGenerator(models[0], models[1], options=options or DiffusersOptions(), merger_factory=mix_merger_factory(models[2:]))


def run_mix_search(
    settings: MixSearchSettings,
    generator: Any,
    scorer: Any,
    payloads: Sequence[Any],
    say: Callable[[str], None] = lambda text: None,
) -> MixSearchResult:
    """Search (or resume) the N-model mix in ``settings.run_dir``; see the module docstring."""
    from ..merge import verify_file
    from ..merge.multi import mix_to_file

    n = settings.n_models
    if not 2 <= n <= 5:
        raise MixSearchError(f"a block-mix search takes 2 to 5 models, got {n}")
    space = settings.space()
    budget = settings.evaluations if settings.evaluations is not None else EVALUATIONS_PER_STEP * (n - 1)
    patience = settings.patience if settings.patience is not None else DEFAULT_PATIENCE * (n - 1)
    run_dir = Path(settings.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    history = run_dir / HISTORY
    done_rows = read_history(history, space)
    optimizer = make_optimizer(
        settings.strategy, space, settings.seed, init=InitSettings(random=settings.init_random, grid=1), warm_start=done_rows
    )
    best, since_best = float("-inf"), 0
    for _, score in done_rows:
        best, since_best = (score, 0) if score > best else (best, since_best + 1)
    done = len(done_rows)
    merger = getattr(generator, "merger", None)  # the diffusers generator builds its merger here, before the search
    if merger is not None and hasattr(merger, "memory"):
        say(f"runtime mix of {n} models, placement {merger.memory.describe()} beyond the loaded model")
    say(f"searching {space.describe()}: up to {budget} evaluations" + (f", resumed after {done}" if done else ""))
    while done < budget and (not patience or since_best < patience):
        recipe = optimizer.ask(1)[0]
        started = time.perf_counter()
        score = evaluate(generator, scorer, payloads, recipe)
        optimizer.tell(recipe, score)
        done += 1
        best, since_best = (score, 0) if score > best else (best, since_best + 1)
        _append(history, {"evaluation": done, "score": score, "seconds": round(time.perf_counter() - started, 4), "recipe": recipe.to_dict()})
        if done % 25 == 0:
            say(f"  {done} evaluations, best score {best:.4f}")
    if not optimizer.cache.points():
        return MixSearchResult(run_dir, None, None, done, len(done_rows))
    returned = optimizer.recommend().recipe
    cached = optimizer.cached_score(returned)
    score = cached if cached is not None else evaluate(generator, scorer, payloads, returned)
    outputs = {"history": history, "recipe": run_dir / "best.recipe.json", "chain lines": run_dir / "best.recipe.txt"}
    outputs["recipe"].write_text(returned.to_json() + "\n", encoding="utf-8")
    outputs["chain lines"].write_text(to_chain_text(returned)[0], encoding="utf-8")
    result = MixSearchResult(run_dir, returned, score, done, len(done_rows), outputs)
    if settings.merge:
        stem = run_dir.name if run_dir.name.startswith(f"mix{n}-") else f"mix{n}-{run_dir.name}"
        name = f"{stem}.safetensors"
        merged = mix_to_file(settings.models, returned, run_dir / name, dtype=settings.dtype, overwrite=False)
        outputs["model"] = merged.output
        result.verified = verify_file(merged.output).identical
    return result
