"""The search form as data: form values <-> ``SearchSettings``, with a message per field for bad input.

The UI collects its inputs in the order of ``FORM_FIELDS`` and hands them to
``settings_from_form``, which returns either valid ``SearchSettings`` or the
problems keyed by form field, so each message is shown next to its field
(``SECTIONS`` says which message slot a field belongs to). Nothing here
imports gradio: these are plain functions tested without a server.

The 27-block grid is a table with one row per block: ``[block, min, max,
freeze, group]``. A ``freeze`` value fixes the block's weight; ``min``/``max``
other than 0/1 restrict its range; blocks with the same ``group`` label share
one weight.

Models C, D and E (optional, in that order) make the search a block mix of
3-5 models (docs/multi.md): every block's shares are searched, so the block
grid, "search BASE" and "base from b/merge" apply to two models only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..blocks import BLOCKS, present_blocks
from ..errors import MBWError
from ..hosts.base import HostPaths
from ..recipe import FOLDS, ORDERS
from ..scorers.tally import POSITIVE_MAPS, TALLIES
from ..search.fidelity import MODES as FIDELITY_MODES
from ..search.settings import DTYPES, SearchSettings, SettingsError, from_mapping
from ..search.stopping import DEFAULT_MAX_EVALUATIONS, DEFAULT_PATIENCE

#: Columns of the block grid.
GRID_HEADERS: tuple[str, ...] = ("block", "min", "max", "freeze", "group")

ON_MISSING: tuple[str, ...] = ("fail", "auto")
BASE_FROM: tuple[str, ...] = ("a", "b", "merge")


def default_block_grid() -> list[list[Any]]:
    """One row per canonical block: full range, not frozen, no group."""
    return [[block, 0.0, 1.0, "", ""] for block in BLOCKS]


@dataclass
class FormValues:
    """Every input of the search form (types as gradio components deliver them)."""

    # models
    model_a: str | None = None
    model_b: str | None = None
    model_c: str | None = None
    model_d: str | None = None
    model_e: str | None = None
    # payloads
    payload_names: list[str] = field(default_factory=list)
    # search
    run_name: str = "search"
    seed: float | None = 0
    strategy: str = "default"
    strategy_options: str = ""
    max_evaluations: float | None = DEFAULT_MAX_EVALUATIONS
    patience: float | None = DEFAULT_PATIENCE
    tol_abs: float | None = 0.0
    tol_rel: float | None = 0.0
    max_minutes: float | None = 0.0
    target_score: str = ""
    levels: float | None = 21
    init_random: float | None = 10
    init_grid: float | None = 0
    init_vertex: float | None = 0
    search_base: bool = False
    block_grid: Any = field(default_factory=default_block_grid)
    # warm start
    warm_start_paths: str = ""
    warm_start_files: Any = None
    initial_recipe: str = ""
    recipe_order: str = "rt"
    recipe_fold: str = "mbw"
    # scoring
    scorer: str = "imagereward"
    scorer_options: str = ""
    tally: str = "arithmetic"
    tally_trim: float | None = 0.1
    tally_positive: str = "sigmoid"
    abandon_margin: str = ""
    abandon_after: str = ""
    fidelity_mode: str = "off"
    fidelity_steps: float | None = 0.5
    fidelity_payloads: str = ""
    fidelity_quantile: float | None = 0.5
    rescore_top: float | None = 3
    max_failures: float | None = 3
    human_low: float | None = 1
    human_high: float | None = 10
    human_timeout: str = ""
    human_on_missing: str = "fail"
    human_auto_weight: float | None = 0.0
    human_auto_scorer: str = ""
    # generator
    generator_options: str = ""
    # outputs
    merge_when_done: bool = False
    output_name: str = ""
    dtype: str = "fp16"
    base_from: str = "a"
    vae_from: str = ""
    overwrite: bool = False
    save_images: bool = True

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "FormValues":
        """Form values from the UI's inputs, given in ``FORM_FIELDS`` order."""
        if len(values) != len(FORM_FIELDS):
            raise ValueError(f"expected {len(FORM_FIELDS)} form values, got {len(values)}")
        return cls(**dict(zip(FORM_FIELDS, values)))

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in FORM_FIELDS]


