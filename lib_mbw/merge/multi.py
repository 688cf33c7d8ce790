"""Offline block mix of 2-5 models to a file (``mix_to_file``), and its ``verify``.

A ``recipe_n.RecipeN`` gives each UNet block one share per model. The plan is
the uniform merge's plan (``plan.plan_merge`` with roles ``m1``..``mN`` in the
recipe's model order, which checks architectures, keys and shapes of every
source), with each UNet tensor's op turned into a chain mix at its block's
chain weights (``mix.chain_mix``). BASE, VAE and every other key are copied
from model 1, or BASE / VAE from a donor file. Tensors are streamed like the
two-model merge (``compute.stream`` into ``writer.SafetensorsWriter``): memory
stays near N input tensors plus the output buffers, whatever the model size.

Metadata: ``sd_merge_models`` lists every source with its sha256 and legacy
hash (A1111 layout), ``sd_merge_recipe`` names the first three as primary,
secondary and tertiary, and ``auto_mbw_recipe`` has method ``block_mix``, the
N-model recipe and every source, which is what ``verify_mix_file`` (called by
``verify.verify_file`` for such files) recomputes the file from.
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..blocks import BLOCKS
from ..checkpoint import Checkpoint, open_checkpoint
from ..errors import RecipeError, VerifyError
from ..recipe_n import RecipeN
from .compute import Workspace, compute_tensor, compute_threads, usable_cpus
from .engine import MergeProgress, MergeReport, ProgressCallback, _refuse_output_among_sources, hash_sources, open_sources, write_plan
from .hashes import HashCache
from .metadata import SourceInfo, build_metadata, webui_merge_recipe
from .mix import chain_mix
from .plan import DTYPE_NAMES, MergePlan, MergeSpec, TensorOp, parse_dtype, plan_merge
from .writer import check_output_path

METHOD = "block_mix"
MIX_KIND = "chain_mix"

PathLike = str | os.PathLike[str]


def roles_for(n: int) -> list[str]:
    return [f"m{i + 1}" for i in range(n)]


def _spec(models: Sequence[Path], dtype: torch.dtype, base_from: Path | None, vae_from: Path | None) -> MergeSpec:
    sources: dict[str, Path] = {role: Path(p) for role, p in zip(roles_for(len(models)), models)}
    if base_from is not None:
        sources["base"] = Path(base_from)
    if vae_from is not None:
        sources["vae"] = Path(vae_from)
    return MergeSpec(
        method="mean",  # planned as the N-model mean (same checks); UNet ops become chain mixes below
        sources=sources,
        dtype=dtype,
        base_from="base" if base_from is not None else "a",
        vae_from="vae" if vae_from is not None else "a",
    )


def plan_mix(recipe: RecipeN, spec: MergeSpec, models: Mapping[str, Checkpoint]) -> tuple[MergePlan, RecipeN, dict[str, tuple[float, ...]]]:
    """The plan of an N-model block mix: every UNet op a chain mix, everything else copied."""
    plan = plan_merge(spec, models)
    recipe = recipe.for_family(plan.arch.family)
    chains = {b: recipe.chain_weights(b) for b in plan.arch.blocks}
    ops = []
    for op in plan.ops:
        if op.group in chains and op.kind == "mean":
            op = replace(op, kind=MIX_KIND)
        ops.append(op)
    dropped = [b for b in BLOCKS if b not in plan.arch.blocks and b in recipe.shares]
    warnings = list(plan.warnings)
    if dropped:
        warnings.append(f"{plan.arch.label} has no block(s) {', '.join(dropped)}: their shares are ignored")
    return replace(plan, ops=tuple(ops), warnings=tuple(warnings)), recipe, chains


def compute_mix(
    op: TensorOp, models: Mapping[str, Checkpoint], chains: Mapping[str, Sequence[float]], work: Workspace, region: torch.Tensor
) -> torch.Tensor:
    """One output tensor: a chain mix for UNet ops, else the engine's own copy."""
    if op.kind != MIX_KIND:
        return compute_tensor(op, models, work, region)
    inputs = [
        models[role].get(key, buffer=work.raw(f"in{i}", models[role].nbytes([key]))) for i, (role, key) in enumerate(op.inputs)
    ]
    out = region[: op.entry.nbytes].view(op.dtype).reshape(op.shape)
    acc = work.typed("mix_acc", torch.float32, op.shape)
    tmp = work.typed("mix_tmp", torch.float32, op.shape)
    return chain_mix(inputs, chains[op.group], out, acc, tmp)


