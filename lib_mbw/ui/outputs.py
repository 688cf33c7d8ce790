"""The UI's output actions: export a recipe (any format, as text and as files) and merge it into a checkpoint.

Exports go next to the run (``<run folder>/exports/``) and never replace an
existing file: a number is added to the name instead. Merging uses the merge
engine (``lib_mbw.merge.merge_to_file``) with the run's output settings and
writes into the host's models folder; the host is told about the new file.
A mix of 3-5 models (``RecipeN``) exports as JSON (shares) or text (shares
and chain lines) and merges with ``merge.multi.mix_to_file``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import MBWError, OutputExistsError
from ..fileio import safe_name, write_atomic
from ..recipe import Recipe
from ..recipe_n import RecipeN
from ..recipe_cli import render
from ..search.history import recipe_text
from ..search.settings import SearchSettings

#: Export formats: name -> label.
EXPORT_FORMATS: dict[str, str] = {
    "text": "named weights (text)",
    "json": "auto-MBW recipe JSON",
    "canonical": "27 values, canonical order",
    "rt": "27 values, auto-MBW-rt order",
    "rt-fork": "27 values, rt fork order",
    "preset": "MBW / supermerger preset (26 values, BASE first)",
    "preset25": "MBW / supermerger preset (25 values)",
}


class ExportError(MBWError):
    """A recipe cannot be exported or merged (nothing to export, engine missing, file exists)."""


@dataclass
class ExportResult:
    text: str
    warnings: list[str]
    files: list[Path]

    def message(self) -> str:
        lines = [f"written: `{path}`" for path in self.files]
        lines += [f"⚠ {warning}" for warning in self.warnings]
        return "  \n".join(lines)


def recipe_as(recipe: Recipe, fmt: str, family: str, fold: str = "mbw") -> tuple[str, list[str]]:
    """``recipe`` as text in ``fmt`` (see ``EXPORT_FORMATS``), with what the format loses."""
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if isinstance(recipe, RecipeN):
        from ..search.history_n import best_recipe_text_n

        if fmt == "json":
            return recipe.to_json(), []
        if fmt == "text":
            return best_recipe_text_n(recipe)
        raise ExportError(f"a {recipe.n_models}-model recipe exports as json or text (shares and chain lines), not {fmt}")
    return render(recipe, fmt, family, fold)


def _free_path(folder: Path, stem: str, suffix: str) -> Path:
    path = folder / f"{stem}{suffix}"
    number = 1
    while path.exists():
        number += 1
        path = folder / f"{stem}-{number}{suffix}"
    return path


def export_recipe(recipe: Recipe | None, fmt: str, *, family: str, folder: str | Path, stem: str = "recipe",
                  score: float | None = None, reason: str = "", fold: str = "mbw") -> ExportResult:
    """Write ``recipe`` as ``<stem>.recipe.json`` + ``<stem>.recipe.txt`` (all formats) and ``<stem>.<fmt>.txt``."""
    if recipe is None:
        raise ExportError("there is no recipe to export yet: wait for the first successful evaluation, or pick a run")
    text, warnings = recipe_as(recipe, fmt, family, fold)
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    stem = safe_name(stem, default="recipe")
    data = recipe.to_dict()
    data["search"] = {"score": score, "reason": reason}
    files = []
    if isinstance(recipe, RecipeN):
        from ..search.history_n import best_recipe_text_n

        described = best_recipe_text_n(recipe, score=score, reason=reason)[0]
    else:
        described = recipe_text(recipe, family=family, score=score, reason=reason)[0]
    for suffix, content in (
        (".recipe.json", json.dumps(data, indent=2) + "\n"),
        (".recipe.txt", described),
        (f".{fmt}.txt", text + "\n"),
    ):
        if fmt in ("json", "text") and suffix == f".{fmt}.txt":
            continue
        files.append(write_atomic(_free_path(target, stem, suffix), content, overwrite=False))
    return ExportResult(text, warnings, files)


def merged_model_path(settings: SearchSettings, run_id: str, models_dir: str | Path, name: str = "") -> Path:
    """Where "Merge & save" writes: ``name`` (or ``<A>-x-<B>-<run suffix>``) ``.safetensors`` in ``models_dir``."""
    if name.strip():
        stem = name.strip()
        if stem.lower().endswith(".safetensors"):
            stem = stem[: -len(".safetensors")]
        if safe_name(stem, default="") != stem:
            raise ExportError(f"model name {name!r}: use letters, digits, '.', '_', '-' and spaces (e.g. {safe_name(stem)!r})")
    else:
        stems = [Path(m).stem for m in settings.models.listed()]
        stem = safe_name("-x-".join(stems) or "merged") + (f"-{run_id.rsplit('-', 1)[-1]}" if run_id else "")
    return Path(models_dir) / f"{stem}.safetensors"


def merge_recipe(recipe: Recipe | None, settings: SearchSettings, out: Path, *, run_id: str = "", host: Any = None,
                 overwrite: bool = False, progress: Callable[..., None] | None = None) -> Path:
    """Merge models A and B of ``settings`` with ``recipe`` into ``out`` (the run's dtype, text encoder and VAE choice)."""
    if recipe is None:
        raise ExportError("there is no recipe to merge yet: wait for the first successful evaluation, or pick a run")
    if not settings.models.a or not settings.models.b:
        raise ExportError("the run records no model files (models.a / models.b)")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: already exists; choose another name or tick overwrite")
    try:
        from ..merge import merge_to_file  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ExportError(f"the merge engine is not available in this build ({exc}); export the recipe and merge it later") from None
    import torch

    output = settings.output
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    metadata = {"auto_mbw_search": json.dumps({"run_id": run_id, "strategy": settings.strategy, "scorer": settings.scorer.name})}
    kwargs: dict[str, Any] = dict(dtype=dtypes[output.dtype], base_from=output.base_from, vae_from=output.vae_from,
                                  overwrite=overwrite, extra_metadata=metadata)
    if progress is not None:
        kwargs["progress"] = progress
    if isinstance(recipe, RecipeN):
        from ..merge.multi import mix_to_file

        if output.base_from in ("b", "merge"):
            raise ExportError(f"a mix takes the text encoder from model A or a file, not {output.base_from!r}")
        kwargs["base_from"] = None if output.base_from == "a" else output.base_from
        mix_to_file(settings.models.listed(), recipe, out, **kwargs)
    else:
        merge_to_file(settings.models.a, settings.models.b, recipe, out, **kwargs)
    if host is not None:
        host.model_saved(out)
    return out


__all__ = ["EXPORT_FORMATS", "ExportError", "ExportResult", "export_recipe", "merge_recipe", "merged_model_path", "recipe_as"]
