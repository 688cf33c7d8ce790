"""Inspect checkpoints: architecture, dtypes, parameters per block, hashes, merge records, and distances.

With two or more models, every pair of models of the same architecture gets
a per-block L2 distance (``sqrt(sum((a - b)^2))`` over the block's tensors) and
cosine similarity (``sum(a*b) / (|a| |b|)``), in one streaming pass: each key
is read once from every model (one tensor per model in memory at a time) and
the sums are accumulated in float64. ``plot`` draws a bar chart for two models
and a distance matrix of the whole UNet for more (matplotlib, headless).
"""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..blocks import BASE, VAE
from ..checkpoint import Checkpoint, open_checkpoint
from ..errors import OutputExistsError, OutputWriteError
from .compute import compute_threads, usable_cpus
from .engine import MergeProgress, ProgressCallback
from .plan import DTYPE_NAMES
from .hashes import HashCache, ModelHashes, model_hashes
from .metadata import read_our_record, webui_value

COMPARED_EXTRA_GROUPS = (BASE, VAE)


@dataclass(frozen=True)
class ModelInfo:
    """What one checkpoint is."""

    path: Path
    arch: str
    family: str
    dtypes: Mapping[str, int]  #: dtype name -> number of tensors
    params: Mapping[str, int]  #: group -> number of parameters
    size: int
    hashes: ModelHashes | None
    merge: str | None  #: a one-line description of the merge recorded in its metadata, if any

    @property
    def total_params(self) -> int:
        return sum(self.params.values())


@dataclass
class _Sums:
    sq_diff: float = 0.0
    dot: float = 0.0
    sq_a: float = 0.0
    sq_b: float = 0.0


@dataclass(frozen=True)
class PairStats:
    """Per group distance and similarity between models ``i`` and ``j`` (indices into ``models``)."""

    i: int
    j: int
    l2: Mapping[str, float]
    cosine: Mapping[str, float]
    unet_l2: float
    skipped: int = 0  #: tensors not compared (shapes differ)


