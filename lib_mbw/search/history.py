"""Run folders and the crash-safe search history: the source of truth of a search.

Each search gets its own folder ``<base>/<run-id>/`` (run-id = local time +
sanitised name + 6 random hex digits; created exclusively, so two searches
never share or overwrite one) holding:

* ``manifest.json``: settings, models (paths, sizes, sha256), the concrete
  payloads (contents + hashes), seeds, optimizer, package versions; rewritten
  atomically when the run ends with its result.
* ``history.csv``: one row per evaluation, appended, flushed and fsync'd
  before the next evaluation starts. Columns: ``index, timestamp, status,
  source, score``, every block weight by name in canonical order, ``BASE`` if
  searched, ``payload:<name>`` per payload, ``merge_s, generate_s, score_s,
  total_s, worker, reason, rung, screen_score``. A search over 3-5 models has
  chain-weight columns ``<BLOCK>@m<K>`` instead of the block weights
  (``history_n``). ``status`` is ok / failed / abandoned / screened / cached /
  rescore / selected; ``source`` is optimizer / initial / rescore / final.
  With multi-fidelity screening (``fidelity``) ``rung`` says how far a search
  candidate got (``screen``: only the cheap render, status ``screened``, its
  score the full-scale estimate the optimizer was told; ``full``: promoted and
  rendered in full) and ``screen_score`` holds its cheap score; both are empty
  without screening, and histories written before these columns existed are
  read as such.
  The last row (status ``selected``) is the recipe the search returned and why.
* ``state.json``: where the loop was (phase, stop reason, elapsed time,
  re-score candidates), replaced atomically after every evaluation. It holds
  numbers, recipes and words only: the optimizer is rebuilt on ``--resume``
  by replaying the history (the source of truth) through a new one. It is
  not fsync'd (one disk flush per evaluation is enough): after a power loss
  it may be older than the history, or missing, and the history still says
  everything the optimizer needs.

A run killed at any moment (SIGKILL, power loss) loses at most the
evaluation in flight: a half-written last line is dropped when the history
is reopened. This module also reads histories for warm start: ours, and the
seed tool's CSVs (columns ``0..26, score, eval_times, iter_times`` with the
27 weights in its block order).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..blocks import BASE, BLOCKS, present_blocks
from ..errors import MBWError, RecipeError
from .. import fileio
from ..fileio import safe_name, write_atomic
from ..recipe import ORDERS, Recipe, from_positional, read_recipe, to_positional, to_preset
from ..recipe_n import RecipeN
from .fidelity import RUNGS

HISTORY_FILE = "history.csv"
MANIFEST_FILE = "manifest.json"
STATE_FILE = "state.json"
STATE_FORMAT = "auto-mbw-state"

STATUSES: tuple[str, ...] = ("ok", "failed", "abandoned", "screened", "cached", "rescore", "selected")
PHASES: tuple[str, ...] = ("search", "rescore", "select", "done")
#: Stop reasons a state may record (``stopping.StopReason`` values; not imported: stopping imports the optimizer).
STOP_REASONS: tuple[str, ...] = (
    "max_evaluations", "no_improvement", "time_budget", "target_score", "user_abort", "optimizer_exhausted", "failures", "write_error",
)
SOURCES: tuple[str, ...] = ("optimizer", "initial", "rescore", "final")
#: Statuses whose score is a full evaluation of the recipe on the run's payloads.
SCORED_STATUSES: tuple[str, ...] = ("ok", "cached", "rescore")

PAYLOAD_PREFIX = "payload:"
_LEAD = ("index", "timestamp", "status", "source", "score")
_TAIL = ("merge_s", "generate_s", "score_s", "total_s", "worker", "reason", "rung", "screen_score")


class HistoryError(MBWError):
    """A history, state or manifest file is missing, unreadable or from another kind of run."""


class HistoryWriteError(HistoryError):
    """A file of the run folder could not be written (full disk, read-only, I/O error); the history is intact."""

    def __init__(self, message: str, cause: OSError | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def _reason(exc: OSError) -> str:
    import errno

    return "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))


def new_run_id(name: str = "search", now: _dt.datetime | None = None) -> str:
    """``YYYYmmdd-HHMMSS-<name>-<6 hex>``: sortable by time, safe as a folder name."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{safe_name(name, default='search', max_length=40).replace(' ', '_')}-{secrets.token_hex(3)}"


