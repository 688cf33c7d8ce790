"""Pre-flight checks: everything a search can verify before its run folder exists and its first evaluation runs.

``preflight(settings)`` runs in front of ``start_search`` (CLI ``search``,
the UI's Search, the demo) and refuses, with one ``PreflightError`` line that
names the file or setting and what to do:

* the models: both given (when the generator loads files), each an existing,
  readable ``.safetensors`` (a pickle ``.ckpt`` only with the generator's
  ``allow_pickle``) of a supported SD architecture, of one architecture (and
  the ``models.family`` setting, if set), and not the same file (same path,
  same inode, or same size and sha256);
* the payloads: every field and its bounds, dynamicprompts variant syntax
  and wildcard files (``lib_mbw.payloads``), the sampler and scheduler names
  against the generator (``check_sampler``: the diffusers table, or a
  generator's or host's own ``check_sampler`` method);
* the folders: the history folder (where the run folder is made) and the
  merged model's folder exist or can be created and are writable (a temp
  file is created and removed), and the model's folder has room for the
  merged model (its size estimated from model A's tensors and the output
  dtype); an existing output file is refused unless overwriting was asked.

A failed pre-flight leaves nothing behind: no run folder, no temp file.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import MBWError
from ..fileio import remove_stale_temps
from ..payloads import Payload, load_payloads, prepare_payloads
from .plugins import is_plugin
from .settings import SearchSettings

#: Generators that load A and B from local files (anything else may take model names it resolves itself).
FILE_GENERATORS: tuple[str, ...] = ("diffusers",)
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
#: Room kept free beyond the merged model's size (header, metadata, file-system slack).
SPACE_MARGIN = 1.02


class PreflightError(MBWError):
    """A search cannot start: a model, payload, sampler, folder or setting is wrong (nothing was created)."""


@dataclass
class ModelInfo:
    """What pre-flight learnt about one model file."""

    role: str  # "A" or "B"
    path: Path
    family: str | None = None
    variant: str | None = None
    label: str = ""
    size: int = 0
    float_elements: int = 0


def preflight(
    settings: SearchSettings,
    *,
    host: Any = None,
    generators: Sequence[Any] | None = None,
    create: bool = True,
) -> list[Payload]:
    """Run every check that can run before a search starts; returns the prepared payloads.

    ``host``/``generators``: the UI's host and ready-made generators, asked
    for ``check_sampler`` where they offer it. ``create=False`` (``--print-settings``)
    leaves a missing output folder uncreated.
    """
    settings.validate()
    check_components(settings, host=host, generators=generators)
    models = check_models(settings, host=host)
    payloads = check_payloads(settings, host=host, generators=generators)
    check_folder(Path(settings.history_dir), "history folder (history_dir)", "--history-dir")
    check_output(settings, models.get("A"), create=create)
    return payloads


def check_components(settings: SearchSettings, *, host: Any = None, generators: Sequence[Any] | None = None) -> None:
    """Registered names of the strategy, scorer and generator exist (``package.module:factory`` specs are loaded later)."""
    if ":" not in settings.strategy:
        from .optimizer import resolve_strategy

        try:
            resolve_strategy(settings.strategy)
        except MBWError as exc:
            raise PreflightError(f"strategy (--strategy): {exc}") from None
    if ":" not in settings.scorer.name:
        from ..scorers.registry import scorer_entry

        try:
            scorer_entry(settings.scorer.name)
        except MBWError as exc:
            raise PreflightError(f"scorer (--scorer): {exc}") from None
    if host is None and not generators and ":" not in settings.generator.name:
        from ..generators.registry import generator_names

        if settings.generator.name not in generator_names():
            raise PreflightError(
                f"generator (--generator): unknown generator {settings.generator.name!r}; choose one of {', '.join(generator_names())}"
            )


# --------------------------------------------------------------------------- models


def _needs_files(settings: SearchSettings, host: Any) -> bool:
    """Whether A and B must be local files: the built-in file generators (a host's own generators check what
    looks like a file; the UI always passes files)."""
    return host is None and settings.generator.name in FILE_GENERATORS


def _looks_like_file(spec: str) -> bool:
    return Path(spec).suffix.lower() in CHECKPOINT_SUFFIXES or os.sep in spec or "/" in spec


def _allow_pickle(settings: SearchSettings) -> bool:
    return bool(settings.generator.options.get("allow_pickle", False))


def _model_info(role: str, spec: str, allow_pickle: bool, host_loads: bool = False, inspect: bool = True) -> ModelInfo:
    """Facts of one model file; ``host_loads``: a host (the WebUI) loads it with its own loader, so a pickle
    checkpoint is only checked to exist and be readable (never unpickled here); ``inspect=False`` (a plugin
    generator reads the file its own way): existence and readability only."""
    from ..checkpoint import PICKLE_SUFFIXES, open_checkpoint

    flag = {"A": "-a/--model-a (models.a)", "B": "-b/--model-b (models.b)"}.get(role, f"MODEL argument {'ABCDE'.index(role) + 1} (models.{role.lower()})")
    path = Path(spec)
    if not path.exists():
        raise PreflightError(f"model {role}: {path}: file not found; check {flag}")
    if path.is_dir():
        if (path / "model_index.json").is_file():
            return ModelInfo(role, path)  # a diffusers folder: the generator reads its config
        raise PreflightError(f"model {role}: {path}: is a folder, not a checkpoint; give a .safetensors file with {flag}")
    if not os.access(path, os.R_OK):
        raise PreflightError(f"model {role}: {path}: not readable (permission denied); fix its permissions or copy it")
    if not inspect or (host_loads and path.suffix.lower() in PICKLE_SUFFIXES):
        return ModelInfo(role, path, size=path.stat().st_size)
    try:
        with open_checkpoint(path, allow_pickle=allow_pickle) as checkpoint:
            arch = checkpoint.arch
            elements = sum(math.prod(shape) for key, shape in checkpoint.shapes.items() if checkpoint.dtypes[key].is_floating_point)
    except MBWError as exc:
        raise PreflightError(f"model {role}: {exc}") from None
    return ModelInfo(role, path, arch.family, arch.variant, arch.label, path.stat().st_size, elements)


def _same_file(a: Path, b: Path) -> str:
    """How A and B are the same file ('' if they are not)."""
    if a.resolve() == b.resolve():
        return "the same path"
    try:
        if os.path.samefile(a, b):
            return "the same file (a link)"
    except OSError:
        return ""
    if a.is_file() and b.is_file() and a.stat().st_size == b.stat().st_size:
        from ..merge.hashes import default_hash_cache, model_hashes

        cache = default_hash_cache()
        if model_hashes(a, cache).sha256 == model_hashes(b, cache).sha256:
            return "identical files (same sha256)"
    return ""


def check_models(settings: SearchSettings, *, host: Any = None) -> dict[str, ModelInfo]:
    """Both models present, readable, supported, of one architecture and not the same file.

    With a plugin generator (user code that reads models its own way) a file
    is only checked to exist, be readable and differ from the other model.
    """
    specs = {"A": settings.models.a, "B": settings.models.b}
    specs.update({role.upper(): getattr(settings.models, role) for role in "cde" if getattr(settings.models, role)})
    needs_files = _needs_files(settings, host)
    inspect = host is not None or not is_plugin(settings.generator.name)
    if needs_files:
        for role, spec in specs.items():
            if not spec:
                flag = "-a/--model-a" if role == "A" else "-b/--model-b"
                raise PreflightError(f"model {role} is not set; give the checkpoint to merge with {flag} (models.{role.lower()})")
    infos: dict[str, ModelInfo] = {}
    for role, spec in specs.items():
        if spec and (needs_files or Path(spec).exists() or _looks_like_file(spec)):
            infos[role] = _model_info(role, spec, _allow_pickle(settings), host_loads=host is not None, inspect=inspect)
    listed = list(infos.values())
    pick = "two" if len(listed) == 2 else "the"
    for i, a in enumerate(listed):
        for b in listed[i + 1 :]:
            how = _same_file(a.path, b.path)
            if how:
                raise PreflightError(
                    f"model {a.role} ({a.path}) and model {b.role} ({b.path}) are {how}: every merge would be the same model; "
                    f"pick {pick} different models"
                )
            if a.family and b.family and (a.family, a.variant) != (b.family, b.variant):
                raise PreflightError(
                    f"model {a.role} ({a.path}) is {a.label} but model {b.role} ({b.path}) is {b.label}: architectures differ, "
                    f"so they cannot be merged; pick {pick} models of one architecture"
                )
    wanted = settings.models.family
    for info in infos.values():
        if wanted and info.family and info.family != wanted:
            raise PreflightError(
                f"model {info.role} ({info.path}) is {info.label} but the setting models.family (--family) is {wanted}; "
                "leave --family out (it is detected) or pick a matching model"
            )
    return infos


# --------------------------------------------------------------------------- payloads and samplers


def check_payloads(settings: SearchSettings, *, host: Any = None, generators: Sequence[Any] | None = None) -> list[Payload]:
    """The prepared payloads (fields, variant syntax, wildcards), each sampler/scheduler checked by the generator."""
    from ..errors import PayloadError

    try:
        files = load_payloads(settings.payloads.folder, settings.payloads.names or None)
        prepared = prepare_payloads(files, settings.payloads.wildcards, settings.seed)
    except PayloadError as exc:
        raise PreflightError(str(exc)) from None
    checked: set[tuple[str, str, str]] = set()
    for payload in files:
        key = (payload.name, payload.sampler, payload.scheduler)
        if key in checked:
            continue
        checked.add(key)
        source = f"{Path(settings.payloads.folder) / payload.name}.json"
        try:
            check_payload_sampler(payload, source, settings, host=host, generators=generators)
        except PayloadError as exc:
            raise PreflightError(str(exc)) from None
    return prepared


def check_payload_sampler(payload: Payload, source: str, settings: SearchSettings, *, host: Any = None, generators: Sequence[Any] | None = None) -> None:
    """Ask whoever can know (the generators, the host, else the diffusers table) whether the sampler exists."""
    from ..generators.base import check_sampler

    for backend in [*(generators or []), host]:
        if backend is not None and check_sampler(backend, payload.sampler, payload.scheduler, source):
            return
    if settings.generator.name == "diffusers":
        from ..generators.diffusers_samplers import check_sampler as check_diffusers

        check_diffusers(payload.sampler, payload.scheduler, source)


# --------------------------------------------------------------------------- folders and space


def _existing_ancestor(folder: Path) -> Path:
    current = folder.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def probe_writable(folder: Path) -> OSError | None:
    """Create and remove a temp file in ``folder``; the OSError if that fails."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".auto-mbw-probe.{os.getpid()}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        return exc
    os.close(fd)
    try:
        os.unlink(name)
    except OSError:
        pass
    return None


