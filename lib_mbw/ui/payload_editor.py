"""The payload manager's actions as plain functions over ``lib_mbw.payloads``.

The editor shows one payload as separate fields (``EditorFields``); saving
validates them with the same rules as loading a file (errors name the
field), never replaces a file unless asked, and writes atomically. Also:
the table of payloads with their problems, duplicate, delete, wildcard
preview, and saving the tally weights edited in the scoring section.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import PayloadError
from ..payloads import (
    EXPANSIONS,
    Payload,
    check_payload_name,
    delete_payload,
    duplicate_payload,
    list_payloads,
    load_payload,
    payload_from_dict,
    payload_path,
    preview_expansions,
    save_payload,
    validate_payloads,
)

PAYLOAD_HEADERS: tuple[str, ...] = ("payload", "prompt", "weight", "problems")
WEIGHT_HEADERS: tuple[str, ...] = ("payload", "weight")


@dataclass
class EditorFields:
    """The editor's inputs for one payload (numbers as the UI gives them; ``extra`` is JSON text)."""

    name: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    steps: Any = 20
    cfg_scale: Any = 7.0
    sampler: str = "Euler a"
    scheduler: str = "Automatic"
    width: Any = 512
    height: Any = 512
    seed: Any = -1
    batch_size: Any = 1
    clip_skip: Any = 1
    weight: Any = 1.0
    expansion: str = "random"
    variants: Any = None
    extra: str = ""

    def values(self) -> list[Any]:
        return [getattr(self, f) for f in EDITOR_FIELDS]

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> "EditorFields":
        return cls(**dict(zip(EDITOR_FIELDS, values)))


EDITOR_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(EditorFields))


def _whole(value: Any) -> Any:
    """Numbers from number inputs arrive as floats; payload fields that are integers want ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def payload_from_fields(fields: EditorFields, folder: str | Path) -> Payload:
    """Validate the editor's fields as a payload; PayloadError names every bad field."""
    name = (fields.name or "").strip()
    check_payload_name(name)
    data: dict[str, Any] = {}
    if (fields.extra or "").strip():
        try:
            extra = json.loads(fields.extra)
        except json.JSONDecodeError as exc:
            raise PayloadError(f"payload {name}: extra fields must be a JSON object (line {exc.lineno}: {exc.msg})") from None
        if not isinstance(extra, dict):
            raise PayloadError(f"payload {name}: extra fields must be a JSON object such as {{\"enable_hr\": false}}")
        data.update(extra)
    for key in ("prompt", "negative_prompt", "steps", "cfg_scale", "sampler", "scheduler", "width", "height", "seed",
                "batch_size", "clip_skip", "weight", "expansion"):
        data[key] = _whole(getattr(fields, key))
    if fields.variants not in (None, "", 0):
        data["variants"] = _whole(fields.variants)
    return payload_from_dict(data, name, str(payload_path(folder, name)))


def fields_from_payload(payload: Payload) -> EditorFields:
    known = {"prompt", "negative_prompt", "steps", "cfg_scale", "sampler", "scheduler", "width", "height", "seed",
             "batch_size", "clip_skip", "weight", "expansion", "variants"}
    extra = {k: v for k, v in payload.to_dict().items() if k not in known}
    return EditorFields(
        name=payload.name,
        prompt=payload.prompt,
        negative_prompt=payload.negative_prompt,
        steps=payload.steps,
        cfg_scale=payload.cfg_scale,
        sampler=payload.sampler,
        scheduler=payload.scheduler,
        width=payload.width,
        height=payload.height,
        seed=payload.seed,
        batch_size=payload.batch_size,
        clip_skip=payload.clip_skip,
        weight=payload.weight,
        expansion=payload.expansion,
        variants=payload.variants,
        extra=json.dumps(extra, indent=2) if extra else "",
    )