def create_run_folder(base: str | os.PathLike[str], name: str = "search") -> Path:
    """A new, empty run folder under ``base`` (never an existing one)."""
    root = Path(base)
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        folder = root / new_run_id(name)
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise HistoryError(f"{root}: could not create a unique run folder")


def _now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _number(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def _parse_number(text: str, where: str) -> float | None:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        raise HistoryError(f"{where}: expected a number, got {text!r}") from None


@dataclass
class HistoryRow:
    """One evaluation (or the final selection) as recorded in ``history.csv``."""

    index: int
    status: str
    source: str
    recipe: Recipe | RecipeN | None
    score: float | None = None
    payload_scores: dict[str, float | None] = field(default_factory=dict)
    merge_s: float = 0.0
    generate_s: float = 0.0
    score_s: float = 0.0
    worker: str = ""
    reason: str = ""
    timestamp: str = field(default_factory=_now_iso)
    rung: str = ""  # "" (no screening) / screen / full: see the module docstring
    screen_score: float | None = None

    @property
    def total_s(self) -> float:
        return self.merge_s + self.generate_s + self.score_s


@dataclass
class LoopState:
    """What ``state.json`` holds: how far the optimizer state reaches and where the loop was."""

    rows: int
    phase: str = "search"  # search -> rescore -> select -> done
    stop_reason: str | None = None
    stop_message: str = ""
    elapsed_s: float = 0.0
    candidates: list[Recipe | RecipeN] = field(default_factory=list)
    #: The file is from an older auto-MBW that saved a pickled optimizer (never read: resume replays the history).
    legacy_optimizer: bool = False

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": STATE_FORMAT,
                "version": 1,
                "rows": self.rows,
                "phase": self.phase,
                "stop_reason": self.stop_reason,
                "stop_message": self.stop_message,
                "elapsed_s": self.elapsed_s,
                "candidates": [c.to_dict() for c in self.candidates],
            }
        )

    @classmethod
    def from_json(cls, text: str, source: str) -> "LoopState":
        try:
            data = json.loads(text)
            if data.get("format") != STATE_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}")
            if data.get("phase") not in PHASES:
                raise ValueError(f"phase is {data.get('phase')!r}, not one of {', '.join(PHASES)}")
            if data.get("stop_reason") is not None and data.get("stop_reason") not in STOP_REASONS:
                raise ValueError(f"stop_reason is {data.get('stop_reason')!r}")
            if not isinstance(data.get("rows"), int) or data["rows"] < 0:
                raise ValueError(f"rows is {data.get('rows')!r}")
            return cls(
                rows=int(data["rows"]),
                phase=str(data["phase"]),
                stop_reason=data.get("stop_reason"),
                stop_message=str(data.get("stop_message", "")),
                elapsed_s=float(data.get("elapsed_s", 0.0)),
                candidates=[_recipe_from_record(c, source) for c in data.get("candidates", [])],
                legacy_optimizer=bool(data.get("optimizer")),
            )
        except (ValueError, KeyError, TypeError, RecipeError) as exc:
            raise HistoryError(f"{source}: not a valid search state file ({exc})") from None


