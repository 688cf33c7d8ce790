"""Every setting of a search, as data classes, read from a JSON/TOML file or a mapping and written back.

``SearchSettings`` is what the CLI builds from flags and config files, what
the UI builds from its form, and what a run's manifest records (so
``--resume`` needs nothing but the run folder). Reading is strict: an
unknown key or a value of the wrong type is an error naming the file and the
dotted key (``search.toml: stop.max_evaluations must be an integer, got 'x'``).

A config file holds the same keys as ``SearchSettings.to_dict()``, e.g. TOML::

    name = "anime-vs-real"
    seed = 1
    [models]
    a = "models/A.safetensors"
    b = "models/B.safetensors"
    [payloads]
    folder = "payloads"
    names = ["portrait", "landscape"]
    [stop]
    max_evaluations = 200
    patience = 81
    [scorer]
    name = "imagereward"
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union


from ..errors import MBWError
from ..fileio import read_text_capped
from ..recipe import FOLDS, ORDERS
from ..scorers.tally import POSITIVE_MAPS, TALLIES
from .fidelity import FidelitySettings, fidelity_checks
from .stopping import StopSettings

FAMILIES: tuple[str, ...] = ("sd1", "sd2", "sdxl")
DTYPES: tuple[str, ...] = ("fp16", "bf16", "fp32")


class SettingsError(MBWError):
    """A search setting is unknown, of the wrong type or out of range."""


@dataclass
class ModelSettings:
    """The checkpoints (paths or names the generator understands) and their architecture.

    ``a`` and ``b`` are a two-model merge; ``c``, ``d``, ``e`` make it a block
    mix of 3-5 models in the order a, b, c, d, e (docs/multi.md).
    """

    a: str | None = None
    b: str | None = None
    family: str | None = None  # sd1 / sd2 / sdxl; None: detected from model A's file
    c: str | None = None
    d: str | None = None
    e: str | None = None

    def listed(self) -> list[str]:
        """The models given, in mix order (``a``, ``b``, then ``c``, ``d``, ``e`` where set)."""
        return [m for m in (self.a, self.b, self.c, self.d, self.e) if m]

    @property
    def count(self) -> int:
        """How many models the search merges: 2, or 3-5 for a block mix."""
        return max(2, len(self.listed()))


@dataclass
class PayloadSettings:
    folder: str = "payloads"
    names: list[str] = field(default_factory=list)  # empty: every payload in the folder
    wildcards: str | None = "payloads/wildcards"


@dataclass
class SpaceSettings:
    """The search space (see lib_mbw.search.space): grid levels, per-block ranges, frozen blocks, groups."""

    levels: int = 21
    ranges: dict[str, list[float]] = field(default_factory=dict)
    frozen: dict[str, float] = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)
    search_base: bool = False
    #: 3-5 models: ranges/frozen/groups per chain step (step k adds model k+1), and whole frozen blocks.
    steps: list[dict[str, Any]] = field(default_factory=list)
    frozen_shares: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class InitPointSettings:
    """Initial points the optimizer evaluates before it models anything."""

    random: int = 10
    grid: int = 0
    vertex: int = 0


@dataclass
class AbandonSettings:
    """Early abandon: stop evaluating a candidate that is already clearly worse than the best.

    After ``after`` payloads (default: half of them, rounded up) and after
    each later one, a candidate whose tally so far is below the best full
    score by more than ``margin`` (score units) is abandoned. ``margin`` None
    turns it off.
    """

    margin: float | None = None
    after: int | None = None


@dataclass
class TallySettings:
    method: str = "arithmetic"
    trim: float = 0.1
    positive: str = "sigmoid"


@dataclass
class ComponentSettings:
    """A generator or scorer: a registry name or ``package.module:factory``, plus keyword options."""

    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class GeneratorSettings(ComponentSettings):
    """``workers``: one option set per generator instance (remote workers); empty = one generator."""

    name: str = "diffusers"
    workers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ScorerSettings(ComponentSettings):
    name: str = "imagereward"


@dataclass
class OutputSettings:
    """What a finished search writes besides its run folder (recipe, plots and images always go there)."""

    model: str | None = None  # merged model file or folder; None: no merged model
    merge: bool = True
    dtype: str = "fp16"
    base_from: str = "a"
    vae_from: str | None = None
    overwrite: bool = False
    save_images: bool = True


@dataclass
class SearchSettings:
    name: str = "search"
    seed: int = 0
    models: ModelSettings = field(default_factory=ModelSettings)
    payloads: PayloadSettings = field(default_factory=PayloadSettings)
    strategy: str = "default"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    init: InitPointSettings = field(default_factory=InitPointSettings)
    warm_start: list[str] = field(default_factory=list)  # run folders, history CSVs (ours / the seed's), recipes
    initial_recipes: list[str] = field(default_factory=list)  # recipes evaluated first
    recipe_order: str = "rt"  # block order of 27-value input without names (seed CSVs, positional recipes)
    recipe_fold: str = "mbw"  # convention of 25/26-value presets
    space: SpaceSettings = field(default_factory=SpaceSettings)
    stop: StopSettings = field(default_factory=StopSettings)
    abandon: AbandonSettings = field(default_factory=AbandonSettings)
    fidelity: FidelitySettings = field(default_factory=FidelitySettings)
    tally: TallySettings = field(default_factory=TallySettings)
    rescore_top: int = 3
    max_failures: int = 3
    generator: GeneratorSettings = field(default_factory=GeneratorSettings)
    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    history_dir: str = "csv/history"
    output: OutputSettings = field(default_factory=OutputSettings)

    def validate(self, source: str | None = None) -> "SearchSettings":
        """Check cross-field ranges; returns self. SettingsError names the key (and ``source``, the file or
        "command line" the values came from)."""
        prefix = f"{source}: " if source else ""
        checks = [
            (self.models.family is None or self.models.family in FAMILIES, "models.family", f"one of {', '.join(FAMILIES)}"),
            (2 <= self.space.levels <= 1001, "space.levels", "from 2 to 1001"),
            (self.init.random >= 0 and self.init.grid >= 0 and self.init.vertex >= 0, "init", "counts ≥ 0"),
            (self.recipe_order in ORDERS, "recipe_order", f"one of {', '.join(ORDERS)}"),
            (self.recipe_fold in FOLDS, "recipe_fold", f"one of {', '.join(FOLDS)}"),
            (self.tally.method in TALLIES, "tally.method", f"one of {', '.join(TALLIES)}"),
            (self.tally.positive in POSITIVE_MAPS, "tally.positive", f"one of {', '.join(POSITIVE_MAPS)}"),
            (0.0 <= self.tally.trim < 0.5, "tally.trim", "in [0, 0.5)"),
            (all(math.isfinite(v) for v in self.space.frozen.values()), "space.frozen", "finite numbers"),
            (all(math.isfinite(v) for r in self.space.ranges.values() for v in r), "space.ranges", "finite numbers"),
            (self.rescore_top >= 0, "rescore_top", "≥ 0 (0 disables re-scoring)"),
            (self.max_failures >= 1, "max_failures", "≥ 1"),
            (self.seed >= 0, "seed", "≥ 0"),
            (self.abandon.margin is None or (math.isfinite(self.abandon.margin) and self.abandon.margin >= 0), "abandon.margin", "a finite number ≥ 0 (or unset to disable)"),
            (self.abandon.after is None or self.abandon.after >= 1, "abandon.after", "≥ 1"),
            (self.output.dtype in DTYPES, "output.dtype", f"one of {', '.join(DTYPES)}"),
            (bool(self.generator.name), "generator.name", "set (a registry name or package.module:factory)"),
            (bool(self.scorer.name), "scorer.name", "set (a registry name or package.module:factory)"),
            *fidelity_checks(self.fidelity),
        ]
        for ok, key, need in checks:
            if not ok:
                raise SettingsError(f"{prefix}setting {key} must be {need}, got {_lookup(self, key)!r}")
        from .settings_n import check_models_n

        check_models_n(self, prefix)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _lookup(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


# --------------------------------------------------------------------------- strict reading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or null)"
    if origin is list:
        return "a list"
    if origin is dict:
        return "a table/object"
    return {int: "an integer", float: "a number", str: "text", bool: "true/false", Any: "any value"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key, source)
            except SettingsError as exc:
                errors.append(exc)
        raise SettingsError(f"{source}: {key} must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, source, prefix=key + ".")
    if tp is Any:
        return value
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{source}: {key} must be a list, got {value!r}")
        return [_convert(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        key_type, item = typing.get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise SettingsError(f"{source}: {key} must be a table/object, got {value!r}")
        return {str(k): _convert(v, item, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise SettingsError(f"{source}: {key} must be {_type_name(tp)}, got {value!r}")


def from_mapping(cls: type, data: Any, source: str = "settings", prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from ``data``; unknown keys and wrong types raise SettingsError."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise SettingsError(f"{source}: {prefix.rstrip('.') or 'settings'} must be a table/object, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in names]
    if unknown:
        raise SettingsError(f"{source}: unknown setting(s) {', '.join(prefix + k for k in unknown)}; known: {', '.join(sorted(names))}")
    values = {k: _convert(v, hints[k], prefix + k, source) for k, v in data.items()}
    try:
        return cls(**values)
    except MBWError as exc:
        raise SettingsError(f"{source}: {exc}") from None


def merge_mappings(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` applied key by key, recursing into nested tables."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged


def _toml_module(path: Path) -> Any:
    try:
        import tomllib  # Python 3.11+

        return tomllib
    except ImportError:
        try:
            import tomli  # the same parser for Python 3.10

            return tomli
        except ImportError:
            raise SettingsError(f"{path}: reading TOML needs Python 3.11+ (or the tomli package); use a .json file instead") from None


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a JSON or TOML settings file (by suffix; TOML for anything but .json)."""
    path = Path(path)
    try:
        text = read_text_capped(path)
    except FileNotFoundError:
        raise SettingsError(f"{path}: settings file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{path}: cannot read settings file ({exc})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    else:
        toml = _toml_module(path)
        try:
            data = toml.loads(text)
        except toml.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: invalid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: settings must be a table/object at the top level")
    return data


def load_settings(path: str | Path, overrides: Mapping[str, Any] | None = None) -> SearchSettings:
    """Settings from a JSON/TOML file, with ``overrides`` (e.g. from CLI flags) applied on top."""
    data = merge_mappings(read_settings_file(path), overrides or {})
    return from_mapping(SearchSettings, data, str(path)).validate()


def settings_from_dict(data: Mapping[str, Any], source: str = "settings") -> SearchSettings:
    return from_mapping(SearchSettings, data, source).validate()