FORM_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FormValues))
#: The model pickers in mix order (C, D, E optional: a mix of 3-5 models).
MODEL_FIELDS: tuple[str, ...] = ("model_a", "model_b", "model_c", "model_d", "model_e")

#: Message slot (form section) of each field.
SECTIONS: dict[str, tuple[str, ...]] = {
    "models": ("model_a", "model_b", "model_c", "model_d", "model_e"),
    "payloads": ("payload_names",),
    "search": (
        "run_name", "seed", "strategy", "strategy_options", "max_evaluations", "patience", "tol_abs", "tol_rel",
        "max_minutes", "target_score", "levels", "init_random", "init_grid", "init_vertex", "search_base",
    ),
    "blocks": ("block_grid",),
    "warm_start": ("warm_start_paths", "warm_start_files", "initial_recipe", "recipe_order", "recipe_fold"),
    "scoring": (
        "scorer", "scorer_options", "tally", "tally_trim", "tally_positive", "abandon_margin", "abandon_after",
        "fidelity_mode", "fidelity_steps", "fidelity_payloads", "fidelity_quantile", "rescore_top", "max_failures", "human_low", "human_high", "human_timeout", "human_on_missing",
        "human_auto_weight", "human_auto_scorer", "generator_options",
    ),
    "output": ("merge_when_done", "output_name", "dtype", "base_from", "vae_from", "overwrite", "save_images"),
}
SECTION_OF: dict[str, str] = {name: section for section, names in SECTIONS.items() for name in names}

#: Settings key (as ``SettingsError`` names it) -> form field.
_KEY_TO_FIELD: dict[str, str] = {
    "name": "run_name",
    "seed": "seed",
    "models": "model_a",
    "models.family": "model_a",
    "models.c": "model_c",
    "models.d": "model_d",
    "models.e": "model_e",
    "space.levels": "levels",
    "init": "init_random",
    "recipe_order": "recipe_order",
    "recipe_fold": "recipe_fold",
    "tally.method": "tally",
    "tally.positive": "tally_positive",
    "tally.trim": "tally_trim",
    "rescore_top": "rescore_top",
    "max_failures": "max_failures",
    "abandon.margin": "abandon_margin",
    "abandon.after": "abandon_after",
    "fidelity.mode": "fidelity_mode",
    "fidelity.steps_fraction": "fidelity_steps",
    "fidelity.payloads": "fidelity_payloads",
    "fidelity.promote_quantile": "fidelity_quantile",
    "output.dtype": "dtype",
    "generator.name": "generator_options",
    "scorer.name": "scorer",
    "stop.max_evaluations": "max_evaluations",
    "stop.patience": "patience",
    "stop.tol_abs": "tol_abs",
    "stop.max_minutes": "max_minutes",
}


@dataclass
class FormResult:
    """``settings`` when the form is valid, else ``errors``: form field -> message."""

    settings: SearchSettings | None
    errors: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.settings is not None and not self.errors

    def section_messages(self) -> dict[str, str]:
        """Markdown per section: the messages of that section's fields ('' when it has none)."""
        out = {section: "" for section in SECTIONS}
        for name, message in self.errors.items():
            section = SECTION_OF.get(name, "search")
            label = name.replace("_", " ")
            out[section] += f"- **{label}**: {message}\n"
        return out


# --------------------------------------------------------------------------- field parsers


