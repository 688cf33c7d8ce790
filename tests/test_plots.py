"""Plots are valid PNGs that show what they claim: convergence with running best, UNet-shaped weights."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from lib_mbw.blocks import present_blocks
from lib_mbw.plots import convergence_plot, plot_run, unet_weights_plot
from lib_mbw.recipe import Recipe
from lib_mbw.search.history import HistoryRow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def as_image(data: bytes) -> Image.Image:
    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def blue_pixels(data: bytes) -> int:
    """Pixels of the bars' fill colour (matplotlib blue)."""
    pixels = np.asarray(as_image(data).convert("RGB")).astype(int)
    return int(((pixels[..., 2] > 150) & (pixels[..., 0] < 100)).sum())


def rows() -> list[HistoryRow]:
    recipe = Recipe.uniform(0.5)
    out = []
    for i, status in enumerate(["ok", "ok", "failed", "abandoned", "cached", "ok", "rescore", "selected"]):
        score = None if status == "failed" else -1.0 + 0.1 * i
        out.append(HistoryRow(i, status, "optimizer", recipe, score=score))
    return out


def test_convergence_plot_is_a_png_and_is_written(tmp_path: Path) -> None:
    data = convergence_plot(rows(), tmp_path / "c.png")
    image = as_image(data)
    assert image.size[0] > 500 and image.size[1] > 300
    assert (tmp_path / "c.png").read_bytes() == data


def test_convergence_plot_without_scores_still_draws() -> None:
    only_failures = [HistoryRow(0, "failed", "optimizer", Recipe.uniform(0.1))]
    as_image(convergence_plot(only_failures, higher_is_better=False))
    as_image(convergence_plot([]))


def test_weights_plot_fill_follows_the_weights() -> None:
    empty, half, full = (blue_pixels(unet_weights_plot(Recipe.uniform(v))) for v in (0.0, 0.5, 1.0))
    assert empty < half < full
    assert abs(half - full / 2) < full * 0.15


def test_sdxl_absent_blocks_are_drawn_as_absent() -> None:
    sdxl = Recipe.uniform(1.0, blocks=present_blocks("sdxl"))
    sd1 = Recipe.uniform(1.0)

    # SDXL lacks 6 of the 27 blocks: about 6/27 less filled area
    ratio = blue_pixels(unet_weights_plot(sdxl, family="sdxl")) / blue_pixels(unet_weights_plot(sd1, family="sd1"))
    assert 0.7 < ratio < 0.85


def test_plot_run_writes_both_files(tmp_path: Path) -> None:
    paths = plot_run(rows(), Recipe.uniform(0.3, base=0.2), tmp_path, family="sd1")
    assert set(paths) == {"convergence_plot", "weights_plot"}
    for path in paths.values():
        as_image(path.read_bytes())
    assert set(plot_run([], None, tmp_path / "empty", family="sd1")) == {"convergence_plot"}