def _record(spec: MergeSpec, recipe: RecipeN, infos: Mapping[str, SourceInfo]) -> dict[str, Any]:
    return {
        "method": METHOD,
        "recipe": recipe.to_dict(),
        "dtype": DTYPE_NAMES[spec.dtype],
        "base_from": "base" if spec.base_from == "base" else "m1",
        "vae_from": "vae" if spec.vae_from == "vae" else "m1",
        "other_from": "m1",
        "sources": {role: infos[role].record() for role in spec.sources},
    }


def _metadata(plan: MergePlan, recipe: RecipeN, out: Path, infos: Mapping[str, SourceInfo], extra: Mapping[str, Any] | None) -> dict[str, str]:
    spec = plan.spec
    merged = [infos[r] for r in spec.merged_roles]
    contributors = merged + ([infos["base"]] if spec.base_from == "base" else [])
    second = [recipe.shares[b][1] for b in plan.arch.blocks]
    webui = webui_merge_recipe(
        sources=merged,
        interp_method=f"Block mix ({len(merged)} models)",
        multiplier=round(sum(second) / len(second), 6),
        save_as_half=spec.dtype == torch.float16,
        custom_name=out.stem,
        bake_in_vae=infos["vae"].name if spec.vae_from == "vae" else "None",
        is_inpainting=plan.arch.variant == "inpainting",
        is_instruct_pix2pix=plan.arch.variant == "instruct-pix2pix",
    )
    return build_metadata(webui_recipe=webui, merged_sources=contributors, ours=_record(spec, recipe, infos), extra=extra)


