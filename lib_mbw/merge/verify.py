"""Verify a merged file: recompute every tensor from its recorded sources and compare bit for bit.

This is the seeds' "offset counter": a merge is exact when no tensor differs
from what its recipe and sources give. The recipe, method, dtype and sources
(paths and sha256) come from the ``auto_mbw_recipe`` metadata our merges
carry; each source must still exist (or be pointed to again) and hash to the
recorded sha256. The plan and the per-tensor math are those of ``engine``, so
verify checks the file, not a second implementation of the merge.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..blocks import BASE, BLOCKS, OTHER, VAE
from ..checkpoint import open_checkpoint
from ..errors import VerifyError
from .compute import Workspace, compute_tensor, compute_threads, usable_cpus
from .engine import MergeProgress, ProgressCallback, hash_sources, open_sources
from .plan import MergeSpec, plan_merge
from .metadata import OUR_KEY, read_our_record

GROUP_ORDER = BLOCKS + (BASE, VAE, OTHER)


@dataclass
class GroupDiff:
    """Per group: tensors compared, how many differ, and the largest absolute difference."""

    tensors: int = 0
    differing: int = 0
    max_abs_diff: float = 0.0


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of ``verify_file``; ``identical`` is True only when every tensor matched bit for bit."""

    path: Path
    groups: Mapping[str, GroupDiff]
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    seconds: float = 0.0
    sources: Mapping[str, Path] = field(default_factory=dict)

    @property
    def tensors(self) -> int:
        return sum(g.tensors for g in self.groups.values())

    @property
    def differing(self) -> int:
        return sum(g.differing for g in self.groups.values()) + len(self.missing) + len(self.extra)

    @property
    def identical(self) -> bool:
        return self.differing == 0

    def table(self) -> str:
        lines = [f"{'group':<12}{'tensors':>9}{'differ':>8}{'max |diff|':>14}"]
        for name, g in self.groups.items():
            lines.append(f"{name:<12}{g.tensors:>9}{g.differing:>8}{g.max_abs_diff:>14.6g}")
        if self.missing:
            lines.append(f"missing from the file: {len(self.missing)} tensor(s), e.g. {', '.join(self.missing[:3])}")
        if self.extra:
            lines.append(f"not produced by the recipe: {len(self.extra)} tensor(s), e.g. {', '.join(self.extra[:3])}")
        verdict = "identical" if self.identical else f"{self.differing} tensor(s) differ"
        lines.append(f"offset counter: {self.differing}/{self.tensors} ({verdict})")
        return "\n".join(lines)


def _locate(role: str, recorded: Mapping[str, str], override: Path | None, search_dirs: Sequence[Path], merged: Path) -> Path:
    if override is not None:
        if not override.exists():
            raise VerifyError(f"{override}: file not found (given for source {role} of {merged})")
        return override
    path = Path(recorded["path"])
    if path.exists():
        return path
    for folder in search_dirs:
        candidate = Path(folder) / recorded["name"]
        if candidate.exists():
            return candidate
    raise VerifyError(
        f"{merged}: source {role} ({path}) is missing; pass --source {role}=PATH, "
        f"or --search-dir with the folder that holds {recorded['name']}"
    )


def verify_file(
    path: str | Path,
    *,
    sources: Mapping[str, str | Path] | None = None,
    search_dirs: Sequence[str | Path] = (),
    allow_pickle: bool = False,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Recompute ``path`` from the sources its metadata records and compare every tensor.

    ``sources`` maps roles (a, b, c, m1.., base, vae) to files that replace the
    recorded paths; ``search_dirs`` are folders where a moved source is looked
    up by its recorded file name. Raises ``VerifyError`` when the file has no
    auto-MBW record, a source is missing, or a source's sha256 differs from
    the recorded one.
    """
    started = time.perf_counter()
    path = Path(path)
    with ExitStack() as stack:
        merged = stack.enter_context(open_checkpoint(path))
        record = read_our_record(merged.metadata, str(path))
        if record is None:
            raise VerifyError(
                f"{path}: has no auto-MBW merge record (metadata key {OUR_KEY!r}); only files merged by auto-MBW can be verified"
            )
        recorded = record.get("sources") or {}
        overrides = {role: Path(p) for role, p in (sources or {}).items()}
        unknown = sorted(set(overrides) - set(recorded))
        if unknown:
            raise VerifyError(f"{path}: has no source role(s) {', '.join(unknown)}; its sources are {', '.join(recorded)}")
        located = {
            role: _locate(role, entry, overrides.get(role), [Path(d) for d in search_dirs], path) for role, entry in recorded.items()
        }
        if record.get("method") == "block_mix":  # an N-model block mix (merge.multi)
            from .multi import verify_mix_file

            return verify_mix_file(path, record, merged, located, allow_pickle=allow_pickle, progress=progress)
        spec = MergeSpec.from_record(record, str(path), located)
        actual = hash_sources(spec.sources, progress)
        for role, entry in recorded.items():
            if actual[role].sha256 != entry.get("sha256"):
                raise VerifyError(
                    f"{spec.sources[role]}: sha256 {actual[role].short} differs from the {str(entry.get('sha256'))[:10]} "
                    f"recorded in {path} for source {role}; it is not the file the merge was made from"
                )
        models = open_sources(spec.sources, stack, allow_pickle)
        plan = plan_merge(spec, models)
        planned = {op.key for op in plan.ops}
        missing = tuple(op.key for op in plan.ops if op.key not in merged.shapes)
        extra = tuple(k for k in merged.keys if k not in planned)
        groups = {g: GroupDiff() for g in GROUP_ORDER if any(op.group == g for op in plan.ops)}
        work = Workspace()
        present = [op for op in plan.ops if op.key in merged.shapes]
        stack.enter_context(compute_threads(usable_cpus() - 1))
        for index, op in enumerate(present):
            expected = compute_tensor(op, models, work, work.raw("expected", op.entry.nbytes))
            stored = merged.get(op.key, buffer=work.raw("stored", merged.nbytes([op.key])))
            diff = groups[op.group]
            diff.tensors += 1
            if not _bit_equal(expected, stored):
                diff.differing += 1
                diff.max_abs_diff = max(diff.max_abs_diff, _max_abs_diff(expected, stored))
            if progress:
                progress(MergeProgress("verify", index + 1, len(present), op.key, op.group))
    return VerifyReport(path, groups, missing, extra, time.perf_counter() - started, dict(spec.sources))


def _bit_equal(x: torch.Tensor, y: torch.Tensor) -> bool:
    if x.dtype != y.dtype or x.shape != y.shape:
        return False
    return torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))


def _max_abs_diff(x: torch.Tensor, y: torch.Tensor) -> float:
    if x.shape != y.shape:
        return math.inf
    if not x.is_floating_point() or not y.is_floating_point():
        return float((x.to(torch.float64) - y.to(torch.float64)).abs().max()) if x.numel() else 0.0
    if x.numel() == 0:
        return 0.0
    return float((x.to(torch.float32) - y.to(torch.float32)).abs().max())
