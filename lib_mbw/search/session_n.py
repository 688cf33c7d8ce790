"""The parts of a search session that differ for a block mix of 3-5 models (``models.c`` .. ``models.e`` set).

``session.start_search`` / ``resume_search`` / ``write_outputs`` call these
where a mix differs from a two-model merge; the loop, history, resume,
re-scoring and early stop are the same code:

* the space is a ``MixSearchSpace`` (chain weights per block and step, the
  ``space.steps`` and ``space.frozen_shares`` settings) searched by any
  built-in strategy; recipes are ``RecipeN`` labelled ``model 1`` ..
  ``model N`` (``history_n``), relabelled with the file names in outputs;
* warm start reads N-model run folders (their ``history.csv``) and N-model
  recipe files (JSON or chain lines); one for another number of models is
  refused, naming the file;
* the generator mixes at run time with ``runtime.multi.MultiMerger`` (model 1
  is the loaded model), whose memory plan is built, checked and recorded in
  the manifest before the run folder exists;
* the outputs are ``best.recipe.json`` (shares) and ``best.recipe.txt``
  (shares and chain lines), the plots (convergence; each model's share per
  block), and the mixed model written by ``merge.multi.mix_to_file`` (every
  source with its hashes in the metadata) and verified bit for bit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Collection, Sequence

from ..errors import MBWError, RecipeError
from ..recipe_n import RecipeN, chain_of, read_recipe_n
from .history import HISTORY_FILE, SCORED_STATUSES, HistoryError, RunHistory, WarmStart
from .history_n import model_labels, write_best_recipe_n
from .plugins import is_plugin
from .settings import SearchSettings, SettingsError
from .space import SearchSpaceError
from .space_n import MixSearchSpace

log = logging.getLogger(__name__)


class MixSessionError(MBWError):
    """A block-mix search cannot be set up as asked (warm start of another size, a generator that cannot mix)."""


def is_mix(settings: SearchSettings) -> bool:
    """Whether the settings search a block mix of 3-5 models."""
    return settings.models.count > 2


# --------------------------------------------------------------------------- space and optimizer


def mix_space(settings: SearchSettings, family: str) -> MixSearchSpace:
    """The search space of the settings; SettingsError names ``space.steps`` / ``space.frozen_shares``.

    Frozen shares become frozen chain weights of every step, so every recipe
    of the space is its chain exactly (what the history stores).
    """
    n = settings.models.count
    labels = model_labels(n)
    steps = [dict(step) for step in settings.space.steps]
    steps += [{} for _ in range(n - 1 - len(steps))]
    for step in steps:  # settings reading made each one an object
        step["frozen"] = dict(step.get("frozen") or {})
    for block, shares in settings.space.frozen_shares.items():
        try:
            fixed = RecipeN(labels, {block: shares}, "space.frozen_shares")
        except RecipeError as exc:
            raise SettingsError(f"setting {exc}") from None
        for k, weight in enumerate(chain_of(fixed.shares[block])):
            if block in steps[k]["frozen"] or block in dict(steps[k].get("ranges") or {}):
                raise SettingsError(f"setting space.frozen_shares.{block}: step {k + 1} also sets {block} in space.steps; drop one of the two")
            steps[k]["frozen"][block] = weight
    try:
        return MixSearchSpace(family=family, levels=settings.space.levels, n_models=n, models=labels, steps=steps)
    except SearchSpaceError as exc:
        raise SettingsError(f"setting space.steps: {exc}") from None


def make_mix_optimizer(settings: SearchSettings, family: str, warm_start: Sequence[tuple[RecipeN, float]],
                       plugins: Collection[str] = ()) -> Any:
    """The optimizer of ``settings.strategy`` over the mix space (built-in strategies only)."""
    from .optimizer import InitSettings, make_optimizer

    if is_plugin(settings.strategy):
        raise SettingsError(
            f"setting strategy: the plugin {settings.strategy!r} is called with two-model space settings; "
            f"a {settings.models.count}-model search takes a built-in strategy"
        )
    space = mix_space(settings, family)
    init = InitSettings(random=settings.init.random, grid=settings.init.grid, vertex=settings.init.vertex)
    return make_optimizer(settings.strategy, space, settings.seed, init=init, warm_start=list(warm_start), **settings.strategy_options)


# --------------------------------------------------------------------------- warm start


def _fit(recipe: RecipeN, n: int, family: str, where: str) -> RecipeN:
    if recipe.n_models != n:
        raise MixSessionError(f"{where}: holds a {recipe.n_models}-model recipe; this search mixes {n} models")
    try:
        return recipe.with_models(model_labels(n)).for_family(family)
    except RecipeError as exc:
        raise MixSessionError(str(exc)) from None


def _history_scores(path: Path, n: int, family: str) -> list[tuple[RecipeN, float]]:
    folder = path if path.is_dir() else path.parent
    history = RunHistory.open(folder)
    if history.n_models != n:
        raise MixSessionError(f"{folder / HISTORY_FILE}: is the history of a {history.n_models}-model search; this search mixes {n} models")
    where = str(folder / HISTORY_FILE)
    return [(_fit(r.recipe, n, family, where), r.score) for r in history.rows()  # type: ignore[arg-type]
            if r.status in SCORED_STATUSES and r.recipe is not None and r.score is not None]


def load_warm_start_n(settings: SearchSettings, family: str) -> WarmStart:
    """Scored recipes from run folders / history files, and recipes to evaluate first, for an N-model search."""
    n = settings.models.count
    collected = WarmStart()
    for spec in [*settings.warm_start, *settings.initial_recipes]:
        path = Path(spec)
        if (path.is_dir() and (path / HISTORY_FILE).is_file()) or (path.is_file() and path.name == HISTORY_FILE):
            collected.scored.extend(_history_scores(path, n, family))  # type: ignore[arg-type]
        elif path.is_dir():
            raise HistoryError(f"{path}: no {HISTORY_FILE} here (a {n}-model warm start reads auto-MBW run folders)")
        else:
            collected.unscored.append(_fit(read_recipe_n(spec), n, family, spec))  # type: ignore[arg-type]
    return collected


# --------------------------------------------------------------------------- generators and memory


def make_mix_generators(settings: SearchSettings, host: Any, plugins: Collection[str]) -> list[Any]:
    """One generator per worker option set, each mixing every model of ``settings.models`` at run time.

    The diffusers generator, a plugin (called with ``more_models=[...]``) or a
    host with ``make_mix_generator`` can mix; anything else is refused by name.
    """
    from .session import make_generators

    models = settings.models.listed()
    if host is not None and not hasattr(host, "make_mix_generator"):
        raise MixSessionError(f"{type(host).__name__}: this host cannot mix {len(models)} models at run time; use two models")
    if host is None and not is_plugin(settings.generator.name) and settings.generator.name != "diffusers":
        raise SettingsError(f"setting generator.name: {settings.generator.name!r} cannot mix {len(models)} models at run time; use diffusers")
    return make_generators(settings.generator, models[0], models[1], host, plugins, more_models=models[2:])


def runtime_memory(generators: Sequence[Any]) -> list[str]:
    """Build each generator's runtime mix now (its memory checked, before the run folder exists); what it holds.

    A generator that may not build its mix yet (the WebUI's: the live model is the WebUI's until the search holds
    its queue) states it with ``memory_plan()``, which is checked here the same way; the merger checks again when
    it is built.
    """
    from ..runtime.memory import check_fits

    described = []
    for generator in generators:
        stated = getattr(generator, "memory_plan", None)
        if callable(stated):
            plan = stated()
            if plan is not None:
                check_fits(plan)
        else:
            plan = getattr(getattr(generator, "merger", None), "plan", None)
        if plan is not None:
            described.append(plan.describe())
            log.info("runtime mix: %s", plan.describe())
    return described


# --------------------------------------------------------------------------- outputs


def write_best_recipe_mix(session: Any, recipe: RecipeN, score: float | None, reason: str) -> dict[str, Path]:
    return write_best_recipe_n(session.run_dir, recipe, session.settings.models.listed(), score=score, reason=reason,
                               run_id=session.run_id, overwrite=True)


def mix_model(session: Any, recipe: RecipeN, out: Path) -> Path:
    """Mix the models offline into ``out`` with ``recipe`` and verify it bit for bit (SessionError if it differs)."""
    from ..merge import verify_file
    from ..merge.multi import mix_to_file

    settings = session.settings
    output = settings.output
    if output.base_from in ("b", "merge"):
        raise MixSessionError(
            f"setting output.base_from {output.base_from!r}: a mix takes the text encoder from model 1 (a) or from a file"
        )
    base_from = None if output.base_from in ("a", "") else output.base_from
    metadata = {"auto_mbw_search": json.dumps({"run_id": session.run_id, "strategy": settings.strategy, "scorer": settings.scorer.name})}
    report = mix_to_file(settings.models.listed(), recipe, out, dtype=output.dtype, base_from=base_from, vae_from=output.vae_from,
                         overwrite=output.overwrite, extra_metadata=metadata)
    verified = verify_file(report.output)
    if not verified.identical:
        raise MixSessionError(f"{report.output}: written, but verify says {verified.differing} tensor(s) differ from the recipe")
    if session.host is not None:
        session.host.model_saved(report.output)
    return report.output


def plot_mix(rows: Sequence[Any], recipe: RecipeN | None, folder: Path, *, family: str, models: Sequence[str],
             higher_is_better: bool = True) -> dict[str, Path]:
    """``convergence.png`` and ``best_shares.png`` (each model's share per block, drawn as the UNet)."""
    from ..plots import convergence_plot
    from ..plots_n import unet_shares_plot

    paths = {"convergence_plot": folder / "convergence.png"}
    convergence_plot(rows, paths["convergence_plot"], higher_is_better=higher_is_better)
    if recipe is not None:
        paths["weights_plot"] = folder / "best_shares.png"
        unet_shares_plot(recipe.with_models([Path(m).name for m in models]), paths["weights_plot"], family=family)
    return paths


def merge_command_n(settings: SearchSettings, recipe: Path, out: Path | None) -> list[str]:
    parts = ["python", "-m", "lib_mbw", "merge", *settings.models.listed(), "--recipe", str(recipe)]
    if out is not None:
        parts += ["-o", str(out)]
    return parts + ["--dtype", settings.output.dtype]
