"""Payloads: the txt2img jobs every candidate merge is judged on.

A payload is a JSON file with the settings WebUI users know (prompt, negative
prompt, steps, cfg scale, sampler, scheduler, size, seed, batch size, clip
skip) plus a tally ``weight``. The WebUI API's field names are accepted too
(``sampler_name``, ``n_iter``, ``override_settings.CLIP_stop_at_last_layers``,
the seed tool's ``wildcard_type``); unknown fields are kept in ``extra`` and
passed through to WebUI generators.

Prompts may use dynamicprompts syntax: ``{a|b}`` variants and ``__name__``
wildcards read from ``name.txt`` in a wildcard folder. When a search starts,
``prepare_payloads`` fixes every seed of -1 to a concrete seed, checks that
every wildcard has a file, and expands each payload into one or more concrete
payloads (``variant`` 0, 1, ...), seeded, so every candidate recipe of a
search sees exactly the same prompts and seeds and their scores compare.

This module owns the payload format, its validation (errors name the file and
field), the folder operations the UI uses (list, load, save, duplicate,
delete, validate) and wildcard expansion/preview.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import PayloadError
from .fileio import read_text_capped, safe_name, write_atomic

#: Ways a prompt template becomes concrete prompts.
EXPANSIONS: tuple[str, ...] = ("none", "random", "combinatorial")

#: Most concrete prompts one payload may expand into (combinatorial expansions grow fast).
MAX_VARIANTS = 256

#: Upper bounds of the numeric fields, each with the reason a larger value is a mistake.
MAX_STEPS = 500
MAX_CFG_SCALE = 100.0
MAX_SIDE = 8192
_STEPS_WHY = f" (every image of every evaluation is rendered with this many steps; samplers converge long before {MAX_STEPS})"
_SIDE_WHY = f" (an image side beyond {MAX_SIDE} px does not fit in GPU memory with Stable Diffusion)"
_CFG_WHY = f" (values beyond {MAX_CFG_SCALE:g} only burn the image; WebUI's slider ends at 30)"

#: Other tools' field names -> ours.
FIELD_ALIASES: dict[str, str] = {
    "sampler_name": "sampler",
    "sampler_index": "sampler",
    "negative": "negative_prompt",
    "cfg": "cfg_scale",
    "n_iter": "variants",
    "batch_count": "variants",
    "wildcard_type": "expansion",
    "tally_weight": "weight",
    "CLIP_stop_at_last_layers": "clip_skip",
}

#: The seed tool's wildcard types -> our expansions ("jinja2"/"lucky" have no offline equivalent).
_SEED_EXPANSIONS = {"none": "none", "random": "random", "combinatorial": "combinatorial"}

_WILDCARD = re.compile(r"__[~@]?([^\s_{}|()$][^\s{}|()$]*?)__")


@dataclass(frozen=True)
class Payload:
    """One txt2img job. ``name`` is the file stem; ``seed`` is fixed (never -1 inside a search).

    ``expansion`` and ``variants`` say how a prompt template becomes concrete
    prompts (``variants`` None: 1 for ``random``, every combination for
    ``combinatorial``); ``variant`` numbers the concrete payloads one template
    expanded into.
    """

    name: str
    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    scheduler: str = "Automatic"
    width: int = 512
    height: int = 512
    seed: int = 0
    batch_size: int = 1
    clip_skip: int = 1
    weight: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)
    expansion: str = "random"
    variants: int | None = None
    variant: int = 0

    @property
    def key(self) -> str:
        """Unique name of a concrete payload within a search: ``name`` or ``name#variant``."""
        return self.name if self.variant == 0 else f"{self.name}#{self.variant}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of a payload file (our field names; ``extra`` fields at top level)."""
        data: dict[str, Any] = {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "steps": self.steps,
            "cfg_scale": self.cfg_scale,
            "sampler": self.sampler,
            "scheduler": self.scheduler,
            "width": self.width,
            "height": self.height,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "clip_skip": self.clip_skip,
            "weight": self.weight,
            "expansion": self.expansion,
        }
        if self.variants is not None:
            data["variants"] = self.variants
        data.update(self.extra)
        return data

    def to_record(self) -> dict[str, Any]:
        """A concrete payload as recorded in a run manifest (includes name and variant)."""
        return {"name": self.name, "variant": self.variant, **self.to_dict()}

    def to_webui(self) -> dict[str, Any]:
        """Request body for the WebUI's ``/sdapi/v1/txt2img`` (extra fields passed through)."""
        body: dict[str, Any] = dict(self.extra)
        overrides = dict(body.pop("override_settings", None) or {})
        overrides["CLIP_stop_at_last_layers"] = self.clip_skip
        body.update(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            steps=self.steps,
            cfg_scale=self.cfg_scale,
            sampler_name=self.sampler,
            scheduler=self.scheduler,
            width=self.width,
            height=self.height,
            seed=self.seed,
            batch_size=self.batch_size,
            n_iter=1,
            override_settings=overrides,
        )
        return body

    def digest(self) -> str:
        """sha256 of the payload's canonical JSON (recorded in manifests)."""
        text = json.dumps(self.to_record(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- validation


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _check_int(problems: list[str], name: str, value: Any, low: int, high: int | None = None, what: str = "") -> int:
    number = _as_int(value)
    bound = f"≥ {low}" if high is None else f"between {low} and {high}"
    if number is None or number < low or (high is not None and number > high):
        problems.append(f"{name} must be an integer {bound}{what}, got {value!r}")
        return low
    return number


def _check_number(problems: list[str], name: str, value: Any, low: float, strict: bool, high: float | None = None, what: str = "") -> float:
    number = _as_number(value)
    if number is None or number < low or (strict and number == low):
        problems.append(f"{name} must be a number {'>' if strict else '≥'} {low:g}, got {value!r}")
        return low
    if high is not None and number > high:
        problems.append(f"{name} must be at most {high:g}{what}, got {value!r}")
        return low
    return number


def prompt_syntax_problem(text: str) -> str:
    """Why dynamicprompts cannot parse ``text`` (an unclosed ``{a|b`` variant, ...), or '' if it can."""
    if not text:
        return ""
    from dynamicprompts.parser.parse import ParserConfig, parse
    from pyparsing import ParseBaseException

    try:
        parse(text, parser_config=ParserConfig())
    except ParseBaseException as exc:
        return f"{exc.msg} at character {exc.col} ({text[max(0, exc.loc - 10) : exc.loc + 10]!r})"
    return ""


def _check_text(problems: list[str], name: str, value: Any, required: bool) -> str:
    if not isinstance(value, str):
        problems.append(f"{name} must be text, got {value!r}")
        return ""
    if required and not value.strip():
        problems.append(f"{name} must not be empty")
    return value


def _normalise_fields(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split raw JSON into our fields (aliases applied) and pass-through extras."""
    known = {f.name for f in dataclasses.fields(Payload)} - {"name", "extra", "variant"}
    fields: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        target = FIELD_ALIASES.get(key, key)
        if key == "override_settings" and isinstance(value, Mapping):
            overrides = dict(value)
            if "CLIP_stop_at_last_layers" in overrides:
                fields.setdefault("clip_skip", overrides.pop("CLIP_stop_at_last_layers"))
            if overrides:
                extra["override_settings"] = overrides
        elif target in known:
            fields.setdefault(target, value)
        else:
            extra[key] = value
    return fields, extra


def payload_from_dict(data: Any, name: str, source: str | None = None) -> Payload:
    """Validate raw payload JSON; PayloadError names ``source`` and every bad field."""
    where = source or name
    if not isinstance(data, Mapping):
        raise PayloadError(f"{where}: a payload must be a JSON object, got {type(data).__name__}")
    fields, extra = _normalise_fields(data)
    problems: list[str] = []
    defaults = Payload(name=name, prompt="")
    prompt = _check_text(problems, "prompt", fields.get("prompt", ""), required=True)
    negative = _check_text(problems, "negative_prompt", fields.get("negative_prompt", ""), required=False)
    steps = _check_int(problems, "steps", fields.get("steps", defaults.steps), 1, MAX_STEPS, _STEPS_WHY)
    cfg = _check_number(problems, "cfg_scale", fields.get("cfg_scale", defaults.cfg_scale), 0.0, strict=True, high=MAX_CFG_SCALE, what=_CFG_WHY)
    sampler = _check_text(problems, "sampler", fields.get("sampler", defaults.sampler), required=True)
    scheduler = _check_text(problems, "scheduler", fields.get("scheduler", defaults.scheduler), required=True)
    width = _check_int(problems, "width", fields.get("width", defaults.width), 8, MAX_SIDE, _SIDE_WHY)
    height = _check_int(problems, "height", fields.get("height", defaults.height), 8, MAX_SIDE, _SIDE_WHY)
    for label, size in (("width", width), ("height", height)):
        if size % 8 and not any(p.startswith(label) for p in problems):
            problems.append(f"{label} must be a multiple of 8 (Stable Diffusion works on 8x8 latent cells), got {size}")
    seed = _check_int(problems, "seed", fields.get("seed", -1), -1, 2**32 - 1, " (-1 = random, fixed when the search starts)")
    batch = _check_int(problems, "batch_size", fields.get("batch_size", defaults.batch_size), 1, 64)
    clip_skip = _check_int(problems, "clip_skip", fields.get("clip_skip", defaults.clip_skip), 1, 12)
    weight = _check_number(problems, "weight", fields.get("weight", defaults.weight), 0.0, strict=False)
    expansion = fields.get("expansion", defaults.expansion)
    if isinstance(expansion, str) and expansion in _SEED_EXPANSIONS:
        expansion = _SEED_EXPANSIONS[expansion]
    elif "expansion" in fields:
        problems.append(f"expansion must be one of {', '.join(EXPANSIONS)}, got {expansion!r}")
        expansion = defaults.expansion
    variants = fields.get("variants")
    if variants is not None:
        variants = _check_int(problems, "variants", variants, 1, MAX_VARIANTS, " (number of prompts the template expands into)")
    if expansion != "none":
        for label, text in (("prompt", prompt), ("negative_prompt", negative)):
            syntax = prompt_syntax_problem(text) if isinstance(text, str) else ""
            if syntax:
                problems.append(f"{label} has broken variant syntax: {syntax}; close every {{ with }} (or set \"expansion\": \"none\")")
    if problems:
        raise PayloadError(f"{where}: " + "; ".join(problems))
    return Payload(
        name=name,
        prompt=prompt,
        negative_prompt=negative,
        steps=steps,
        cfg_scale=cfg,
        sampler=sampler,
        scheduler=scheduler,
        width=width,
        height=height,
        seed=seed,
        batch_size=batch,
        clip_skip=clip_skip,
        weight=weight,
        extra=extra,
        expansion=expansion,
        variants=variants,
    )


# --------------------------------------------------------------------------- folder operations


def check_payload_name(name: str) -> str:
    """``name`` if it is a safe payload file stem; PayloadError otherwise."""
    if not name or safe_name(name, default="") != name:
        raise PayloadError(
            f"payload name {name!r} is not allowed: use letters, digits, '.', '_', '-' and spaces "
            f"(e.g. {safe_name(name)!r})"
        )
    return name


def payload_path(folder: str | Path, name: str) -> Path:
    return Path(folder) / f"{check_payload_name(name)}.json"


def list_payloads(folder: str | Path) -> list[str]:
    """Names (file stems) of the payload files in ``folder``, sorted; [] if the folder does not exist."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.glob("*.json") if p.is_file() and not p.name.startswith("."))


def load_payload(path: str | Path) -> Payload:
    """Read and validate one payload file."""
    path = Path(path)
    try:
        text = read_text_capped(path)
    except FileNotFoundError:
        raise PayloadError(f"{path}: payload file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PayloadError(f"{path}: cannot read payload file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    return payload_from_dict(data, path.stem, str(path))


def validate_payloads(folder: str | Path, names: Iterable[str] | None = None) -> dict[str, str]:
    """Problems per payload name ('' for a good one): what the UI lists next to each file."""
    chosen = list(names) if names is not None else list_payloads(folder)
    report: dict[str, str] = {}
    for name in chosen:
        try:
            load_payload(payload_path(folder, name))
            report[name] = ""
        except PayloadError as exc:
            report[name] = str(exc)
    return report


def load_payloads(folder: str | Path, names: Sequence[str] | None = None) -> list[Payload]:
    """The chosen (default: all) payloads of ``folder``; one PayloadError lists every bad file at once."""
    available = list_payloads(folder)
    chosen = list(names) if names else available
    if not chosen:
        raise PayloadError(f"{folder}: no payload files (*.json); create one, e.g. copy payloads/portrait.json")
    missing = [n for n in chosen if n not in available]
    problems = [f"{payload_path(folder, n) if safe_name(n, default='') == n else n}: payload not found" for n in missing]
    payloads: list[Payload] = []
    for name in chosen:
        if name in missing:
            continue
        try:
            payloads.append(load_payload(payload_path(folder, name)))
        except PayloadError as exc:
            problems.append(str(exc))
    if problems:
        hint = f" (available: {', '.join(available)})" if missing and available else ""
        raise PayloadError(f"{len(problems)} bad payload file(s){hint}:\n  " + "\n  ".join(problems))
    if all(p.weight == 0 for p in payloads):
        raise PayloadError(f"{folder}: every chosen payload has weight 0; give at least one a weight > 0")
    return payloads


def save_payload(folder: str | Path, payload: Payload, *, overwrite: bool = False) -> Path:
    """Write ``payload`` as ``folder/<name>.json`` atomically; refuses to replace a file unless ``overwrite``."""
    checked = payload_from_dict(payload.to_dict(), payload.name, str(payload_path(folder, payload.name)))
    text = json.dumps(checked.to_dict(), indent=2, ensure_ascii=False) + "\n"
    return write_atomic(payload_path(folder, payload.name), text, overwrite=overwrite)


def duplicate_payload(folder: str | Path, name: str, new_name: str) -> Path:
    """Copy payload ``name`` to ``new_name`` (which must not exist yet)."""
    payload = load_payload(payload_path(folder, name))
    return save_payload(folder, dataclasses.replace(payload, name=check_payload_name(new_name)))


def delete_payload(folder: str | Path, name: str) -> None:
    """Remove payload ``name``'s file."""
    path = payload_path(folder, name)
    if not path.is_file():
        raise PayloadError(f"{path}: payload not found")
    path.unlink()


# --------------------------------------------------------------------------- wildcards and expansion


def _wildcard_manager(wildcards: str | Path | None) -> Any:
    from dynamicprompts.wildcards import WildcardManager

    return WildcardManager(Path(wildcards) if wildcards else None)


def wildcard_names(text: str) -> list[str]:
    """The ``__name__`` wildcards used in ``text``, in order of appearance, without repeats."""
    return list(dict.fromkeys(m.group(1) for m in _WILDCARD.finditer(text)))


def check_wildcards(text: str, wildcards: str | Path | None, source: str, manager: Any = None) -> None:
    """Fail naming the missing file for every ``__name__`` (also nested in wildcard files) that has no values.

    dynamicprompts leaves an unresolved wildcard in the prompt as literal text,
    silently; a search must not run on such prompts.
    """
    manager = manager or _wildcard_manager(wildcards)
    folder = Path(wildcards) if wildcards else None
    missing: list[str] = []
    seen: set[str] = set()
    pending = wildcard_names(text)
    while pending:
        name = pending.pop(0)
        if name in seen:
            continue
        seen.add(name)
        values = manager.get_values(name) if folder and folder.is_dir() else ()
        if not values:
            missing.append(name)
            continue
        for value in getattr(values, "string_values", values):
            syntax = prompt_syntax_problem(str(value))
            if syntax:
                raise PayloadError(f"{source}: wildcard file {folder / name}.txt has a line with broken variant syntax: {syntax}")
            pending.extend(wildcard_names(str(value)))
    if missing:
        where = folder if folder else "(no wildcard folder set)"
        files = ", ".join(f"{folder / name if folder else name}.txt" for name in missing)
        raise PayloadError(f"{source}: wildcard(s) {', '.join('__' + n + '__' for n in missing)} have no file in {where}: create {files}")


def _expand_texts(payload: Payload, wildcards: str | Path | None, manager: Any) -> list[tuple[str, str]]:
    """Concrete (prompt, negative prompt) pairs of one payload, seeded by its seed."""
    from dynamicprompts.generators import CombinatorialPromptGenerator, RandomPromptGenerator

    if payload.expansion == "none":
        return [(payload.prompt, payload.negative_prompt)] * (payload.variants or 1)
    if payload.expansion == "combinatorial":
        limit = payload.variants or MAX_VARIANTS
        prompts = CombinatorialPromptGenerator(manager).generate(payload.prompt, max_prompts=limit + 1)
        if len(prompts) > limit and payload.variants is None:
            raise PayloadError(
                f"payload {payload.name}: the combinatorial prompt expands into more than {MAX_VARIANTS} prompts; "
                "set 'variants' to use only the first N, or use 'random' expansion"
            )
        prompts = prompts[:limit]
    else:
        count = payload.variants or 1
        seeds = [_variant_seed(payload, i) for i in range(count)]
        prompts = RandomPromptGenerator(manager, seed=payload.seed).generate(payload.prompt, count, seeds=seeds)
    negatives = [
        RandomPromptGenerator(manager, seed=_variant_seed(payload, i)).generate(payload.negative_prompt, 1)[0]
        if payload.negative_prompt
        else ""
        for i in range(len(prompts))
    ]
    for text in prompts + negatives:
        leftover = wildcard_names(text)
        if leftover:
            raise PayloadError(f"payload {payload.name}: wildcard __{leftover[0]}__ was not expanded; check its file in {wildcards}")
    return list(zip(prompts, negatives))


def _variant_seed(payload: Payload, variant: int) -> int:
    """Seed of variant ``variant``: the WebUI's batch-count rule (seed + images before it)."""
    return (payload.seed + variant * payload.batch_size) % 2**32


def fix_seeds(payloads: Sequence[Payload], seed: int) -> list[Payload]:
    """Payloads with every seed of -1 replaced by a concrete seed drawn from ``seed`` (deterministic)."""
    rng = random.Random(seed)
    fixed = []
    for payload in payloads:
        drawn = rng.randrange(2**32)
        fixed.append(payload if payload.seed != -1 else dataclasses.replace(payload, seed=drawn))
    return fixed


def expand_payload(payload: Payload, wildcards: str | Path | None = None, manager: Any = None) -> list[Payload]:
    """The concrete payloads (``variant`` 0..n-1) one payload expands into; its seed must be fixed."""
    if payload.seed == -1:
        raise PayloadError(f"payload {payload.name}: fix its seed (fix_seeds) before expanding")
    manager = manager or _wildcard_manager(wildcards)
    source = f"payload {payload.name}"
    check_wildcards(payload.prompt + "\n" + payload.negative_prompt, wildcards, source, manager)
    texts = _expand_texts(payload, wildcards, manager)
    return [
        dataclasses.replace(payload, prompt=prompt, negative_prompt=negative, seed=_variant_seed(payload, i), variant=i)
        for i, (prompt, negative) in enumerate(texts)
    ]


def prepare_payloads(payloads: Sequence[Payload], wildcards: str | Path | None, seed: int) -> list[Payload]:
    """Fix seeds, check wildcards and expand: the concrete payloads a whole search uses.

    Errors for every payload are collected into one PayloadError.
    """
    manager = _wildcard_manager(wildcards)
    names = [p.name for p in payloads]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PayloadError(f"payload name(s) used twice: {', '.join(duplicates)}; each payload needs its own name")
    concrete: list[Payload] = []
    problems: list[str] = []
    for payload in fix_seeds(payloads, seed):
        try:
            concrete.extend(expand_payload(payload, wildcards, manager))
        except PayloadError as exc:
            problems.append(str(exc))
    if problems:
        raise PayloadError("cannot prepare payloads:\n  " + "\n  ".join(problems))
    return concrete


def preview_expansions(payload: Payload, wildcards: str | Path | None = None, count: int = 8) -> list[str]:
    """Up to ``count`` prompts ``payload`` expands into (a random seed stands in for -1)."""
    if payload.seed == -1:
        payload = dataclasses.replace(payload, seed=random.randrange(2**32))
    if payload.expansion == "random":
        payload = dataclasses.replace(payload, variants=count)
    elif payload.expansion == "combinatorial":
        payload = dataclasses.replace(payload, variants=min(count, payload.variants or count))
    return [p.prompt for p in expand_payload(payload, wildcards)[:count]]


def payload_from_record(record: Mapping[str, Any], source: str = "manifest") -> Payload:
    """A concrete payload back from ``Payload.to_record()`` (manifests of earlier runs)."""
    data = dict(record)
    name = str(data.pop("name", ""))
    variant = int(data.pop("variant", 0))
    payload = payload_from_dict(data, name, f"{source}: payload {name}")
    return dataclasses.replace(payload, variant=variant)