class _Problems:
    """Collects one message per field."""

    def __init__(self) -> None:
        self.errors: dict[str, str] = {}

    def add(self, name: str, message: str) -> None:
        self.errors.setdefault(name, message)

    def integer(self, name: str, value: Any, low: int, high: int | None = None, what: str = "") -> int:
        number = _number(value)
        bound = f"≥ {low}" if high is None else f"between {low} and {high}"
        if number is None or not float(number).is_integer() or number < low or (high is not None and number > high):
            self.add(name, f"must be a whole number {bound}{what}, got {_show(value)}")
            return low
        return int(number)

    def real(self, name: str, value: Any, low: float | None = None, high: float | None = None, what: str = "") -> float:
        number = _number(value)
        if number is None or (low is not None and number < low) or (high is not None and number > high):
            if low is not None and high is not None:
                bound = f" between {low:g} and {high:g}"
            elif low is not None:
                bound = f" ≥ {low:g}"
            else:
                bound = ""
            self.add(name, f"must be a number{bound}{what}, got {_show(value)}")
            return low if low is not None else 0.0
        return number

    def optional_real(self, name: str, value: Any, low: float | None = None, what: str = "") -> float | None:
        if _blank(value):
            return None
        return self.real(name, value, low, what=what)

    def optional_integer(self, name: str, value: Any, low: int, what: str = "") -> int | None:
        if _blank(value):
            return None
        return self.integer(name, value, low, what=what)

    def choice(self, name: str, value: Any, choices: Sequence[str]) -> str:
        if value not in choices:
            self.add(name, f"must be one of {', '.join(choices)}, got {_show(value)}")
            return choices[0]
        return str(value)

    def json_object(self, name: str, text: Any) -> dict[str, Any]:
        if _blank(text):
            return {}
        try:
            data = json.loads(str(text))
        except json.JSONDecodeError as exc:
            self.add(name, f"must be a JSON object such as {{\"key\": 1}} (line {exc.lineno}: {exc.msg})")
            return {}
        if not isinstance(data, dict):
            self.add(name, f"must be a JSON object such as {{\"key\": 1}}, got {_show(data)}")
            return {}
        return data


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or _blank(value):
        return None
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _show(value: Any) -> str:
    return "nothing" if _blank(value) else repr(value)


def _lines(text: Any) -> list[str]:
    if _blank(text):
        return []
    return [line.strip() for line in str(text).splitlines() if line.strip()]