def mix_to_file(
    models: Sequence[PathLike],
    recipe: RecipeN,
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
    """Mix ``models`` (2-5, in the recipe's order) block by block with ``recipe`` and write ``out``.

    Text encoder, VAE and other keys come from the first model, or the text
    encoder from ``base_from`` / the VAE from ``vae_from`` (donor files).
    Raises an ``MBWError`` naming the file on bad input; on failure no output
    (and no temp file) is left behind.
    """
    paths = [Path(m) for m in models]
    if len(paths) != recipe.n_models:
        raise RecipeError(f"{recipe.source}: is a recipe for {recipe.n_models} models, got {len(paths)} model files")
    resolved = [p.resolve() for p in paths]
    duplicates = sorted({str(p) for p in resolved if resolved.count(p) > 1})
    if duplicates:
        raise RecipeError(f"model(s) given more than once: {', '.join(duplicates)}; each model of a mix must be a different file")
    spec = _spec(paths, parse_dtype(dtype), Path(base_from) if base_from else None, Path(vae_from) if vae_from else None)
    started = time.perf_counter()
    out = Path(out)
    check_output_path(out, overwrite)
    _refuse_output_among_sources(out, spec.sources)
    recipe = recipe.with_models([p.name for p in paths])
    with ExitStack() as stack:
        opened = open_sources(spec.sources, stack, allow_pickle)
        plan, recipe, chains = plan_mix(recipe, spec, opened)
        hash_started = time.perf_counter()
        hashes = hash_sources(spec.sources, progress, cache=hash_cache)
        hash_seconds = time.perf_counter() - hash_started
        infos = {role: SourceInfo(role, spec.sources[role], hashes[role], opened[role].metadata) for role in spec.sources}
        metadata = _metadata(plan, recipe, out, infos, extra_metadata)
        written = write_plan(out, plan, metadata, lambda op, work, region: compute_mix(op, opened, chains, work, region),
                             progress, overwrite)
    if hash_cache is not None:
        hash_cache.put(out, written.hashes)
    copied: dict[str, int] = {}
    for op in plan.ops:
        if op.kind == "copy":
            copied[op.inputs[0][0]] = copied.get(op.inputs[0][0], 0) + 1
    return MergeReport(
        output=out,
        tensors=len(plan.ops),
        merged=sum(1 for op in plan.ops if op.kind != "copy"),
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


def verify_mix_file(
    path: Path,
    record: Mapping[str, Any],
    merged: Checkpoint,
    located: Mapping[str, Path],
    *,
    allow_pickle: bool = False,
    progress: ProgressCallback | None = None,
) -> Any:
    """Recompute an N-model block mix from its located sources and compare every tensor (``verify.VerifyReport``)."""
    from .verify import GROUP_ORDER, GroupDiff, VerifyReport, _bit_equal, _max_abs_diff

    started = time.perf_counter()
    try:
        recipe = RecipeN.from_dict(record["recipe"], str(path))
        roles = [r for r in record["sources"] if r not in ("base", "vae")]
        dtype = parse_dtype(record["dtype"])
    except (KeyError, TypeError) as exc:
        raise VerifyError(f"{path}: the auto-MBW block-mix record is incomplete ({exc!r} missing or malformed)") from None
    if roles != roles_for(len(roles)) or len(roles) != recipe.n_models:
        raise VerifyError(f"{path}: the block-mix record's sources ({', '.join(roles)}) do not fit its {recipe.n_models}-model recipe")
    spec = _spec([located[r] for r in roles], dtype, located.get("base"), located.get("vae"))
    actual = hash_sources(spec.sources, progress)
    for role, entry in record["sources"].items():
        if actual[role].sha256 != entry.get("sha256"):
            raise VerifyError(
                f"{spec.sources[role]}: sha256 {actual[role].short} differs from the {str(entry.get('sha256'))[:10]} "
                f"recorded in {path} for source {role}; it is not the file the merge was made from"
            )
    with ExitStack() as stack:
        models = open_sources(spec.sources, stack, allow_pickle)
        plan, _recipe, chains = plan_mix(recipe, spec, models)
        planned = {op.key for op in plan.ops}
        missing = tuple(op.key for op in plan.ops if op.key not in merged.shapes)
        extra = tuple(k for k in merged.keys if k not in planned)
        groups = {g: GroupDiff() for g in GROUP_ORDER if any(op.group == g for op in plan.ops)}
        work = Workspace()
        present = [op for op in plan.ops if op.key in merged.shapes]
        stack.enter_context(compute_threads(usable_cpus() - 1))
        for index, op in enumerate(present):
            expected = compute_mix(op, models, chains, work, work.raw("expected", op.entry.nbytes))
            stored = merged.get(op.key, buffer=work.raw("stored", merged.nbytes([op.key])))
            diff = groups[op.group]
            diff.tensors += 1
            if not _bit_equal(expected, stored):
                diff.differing += 1
                diff.max_abs_diff = max(diff.max_abs_diff, _max_abs_diff(expected, stored))
            if progress:
                progress(MergeProgress("verify", index + 1, len(present), op.key, op.group))
    return VerifyReport(path, groups, missing, extra, time.perf_counter() - started, dict(spec.sources))


def read_mix_recipe(path: PathLike) -> RecipeN:
    """The N-model recipe recorded in a file mixed by auto-MBW (RecipeError if it has none)."""
    from .metadata import read_our_record

    with open_checkpoint(path) as ckpt:
        record = read_our_record(ckpt.metadata, str(path))
    if record is None or record.get("method") != METHOD:
        raise RecipeError(f"{path}: holds no auto-MBW N-model recipe in its metadata")
    return RecipeN.from_dict(record["recipe"], str(path))


__all__ = ["METHOD", "mix_to_file", "verify_mix_file", "read_mix_recipe", "plan_mix", "compute_mix"]
