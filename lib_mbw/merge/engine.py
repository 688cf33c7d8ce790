"""The offline merge engine: hash the sources, plan, and stream the merged file to disk.

``merge_to_file`` (two models, block weights) and ``uniform_to_file`` (the
N-model mean) build a ``plan.MergeSpec``, and ``run_merge`` checks the output
path, opens the sources, plans (refusing bad input before any long work),
hashes the sources (their sha256 goes into the header), and streams every
tensor through ``compute.stream`` into ``writer.SafetensorsWriter``, which
writes atomically and hashes the output as it goes.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..checkpoint import Checkpoint, open_checkpoint
from ..errors import OutputWriteError, RecipeError
from ..recipe import Recipe
from .compute import Workspace, compute_tensor, compute_threads, stream, usable_cpus
from .hashes import HashCache, ModelHashes, model_hashes, same_file
from .metadata import SourceInfo, build_metadata, webui_merge_recipe
from .methods import METHODS
from .plan import DTYPE_NAMES, MergePlan, MergeSpec, TensorOp, parse_dtype, plan_merge
from .writer import SafetensorsWriter, check_output_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeProgress:
    """A progress event: ``phase`` is ``hash`` (files hashed so far) or ``merge``/``verify``/``compare`` (tensors done)."""

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
    cache: HashCache | None = None,
) -> dict[str, ModelHashes]:
    """WebUI hashes of every source file by role, computed in parallel (one thread per file, at most one per core).

    ``known`` maps resolved paths to hashes already computed in this run;
    ``cache`` remembers hashes across runs.
    """
    results: dict[Path, ModelHashes] = dict(known or {})
    unique = [p for p in dict.fromkeys(Path(p).resolve() for p in paths.values()) if p not in results]
    if unique:
        workers = max(1, min(len(unique), usable_cpus()))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="auto-mbw-hash") as pool:
            for i, (path, hashes) in enumerate(zip(unique, pool.map(lambda p: model_hashes(p, cache), unique))):
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


def write_plan(out: Path, plan: MergePlan, metadata: Mapping[str, str],
               compute: Callable[[TensorOp, Workspace, Any], Any], progress: ProgressCallback | None, overwrite: bool) -> Any:
    """Stream every tensor of ``plan`` through ``compute(op, workspace, region)`` into ``out`` (atomic); the writer's result."""
    ops = plan.by_key()
    work = Workspace()
    with SafetensorsWriter(out, [op.entry for op in plan.ops], metadata, overwrite=overwrite) as writer:
        ordered = [ops[name] for name in writer.order]

        def report(done: int, op: TensorOp) -> None:
            if progress:
                progress(MergeProgress("merge", done, len(ordered), op.key, op.group))

        with compute_threads(usable_cpus() - 1):
            stream(
                ordered,
                lambda op, region: writer.stage(op.key, compute(op, work, region)),
                lambda op, data: writer.emit(data),
                report,
                work,
            )
        return writer.commit()


def run_merge(
    spec: MergeSpec,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    allow_pickle: bool = False,
    extra_metadata: Mapping[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    known_hashes: Mapping[Path, ModelHashes] | None = None,
    hash_cache: HashCache | None = None,
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
        hashes = hash_sources(spec.sources, progress, known_hashes, hash_cache)
        hash_seconds = time.perf_counter() - hash_started
        infos = {role: SourceInfo(role, Path(spec.sources[role]), hashes[role], models[role].metadata) for role in spec.sources}
        metadata = _metadata(plan, out, infos, extra_metadata)
        written = write_plan(out, plan, metadata, lambda op, work, region: compute_tensor(op, models, work, region),
                             progress, overwrite)
    if hash_cache is not None:  # the next merge or inspect that reads this file need not hash it
        hash_cache.put(out, written.hashes)
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
    hash_cache: HashCache | None = None,
) -> MergeReport:
    """Merge checkpoints A and B block by block with ``recipe`` and write ``out`` (.safetensors).

    ``recipe`` is a ``Recipe`` (weights = fraction of B per block) or one
    alpha for every block and BASE. ``method`` defaults to the recipe's
    (``weighted_sum``: lerp(A, B, w); ``add_difference``: A + w (B - C), needs
    ``c``). ``base_from``: ``"a"`` (default), ``"b"``, ``"merge"`` (the recipe's
    BASE weight) or a donor checkpoint path. ``vae_from``: a checkpoint or VAE
    file whose VAE replaces A's. ``dtype`` applies to every floating tensor.
    ``progress`` is called once per source hashed and once per tensor;
    ``hash_cache`` (e.g. ``hashes.default_hash_cache()``) skips re-hashing
    sources it already knows. Raises an ``MBWError`` subclass with a message naming the file on bad input;
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
        spec,
        out,
        overwrite=overwrite,
        allow_pickle=allow_pickle,
        extra_metadata=extra_metadata,
        progress=progress,
        hash_cache=hash_cache,
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
    hash_cache: HashCache | None = None,
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
    hashes = hash_sources({str(i): p for i, p in enumerate(paths)}, progress, cache=hash_cache)
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
        hash_cache=hash_cache,
    )
