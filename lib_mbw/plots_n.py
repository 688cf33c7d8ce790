"""The plot of an N-model recipe: each model's share per block, drawn on the UNet layout of ``plots.unet_positions``.

Each block is a box split into N horizontal bands, one per model, as tall as
that model's share (they sum to 1), in the model's colour; the legend names
the models. Blocks the architecture lacks are drawn dashed.
"""

from __future__ import annotations

import os

from .blocks import present_blocks
from .fileio import write_atomic
from .plots import UNET_BOX, _figure_bytes, _new_figure, draw_block_frame, unet_positions
from .recipe import format_weight
from .recipe_n import RecipeN

#: One colour per model (models 1-5).
MODEL_COLOURS: tuple[str, ...] = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")


def unet_shares_plot(
    recipe: RecipeN,
    path: str | os.PathLike[str] | None = None,
    *,
    family: str = "sd1",
    title: str = "Best recipe: share of each model per block",
) -> bytes:
    """Each model's share per block as stacked bands on the UNet; returns the PNG bytes (written to ``path`` if given)."""
    from matplotlib.patches import Patch, Rectangle

    present = set(present_blocks(family))
    fig = _new_figure(14, 6.8)
    ax = fig.subplots()
    width, height = UNET_BOX
    for block, (x, y) in unet_positions().items():
        shown = block in present and block in recipe.shares
        draw_block_frame(ax, x, y, block, shown)
        if not shown:
            ax.text(x, y, "absent", ha="center", va="center", fontsize=8, color="#9e9e9e")
            continue
        bottom = y - height / 2
        for index, share in enumerate(recipe.shares[block]):
            if share > 0:
                ax.add_patch(Rectangle((x - width / 2, bottom), width, height * share, color=MODEL_COLOURS[index], alpha=0.85))
            bottom += height * share
        top = max(range(recipe.n_models), key=lambda i: recipe.shares[block][i])
        ax.text(x, y - height / 2 - 0.12, f"{top + 1}:{format_weight(round(recipe.shares[block][top], 2))}",
                ha="center", va="top", fontsize=6)
    ax.axvline(25.9, color="#cccccc", linewidth=0.8)
    handles = [Patch(color=MODEL_COLOURS[i], label=f"model {i + 1}: {name}") for i, name in enumerate(recipe.models)]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.set_xlim(-1, 28)
    ax.set_ylim(-13.8, 1.2)
    ax.axis("off")
    ax.set_title(title + "  (band height = share, bottom = model 1; below: the largest share)", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.94, bottom=0.01)
    data = _figure_bytes(fig)
    if path is not None:
        write_atomic(path, data)
    return data


__all__ = ["MODEL_COLOURS", "unet_shares_plot"]
