"""Past runs: the run folders in the history folder, summarised for a table, and one run in detail.

A run folder (see ``search.history``) has ``manifest.json``, ``history.csv``,
``state.json`` and, when it ended, ``best.recipe.json``, plots and
``best_images/``. ``list_runs`` reads only what the table shows;
``load_run`` gives the rows, the returned (or best observed) recipe, the
best images and the plots, for the UI's "Past runs" section, from which a
run is resumed or used to warm-start a new search. A run is named by its
id only: ``run_folder`` keeps it inside the history folder (no paths, no
``..``, no links out), since a UI client may be anyone who reaches the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import MBWError
from ..recipe import Recipe
from ..search.history import MANIFEST_FILE, HistoryRow, read_history_rows, read_manifest

RUN_HEADERS: tuple[str, ...] = ("run", "created", "models", "strategy", "evaluations", "best score", "state")

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass
class RunSummary:
    """One row of the past-runs table."""

    run_id: str
    folder: Path
    created: str
    models: str
    strategy: str
    evaluations: int
    best_score: float | None
    state: str  # finished / stopped / incomplete / unreadable

    def row(self) -> list[Any]:
        best = "" if self.best_score is None else round(self.best_score, 6)
        return [self.run_id, self.created, self.models, self.strategy, self.evaluations, best, self.state]


@dataclass
class RunDetails:
    """A run with what the UI shows of it."""

    summary: RunSummary
    manifest: dict[str, Any]
    rows: list[HistoryRow]
    recipe: Recipe | None
    score: float | None
    reason: str
    family: str
    higher_is_better: bool
    best_images: list[tuple[Image.Image, str]] = field(default_factory=list)


def _model_names(manifest: dict[str, Any]) -> str:
    names = []
    for role in ("a", "b"):
        facts = (manifest.get("models") or {}).get(role) or {}
        names.append(str(facts.get("name") or "?"))
    return " × ".join(names)


def _state(manifest: dict[str, Any], rows: list[HistoryRow]) -> str:
    result = manifest.get("result")
    if not result:
        return "incomplete (resumable)" if rows else "empty"
    if result.get("stop_reason") == "user_abort":
        return "stopped (resumable)"
    return "finished"


def _best(rows: list[HistoryRow], higher_is_better: bool) -> tuple[Recipe | None, float | None, str]:
    selected = next((r for r in reversed(rows) if r.status == "selected"), None)
    if selected is not None:
        return selected.recipe, selected.score, selected.reason
    sign = 1.0 if higher_is_better else -1.0
    scored = [r for r in rows if r.status == "ok" and r.score is not None and r.recipe is not None]
    if not scored:
        return None, None, "no evaluation succeeded yet"
    best = max(scored, key=lambda r: sign * r.score)  # type: ignore[operator]
    return best.recipe, best.score, f"best observed so far (evaluation {best.index}; the run has not chosen its recipe yet)"


def summarize_run(folder: Path) -> tuple[RunSummary, dict[str, Any], list[HistoryRow]]:
    manifest = read_manifest(folder)
    try:
        rows = read_history_rows(folder)
    except MBWError:
        rows = []
    higher = bool((manifest.get("scorer") or {}).get("higher_is_better", True))
    _, score, _ = _best(rows, higher)
    settings = manifest.get("settings") or {}
    evaluations = sum(1 for r in rows if r.source in ("optimizer", "initial"))
    summary = RunSummary(
        run_id=str(manifest.get("run_id") or folder.name),
        folder=folder,
        created=str(manifest.get("created", "")),
        models=_model_names(manifest),
        strategy=str(settings.get("strategy", "")),
        evaluations=evaluations,
        best_score=score,
        state=_state(manifest, rows),
    )
    return summary, manifest, rows


def list_runs(history_dir: str | Path) -> list[RunSummary]:
    """Every run folder (one with a manifest) under ``history_dir``, newest first."""
    root = Path(history_dir)
    if not root.is_dir():
        return []
    runs = []
    for folder in sorted((p for p in root.iterdir() if (p / MANIFEST_FILE).is_file()), key=lambda p: p.name, reverse=True):
        try:
            runs.append(summarize_run(folder)[0])
        except MBWError as exc:
            runs.append(RunSummary(folder.name, folder, "", str(exc), "", 0, None, "unreadable"))
    return runs


def run_folder(history_dir: str | Path, run_id: Any) -> Path:
    """The folder of the run ``run_id`` directly inside ``history_dir``; MBWError for anything else."""
    name = str(run_id or "").strip()
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute():
        raise MBWError(f"{name or 'run'}: pick a run from the list (a run id, not a path)")
    root = Path(history_dir).resolve()
    folder = (root / name).resolve()
    if folder.parent != root or not (folder / MANIFEST_FILE).is_file():
        raise MBWError(f"{name}: no such run in {history_dir}; pick one from the list")
    return folder


def run_table(runs: list[RunSummary]) -> list[list[Any]]:
    return [run.row() for run in runs]


def load_run(folder: str | Path) -> RunDetails:
    """A run folder in detail (rows, chosen recipe, best images); HistoryError if it is not a run folder."""
    folder = Path(folder)
    summary, manifest, rows = summarize_run(folder)
    higher = bool((manifest.get("scorer") or {}).get("higher_is_better", True))
    recipe, score, reason = _best(rows, higher)
    images = []
    image_dir = folder / "best_images"
    if image_dir.is_dir():
        for path in sorted(image_dir.iterdir()):
            if path.suffix.lower() in _IMAGE_SUFFIXES:
                with Image.open(path) as picture:
                    images.append((picture.copy(), path.stem))
    return RunDetails(summary, manifest, rows, recipe, score, reason, str(manifest.get("family") or "sd1"), higher, images)


def run_overview(details: RunDetails) -> str:
    """Markdown: what the run was and what it found."""
    s = details.summary
    settings = details.manifest.get("settings") or {}
    result = details.manifest.get("result") or {}
    lines = [
        f"**{s.run_id}** ({s.state})",
        f"- models: {s.models} ({details.family})",
        f"- strategy: {s.strategy}; scorer: {(settings.get('scorer') or {}).get('name', '?')}; evaluations: {s.evaluations}",
        f"- folder: `{s.folder}`",
    ]
    if details.recipe is not None and details.score is not None:
        lines.append(f"- returned recipe: score {details.score:.4g} ({details.reason})")
    if result.get("stop_message"):
        lines.append(f"- stopped: {result['stop_message']}")
    for error in result.get("errors") or []:
        lines.append(f"- ⚠ {error}")
    return "\n".join(lines)


__all__ = ["RUN_HEADERS", "RunDetails", "RunSummary", "list_runs", "load_run", "run_folder", "run_overview", "run_table", "summarize_run"]