def check_folder(folder: Path, what: str, flag: str) -> None:
    """``folder`` exists as a writable folder, or its nearest existing parent is one (so it can be created)."""
    target = folder if folder.exists() else _existing_ancestor(folder)
    if not target.is_dir():
        raise PreflightError(f"{what} {folder}: {target} is a file, not a folder; choose another folder with {flag}")
    problem = probe_writable(target)
    if problem is not None:
        reason = "read-only file system" if problem.errno == errno.EROFS else (problem.strerror or str(problem))
        where = "" if target == folder else f" (its parent {target} is where it would be created)"
        raise PreflightError(f"{what} {folder} is not writable{where}: {reason}; choose another folder with {flag} or fix its permissions")


def merged_model_target(settings: SearchSettings) -> Path | None:
    """The merged model's file if ``output.model`` names one, else its folder; None without a merged model."""
    if not settings.output.model or not settings.output.merge:
        return None
    return Path(settings.output.model)


def estimated_model_bytes(model_a: ModelInfo | None, dtype: str) -> int:
    """Size of the merged model: A's float tensors at the output dtype (what the merge engine writes)."""
    if model_a is None or not model_a.float_elements:
        return model_a.size if model_a is not None else 0
    return int(model_a.float_elements * _DTYPE_BYTES.get(dtype, 2))


