"""What the UI's buttons do, as plain functions of a host, a controller and form values (no gradio).

``app`` wires these to components and turns their results into component
updates; tests call them directly.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..blocks import present_blocks
from ..errors import MBWError
from ..recipe import Recipe
from ..recipe_n import RecipeN
from .controller import SearchController, title_for_path
from .form import MODEL_FIELDS, FormResult, FormValues, form_from_settings, settings_from_form, settings_from_manifest
from .live import LiveState

#: Number of rating sliders the UI has (more images are rated in the text box).
MAX_RATING_SLIDERS = 16


def generator_name(host: Any) -> str:
    """The generator name a run records: the host's generator spec, else the host's name."""
    return str(getattr(host, "generator", None) or getattr(host, "name", "host"))


@dataclass
class ModelsInfo:
    """What the UI says about the chosen pair; ``mismatch`` blocks a search (the pair cannot be merged)."""

    family: str | None
    text: str
    mismatch: bool = False


def describe_models(host: Any, model_a: str | None, model_b: str | None) -> ModelsInfo:
    """The architecture of the chosen pair, or why it cannot be merged.

    A file this process cannot read (a pickle checkpoint the WebUI loads
    itself, a diffusers folder) is no reason to refuse: the search reads the
    architecture from its generator then.
    """
    from ..blocks import check_same_architecture
    from ..checkpoint import open_checkpoint
    from ..errors import ArchitectureMismatchError

    if not model_a or not model_b:
        return ModelsInfo(None, "Choose model A (weight 0) and model B (weight 1).")
    archs = []
    for role, title in (("A", model_a), ("B", model_b)):
        try:
            path = host.model_path(title)
        except MBWError as exc:
            return ModelsInfo(None, f"⚠ model {role}: {exc}", mismatch=True)
        if Path(path).is_dir():
            return ModelsInfo(None, f"Model {role} is a diffusers folder; its architecture is read when the search starts.")
        try:
            with open_checkpoint(path) as checkpoint:
                archs.append(checkpoint.arch)
        except MBWError as exc:
            return ModelsInfo(None, f"Model {role}: the architecture is read when the search starts ({exc}).")
    try:
        check_same_architecture(archs[0], archs[1], f"model A ({model_a})", f"model B ({model_b})")
    except ArchitectureMismatchError as exc:
        return ModelsInfo(None, f"⚠ {exc}", mismatch=True)
    arch = archs[0]
    note = ""
    if arch.absent_blocks:
        note = f" {', '.join(arch.absent_blocks)} do not exist on {arch.label} and are not searched."
    same = "  \n⚠ A and B are the same checkpoint: every merge is identical." if model_a == model_b else ""
    return ModelsInfo(arch.family, f"{arch.label}: {len(present_blocks(arch.family))} blocks.{note}{same}")


def mix_unavailable(host: Any) -> str:
    """Why this host cannot search a mix of 3-5 models ('' when it can)."""
    if hasattr(host, "make_mix_generator"):
        return ""
    return ("Models C-E (a mix of 3-5 models) are not available in this host yet: its runtime merge takes two models. "
            "Search a mix in the standalone app (`python -m lib_mbw ui --models DIR`) or with `python -m lib_mbw search A B C`.")


def start_from_form(host: Any, controller: SearchController, form: FormValues) -> FormResult:
    """Validate the form and start the search; the result's errors say what to fix (nothing starts then)."""
    more = [getattr(form, name) for name in MODEL_FIELDS[2:] if getattr(form, name)]
    if more and mix_unavailable(host):
        return FormResult(None, {"model_c": mix_unavailable(host)})
    models = describe_models(host, form.model_a, form.model_b)
    if models.mismatch:
        return FormResult(None, {"model_b": models.text.lstrip("⚠ ")})
    family = models.family
    result = settings_from_form(form, host.paths, model_path=host.model_path, generator=generator_name(host),
                                generator_options=getattr(host, "generator_options", None), family=family)
    if result.ok:
        assert result.settings is not None and form.model_a and form.model_b
        try:
            controller.start(result.settings, form.model_a, form.model_b, family, more_models=more)
        except MBWError as exc:
            return FormResult(None, {"run_name": str(exc)})
    return result


