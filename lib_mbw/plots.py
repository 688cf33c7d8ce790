"""PNG plots of a search: convergence (score per evaluation with the running best) and UNet-shaped weights.

Drawn with matplotlib's Agg backend (no display needed) into memory and
written atomically. Both functions also return the figure bytes, so a UI can
show them without touching the disk.

The weights chart follows the UNet's shape: input blocks step down on the
left (IN00 at the top), M00 sits at the bottom, output blocks climb back up
on the right (OUT11 at the top), with TIME_EMBED and OUT drawn apart. Each
block is a box whose filled part is its weight (0 = all model A, 1 = all
model B). Blocks the architecture lacks (SDXL has no IN09-IN11, OUT09-OUT11)
are drawn as dashed empty boxes labelled "absent".
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

from .blocks import IN_BLOCKS, OUT, OUT_BLOCKS, TIME_EMBED, present_blocks
from .fileio import write_atomic
from .recipe import Recipe, format_weight

_STATUS_STYLE = {
    "ok": dict(marker="o", color="#1f77b4", label="evaluation"),
    "cached": dict(marker="o", color="#9e9e9e", label="repeat (cached score)"),
    "abandoned": dict(marker="x", color="#ff7f0e", label="abandoned early (partial score)"),
    "screened": dict(marker="v", color="#8c564b", label="screened out (full-scale estimate of a cheap score)"),
    "rescore": dict(marker="D", color="#2ca02c", label="re-score of a top candidate"),
}


def _new_figure(width: float, height: float) -> Any:
    """A figure drawn by the Agg canvas, without pyplot (no global state, no display, faster import)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _figure_bytes(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def convergence_plot(
    rows: Sequence[Any],
    path: str | os.PathLike[str] | None = None,
    *,
    higher_is_better: bool = True,
    title: str = "Search convergence",
) -> bytes:
    """Score per evaluation and the running best; ``rows`` are ``history.HistoryRow``\\ s.

    Failed evaluations are marked on the x axis; the selected recipe's score
    is a star at the end. Returns the PNG bytes (written to ``path`` if given).
    """
    fig = _new_figure(9, 4.8)
    ax = fig.subplots()
    sign = 1.0 if higher_is_better else -1.0
    xs_best: list[int] = []
    ys_best: list[float] = []
    best: float | None = None
    by_status: dict[str, tuple[list[int], list[float]]] = {}
    failed: list[int] = []
    selected = None
    for position, row in enumerate(rows, start=1):
        status = row.status
        score = row.score
        if status == "selected":
            selected = (position, score)
            continue
        if status == "failed" or score is None:
            failed.append(position)
            continue
        xs, ys = by_status.setdefault(status, ([], []))
        xs.append(position)
        ys.append(score)
        if status == "ok" and (best is None or sign * score > sign * best):
            best = score
        if best is not None:
            xs_best.append(position)
            ys_best.append(best)
    for status, (xs, ys) in by_status.items():
        style = _STATUS_STYLE.get(status, dict(marker=".", color="black", label=status))
        ax.scatter(xs, ys, s=18, alpha=0.75, **style)
    if xs_best:
        ax.step(xs_best, ys_best, where="post", color="#d62728", linewidth=2, label="best so far")
    if failed:
        bottom = min((y for _, ys in by_status.values() for y in ys), default=0.0)
        ax.scatter(failed, [bottom] * len(failed), marker="|", s=120, color="#d62728", label="failed (no score)")
    if selected and selected[1] is not None:
        ax.scatter([selected[0]], [selected[1]], marker="*", s=260, color="#ffbf00", edgecolor="black", zorder=5, label="returned recipe (mean)")
    ax.set_xlabel("evaluation")
    ax.set_ylabel("score" + ("" if higher_is_better else " (lower is better)"))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if by_status or failed:
        ax.legend(loc="best", fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.92, bottom=0.11)
    data = _figure_bytes(fig)
    if path is not None:
        write_atomic(path, data)
    return data


def unet_positions() -> dict[str, tuple[float, float]]:
    """(x, y) of every canonical block: the U shape, with TIME_EMBED and OUT apart (also used by the UI's live view)."""
    depth_in = {b: -i for i, b in enumerate(IN_BLOCKS)}
    positions: dict[str, tuple[float, float]] = {}
    for i, block in enumerate(IN_BLOCKS):
        positions[block] = (i, depth_in[block])
    positions["M00"] = (12, -12.5)
    for j, block in enumerate(OUT_BLOCKS):
        positions[block] = (13 + j, -(11 - j))
    positions[TIME_EMBED] = (26.5, -4)
    positions[OUT] = (26.5, -7)
    return positions


#: width and height of a block's box in the UNet drawings (data units of ``unet_positions``)
UNET_BOX = (0.9, 0.75)


def draw_block_frame(ax: Any, x: float, y: float, block: str, shown: bool) -> None:
    """A block's outlined box with its name above (dashed and grey when the block is absent)."""
    from matplotlib.patches import Rectangle

    width, height = UNET_BOX
    ax.add_patch(Rectangle((x - width / 2, y - height / 2), width, height, fill=False, linestyle="-" if shown else "--",
                           edgecolor="black" if shown else "#9e9e9e", linewidth=1.0))
    ax.text(x, y + height / 2 + 0.08, block, ha="center", va="bottom", fontsize=7)


def unet_weights_plot(
    recipe: Recipe,
    path: str | os.PathLike[str] | None = None,
    *,
    family: str = "sd1",
    title: str = "Best recipe: weight of model B per block",
) -> bytes:
    """The recipe's block weights drawn as a UNet; returns the PNG bytes (written to ``path`` if given)."""
    from matplotlib.patches import Rectangle

    present = set(present_blocks(family))
    fig = _new_figure(14, 6.4)
    ax = fig.subplots()
    width, height = UNET_BOX
    for block, (x, y) in unet_positions().items():
        is_present = block in present and block in recipe.weights
        draw_block_frame(ax, x, y, block, is_present)
        if is_present:
            weight = recipe.weights[block]
            ax.add_patch(Rectangle((x - width / 2, y - height / 2), width, height * weight, color="#1f77b4", alpha=0.85))
            label = format_weight(round(weight, 3))
        else:
            label = "absent"
        ax.text(x, y, label, ha="center", va="center", fontsize=8, color="black" if is_present else "#9e9e9e")
    ax.axvline(25.9, color="#cccccc", linewidth=0.8)
    if recipe.base is not None:
        ax.text(26.5, -10, f"BASE (text encoder)\n{format_weight(recipe.base)}", ha="center", va="center", fontsize=8)
    ax.set_xlim(-1, 28)
    ax.set_ylim(-13.5, 1.2)
    ax.axis("off")
    ax.set_title(title + "  (filled part = weight; 0 = model A, 1 = model B)", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.94, bottom=0.01)
    data = _figure_bytes(fig)
    if path is not None:
        write_atomic(path, data)
    return data


def plot_run(rows: Sequence[Any], recipe: Recipe | None, folder: str | os.PathLike[str], *, family: str, higher_is_better: bool = True) -> dict[str, Path]:
    """Both plots of a finished run, as ``convergence.png`` and ``best_weights.png`` in ``folder``."""
    folder = Path(folder)
    paths = {"convergence_plot": folder / "convergence.png"}
    convergence_plot(rows, paths["convergence_plot"], higher_is_better=higher_is_better)
    if recipe is not None:
        paths["weights_plot"] = folder / "best_weights.png"
        unet_weights_plot(recipe, paths["weights_plot"], family=family)
    return paths


__all__ = ["convergence_plot", "plot_run", "unet_positions", "unet_weights_plot"]