def check_output(settings: SearchSettings, model_a: ModelInfo | None, *, create: bool = True) -> None:
    """The merged model's folder is writable and has room; an existing output file needs overwrite."""
    target = merged_model_target(settings)
    if target is None:
        return
    is_file = target.suffix.lower() == ".safetensors"
    folder = target.parent if is_file else target
    if is_file and target.is_dir():
        raise PreflightError(f"output {target}: is a folder; give a file name ending in .safetensors or the folder itself with -o")
    if is_file and target.exists() and not settings.output.overwrite:
        raise PreflightError(f"output {target}: already exists; choose another name with -o or pass --overwrite")
    if not is_file and target.exists() and not target.is_dir():
        raise PreflightError(f"output {target}: is a file without the .safetensors suffix; give a .safetensors file or a folder with -o")
    check_folder(folder, "output folder", "-o/--output")
    if create:
        remove_stale_temps(folder)  # a killed merge's leftover (GBs) would count against the space check
    need = int(estimated_model_bytes(model_a, settings.output.dtype) * SPACE_MARGIN)
    if need:
        free = shutil.disk_usage(_existing_ancestor(folder)).free
        if free < need:
            raise PreflightError(
                f"output folder {folder}: not enough free disk space for the merged model ({free / 2**30:.2f} GiB free, "
                f"it needs about {need / 2**30:.2f} GiB at {settings.output.dtype}); free some space or choose another folder with -o"
            )
    if create:
        folder.mkdir(parents=True, exist_ok=True)