def file_paths(value: Any) -> list[str]:
    """Paths of uploaded files as gradio delivers them (str, a temp-file object with ``.name``, or a list)."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    paths = []
    for item in items:
        if isinstance(item, Mapping):
            item = item.get("path") or item.get("name")
        path = getattr(item, "name", item)
        if path:
            paths.append(str(path))
    return paths


# --------------------------------------------------------------------------- files a client names


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def warm_start_in_history(spec: str, history: Path, order: str, fold: str) -> tuple[Path | None, str]:
    """(path, "") for a run folder / history CSV / recipe file inside ``history``, else (None, why).

    A UI client may be anyone who reaches the UI: it reads nothing outside
    the history folder (uploads aside), and an unreadable file is named, never quoted.
    """
    from ..search.history import load_warm_start

    root = Path(history).resolve()
    candidate = Path(spec) if Path(spec).is_absolute() else root / spec
    if not Path(spec).is_absolute() and not candidate.exists():
        candidate = Path(spec)  # a path relative to the working folder, as the history folder is shown
    resolved = candidate.resolve()
    if not _inside(resolved, root):
        return None, f"{spec}: the UI reads warm starts only from runs in {history} (a run id or a file there); upload other files"
    if not resolved.exists():
        return None, f"{spec}: no such run or file in {history}"
    try:
        load_warm_start(str(resolved), order, fold)
    except MBWError:
        if not (resolved.is_file() and _reads_as_recipe_n(str(resolved))):
            return None, f"{spec}: not a run folder, history CSV or recipe file auto-MBW can read"
    return resolved, ""


def _reads_as_recipe_n(spec: str) -> bool:
    """Whether ``spec`` (a file or text) is an N-model recipe (JSON or chain lines) for a mix search."""
    from ..recipe_n import read_recipe_n

    try:
        read_recipe_n(spec)
    except MBWError:
        return False
    return True


def initial_recipe(text: str, history: Path, order: str, fold: str) -> tuple[str, str]:
    """(recipe text or the path of a recipe file inside ``history``, "") or ("", why it cannot be used)."""
    from ..recipe import read_recipe

    if Path(text).is_absolute() or "/" in text or "\\" in text or text.endswith((".json", ".txt")):
        resolved = Path(text).resolve() if Path(text).is_absolute() else (Path(history) / text).resolve()
        if not _inside(resolved, Path(history).resolve()):
            resolved = Path(text).resolve()  # relative to the working folder, as the history folder is shown
        if not _inside(resolved, Path(history).resolve()) or not resolved.is_file():
            return "", f"{text}: give recipe text (27 numbers or JSON), or a recipe file in {history}"
        try:
            read_recipe(str(resolved), order, fold)
        except MBWError:
            if not _reads_as_recipe_n(str(resolved)):
                return "", f"{text}: not a recipe file auto-MBW can read"
        return str(resolved), ""
    try:
        read_recipe(text, order, fold)
    except MBWError as exc:
        if not _reads_as_recipe_n(text):
            return "", str(exc)  # the client's own text
    return text, ""


# --------------------------------------------------------------------------- the block grid


@dataclass
class BlockSpace:
    """Per-block ranges, frozen weights and groups read from the grid."""

    ranges: dict[str, list[float]] = field(default_factory=dict)
    frozen: dict[str, float] = field(default_factory=dict)
    groups: list[list[str]] = field(default_factory=list)


def table_rows(grid: Any) -> list[list[Any]]:
    """Rows of the grid as lists (gradio gives lists of lists, a pandas DataFrame, or {'data': rows})."""
    if grid is None:
        return []
    if isinstance(grid, Mapping):
        grid = grid.get("data", [])
    if hasattr(grid, "values") and hasattr(grid, "columns"):  # pandas
        grid = grid.values.tolist()
    return [list(row) for row in grid]


def parse_block_grid(grid: Any, family: str | None = None) -> tuple[BlockSpace, list[str]]:
    """The space settings of the grid, and a list of problems (each naming the block)."""
    space = BlockSpace()
    problems: list[str] = []
    present = set(present_blocks(family)) if family else set(BLOCKS)
    groups: dict[str, list[str]] = {}
    seen: set[str] = set()
    for row in table_rows(grid):
        row = (row + ["", "", "", "", ""])[:5]
        block = str(row[0]).strip().upper()
        if not block:
            continue
        if block not in BLOCKS:
            problems.append(f"unknown block {row[0]!r} (rows must be {BLOCKS[0]}..{BLOCKS[-1]})")
            continue
        if block in seen:
            problems.append(f"{block} is listed twice")
            continue
        seen.add(block)
        low, high = _number(row[1]), _number(row[2])
        low = 0.0 if _blank(row[1]) else low
        high = 1.0 if _blank(row[2]) else high
        freeze = None if _blank(row[3]) else _number(row[3])
        group = "" if _blank(row[4]) else str(row[4]).strip()
        is_default = low == 0.0 and high == 1.0 and _blank(row[3]) and not group
        if block not in present:
            if not is_default:
                problems.append(f"{block} does not exist on {family}; leave its row at 0..1, not frozen, no group")
            continue
        if low is None or high is None or not 0.0 <= low < high <= 1.0:
            problems.append(f"{block}: min and max must be numbers with 0 ≤ min < max ≤ 1, got {row[1]!r}..{row[2]!r}")
            continue
        if not _blank(row[3]):
            if freeze is None or not 0.0 <= freeze <= 1.0:
                problems.append(f"{block}: freeze must be a weight between 0 and 1, got {row[3]!r}")
                continue
            if (low, high) != (0.0, 1.0) or group:
                problems.append(f"{block}: a frozen block has no range or group; clear min/max or freeze")
                continue
            space.frozen[block] = freeze
            continue
        if (low, high) != (0.0, 1.0):
            space.ranges[block] = [low, high]
        if group:
            groups.setdefault(group, []).append(block)
    for label, members in groups.items():
        if len(members) < 2:
            problems.append(f"group {label!r} has only {members[0]}; a group needs two or more blocks")
            continue
        bounds = {tuple(space.ranges.get(b, [0.0, 1.0])) for b in members}
        if len(bounds) > 1:
            problems.append(f"group {label!r}: its blocks ({', '.join(members)}) must share one range")
            continue
        space.groups.append(members)
    return space, problems


def block_grid_from_space(ranges: Mapping[str, Sequence[float]], frozen: Mapping[str, float], groups: Sequence[Sequence[str]]) -> list[list[Any]]:
    """The grid showing saved space settings (the inverse of ``parse_block_grid``)."""
    label = {block: f"g{n + 1}" for n, members in enumerate(groups) for block in members}
    rows = []
    for block in BLOCKS:
        low, high = ranges.get(block, (0.0, 1.0))
        rows.append([block, float(low), float(high), "" if block not in frozen else float(frozen[block]), label.get(block, "")])
    return rows


# --------------------------------------------------------------------------- form -> settings


def _settings_key(message: str) -> str | None:
    match = re.search(r"\b(?:setting |: )?([a-z_]+(?:\.[a-z_]+)*) must\b", message)
    return match.group(1) if match else None


#: Option names whose values are files or folders on the server.
PATH_OPTION_NAMES = frozenset({"folder", "root", "path", "file", "download_root", "config_dir", "cache_dir"})
PATH_OPTION_SUFFIXES = ("_dir", "_root", "_path", "_file", "_folder")


def is_path_option(key: str) -> bool:
    """Whether option ``key`` names a file or folder (by the names scorers and generators use)."""
    return key in PATH_OPTION_NAMES or key.endswith(PATH_OPTION_SUFFIXES)


def _inside_any(value: Any, roots: Sequence[Path]) -> bool:
    target = Path(str(value)).expanduser().resolve()
    return any(target == root.resolve() or root.resolve() in target.parents for root in roots)


def confine_path_options(p: _Problems, field: str, options: Mapping[str, Any], roots: Sequence[Path],
                         server: Mapping[str, Any] | None = None) -> None:
    """A UI client may point file/folder options only into the host's folders (or keep the server's own value).

    Whoever can reach the UI must not make the server read or write other places (download folders,
    config folders, reference images): those are set when auto-MBW is started.
    """
    for key, value in options.items():
        if not is_path_option(key) or value is None or value == "":
            continue
        if server is not None and server.get(key) == value:
            continue
        if not isinstance(value, str) or not _inside_any(value, roots):
            where = ", ".join(str(r) for r in roots)
            p.add(field, f"option {key!r}: the UI reaches only files in {where}; set other folders when you start auto-MBW")
            return


def settings_from_form(
    form: FormValues,
    paths: HostPaths,
    *,
    model_path: Callable[[str], Path],
    generator: str,
    generator_options: Mapping[str, Any] | None = None,
    family: str | None = None,
) -> FormResult:
    """Validate the form and build the ``SearchSettings`` of a new search.

    ``model_path`` turns a model title into its file (the host's
    ``model_path``); settings record files, so a run's manifest knows the
    exact models. ``generator`` and ``generator_options`` are what the host
    makes its generators with (recorded, so the run can be resumed without
    the UI; the form's options go on top). ``family`` (detected from model A) lets
    the block grid reject blocks the architecture lacks.
    """
    p = _Problems()
    files: dict[str, str] = {}
    for name in MODEL_FIELDS:
        title = getattr(form, name)
        if _blank(title):
            if name in ("model_a", "model_b"):
                p.add(name, "choose a checkpoint")
            continue
        earlier = MODEL_FIELDS[: MODEL_FIELDS.index(name)]
        gap = next((f for f in earlier if _blank(getattr(form, f))), None)
        if gap is not None and name not in ("model_a", "model_b"):
            p.add(name, f"choose {gap.replace('_', ' ')} first; models are mixed in the order A, B, C, D, E")
            continue
        try:
            files[name] = str(model_path(str(title)))
        except MBWError as exc:
            p.add(name, str(exc))
            continue
        same = next((f for f in earlier if files.get(f) == files[name]), None)
        if same is not None:
            p.add(name, f"is the same checkpoint as {same.replace('_', ' ')}; every merge would be identical and score the same")
    mix = len(files) > 2

    from ..payloads import list_payloads

    available = list_payloads(paths.payloads)
    chosen = [str(n) for n in (form.payload_names or [])]
    if not available:
        p.add("payload_names", f"no payload files in {paths.payloads}; create one in the payload manager")
    missing = [n for n in chosen if n not in available]
    if missing:
        p.add("payload_names", f"not found in {paths.payloads}: {', '.join(missing)}")

    seed = p.integer("seed", form.seed, 0, 2**32 - 1)
    max_evaluations = p.integer("max_evaluations", form.max_evaluations, 1)
    patience = p.integer("patience", form.patience, 0, what=" (0 = never stop early)")
    tol_abs = p.real("tol_abs", form.tol_abs, 0.0)
    tol_rel = p.real("tol_rel", form.tol_rel, 0.0)
    max_minutes = p.real("max_minutes", form.max_minutes, 0.0, what=" (0 = no time budget)")
    target = p.optional_real("target_score", form.target_score)
    levels = p.integer("levels", form.levels, 2, 1001)
    init = {
        "random": p.integer("init_random", form.init_random, 0),
        "grid": p.integer("init_grid", form.init_grid, 0),
        "vertex": p.integer("init_vertex", form.init_vertex, 0),
    }
    strategy_options = p.json_object("strategy_options", form.strategy_options)
    if _blank(form.strategy):
        p.add("strategy", "choose a strategy")

    space, grid_problems = parse_block_grid(form.block_grid, family)
    if grid_problems:
        p.add("block_grid", "; ".join(grid_problems))
    if mix and (space.ranges or space.frozen or space.groups):
        p.add("block_grid", f"ranges, frozen weights and groups are for two models; a mix of {len(files)} searches every block's "
              "shares (reset the grid, or give space.steps in a settings file for the search command)")
    if mix and form.search_base:
        p.add("search_base", f"a mix of {len(files)} models searches the UNet only; untick it")

    order = p.choice("recipe_order", form.recipe_order, list(ORDERS))
    fold = p.choice("recipe_fold", form.recipe_fold, list(FOLDS))
    warm, warm_problems = [], []
    for spec in _lines(form.warm_start_paths):
        folder, problem = warm_start_in_history(spec, paths.history, order, fold)
        if problem:
            warm_problems.append(problem)
        else:
            warm.append(str(folder))
    if warm_problems:
        p.add("warm_start_paths", "; ".join(warm_problems))
    warm += file_paths(form.warm_start_files)
    initial: list[str] = []
    if not _blank(form.initial_recipe):
        text = str(form.initial_recipe).strip()
        value, problem = initial_recipe(text, paths.history, order, fold)
        if problem:
            p.add("initial_recipe", problem)
        else:
            initial.append(value)

    scorer_options = p.json_object("scorer_options", form.scorer_options)
    scorer = str(form.scorer or "").strip()
    if not scorer:
        p.add("scorer", "choose a scorer (a registered name or package.module:factory)")
    if scorer == "human":
        scorer_options = {**_human_options(p, form), **scorer_options}
    tally = p.choice("tally", form.tally, list(TALLIES))
    trim = p.real("tally_trim", form.tally_trim, 0.0, 0.49)
    positive = p.choice("tally_positive", form.tally_positive, list(POSITIVE_MAPS))
    margin = p.optional_real("abandon_margin", form.abandon_margin, 0.0, what=" (blank = never abandon early)")
    after = p.optional_integer("abandon_after", form.abandon_after, 1, what=" (blank = half of the payloads)")
    fidelity = {
        "mode": p.choice("fidelity_mode", form.fidelity_mode, list(FIDELITY_MODES)),
        "steps_fraction": p.real("fidelity_steps", form.fidelity_steps, 0.01, 1.0),
        "payloads": p.optional_integer("fidelity_payloads", form.fidelity_payloads, 1, what=" (blank = all payloads)"),
        "promote_quantile": p.real("fidelity_quantile", form.fidelity_quantile, 0.0, 0.99),
    }
    rescore_top = p.integer("rescore_top", form.rescore_top, 0, what=" (0 = no re-scoring)")
    max_failures = p.integer("max_failures", form.max_failures, 1)
    host_generator_options = generator_options
    generator_options = p.json_object("generator_options", form.generator_options)
    roots = paths.client_roots()
    confine_path_options(p, "scorer_options", scorer_options, roots)
    confine_path_options(p, "generator_options", generator_options, roots, server=host_generator_options or {})

    dtype = p.choice("dtype", form.dtype, list(DTYPES))
    base_from = str(form.base_from or "a").strip()
    if base_from not in BASE_FROM and not (_inside_any(base_from, [paths.models]) and Path(base_from).is_file()):
        p.add("base_from", f"must be a, b, merge or a checkpoint file in {paths.models}, got {_show(form.base_from)}")
    elif mix and base_from in ("b", "merge"):
        p.add("base_from", f"a mix takes the text encoder from model A or a checkpoint file in {paths.models}, got {base_from}")
    vae_from = None if _blank(form.vae_from) else str(form.vae_from).strip()
    if vae_from and not (_inside_any(vae_from, [paths.models]) and Path(vae_from).is_file()):
        p.add("vae_from", f"{vae_from}: no such file in {paths.models}")
    output_model = None
    if form.merge_when_done:
        output_model = str(paths.models)
        if not _blank(form.output_name):
            from ..fileio import safe_name

            stem = str(form.output_name).strip()
            if stem.lower().endswith(".safetensors"):
                stem = stem[: -len(".safetensors")]
            if safe_name(stem, default="") != stem:
                p.add("output_name", f"use letters, digits, '.', '_', '-' and spaces only (e.g. {safe_name(stem)!r})")
            output_model = str(Path(paths.models) / f"{stem}.safetensors")
            if Path(output_model).exists() and not form.overwrite:
                p.add("output_name", f"{output_model} exists; choose another name or tick overwrite")

    if p.errors:
        return FormResult(None, p.errors)
    data: dict[str, Any] = {
        "name": str(form.run_name or "").strip() or "search",
        "seed": seed,
        "models": {"a": files["model_a"], "b": files["model_b"], "family": family,
                   **{name[-1]: files[name] for name in MODEL_FIELDS[2:] if name in files}},
        "payloads": {"folder": str(paths.payloads), "names": chosen, "wildcards": str(paths.wildcards)},
        "strategy": str(form.strategy).strip(),
        "strategy_options": strategy_options,
        "init": init,
        "warm_start": warm,
        "initial_recipes": initial,
        "recipe_order": order,
        "recipe_fold": fold,
        "space": {"levels": levels} if mix else
                 {"levels": levels, "ranges": space.ranges, "frozen": space.frozen, "groups": space.groups, "search_base": bool(form.search_base)},
        "stop": {
            "max_evaluations": max_evaluations,
            "patience": patience or None,
            "tol_abs": tol_abs,
            "tol_rel": tol_rel,
            "max_minutes": max_minutes or None,
            "target_score": target,
        },
        "abandon": {"margin": margin, "after": after},
        "fidelity": fidelity,
        "tally": {"method": tally, "trim": trim, "positive": positive},
        "rescore_top": rescore_top,
        "max_failures": max_failures,
        "generator": {"name": generator, "options": {**dict(host_generator_options or {}), **generator_options}},
        "scorer": {"name": scorer, "options": scorer_options},
        "history_dir": str(paths.history),
        "output": {
            "model": output_model,
            "merge": bool(form.merge_when_done),
            "dtype": dtype,
            "base_from": base_from,
            "vae_from": vae_from,
            "overwrite": bool(form.overwrite),
            "save_images": bool(form.save_images),
        },
    }
    try:
        settings = from_mapping(SearchSettings, data, "form").validate()
    except MBWError as exc:
        key = _settings_key(str(exc)) or ""
        return FormResult(None, {_KEY_TO_FIELD.get(key, "run_name"): str(exc)})
    return FormResult(settings, {})


def _human_options(p: _Problems, form: FormValues) -> dict[str, Any]:
    """Options of the human scorer from its form fields."""
    low = p.integer("human_low", form.human_low, -1000)
    high = p.integer("human_high", form.human_high, -1000)
    if "human_low" not in p.errors and "human_high" not in p.errors and low >= high:
        p.add("human_high", f"must be above the lowest rating ({low}), got {high}")
    timeout = p.optional_real("human_timeout", form.human_timeout, 1.0, what=" seconds (blank = wait as long as it takes)")
    on_missing = p.choice("human_on_missing", form.human_on_missing, list(ON_MISSING))
    weight = p.real("human_auto_weight", form.human_auto_weight, 0.0, 1.0)
    auto = None if _blank(form.human_auto_scorer) else str(form.human_auto_scorer).strip()
    if (weight > 0 or on_missing == "auto") and not auto:
        p.add("human_auto_scorer", "name the automatic scorer to mix in (e.g. imagereward), or set its weight to 0 and 'fail'")
    options: dict[str, Any] = {"low": low, "high": high, "timeout_s": timeout, "on_missing": on_missing, "auto_weight": weight}
    if auto:
        options["auto"] = auto
    return options


# --------------------------------------------------------------------------- settings -> form


def form_from_settings(settings: SearchSettings, title_of: Callable[[str], str | None] = lambda path: None) -> FormValues:
    """The form showing ``settings`` (a past run's), e.g. to start a new search like it.

    ``title_of`` maps a model file back to the host's title (None when the
    host does not list it: the field is left empty).
    """
    s = settings
    human = s.scorer.options if s.scorer.name == "human" else {}
    other_options = {k: v for k, v in s.scorer.options.items() if k not in ("low", "high", "timeout_s", "on_missing", "auto_weight", "auto")} if human else s.scorer.options
    model_name = Path(s.output.model).name if s.output.model and s.output.model.lower().endswith(".safetensors") else ""
    return FormValues(
        model_a=title_of(s.models.a) if s.models.a else None,
        model_b=title_of(s.models.b) if s.models.b else None,
        model_c=title_of(s.models.c) if s.models.c else None,
        model_d=title_of(s.models.d) if s.models.d else None,
        model_e=title_of(s.models.e) if s.models.e else None,
        payload_names=list(s.payloads.names),
        run_name=s.name,
        seed=s.seed,
        strategy=s.strategy,
        strategy_options=json.dumps(s.strategy_options) if s.strategy_options else "",
        max_evaluations=s.stop.max_evaluations,
        patience=s.stop.patience or 0,
        tol_abs=s.stop.tol_abs,
        tol_rel=s.stop.tol_rel,
        max_minutes=s.stop.max_minutes or 0.0,
        target_score="" if s.stop.target_score is None else f"{s.stop.target_score:g}",
        levels=s.space.levels,
        init_random=s.init.random,
        init_grid=s.init.grid,
        init_vertex=s.init.vertex,
        search_base=s.space.search_base,
        block_grid=block_grid_from_space(s.space.ranges, s.space.frozen, s.space.groups),
        warm_start_paths="\n".join(s.warm_start),
        initial_recipe=s.initial_recipes[0] if s.initial_recipes else "",
        recipe_order=s.recipe_order,
        recipe_fold=s.recipe_fold,
        scorer=s.scorer.name,
        scorer_options=json.dumps(other_options) if other_options else "",
        tally=s.tally.method,
        tally_trim=s.tally.trim,
        tally_positive=s.tally.positive,
        abandon_margin="" if s.abandon.margin is None else f"{s.abandon.margin:g}",
        abandon_after="" if s.abandon.after is None else str(s.abandon.after),
        fidelity_mode=s.fidelity.mode,
        fidelity_steps=s.fidelity.steps_fraction,
        fidelity_payloads="" if s.fidelity.payloads is None else str(s.fidelity.payloads),
        fidelity_quantile=s.fidelity.promote_quantile,
        rescore_top=s.rescore_top,
        max_failures=s.max_failures,
        human_low=human.get("low", 1),
        human_high=human.get("high", 10),
        human_timeout="" if human.get("timeout_s") is None else f"{human['timeout_s']:g}",
        human_on_missing=human.get("on_missing", "fail"),
        human_auto_weight=human.get("auto_weight", 0.0),
        human_auto_scorer=str(human.get("auto") or ""),
        generator_options=json.dumps(s.generator.options) if s.generator.options else "",
        merge_when_done=bool(s.output.model) and s.output.merge,
        output_name=model_name,
        dtype=s.output.dtype,
        base_from=s.output.base_from,
        vae_from=s.output.vae_from or "",
        overwrite=s.output.overwrite,
        save_images=s.output.save_images,
    )


def settings_from_manifest(manifest: Mapping[str, Any], source: str) -> SearchSettings:
    """The settings a run recorded in its manifest."""
    try:
        return from_mapping(SearchSettings, manifest.get("settings", {}), source)
    except SettingsError:
        raise
    except MBWError as exc:
        raise SettingsError(f"{source}: {exc}") from None


__all__ = [
    "BlockSpace",
    "FORM_FIELDS",
    "FormResult",
    "FormValues",
    "GRID_HEADERS",
    "MODEL_FIELDS",
    "SECTIONS",
    "SECTION_OF",
    "block_grid_from_space",
    "default_block_grid",
    "file_paths",
    "form_from_settings",
    "parse_block_grid",
    "settings_from_form",
    "table_rows",
    "settings_from_manifest",
]