class RunHistory:
    """The files of one run folder: append-only history, state and manifest."""

    def __init__(self, folder: Path, columns: list[str]) -> None:
        self.folder = folder
        self.columns = columns
        self.blocks = [c for c in columns if c in BLOCKS]
        self.has_base = BASE in columns
        self.payload_names = [c[len(PAYLOAD_PREFIX) :] for c in columns if c.startswith(PAYLOAD_PREFIX)]
        self.chain_columns, self.n_models = _chain_columns(columns, str(folder / HISTORY_FILE))
        self._handle: int | None = None
        self._rows: list[HistoryRow] = []

    # ---- creating and opening

    @classmethod
    def create(
        cls, folder: str | os.PathLike[str], blocks: Sequence[str], payload_names: Sequence[str], *, with_base: bool = False, n_models: int = 2,
    ) -> "RunHistory":
        """Start an empty history in ``folder`` (which must not have one yet); ``n_models`` > 2: chain columns."""
        folder = Path(folder)
        unknown = [b for b in blocks if b not in BLOCKS]
        if unknown:
            raise HistoryError(f"unknown block column(s) {', '.join(unknown)}")
        ordered = [b for b in BLOCKS if b in blocks]
        if n_models > 2:
            from .history_n import chain_columns

            if with_base:
                raise HistoryError("an N-model search mixes the UNet only: BASE is not searched")
            ordered = chain_columns(ordered, n_models)
        columns = [*_LEAD, *ordered, *([BASE] if with_base else []), *(PAYLOAD_PREFIX + n for n in payload_names), *_TAIL]
        history = cls(folder, columns)
        path = folder / HISTORY_FILE
        if path.exists():
            raise HistoryError(f"{path}: a history already exists here; resume it instead of starting a new one")
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(columns)
        try:
            with open(path, "xb") as handle:
                fileio.write_all(handle.fileno(), buffer.getvalue().encode("utf-8"))
                os.fsync(handle.fileno())
        except FileExistsError:
            raise HistoryError(f"{path}: a history already exists here; resume it instead of starting a new one") from None
        except OSError as exc:
            raise HistoryWriteError(f"{path}: cannot start the history ({_reason(exc)})", exc) from None
        return history

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> "RunHistory":
        """Reopen a run folder's history; a half-written last line (from a crash) is cut off."""
        folder = Path(folder)
        path = folder / HISTORY_FILE
        if not path.is_file():
            raise HistoryError(f"{folder}: no {HISTORY_FILE}; is this a run folder (csv/history/<run-id>)?")
        _repair_tail(path)
        try:
            text = fileio.read_text_capped(path, fileio.MAX_HISTORY_TEXT)
        except (OSError, UnicodeDecodeError) as exc:
            raise HistoryError(f"{path}: cannot read the history ({exc})") from None
        reader = csv.reader(io.StringIO(text))
        try:
            columns = next(reader)
        except StopIteration:
            raise HistoryError(f"{path}: empty history file") from None
        if list(columns[: len(_LEAD)]) != list(_LEAD):
            raise HistoryError(f"{path}: not an auto-MBW history (header starts {columns[:3]})")
        _check_columns(folder, list(columns))
        history = cls(folder, list(columns))
        history._rows = [history._parse(values, f"{path}:{n + 2}") for n, values in enumerate(reader) if values]
        _check_indexes(path, history._rows)
        return history

    # ---- rows

    def rows(self) -> list[HistoryRow]:
        """Every row written so far (in order)."""
        return list(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def append(self, row: HistoryRow) -> None:
        """Write one row and make it durable (fsync) before returning.

        A write that fails (full disk, I/O error) is cut off again, so the file
        keeps exactly its earlier rows, and raises HistoryWriteError.
        """
        if row.status not in STATUSES or row.source not in SOURCES:
            raise HistoryError(f"bad history row status/source {row.status!r}/{row.source!r}")
        if row.rung not in RUNGS:
            raise HistoryError(f"bad history row rung {row.rung!r}; one of {', '.join(repr(r) for r in RUNGS)}")
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(self._format(row))
        data = buffer.getvalue().encode("utf-8")
        path = self.folder / HISTORY_FILE
        try:
            fd = self._writer()
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise HistoryWriteError(f"{path}: cannot write history row {row.index} ({_reason(exc)})", exc) from None
        try:
            fileio.write_all(fd, data)
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise HistoryWriteError(
                f"{path}: cannot write history row {row.index} ({_reason(exc)}); the history keeps its {len(self._rows)} earlier rows",
                exc,
            ) from None
        self._rows.append(row)

    def close(self) -> None:
        if self._handle is not None:
            os.close(self._handle)
            self._handle = None

    def _writer(self) -> int:
        if self._handle is None:
            self._handle = os.open(self.folder / HISTORY_FILE, os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0))
        return self._handle

    def _format(self, row: HistoryRow) -> list[str]:
        weights = dict(row.recipe.weights) if isinstance(row.recipe, Recipe) else {}
        values: dict[str, str] = {
            "index": str(row.index),
            "timestamp": row.timestamp,
            "status": row.status,
            "source": row.source,
            "score": _number(row.score),
            "merge_s": f"{row.merge_s:.4f}",
            "generate_s": f"{row.generate_s:.4f}",
            "score_s": f"{row.score_s:.4f}",
            "total_s": f"{row.total_s:.4f}",
            "worker": row.worker,
            "reason": " ".join(row.reason.split()),
            "rung": row.rung,
            "screen_score": _number(row.screen_score),
        }
        for block in self.blocks:
            values[block] = _number(weights.get(block))
        if self.chain_columns and row.recipe is not None:
            from .history_n import cells_of

            values.update(cells_of(row.recipe, self.n_models, f"{self.folder / HISTORY_FILE} row {row.index}"))
        if self.has_base:
            values[BASE] = _number(row.recipe.base if row.recipe else None)
        for name in self.payload_names:
            values[PAYLOAD_PREFIX + name] = _number(row.payload_scores.get(name))
        return [values.get(c, "") for c in self.columns]

    def _parse(self, values: list[str], where: str) -> HistoryRow:
        if len(values) != len(self.columns):
            raise HistoryError(f"{where}: {len(values)} values for {len(self.columns)} columns; the history is damaged")
        cell = dict(zip(self.columns, values))
        if not cell["index"].isdigit():
            raise HistoryError(f"{where}: index must be a whole number, got {cell['index'][:20]!r}; the history is damaged")
        if cell["status"] not in STATUSES or cell["source"] not in SOURCES:
            raise HistoryError(f"{where}: unknown status/source {cell['status'][:20]!r}/{cell['source'][:20]!r}; the history is damaged")
        rung = cell.get("rung", "")
        if rung not in RUNGS:
            raise HistoryError(f"{where}: rung must be one of {', '.join(repr(r) for r in RUNGS)}, got {rung[:20]!r}; the history is damaged")
        weights = {b: w for b in self.blocks if (w := _parse_number(cell[b], where)) is not None}
        base = _parse_number(cell[BASE], where) if self.has_base else None
        recipe: Recipe | RecipeN | None = Recipe(weights, base=base, source=where) if weights else None
        if self.chain_columns:
            from .history_n import recipe_from_cells

            recipe = recipe_from_cells(cell, self.chain_columns, self.n_models, where)
        return HistoryRow(
            index=int(cell["index"]),
            timestamp=cell["timestamp"],
            status=cell["status"],
            source=cell["source"],
            recipe=recipe,
            score=_parse_number(cell["score"], where),
            payload_scores={n: _parse_number(cell[PAYLOAD_PREFIX + n], where) for n in self.payload_names},
            merge_s=_parse_number(cell["merge_s"], where) or 0.0,
            generate_s=_parse_number(cell["generate_s"], where) or 0.0,
            score_s=_parse_number(cell["score_s"], where) or 0.0,
            worker=cell["worker"],
            reason=cell["reason"],
            rung=rung,
            screen_score=_parse_number(cell.get("screen_score", ""), where),
        )

    # ---- state and manifest

    def write_state(self, state: LoopState) -> None:
        """Replace ``state.json`` atomically. Not fsync'd: it costs a disk flush per evaluation and the
        history rows (which are fsync'd) can rebuild it; a state older than the history is caught up by replay.
        HistoryWriteError if it cannot be written (the previous state stays)."""
        try:
            write_atomic(self.folder / STATE_FILE, state.to_json(), durable=False)
        except OSError as exc:
            raise HistoryWriteError(f"{self.folder / STATE_FILE}: cannot write the search state ({_reason(exc)})", exc) from None

    def read_state(self) -> LoopState | None:
        """The saved loop state, or None; HistoryError for a state that is damaged or does not belong to this
        history (ahead of it, or naming candidates no row evaluated): the caller replays the history instead."""
        path = self.folder / STATE_FILE
        if not path.is_file():
            return None
        try:
            text = fileio.read_text_capped(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise HistoryError(f"{path}: cannot read the search state ({exc})") from None
        state = LoopState.from_json(text, str(path))
        if state.rows > len(self._rows):
            raise HistoryError(
                f"{path}: the state covers {state.rows} rows but {HISTORY_FILE} has {len(self._rows)}; "
                "a state ahead of the history is not trusted"
            )
        evaluated = {r.recipe for r in self._rows[: state.rows] if r.recipe is not None}
        if any(c not in evaluated for c in state.candidates):
            raise HistoryError(f"{path}: the state names re-score candidates that no history row evaluated; it is not trusted")
        return state

    def write_manifest(self, manifest: Mapping[str, Any]) -> Path:
        return write_manifest(self.folder, manifest)

    def read_manifest(self) -> dict[str, Any]:
        return read_manifest(self.folder)


def _check_columns(folder: Path, columns: list[str]) -> None:
    """The header is the one the run's manifest recorded (else: the blocks of one architecture, each once)."""
    path = folder / HISTORY_FILE
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise HistoryError(f"{path}: column(s) {', '.join(duplicated)} appear twice; the history is damaged")
    expected: list[str] | None = None
    try:
        recorded = read_manifest(folder).get("history_columns")
        expected = [str(c) for c in recorded] if isinstance(recorded, list) else None
    except HistoryError:
        expected = None
    if expected is not None:
        missing = [c for c in expected if c not in columns]
        extra = [c for c in columns if c not in expected]
        if missing or extra or columns != expected:
            what = "; ".join(
                part for part in (f"missing {', '.join(missing)}" if missing else "", f"unexpected {', '.join(extra)}" if extra else "") if part
            ) or "in another order"
            raise HistoryError(
                f"{path}: columns differ from the ones the run's manifest recorded ({what}); "
                "the history was edited or damaged: restore it, or start a new search"
            )
        return
    blocks = {c for c in columns if c in BLOCKS}
    if blocks and not any(blocks == set(present_blocks(f)) for f in ("sd1", "sd2", "sdxl")):
        missing = [b for b in BLOCKS if b not in blocks and b in present_blocks("sdxl" if len(blocks) < len(BLOCKS) - 3 else "sd1")]
        raise HistoryError(
            f"{path}: the block columns are no architecture's set (missing {', '.join(missing) or '?'}); "
            "the history was edited or damaged: restore it, or start a new search"
        )


def _chain_columns(columns: Sequence[str], where: str) -> tuple[list[str], int]:
    """The chain-weight columns of an N-model history and N (none and 2 for a two-model history)."""
    if not any("@m" in c for c in columns):
        return [], 2
    from .history_n import models_of_columns, parse_column

    n = models_of_columns(columns, where)
    return [c for c in columns if parse_column(c) is not None], n or 2


def _recipe_from_record(data: Any, source: str) -> Recipe | RecipeN:
    from .history_n import recipe_from_record

    return recipe_from_record(data, source)


def _check_indexes(path: Path, rows: Sequence[HistoryRow]) -> None:
    """Rows are numbered 0, 1, 2, ... in file order: a duplicated, removed or moved row is refused."""
    for position, row in enumerate(rows):
        if row.index != position:
            what = "repeats an earlier row" if row.index < position else "skips rows"
            raise HistoryError(
                f"{path}:{position + 2}: row index {row.index} {what} (expected {position}); a row was duplicated, removed "
                "or moved: restore the history, or start a new search"
            )


def read_history_rows(folder: str | os.PathLike[str]) -> list[HistoryRow]:
    """The rows of a run folder's history, read without touching the file (safe while the run is writing it).

    A last line without its newline (being written, or left by a crash) is skipped.
    """
    path = Path(folder) / HISTORY_FILE
    try:
        text = fileio.read_text_capped(path, fileio.MAX_HISTORY_TEXT)
    except FileNotFoundError:
        raise HistoryError(f"{folder}: no {HISTORY_FILE}; is this a run folder (csv/history/<run-id>)?") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HistoryError(f"{path}: cannot read the history ({exc})") from None
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.reader(io.StringIO(text))
    columns = next(reader, None)
    if not columns or list(columns[: len(_LEAD)]) != list(_LEAD):
        raise HistoryError(f"{path}: not an auto-MBW history")
    history = RunHistory(Path(folder), list(columns))
    return [history._parse(values, f"{path}:{n + 2}") for n, values in enumerate(reader) if values]


def _repair_tail(path: Path) -> None:
    """Cut a last line that a crash left without its newline."""
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)
            handle.flush()
            os.fsync(handle.fileno())


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> Path:
    """Replace the manifest atomically; HistoryWriteError (the previous version stays) if it cannot be written."""
    path = Path(folder) / MANIFEST_FILE
    try:
        return write_atomic(path, json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
    except OSError as exc:
        raise HistoryWriteError(f"{path}: cannot write the run manifest ({_reason(exc)})", exc) from None


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_FILE
    try:
        data = json.loads(fileio.read_text_capped(path))
    except FileNotFoundError:
        raise HistoryError(f"{folder}: no {MANIFEST_FILE}; is this a run folder (csv/history/<run-id>)?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HistoryError(f"{path}: cannot read the manifest ({exc})") from None
    if not isinstance(data, dict):
        raise HistoryError(f"{path}: the manifest must be a JSON object")
    return data


# --------------------------------------------------------------------------- warm start


@dataclass
class WarmStart:
    """Warm-start material: scored recipes (told to the optimizer) and recipes to evaluate first."""

    scored: list[tuple[Recipe, float]] = field(default_factory=list)
    unscored: list[Recipe] = field(default_factory=list)

    def extend(self, other: "WarmStart") -> None:
        self.scored.extend(other.scored)
        self.unscored.extend(other.unscored)


def read_seed_csv(path: str | os.PathLike[str], order: str = "rt") -> list[tuple[Recipe, float]]:
    """(recipe, score) pairs from a seed tool history CSV (27 weights in ``order``, then score)."""
    path = Path(path)
    if order not in ORDERS:
        raise HistoryError(f"unknown block order {order!r}; use one of {', '.join(ORDERS)}")
    try:
        lines = list(csv.reader(fileio.read_text_capped(path, fileio.MAX_HISTORY_TEXT).splitlines()))
    except (OSError, UnicodeDecodeError) as exc:
        raise HistoryError(f"{path}: cannot read ({exc})") from None
    lines = [line for line in lines if any(cell.strip() for cell in line)]
    if not lines:
        raise HistoryError(f"{path}: empty CSV")
    header = [c.strip() for c in lines[0]]
    if all(str(i) in header for i in range(27)) and "score" in header:
        weight_at = [header.index(str(i)) for i in range(27)]
        score_at = header.index("score")
        body = lines[1:]
    elif _is_number(lines[0][0]):
        weight_at, score_at, body = list(range(27)), 27, lines
    else:
        raise HistoryError(f"{path}: not a seed history CSV (expected columns 0..26 and score, got {header[:5]}...)")
    pairs: list[tuple[Recipe, float]] = []
    for n, line in enumerate(body, start=2 if body is not lines else 1):
        where = f"{path}:{n}"
        try:
            values = [float(line[i]) for i in weight_at]
            score = float(line[score_at])
        except (IndexError, ValueError):
            raise HistoryError(f"{where}: expected 27 weights and a score") from None
        if not math.isfinite(score):
            continue
        pairs.append((from_positional(values, order, source=where), score))
    return pairs


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_history_scores(path: str | os.PathLike[str]) -> list[tuple[Recipe, float]]:
    """(recipe, score) of every fully scored evaluation in one of our histories (folder or CSV)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    history = RunHistory.open(folder) if path.is_dir() or path.name == HISTORY_FILE else None
    if history is None:
        raise HistoryError(f"{path}: not an auto-MBW history")
    rows = history.rows()
    # a cached row repeats its recipe's first score: an estimate if that one was screened out or abandoned
    measured = {r.recipe for r in rows if r.status in ("ok", "rescore")}
    return [(r.recipe, r.score) for r in rows
            if r.status in SCORED_STATUSES and r.recipe and r.score is not None and (r.status != "cached" or r.recipe in measured)]


def load_warm_start(spec: str, order: str = "rt", fold: str = "mbw") -> WarmStart:
    """Warm-start data from a run folder, a history CSV (ours or the seed's), or any recipe file/text.

    A seed folder ``csv/history/<run>/`` with ``<run>.csv`` files is read too.
    """
    path = Path(spec)
    if path.is_dir():
        if (path / HISTORY_FILE).is_file():
            return WarmStart(scored=read_history_scores(path))
        files = sorted(path.glob("*.csv"))
        if not files:
            raise HistoryError(f"{path}: no history.csv or seed *.csv files here")
        result = WarmStart()
        for file in files:
            result.scored.extend(read_seed_csv(file, order))
        return result
    if path.suffix.lower() == ".csv" and path.is_file():
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
        if first.startswith(",".join(_LEAD)):
            return WarmStart(scored=read_history_scores(path))
        return WarmStart(scored=read_seed_csv(path, order))
    return WarmStart(unscored=[read_recipe(spec, order, fold)])


# --------------------------------------------------------------------------- outputs


def recipe_text(recipe: Recipe, *, family: str, score: float | None = None, reason: str = "") -> tuple[str, list[str]]:
    """The human-readable best-recipe file: named weights, the 27-number lines, the MBW preset and its losses."""
    lines = ["# auto-MBW best recipe"]
    if score is not None:
        lines.append(f"# score: {score:.6g}")
    if reason:
        lines.append(f"# chosen: {reason}")
    lines.append(recipe.describe())
    lines.append("")
    lines.append("# 27 values in each block order (blocks the model lacks are written as 0):")
    for order in ORDERS:
        lines.append(f"# {order}: {', '.join(ORDERS[order])}")
        lines.append(f"{order}: {to_positional(recipe, order)}")
    warnings: list[str] = []
    try:
        preset, warnings = to_preset(recipe, family=family, with_base=True)
        lines.append("")
        lines.append("# MBW / supermerger preset (BASE first):")
        lines.append(f"preset: {preset}")
        lines.extend(f"# warning: {w}" for w in warnings)
    except RecipeError as exc:
        lines.append(f"# no MBW preset: {exc}")
    return "\n".join(lines) + "\n", warnings


def write_best_recipe(
    folder: str | os.PathLike[str],
    recipe: Recipe,
    *,
    family: str,
    score: float | None = None,
    reason: str = "",
    run_id: str = "",
    overwrite: bool = False,
) -> dict[str, Path]:
    """``best.recipe.json`` and ``best.recipe.txt`` in ``folder``."""
    folder = Path(folder)
    data = recipe.to_dict()
    data["search"] = {"run_id": run_id, "score": score, "reason": reason}
    text, _ = recipe_text(recipe, family=family, score=score, reason=reason)
    return {
        "recipe_json": write_atomic(folder / "best.recipe.json", json.dumps(data, indent=2) + "\n", overwrite=overwrite),
        "recipe_txt": write_atomic(folder / "best.recipe.txt", text, overwrite=overwrite),
    }


def summarize_rows(rows: Iterable[HistoryRow]) -> dict[str, int]:
    """Count of rows per status (for manifests and reports)."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


__all__ = [
    "HistoryError",
    "HistoryRow",
    "LoopState",
    "RunHistory",
    "WarmStart",
    "create_run_folder",
    "load_warm_start",
    "new_run_id",
    "read_history_rows",
    "read_history_scores",
    "read_manifest",
    "read_seed_csv",
    "recipe_text",
    "summarize_rows",
    "write_best_recipe",
    "write_manifest",
]
