"""Scorers by name: ``make_scorer("imagereward", device=None, mapping="sigmoid")``.

Each scorer has a small settings dataclass; ``make_scorer`` fills it from
keyword arguments (or takes one whole) and passes objects that are not
settings (a rater callback, reference images, a prebuilt model, component
scorers) to the scorer's factory. Nothing is loaded here: models load on the
first ``score``.

Registered names: imagereward, aesthetic, clip, blip, reference, human, combined.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..errors import ScorerError
from .base import Scorer
from .combined import CombinedScorer, Normalise
from .human import ConsoleRater, HumanScorer, HumanSettings
from .imagereward import ImageRewardScorer, ImageRewardSettings
from .package_scores import AestheticScorer, BLIPScorer, CLIPScorer, PackageScoreSettings
from .reference import ReferenceScorer, ReferenceSettings, load_references


@dataclass
class CombinedSettings:
    """How a combination normalises its components (see ``combined``)."""

    normalise: Normalise = "range"


@dataclass(frozen=True)
class ScorerEntry:
    """One registered scorer: its settings class, the objects its factory accepts, and the factory."""

    name: str
    summary: str
    settings_type: type
    objects: tuple[str, ...]
    factory: Callable[..., Scorer]


_REGISTRY: dict[str, ScorerEntry] = {}


def register_scorer(name: str, summary: str, settings_type: type, factory: Callable[..., Scorer],
                    objects: Sequence[str] = ()) -> None:
    """Add (or replace) a scorer: ``factory(settings, **objects) -> Scorer``."""
    _REGISTRY[name] = ScorerEntry(name, summary, settings_type, tuple(objects), factory)


def available_scorers() -> dict[str, str]:
    """Registered scorer names and one-line summaries."""
    return {name: entry.summary for name, entry in _REGISTRY.items()}


def scorer_entry(name: str) -> ScorerEntry:
    """The registry entry of ``name``; ScorerError listing the known names otherwise."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ScorerError(f"unknown scorer {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def make_scorer(name: str, settings: Any = None, **options: Any) -> Scorer:
    """A scorer by name; ``options`` are its settings' fields and the objects its factory takes."""
    entry = scorer_entry(name)
    fields = {f.name for f in dataclasses.fields(entry.settings_type)}
    unknown = sorted(set(options) - fields - set(entry.objects))
    if unknown:
        valid = ", ".join(sorted(fields | set(entry.objects)))
        raise ScorerError(f"scorer {entry.name}: unknown setting(s) {', '.join(unknown)}; valid: {valid}")
    values = {k: v for k, v in options.items() if k in fields}
    if settings is None:
        settings = entry.settings_type(**values)
    elif not isinstance(settings, entry.settings_type):
        raise ScorerError(f"scorer {entry.name}: settings must be {entry.settings_type.__name__}")
    elif values:
        settings = dataclasses.replace(settings, **values)
    return entry.factory(settings, **{k: v for k, v in options.items() if k in entry.objects})


def with_model_cache(name: str, options: Mapping[str, Any], folder: Any) -> dict[str, Any]:
    """``options`` with ``download_root=folder`` when scorer ``name`` downloads model files and no folder is given.

    Hosts pass their model folder (the WebUI's "Scorer model cache" setting,
    default ``models/ImageReward``); the scorer's own default is ``~/.cache``.
    """
    result = dict(options)
    if folder is None or ":" in name or result.get("download_root"):
        return result
    try:
        entry = scorer_entry(name)
    except ScorerError:
        return result
    if "download_root" in {f.name for f in dataclasses.fields(entry.settings_type)}:
        result["download_root"] = str(folder)
    return result


def preload(scorer: Any) -> None:
    """Load the model of ``scorer`` (and of the scorers it combines) now.

    A search calls it while "Preparing", so a scorer that cannot load (missing
    package, no weights, no network) fails before any candidate is rendered.
    """
    parts = [scorer] + [component[0] for component in getattr(scorer, "components", ())]
    if getattr(scorer, "auto", None) is not None:
        parts.append(scorer.auto)
    for part in parts:
        load = getattr(part, "load", None)
        if callable(load):
            load()


def _imagereward(settings: ImageRewardSettings, loaded_model: Any = None) -> Scorer:
    return ImageRewardScorer(settings, model=loaded_model)


def _package(cls: type) -> Callable[..., Scorer]:
    def factory(settings: PackageScoreSettings, loaded_model: Any = None) -> Scorer:
        return cls(settings, model=loaded_model)

    return factory


@dataclass
class ReferenceScorerSettings(ReferenceSettings):
    """Reference settings plus where CLIP runs for ``metric="clip"``."""

    device: str | None = None
    dtype: str | None = None
    download_root: str | None = None


def _reference(settings: ReferenceScorerSettings, references: Mapping[Any, Any] | None = None,
               clip: CLIPScorer | None = None) -> Scorer:
    found = dict(load_references(settings.folder)) if settings.folder else {}
    found.update(references or {})
    if settings.metric == "clip" and clip is None:
        clip = CLIPScorer(PackageScoreSettings(settings.device, settings.dtype, None, settings.download_root))
    return ReferenceScorer(found, metric=settings.metric, root=settings.root, clip=clip, folder=settings.folder)


@dataclass
class HumanScorerSettings(HumanSettings):
    """Human settings plus the folder where the console rater saves the images to rate."""

    folder: str = "ratings"


def _human(settings: HumanScorerSettings, rater: Any = None, auto: Scorer | str | None = None) -> Scorer:
    if isinstance(auto, str):
        auto = make_scorer(auto)
    human = {f.name: getattr(settings, f.name) for f in dataclasses.fields(HumanSettings)}
    return HumanScorer(rater or ConsoleRater(settings.folder), HumanSettings(**human), auto=auto)


def _component(spec: Any) -> tuple:
    """A (scorer, weight[, range]) from a scorer, a name, or (name, settings dict)."""
    if not isinstance(spec, (tuple, list)) or len(spec) not in (2, 3):
        raise ScorerError(f"combined: a component is (scorer, weight) or (scorer, weight, (low, high)), not {spec!r}")
    head = spec[0]
    if isinstance(head, str):
        head = make_scorer(head)
    elif isinstance(head, (tuple, list)) and len(head) == 2 and isinstance(head[0], str):
        head = make_scorer(head[0], **dict(head[1]))
    return (head, *spec[1:])


def _combined(settings: CombinedSettings, components: Sequence[Any] = ()) -> Scorer:
    return CombinedScorer([_component(spec) for spec in components], normalise=settings.normalise)


register_scorer("imagereward", "ImageReward preference score (raw reward, or sigmoid like the seed)",
                ImageRewardSettings, _imagereward, ("loaded_model",))
register_scorer("aesthetic", "LAION aesthetic predictor on CLIP ViT-L/14 (prompt ignored)",
                PackageScoreSettings, _package(AestheticScorer), ("loaded_model",))
register_scorer("clip", "CLIP ViT-L/14 prompt-image cosine similarity", PackageScoreSettings, _package(CLIPScorer),
                ("loaded_model",))
register_scorer("blip", "BLIP prompt-image cosine similarity", PackageScoreSettings, _package(BLIPScorer),
                ("loaded_model",))
register_scorer("reference", "similarity to reference images (ssim, neg_mse or clip)", ReferenceScorerSettings,
                _reference, ("references", "clip"))
register_scorer("human", "a person's 1-10 ratings, optionally mixed with an automatic score", HumanScorerSettings,
                _human, ("rater", "auto"))
register_scorer("combined", "weighted combination of other scorers on a common scale", CombinedSettings, _combined,
                ("components",))