def payload_table(folder: str | Path) -> list[list[Any]]:
    """One row per payload file: name, prompt (shortened), weight, problems ('' when valid)."""
    report = validate_payloads(folder)
    rows = []
    for name, problem in report.items():
        prompt, weight = "", ""
        if not problem:
            payload = load_payload(payload_path(folder, name))
            prompt, weight = payload.prompt, payload.weight
        rows.append([name, _short(prompt, 80), weight, problem])
    return rows


def _short(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def load_for_edit(folder: str | Path, name: str) -> EditorFields:
    """The editor fields of payload ``name`` (PayloadError naming the file if it cannot be read)."""
    return fields_from_payload(load_payload(payload_path(folder, name)))


def save_from_fields(folder: str | Path, fields: EditorFields, *, overwrite: bool) -> str:
    """Validate and save; returns what happened. Refuses to replace an existing file unless ``overwrite``."""
    payload = payload_from_fields(fields, folder)
    path = payload_path(folder, payload.name)
    existed = path.exists()
    if existed and not overwrite:
        raise PayloadError(f"{path}: a payload with this name exists; tick 'replace existing' to overwrite it, or rename")
    save_payload(folder, payload, overwrite=overwrite)
    return f"{'replaced' if existed else 'created'} `{path}`"


def duplicate(folder: str | Path, name: str, new_name: str) -> str:
    if not name:
        raise PayloadError("pick the payload to duplicate")
    path = duplicate_payload(folder, name, (new_name or "").strip())
    return f"copied {name} to `{path}`"


def delete(folder: str | Path, name: str, confirmed: bool) -> str:
    if not name:
        raise PayloadError("pick the payload to delete")
    if not confirmed:
        raise PayloadError(f"tick 'yes, delete' to delete payload {name}; this cannot be undone")
    delete_payload(folder, name)
    return f"deleted payload {name}"


def preview(fields: EditorFields, folder: str | Path, wildcards: str | Path | None, count: int = 8) -> str:
    """The first ``count`` prompts the edited payload expands into, one per line (Markdown list)."""
    payload = payload_from_fields(dataclasses.replace(fields, name=fields.name or "preview"), folder)
    prompts = preview_expansions(payload, wildcards, count)
    return "\n".join(f"{n}. {text}" for n, text in enumerate(prompts, start=1))


def weight_table(folder: str | Path, names: Sequence[str] | None = None) -> list[list[Any]]:
    """[payload, tally weight] for the chosen payloads (all when ``names`` is empty); unreadable ones are left out."""
    rows = []
    for name in list(names or []) or list_payloads(folder):
        try:
            rows.append([name, load_payload(payload_path(folder, name)).weight])
        except PayloadError:
            continue
    return rows


def save_weights(folder: str | Path, rows: Any) -> str:
    """Write edited tally weights back into their payload files (other fields unchanged)."""
    from .form import table_rows

    changed = []
    for row in table_rows(rows):
        if len(row) < 2 or not str(row[0]).strip():
            continue
        name = str(row[0]).strip()
        try:
            weight = float(row[1])
        except (TypeError, ValueError):
            raise PayloadError(f"payload {name}: weight must be a number ≥ 0, got {row[1]!r}") from None
        payload = load_payload(payload_path(folder, name))
        if weight != payload.weight:
            updated = payload_from_dict({**payload.to_dict(), "weight": weight}, name, str(payload_path(folder, name)))
            save_payload(folder, updated, overwrite=True)
            changed.append(f"{name} = {weight:g}")
    return "saved weights: " + ", ".join(changed) if changed else "no weight changed"


__all__ = [
    "EDITOR_FIELDS",
    "EXPANSIONS",
    "EditorFields",
    "PAYLOAD_HEADERS",
    "WEIGHT_HEADERS",
    "delete",
    "duplicate",
    "fields_from_payload",
    "load_for_edit",
    "payload_from_fields",
    "payload_table",
    "preview",
    "save_from_fields",
    "save_weights",
    "weight_table",
]