def parse_ratings(slider_values: Sequence[Any], text: str, count: int) -> list[float | None]:
    """The ratings of ``count`` images: from the text box if filled (numbers, ``s`` = skip), else the sliders."""
    if text and text.strip():
        parts = [p for p in re.split(r"[\s,;]+", text.strip()) if p]
        if len(parts) != count:
            raise MBWError(f"type {count} ratings (one per image, 's' to skip one), got {len(parts)}")
        ratings: list[float | None] = []
        for number, part in enumerate(parts, start=1):
            if part.lower() in ("s", "skip", "-"):
                ratings.append(None)
                continue
            try:
                ratings.append(float(part))
            except ValueError:
                raise MBWError(f"rating {number} must be a number or 's' to skip, got {part!r}") from None
        return ratings
    if count > len(slider_values):
        raise MBWError(f"{count} images wait for ratings but there are only {len(slider_values)} sliders; type the ratings in the box")
    return [None if v is None else float(v) for v in list(slider_values)[:count]]


@dataclass
class RecipeSource:
    """The recipe an export/merge acts on, with the settings and run it came from."""

    recipe: Recipe | None
    score: float | None
    reason: str
    family: str
    settings: Any
    run_id: str
    run_dir: Path | None


def live_recipe(controller: SearchController) -> RecipeSource:
    """The live run's returned recipe, or its best so far."""
    state: LiveState = controller.snapshot()
    session = controller.session
    if session is None:
        raise MBWError("no search in this session yet: start one, or pick a run under Past runs")
    recipe = state.final_recipe or state.best
    score = state.final_score if state.final_recipe is not None else state.best_score
    reason = state.final_reason if state.final_recipe is not None else "best observed so far"
    return RecipeSource(recipe, score, reason, session.family, session.settings, session.run_id, Path(session.run_dir))


def run_recipe(run_dir: str | Path) -> RecipeSource:
    """A past run's returned (or best observed) recipe."""
    from .runs import load_run

    details = load_run(run_dir)
    settings = settings_from_manifest(details.manifest, f"{run_dir}/manifest.json")
    recipe = details.recipe
    if isinstance(recipe, RecipeN) and len(settings.models.listed()) == recipe.n_models:
        recipe = recipe.with_models([Path(m).name for m in settings.models.listed()])
    return RecipeSource(recipe, details.score, details.reason, details.family, settings, details.summary.run_id, Path(run_dir))


def warm_start_form(host: Any, run_dir: str | Path) -> FormValues:
    """The form of a past run's settings, set up to warm-start a new search from that run."""
    from ..search.history import read_manifest

    settings = settings_from_manifest(read_manifest(Path(run_dir)), f"{run_dir}/manifest.json")

    def title_of(path: str) -> str | None:
        try:
            return title_for_path(host, path)
        except MBWError:
            return None

    form = form_from_settings(settings, title_of)
    warm = [str(run_dir)] + [w for w in form.warm_start_paths.splitlines() if w.strip()]
    return dataclasses.replace(form, warm_start_paths="\n".join(dict.fromkeys(warm)), run_name=settings.name)


def resume_overrides(max_evaluations: Any) -> dict[str, Any]:
    """Settings a resume may change from the UI: more evaluations (blank = as recorded)."""
    if max_evaluations in (None, "", 0):
        return {}
    try:
        value = int(float(max_evaluations))
    except (TypeError, ValueError):
        raise MBWError(f"evaluations must be a whole number, got {max_evaluations!r}") from None
    if value < 1:
        raise MBWError(f"evaluations must be ≥ 1, got {value}")
    return {"stop": {"max_evaluations": value}}


def strategy_choices() -> list[str]:
    """'default' and the optimizer's strategies (read lazily: the optimizer module may be absent)."""
    try:
        from ..search.optimizer import STRATEGIES  # type: ignore[attr-defined]
    except ImportError:
        return ["default"]
    return ["default", *[name for name in STRATEGIES if name != "default"]]


def scorer_choices() -> list[str]:
    """The registered scorers (read lazily: the registry may be absent)."""
    try:
        from ..scorers.registry import available_scorers  # type: ignore[attr-defined]
    except ImportError:
        return ["imagereward", "human"]
    return list(available_scorers())


__all__ = [
    "MAX_RATING_SLIDERS",
    "ModelsInfo",
    "RecipeSource",
    "describe_models",
    "generator_name",
    "live_recipe",
    "parse_ratings",
    "resume_overrides",
    "run_recipe",
    "scorer_choices",
    "start_from_form",
    "strategy_choices",
    "warm_start_form",
]