@dataclass(frozen=True)
class InspectReport:
    models: tuple[ModelInfo, ...]
    pairs: tuple[PairStats, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def text(self) -> str:
        lines: list[str] = []
        for n, m in enumerate(self.models, 1):
            dtypes = ", ".join(f"{name} ({count})" for name, count in m.dtypes.items())
            lines.append(f"[{n}] {m.path}")
            lines.append(f"    architecture: {m.arch}; {sum(m.dtypes.values())} tensors, {dtypes}; "
                         f"{m.total_params / 1e6:.1f}M parameters; {m.size / 2**30:.2f} GiB")
            if m.hashes:
                lines.append(f"    sha256 {m.hashes.sha256}  short [{m.hashes.short}]  legacy {m.hashes.legacy}")
            if m.merge:
                lines.append(f"    merge: {m.merge}")
            lines.append("    parameters per group: " + ", ".join(f"{g} {p / 1e6:.2f}M" for g, p in m.params.items() if p))
        for pair in self.pairs:
            lines.append("")
            lines.append(f"[{pair.i + 1}] vs [{pair.j + 1}]: UNet L2 distance {pair.unet_l2:.6g}"
                         + (f" ({pair.skipped} tensors of different shape skipped)" if pair.skipped else ""))
            lines.append(f"    {'group':<12}{'L2 distance':>14}{'cosine':>12}")
            for group in pair.l2:
                lines.append(f"    {group:<12}{pair.l2[group]:>14.6g}{pair.cosine[group]:>12.6f}")
        lines += self.notes
        return "\n".join(lines)


def describe_merge(metadata: Mapping[str, Any], source: str) -> str | None:
    """One line about the merge a file's metadata records (ours, else the WebUI's), or None."""
    record = read_our_record(metadata, source)
    if record is not None:
        names = ", ".join(f"{role}={entry.get('name')}" for role, entry in (record.get("sources") or {}).items())
        weights = (record.get("recipe") or {}).get("weights") or {}
        recipe = ",".join(f"{w:g}" for w in weights.values()) if weights else "-"
        return f"auto-MBW {record.get('method')} ({record.get('dtype')}) of {names}; weights {recipe}"
    webui = webui_value(metadata.get("sd_merge_recipe"))
    if isinstance(webui, dict):
        return f"{webui.get('type', '?')} merger: {webui.get('interp_method')} multiplier {webui.get('multiplier')}"
    return None


def model_info(ckpt: Checkpoint, with_hashes: bool = True, hash_cache: HashCache | None = None) -> ModelInfo:
    arch = ckpt.arch
    params = {}
    for group, keys in ckpt.groups.items():
        params[group] = sum(math.prod(ckpt.shapes[k]) for k in keys)
    dtypes = Counter(DTYPE_NAMES.get(ckpt.dtypes[k], str(ckpt.dtypes[k]).replace("torch.", "")) for k in ckpt.keys)
    return ModelInfo(
        path=ckpt.path,
        arch=arch.label,
        family=f"{arch.family}/{arch.variant}",
        dtypes=dict(dtypes.most_common()),
        params=params,
        size=ckpt.path.stat().st_size if ckpt.path.exists() else 0,
        hashes=model_hashes(ckpt.path, hash_cache) if with_hashes and ckpt.path.exists() else None,
        merge=describe_merge(ckpt.metadata, str(ckpt.path)),
    )


def _compare(models: Sequence[Checkpoint], pairs: Sequence[tuple[int, int]], progress: ProgressCallback | None) -> list[PairStats]:
    first = models[pairs[0][0]]
    groups = list(first.arch.blocks) + [g for g in COMPARED_EXTRA_GROUPS if first.groups[g]]
    sums = {pair: {g: _Sums() for g in groups} for pair in pairs}
    skipped = Counter[tuple[int, int]]()
    involved = sorted({i for pair in pairs for i in pair})
    keys = [k for g in groups for k in first.groups[g] if first.dtypes[k].is_floating_point]
    group_of = {k: g for g in groups for k in first.groups[g]}
    for index, key in enumerate(keys):
        tensors = {i: models[i].get(key).to(torch.float32).reshape(-1) for i in involved if key in models[i].shapes}
        for i, j in pairs:
            if i not in tensors or j not in tensors or tensors[i].shape != tensors[j].shape:
                skipped[(i, j)] += 1
                continue
            a, b = tensors[i], tensors[j]
            s = sums[(i, j)][group_of[key]]
            s.sq_diff += float(torch.dist(a, b).double() ** 2)
            s.dot += float(torch.dot(a, b))
            s.sq_a += float(torch.dot(a, a))
            s.sq_b += float(torch.dot(b, b))
        if progress:
            progress(MergeProgress("compare", index + 1, len(keys), key, group_of[key]))
    results = []
    for i, j in pairs:
        per = sums[(i, j)]
        l2 = {g: math.sqrt(s.sq_diff) for g, s in per.items()}
        cosine = {g: (s.dot / math.sqrt(s.sq_a * s.sq_b)) if s.sq_a > 0 and s.sq_b > 0 else float("nan") for g, s in per.items()}
        unet = math.sqrt(sum(per[g].sq_diff for g in groups if g not in COMPARED_EXTRA_GROUPS))
        results.append(PairStats(i, j, l2, cosine, unet, skipped[(i, j)]))
    return results


def inspect_models(
    paths: Sequence[str | os.PathLike[str]],
    *,
    with_hashes: bool = True,
    allow_pickle: bool = False,
    progress: ProgressCallback | None = None,
    hash_cache: HashCache | None = None,
) -> InspectReport:
    """Describe each model and, with two or more, compare every pair of the same architecture."""
    with ExitStack() as stack:
        models = [stack.enter_context(open_checkpoint(p, allow_pickle=allow_pickle)) for p in paths]
        infos = tuple(model_info(m, with_hashes, hash_cache) for m in models)
        notes: list[str] = []
        comparable: list[tuple[int, int]] = []
        for i, j in itertools.combinations(range(len(models)), 2):
            if infos[i].family != infos[j].family:
                notes.append(f"[{i + 1}] and [{j + 1}] are not compared: {infos[i].arch} vs {infos[j].arch}")
            else:
                comparable.append((i, j))
        pairs: list[PairStats] = []
        by_family: dict[str, list[tuple[int, int]]] = {}
        for i, j in comparable:
            by_family.setdefault(infos[i].family, []).append((i, j))
        with compute_threads(usable_cpus() - 1):
            for family_pairs in by_family.values():
                pairs += _compare(models, family_pairs, progress)
    pairs.sort(key=lambda p: (p.i, p.j))
    return InspectReport(infos, tuple(pairs), tuple(notes))


def plot(report: InspectReport, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """A bar chart of per-block L2 distance and cosine (two models) or a UNet distance matrix (more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: already exists; pass --overwrite to replace it")
    if not report.pairs:
        raise OutputWriteError(f"{out}: nothing to plot; give two or more models of the same architecture")
    names = [m.path.stem for m in report.models]
    if len(report.models) == 2:
        pair = report.pairs[0]
        groups = list(pair.l2)
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, len(groups) * 0.45), 7), sharex=True)
        ax1.bar(groups, [pair.l2[g] for g in groups], color="tab:blue")
        ax1.set_ylabel("L2 distance")
        ax1.set_title(f"{names[0]} vs {names[1]}")
        ax2.bar(groups, [pair.cosine[g] for g in groups], color="tab:orange")
        ax2.set_ylabel("cosine similarity")
        ax2.tick_params(axis="x", rotation=90)
    else:
        n = len(report.models)
        matrix = [[0.0] * n for _ in range(n)]
        for pair in report.pairs:
            matrix[pair.i][pair.j] = matrix[pair.j][pair.i] = pair.unet_l2
        fig, ax = plt.subplots(figsize=(2 + n * 0.8, 1.5 + n * 0.8))
        image = ax.imshow(matrix, cmap="viridis")
        ax.set_xticks(range(n), names, rotation=90)
        ax.set_yticks(range(n), names)
        top = max(max(row) for row in matrix) or 1.0
        for i in range(n):
            for j in range(n):
                color = "k" if matrix[i][j] > top / 2 else "w"
                ax.text(j, i, f"{matrix[i][j]:.3g}", ha="center", va="center", color=color, fontsize=8)
        fig.colorbar(image, ax=ax, label="UNet L2 distance")
        ax.set_title("UNet L2 distance between models")
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    try:
        fig.savefig(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputWriteError(f"{out}: cannot write the plot ({exc.strerror})") from None
    finally:
        plt.close(fig)
    return out
