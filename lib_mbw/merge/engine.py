"""The offline merge engine: plan which tensor comes from where, then stream it to a file.

A merge is described by a ``MergeSpec`` (method, source files by role, recipe,
output dtype, where BASE/VAE come from). ``plan_merge`` turns it into one
``TensorOp`` per output key after checking architectures, key sets and shapes;
``compute_tensor`` evaluates one op with the math of ``methods``; and
``run_merge`` streams every op through ``writer.SafetensorsWriter``. ``verify``
replays the same plan, so a file can be checked against its recorded sources.

Roles: ``a``, ``b`` (and ``c`` for add-difference) for two-model merges,
``m1``..``mN`` for the uniform mean (sorted by sha256, so the result does not
depend on the order the models were given), plus ``base`` and ``vae`` for
files that donate the text encoder or the VAE.

Groups (``lib_mbw.blocks``): every UNet block is merged with its recipe
weight; BASE (text encoder) comes from A, B, the merge (recipe ``base``
weight) or a donor file; VAE from A unless a VAE file is given; OTHER keys from
A. The uniform mean averages UNet, BASE and VAE (the WebUI merger, which
AstolfoMix used, merges every key containing ``model``) and copies OTHER from
m1. Integer tensors and ``position_ids`` are always copied, never averaged.

Memory: tensors are read with positioned reads into a few reused buffers
(``Checkpoint.get(buffer=...)``), computed in reused fp32 scratch buffers and
handed to a writer thread through two reused output slots, so peak memory is a
handful of the largest tensor (about 0.1-0.6 GB for SD1.5) on top of the
interpreter, whatever the model size; the writer thread writes and hashes
while the main thread computes the next tensor.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..blocks import BASE, OTHER, VAE, ModelArch, check_same_architecture
from ..checkpoint import Checkpoint, open_checkpoint
from ..errors import ArchitectureMismatchError, ModelFormatError, OutputWriteError, RecipeError
from ..recipe import Recipe
from .hashes import ModelHashes, model_hashes, same_file
from .metadata import SourceInfo, build_metadata, webui_merge_recipe
from .methods import METHODS
from .writer import SafetensorsWriter, TensorEntry, check_output_path

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
DONOR_ROLES = ("base", "vae")
VAE_PREFIX = "first_stage_model."
OUTPUT_SLOTS = 2


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    """``fp16``/``bf16``/``fp32`` (or the torch dtype itself) -> torch dtype."""
    if isinstance(value, torch.dtype):
        if value not in DTYPE_NAMES:
            raise RecipeError(f"output dtype {value} is not supported; use one of {', '.join(DTYPES)}")
        return value
    try:
        return DTYPES[str(value).lower()]
    except KeyError:
        raise RecipeError(f"output dtype {value!r} is not supported; use one of {', '.join(DTYPES)}") from None


@dataclass(frozen=True)
class MergeSpec:
    """What to merge: method, source files by role, recipe, output dtype, BASE/VAE sources.

    ``base_from``: ``a``, ``b``, ``merge`` or ``base`` (the donor file in
    ``sources["base"]``). ``vae_from``: ``a`` (two-model merges), ``merge``
    (uniform mean) or ``vae`` (the file in ``sources["vae"]``).
    """

    method: str
    sources: Mapping[str, Path]
    recipe: Recipe | None = None
    dtype: torch.dtype = torch.float16
    base_from: str = "a"
    vae_from: str = "a"

    @property
    def merged_roles(self) -> tuple[str, ...]:
        """The roles whose tensors the method combines, in order (a, b[, c] or m1..mN)."""
        return tuple(r for r in self.sources if r not in DONOR_ROLES)

    @property
    def first_role(self) -> str:
        return self.merged_roles[0]

    def record(self, infos: Mapping[str, SourceInfo]) -> dict[str, Any]:
        """This spec as the JSON-able record stored in the output's metadata."""
        return {
            "method": self.method,
            "recipe": self.recipe.to_dict() if self.recipe is not None else None,
            "dtype": DTYPE_NAMES[self.dtype],
            "base_from": self.base_from,
            "vae_from": self.vae_from,
            "other_from": self.first_role,
            "sources": {role: infos[role].record() for role in self.sources},
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], source: str, paths: Mapping[str, Path] | None = None) -> "MergeSpec":
        """The spec a metadata record describes; ``paths`` replaces recorded source paths by role."""
        try:
            sources = {role: Path((paths or {}).get(role) or entry["path"]) for role, entry in record["sources"].items()}
            recipe = Recipe.from_dict(record["recipe"], source) if record.get("recipe") is not None else None
            return cls(
                method=record["method"],
                sources=sources,
                recipe=recipe,
                dtype=parse_dtype(record["dtype"]),
                base_from=record["base_from"],
                vae_from=record["vae_from"],
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise RecipeError(f"{source}: the auto-MBW merge record is incomplete ({exc!r} missing or malformed)") from None


@dataclass(frozen=True)
class TensorOp:
    """How one output tensor is made: ``kind`` is ``copy`` or a method name; inputs are (role, key)."""

    key: str
    group: str
    kind: str
    inputs: tuple[tuple[str, str], ...]
    weight: float | None
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def entry(self) -> TensorEntry:
        return TensorEntry(self.key, self.dtype, self.shape)


@dataclass(frozen=True)
class MergePlan:
    """Every output tensor's op, in the first model's key order, with the notes made while planning."""

    spec: MergeSpec
    arch: ModelArch
    ops: tuple[TensorOp, ...]
    warnings: tuple[str, ...] = ()

    def by_key(self) -> dict[str, TensorOp]:
        return {op.key: op for op in self.ops}


@dataclass(frozen=True)
class MergeProgress:
    """A progress event: ``phase`` is ``hash`` (sources hashed so far) or ``merge``/``verify`` (tensors done)."""

    phase: str
    done: int
    total: int
    key: str = ""
    group: str = ""


ProgressCallback = Callable[[MergeProgress], None]


@dataclass(frozen=True)
class MergeReport:
    """The outcome of a merge: what was written, how, how long it took, and the output's hashes."""

    output: Path
    tensors: int
    merged: int
    copied: Mapping[str, int]
    bytes_written: int
    seconds: float
    hash_seconds: float
    hashes: ModelHashes
    arch: str
    dtype: str
    warnings: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        copied = ", ".join(f"{n} from {role}" for role, n in self.copied.items() if n)
        return (
            f"wrote {self.output} ({self.arch}, {self.dtype}, {self.bytes_written / 2**30:.2f} GiB) in {self.seconds:.1f} s "
            f"(hashing sources {self.hash_seconds:.1f} s): {self.tensors} tensors, {self.merged} merged"
            + (f", {copied} copied" if copied else "")
            + f"\nsha256 {self.hashes.sha256}  short [{self.hashes.short}]  legacy {self.hashes.legacy}"
        )


# --------------------------------------------------------------------------- planning


def _role_label(role: str, ckpt: Checkpoint) -> str:
    label = {"a": "model A", "b": "model B", "c": "model C", "base": "BASE donor", "vae": "VAE file"}.get(role, f"model {role}")
    return f"{label} ({ckpt.path})"


def _describe_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _require_same_tensors(
    keys: Sequence[str], first: Checkpoint, first_role: str, other: Checkpoint, role: str, key_map: Callable[[str], str] = str
) -> None:
    """``other`` holds every key of ``keys`` (mapped by ``key_map``) with the shape ``first`` has."""
    missing = [k for k in keys if key_map(k) not in other.shapes]
    if missing:
        raise ArchitectureMismatchError(
            f"{_role_label(role, other)} lacks {len(missing)} tensor(s) that {_role_label(first_role, first)} has: "
            f"{_describe_keys(missing)}; the models must have the same keys"
        )
    wrong = [f"{k} {list(first.shapes[k])} vs {list(other.shapes[key_map(k)])}" for k in keys if first.shapes[k] != other.shapes[key_map(k)]]
    if wrong:
        raise ArchitectureMismatchError(
            f"{_role_label(role, other)} has {len(wrong)} tensor(s) shaped differently from {_role_label(first_role, first)}: "
            f"{_describe_keys(wrong)}"
        )


def _never_averaged(key: str, ckpt: Checkpoint) -> bool:
    return not ckpt.dtypes[key].is_floating_point or key.endswith("position_ids")


def _output_dtype(spec: MergeSpec, source_dtype: torch.dtype) -> torch.dtype:
    return spec.dtype if source_dtype.is_floating_point else source_dtype


def _vae_key_map(vae: Checkpoint) -> Callable[[str], str]:
    """Checkpoint VAE key -> key in the VAE file (full checkpoints keep the prefix; VAE files drop it)."""
    if any(k.startswith(VAE_PREFIX) for k in vae.shapes):
        return str
    return lambda key: key[len(VAE_PREFIX) :]


def plan_merge(spec: MergeSpec, models: Mapping[str, Checkpoint]) -> MergePlan:
    """Check the sources against each other and decide every output tensor's op."""
    if spec.method not in METHODS:
        raise RecipeError(f"unknown merge method {spec.method!r}; use one of {', '.join(METHODS)}")
    method = METHODS[spec.method]
    roles = spec.merged_roles
    if method.models and len(roles) != method.models:
        raise RecipeError(f"{spec.method} merges {method.models} models, got {len(roles)}")
    if not method.models and len(roles) < 2:
        raise RecipeError(f"{spec.method} needs at least 2 models, got {len(roles)}")
    first_role = spec.first_role
    first = models[first_role]
    arch = first.arch
    for role in roles[1:]:
        check_same_architecture(arch, models[role].arch, _role_label(first_role, first), _role_label(role, models[role]))
    groups = first.groups
    warnings: list[str] = []
    recipe = None
    if method.models:
        if spec.recipe is None:
            raise RecipeError(f"{spec.method} needs a recipe (block weights) or an alpha")
        dropped = [b for b in spec.recipe.weights if b not in arch.blocks]
        recipe = spec.recipe.for_family(arch.family)
        if dropped:
            warnings.append(f"{arch.label} has no block(s) {', '.join(dropped)}: their recipe weights are ignored")
        if spec.base_from == "merge" and recipe.base is None:
            raise RecipeError(
                f"{spec.recipe.source}: --base-from merge needs a BASE weight, and the recipe has none; "
                "add BASE to the recipe, use --alpha, or pick --base-from a|b|MODEL"
            )
        if spec.base_from != "merge" and recipe.base is not None:
            warnings.append(
                f"the recipe's BASE weight {recipe.base:g} is not used: the text encoder is copied from "
                f"{spec.base_from.upper() if spec.base_from in ('a', 'b') else 'the BASE donor'} (use --base-from merge to merge it)"
            )

    unet_keys = [k for b in arch.blocks for k in groups[b]]
    for role in roles[1:]:
        _require_same_tensors(unet_keys, first, first_role, models[role], role)

    ops: list[TensorOp] = []

    def merged(key: str, group: str, weight: float | None) -> TensorOp:
        if _never_averaged(key, first):
            return TensorOp(key, group, "copy", ((first_role, key),), None, first.dtypes[key], first.shapes[key])
        inputs = tuple((r, key) for r in roles)
        return TensorOp(key, group, spec.method, inputs, weight, _output_dtype(spec, first.dtypes[key]), first.shapes[key])

    def copied(key: str, group: str, role: str, source_key: str) -> TensorOp:
        return TensorOp(key, group, "copy", ((role, source_key),), None, _output_dtype(spec, models[role].dtypes[source_key]), first.shapes[key])

    for block in arch.blocks:
        weight = recipe.weight(block) if recipe is not None else None
        ops += [merged(k, block, weight) for k in groups[block]]

    base_keys = groups[BASE]
    if spec.base_from == "merge":
        for role in roles[1:]:
            _require_same_tensors(base_keys, first, first_role, models[role], role)
        ops += [merged(k, BASE, recipe.base if recipe is not None else None) for k in base_keys]
    elif spec.base_from in ("a", "b", "base"):
        role = spec.base_from if spec.base_from != "a" else first_role
        if role not in models:
            raise RecipeError(f"--base-from {spec.base_from}: no such model in this merge")
        if not base_keys and role != first_role:
            warnings.append(f"{_role_label(first_role, first)} has no text encoder keys: --base-from {spec.base_from} changes nothing")
        _require_same_tensors(base_keys, first, first_role, models[role], role)
        ops += [copied(k, BASE, role, k) for k in base_keys]
    else:
        raise RecipeError(f"--base-from must be a, b, merge or a model file, got {spec.base_from!r}")

    vae_keys = groups[VAE]
    if spec.vae_from == "vae":
        vae = models["vae"]
        key_map = _vae_key_map(vae)
        present = [k for k in vae_keys if key_map(k) in vae.shapes]
        if not present:
            raise ModelFormatError(f"{vae.path}: holds none of the VAE tensors of {first.path}; is it a VAE for this architecture?")
        _require_same_tensors(present, first, first_role, vae, "vae", key_map)
        if len(present) < len(vae_keys):
            warnings.append(f"{vae.path.name} lacks {len(vae_keys) - len(present)} VAE tensor(s); those come from {first.path.name}")
        present_set = set(present)
        ops += [copied(k, VAE, "vae", key_map(k)) if k in present_set else copied(k, VAE, first_role, k) for k in vae_keys]
    elif spec.vae_from == "merge":
        for role in roles[1:]:
            _require_same_tensors(vae_keys, first, first_role, models[role], role)
        ops += [merged(k, VAE, None) for k in vae_keys]
    else:
        ops += [copied(k, VAE, first_role, k) for k in vae_keys]

    ops += [copied(k, OTHER, first_role, k) for k in groups[OTHER]]
    order = {k: i for i, k in enumerate(first.shapes)}
    ops.sort(key=lambda op: order[op.key])
    return MergePlan(spec, arch, tuple(ops), tuple(warnings))


# --------------------------------------------------------------------------- computing


class Workspace:
    """Reused flat byte buffers by name, grown on demand; tensors are typed views into them."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def raw(self, name: str, nbytes: int) -> torch.Tensor:
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < nbytes:
            self._buffers.pop(name, None)
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8)
            self._buffers[name] = buf
        return buf

    def typed(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        return _typed(self.raw(name, TensorEntry(name, dtype, shape).nbytes), dtype, shape)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() for b in self._buffers.values())


def _typed(region: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The start of a flat uint8 buffer viewed as a tensor of ``dtype`` and ``shape``."""
    return region[: TensorEntry("", dtype, shape).nbytes].view(dtype).reshape(shape)


def _nbytes(ckpt: Checkpoint, key: str) -> int:
    return ckpt.nbytes([key])


def _as_fp32(t: torch.Tensor, work: Workspace, name: str) -> torch.Tensor:
    if t.dtype == torch.float32:
        return t
    return work.typed(name, torch.float32, tuple(t.shape)).copy_(t)


def compute_tensor(op: TensorOp, models: Mapping[str, Checkpoint], work: Workspace, region: torch.Tensor) -> torch.Tensor:
    """The output tensor of ``op`` (dtype ``op.dtype``), computed into ``region`` (flat uint8, large enough).

    The result is a view of ``region`` (or, for sources held in memory, the
    source's own tensor); it stays valid until ``region`` is reused.
    """
    method = METHODS.get(op.kind)
    pick = 0 if method is None else (method.shortcut(op.weight) if op.weight is not None else None)
    out = _typed(region, op.dtype, op.shape)
    if pick is not None:
        role, key = op.inputs[pick]
        source = models[role]
        if source.dtypes[key] == op.dtype:
            return source.get(key, buffer=region)
        return out.copy_(source.get(key, buffer=work.raw("in0", _nbytes(source, key))))
    assert method is not None
    if method.models == 0:
        reads = (models[role].get(key, buffer=work.raw("in0", _nbytes(models[role], key))) for role, key in op.inputs)
        merged = method.function(reads, out=work.typed("result", torch.float32, op.shape))
    else:
        inputs = [
            models[role].get(key, buffer=work.raw(f"in{i}", _nbytes(models[role], key))) for i, (role, key) in enumerate(op.inputs)
        ]
        if op.dtype in method.native_dtypes and all(t.dtype == op.dtype for t in inputs):
            return method.function(*inputs, op.weight, out=out)
        fp32 = [_as_fp32(t, work, f"fp32_{i}") for i, t in enumerate(inputs)]
        merged = method.function(*fp32, op.weight, out=work.typed("result", torch.float32, op.shape))
    return out.copy_(merged)


BATCH_BYTES = 64 * 2**20
ALIGN = 64


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity set where the OS tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@contextmanager
def compute_threads(count: int) -> Iterator[None]:
    """Run torch's CPU ops on ``count`` threads inside the block, then restore the previous setting.

    The offline commands use one CPU fewer than they may: the merge leaves it
    to its writer thread, and on a busy machine torch's OpenMP workers, which
    spin while they wait, made small-tensor work five to six times slower when
    they had to share the last core (measured on a 2-CPU machine).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _stream(
    ops: Sequence[TensorOp],
    produce: Callable[[TensorOp, torch.Tensor], Any],
    consume: Callable[[TensorOp, Any], None],
    on_done: Callable[[int, TensorOp], None],
    work: Workspace,
) -> None:
    """Run ``produce`` on this thread and ``consume`` (in order) on a second one.

    ``produce(op, region)`` computes into ``region`` (a slice of an output
    buffer) and returns what ``consume`` needs. Results are packed into one of two reused output buffers of at least
    ``BATCH_BYTES``; a full buffer is handed to the consumer thread while this
    thread fills the other, so threads meet once per batch, not per tensor.
    """
    capacity = max([BATCH_BYTES] + [op.entry.nbytes for op in ops])
    buffers = [work.raw(f"out{i}", capacity) for i in range(OUTPUT_SLOTS)]
    free: queue.Queue[int] = queue.Queue()
    for i in range(OUTPUT_SLOTS):
        free.put(i)
    todo: queue.Queue[tuple[int, list[tuple[TensorOp, Any]]] | None] = queue.Queue()
    failure: list[BaseException] = []

    def drain() -> None:
        while (item := todo.get()) is not None:
            slot, batch = item
            for op, product in batch:
                if failure:
                    break
                try:
                    consume(op, product)
                except BaseException as exc:  # handed to the main thread below
                    failure.append(exc)
            free.put(slot)

    worker = threading.Thread(target=drain, name="auto-mbw-writer", daemon=True)
    worker.start()
    slot, offset, batch = free.get(), 0, []
    try:
        for index, op in enumerate(ops):
            size = op.entry.nbytes
            if offset + size > capacity:
                todo.put((slot, batch))
                slot, offset, batch = free.get(), 0, []
            if failure:
                break
            batch.append((op, produce(op, buffers[slot][offset:])))
            offset += -(-size // ALIGN) * ALIGN
            on_done(index + 1, op)
        if batch and not failure:
            todo.put((slot, batch))
    except BaseException:
        todo.put(None)
        worker.join()
        if failure:  # the consumer's error came first and is the one to report
            raise failure[0] from None
        raise
    todo.put(None)
    worker.join()
    if failure:
        raise failure[0]


# --------------------------------------------------------------------------- running


def open_sources(paths: Mapping[str, Path], stack: ExitStack, allow_pickle: bool) -> dict[str, Checkpoint]:
    """Open every source (once per distinct file) for the duration of ``stack``."""
    opened: dict[str, Checkpoint] = {}
    by_path: dict[Path, Checkpoint] = {}
    for role, path in paths.items():
        resolved = Path(path).resolve()
        if resolved not in by_path:
            by_path[resolved] = stack.enter_context(open_checkpoint(path, allow_pickle=allow_pickle))
        opened[role] = by_path[resolved]
    return opened


def hash_sources(
    paths: Mapping[str, Path],
    progress: ProgressCallback | None = None,
    known: Mapping[Path, ModelHashes] | None = None,
) -> dict[str, ModelHashes]:
    """WebUI hashes of every source file by role, computed in parallel (one thread per file, at most one per core).

    ``known`` maps resolved paths to hashes already computed in this run.
    """
    results: dict[Path, ModelHashes] = dict(known or {})
    unique = [p for p in dict.fromkeys(Path(p).resolve() for p in paths.values()) if p not in results]
    if unique:
        workers = max(1, min(len(unique), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="auto-mbw-hash") as pool:
            for i, (path, hashes) in enumerate(zip(unique, pool.map(model_hashes, unique))):
                results[path] = hashes
                if progress:
                    progress(MergeProgress("hash", i + 1, len(unique), key=path.name))
    return {role: results[Path(p).resolve()] for role, p in paths.items()}


def _multiplier(plan: MergePlan) -> float:
    spec = plan.spec
    if spec.recipe is None:
        return round(1.0 / len(spec.merged_roles), 6)
    weights = [spec.recipe.weights[b] for b in plan.arch.blocks if b in spec.recipe.weights]
    return round(sum(weights) / len(weights), 6) if weights else 0.0


def _metadata(plan: MergePlan, out: Path, infos: Mapping[str, SourceInfo], extra: Mapping[str, Any] | None) -> dict[str, str]:
    spec = plan.spec
    merged = [infos[r] for r in spec.merged_roles]
    contributors = merged + ([infos["base"]] if spec.base_from == "base" else [])
    method = METHODS[spec.method]
    interp = method.webui_name if method.models else f"{method.webui_name} ({len(merged)} models)"
    webui = webui_merge_recipe(
        sources=merged,
        interp_method=interp,
        multiplier=_multiplier(plan),
        save_as_half=spec.dtype == torch.float16,
        custom_name=out.stem,
        bake_in_vae=infos["vae"].name if spec.vae_from == "vae" else "None",
        is_inpainting=plan.arch.variant == "inpainting",
        is_instruct_pix2pix=plan.arch.variant == "instruct-pix2pix",
    )
    return build_metadata(webui_recipe=webui, merged_sources=contributors, ours=spec.record(infos), extra=extra)


def _refuse_output_among_sources(out: Path, paths: Mapping[str, Path]) -> None:
    for role, path in paths.items():
        if out.exists() and same_file(out, path):
            raise OutputWriteError(f"{out}: is one of the inputs ({role}); write the merge to a new file")


def run_merge(
    spec: MergeSpec,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    extra_metadata: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    known_hashes: Mapping[Path, ModelHashes] | None = None,
) -> MergeReport:
    """Hash the sources, plan, and stream the merged file to ``out`` (atomically)."""
    started = time.perf_counter()
    out = Path(out)
    check_output_path(out, overwrite)
    _refuse_output_among_sources(out, spec.sources)
    with ExitStack() as stack:
        models = open_sources(spec.sources, stack, allow_pickle)
        plan = plan_merge(spec, models)
        for warning in plan.warnings:  # also returned in the report, for hosts to show
            log.info("%s", warning)
        hash_started = time.perf_counter()
        hashes = hash_sources(spec.sources, progress, known_hashes)
        hash_seconds = time.perf_counter() - hash_started
        infos = {role: SourceInfo(role, Path(spec.sources[role]), hashes[role], models[role].metadata) for role in spec.sources}
        metadata = _metadata(plan, out, infos, extra_metadata)
        ops = plan.by_key()
        work = Workspace()
        with SafetensorsWriter(out, [op.entry for op in plan.ops], metadata, overwrite=overwrite) as writer:
            ordered = [ops[name] for name in writer.order]

            def report(done: int, op: TensorOp) -> None:
                if progress:
                    progress(MergeProgress("merge", done, len(ordered), op.key, op.group))

            with compute_threads(usable_cpus() - 1):
                _stream(
                    ordered,
                    lambda op, region: writer.stage(op.key, compute_tensor(op, models, work, region)),
                    lambda op, data: writer.emit(data),
                    report,
                    work,
                )
            written = writer.commit()
    copied: dict[str, int] = {}
    merged = 0
    for op in plan.ops:
        if op.kind == "copy":
            copied[op.inputs[0][0]] = copied.get(op.inputs[0][0], 0) + 1
        else:
            merged += 1
    return MergeReport(
        output=out,
        tensors=len(plan.ops),
        merged=merged,
        copied=copied,
        bytes_written=written.size,
        seconds=time.perf_counter() - started,
        hash_seconds=hash_seconds,
        hashes=written.hashes,
        arch=plan.arch.label,
        dtype=DTYPE_NAMES[spec.dtype],
        warnings=plan.warnings,
        metadata=metadata,
    )


# --------------------------------------------------------------------------- public API


PathLike = str | os.PathLike[str]


def _recipe_of(recipe: Recipe | float, base_merged: bool) -> Recipe:
    """A recipe as given, or one alpha for every block (and BASE when BASE is merged)."""
    if isinstance(recipe, Recipe):
        return recipe
    alpha = float(recipe)
    return Recipe.uniform(alpha, base=alpha if base_merged else None, source=f"--alpha {alpha:g}")


def merge_to_file(
    a: PathLike,
    b: PathLike,
    recipe: Recipe | float,
    out: PathLike,
    *,
    c: PathLike | None = None,
    method: str | None = None,
    dtype: torch.dtype | str = torch.float16,
    base_from: str | PathLike = "a",
    vae_from: PathLike | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    extra_metadata: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> MergeReport:
    """Merge checkpoints A and B block by block with ``recipe`` and write ``out`` (.safetensors).

    ``recipe`` is a ``Recipe`` (weights = fraction of B per block) or one
    alpha for every block and BASE. ``method`` defaults to the recipe's
    (``weighted_sum``: lerp(A, B, w); ``add_difference``: A + w (B - C), needs
    ``c``). ``base_from``: ``"a"`` (default), ``"b"``, ``"merge"`` (the recipe's
    BASE weight) or a donor checkpoint path. ``vae_from``: a checkpoint or VAE
    file whose VAE replaces A's. ``dtype`` applies to every floating tensor.
    ``progress`` is called once per source hashed and once per tensor.
    Raises an ``MBWError`` subclass with a message naming the file on bad input;
    on any failure no output file (and no temp file) is left behind.
    """
    merge_recipe = _recipe_of(recipe, str(base_from) == "merge")
    method_name = method or merge_recipe.method
    if method_name not in METHODS or not METHODS[method_name].models:
        raise RecipeError(f"merge method must be weighted_sum or add_difference, got {method_name!r}")
    sources: dict[str, Path] = {"a": Path(a), "b": Path(b)}
    if method_name == "add_difference":
        if c is None:
            raise RecipeError("add_difference needs a third model C (--c C): A + w * (B - C)")
        sources["c"] = Path(c)
    elif c is not None:
        raise RecipeError("a model C is only used by add_difference")
    base = str(base_from)
    if base not in ("a", "b", "merge"):
        sources["base"], base = Path(base_from), "base"
    if vae_from is not None:
        sources["vae"] = Path(vae_from)
    spec = MergeSpec(
        method=method_name,
        sources=sources,
        recipe=merge_recipe.replace(method=method_name),
        dtype=parse_dtype(dtype),
        base_from=base,
        vae_from="vae" if vae_from is not None else "a",
    )
    return run_merge(
        spec, out, overwrite=overwrite, allow_pickle=allow_pickle, extra_metadata=extra_metadata, progress=progress
    )


def uniform_to_file(
    models: Sequence[PathLike],
    out: PathLike,
    *,
    dtype: torch.dtype | str = torch.float16,
    base_from: PathLike | None = None,
    vae_from: PathLike | None = None,
    overwrite: bool = False,
    allow_pickle: bool = False,
    extra_metadata: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> MergeReport:
    """The parameterless uniform merge (AstolfoMix): the plain mean of every model, written to ``out``.

    Equal to merging the x-th model into the running result at weight 1/x,
    but accumulated in fp32 in one pass. The models are ordered by sha256
    before summing, so the output file does not depend on the order given.
    ``base_from``/``vae_from`` copy the text encoder / VAE from a donor file
    instead of averaging them.
    """
    paths = [Path(m) for m in models]
    if len(paths) < 2:
        raise RecipeError(f"a uniform merge needs at least 2 models, got {len(paths)}")
    resolved = [p.resolve() for p in paths]
    duplicates = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if duplicates:
        raise RecipeError(f"model(s) given more than once: {', '.join(duplicates)}; each model counts once in the mean")
    out = Path(out)
    check_output_path(out, overwrite)

    def spec_for(order: Sequence[Path]) -> MergeSpec:
        sources: dict[str, Path] = {f"m{i + 1}": p for i, p in enumerate(order)}
        if base_from is not None:
            sources["base"] = Path(base_from)
        if vae_from is not None:
            sources["vae"] = Path(vae_from)
        return MergeSpec(
            method="mean",
            sources=sources,
            dtype=parse_dtype(dtype),
            base_from="base" if base_from is not None else "merge",
            vae_from="vae" if vae_from is not None else "merge",
        )

    with ExitStack() as stack:  # refuse bad inputs before hashing gigabytes
        plan_merge(spec_for(paths), open_sources(spec_for(paths).sources, stack, allow_pickle))
    hashes = hash_sources({str(i): p for i, p in enumerate(paths)}, progress)
    ordered = [p for _, p in sorted(((hashes[str(i)].sha256, i), p) for i, p in enumerate(paths))]
    spec = spec_for(ordered)
    known = {p.resolve(): hashes[str(i)] for i, p in enumerate(paths)}
    return run_merge(
        spec,
        out,
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        extra_metadata=extra_metadata,
        progress=progress,
        known_hashes=known,
    )
