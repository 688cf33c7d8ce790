"""Pure renderers of the live view: a ``LiveState`` snapshot in, values for the UI's components out.

* ``unet_html``: the block weights drawn as a UNet (input blocks down the
  left, M00 at the bottom, output blocks up the right, TIME_EMBED and OUT
  apart), the current candidate and the best recipe side by side in each box;
  for a mix of 3-5 models (``RecipeN``) each half is a stack of every model's
  share, one colour per model;
* ``gallery_items``: images with captions (payload, seed, score) for a gallery;
* ``convergence_svg``: score per evaluation and the running best, drawn as SVG
  (cheap enough to redraw after every evaluation; the run's PNG from
  ``lib_mbw.plots`` is written when it ends);
* ``history_table``: the evaluations, newest first;
* ``render_live``: all of them for the parts whose version changed since the
  last render (``None`` = leave the component as it is).

Nothing here imports gradio; every function is tested on plain data.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from PIL import Image

from ..blocks import BLOCKS, OUT, TIME_EMBED, present_blocks
from ..generators.base import GeneratedImage
from ..plots import unet_positions
from ..plots_n import MODEL_COLOURS as MODEL_COLORS
from ..recipe import Recipe, format_weight
from ..recipe_n import RecipeN
from .live import LiveRow, LiveState, PendingRating, status_line

HISTORY_HEADERS: tuple[str, ...] = ("evaluation", "phase", "status", "score", "best", "seconds", "note")

#: Smallest side of an image in a gallery (tiny test images are scaled up, pixel for pixel).
MIN_DISPLAY_SIDE = 128

_CURRENT_COLOR = "#1f77b4"
_BEST_COLOR = "#ff7f0e"


# --------------------------------------------------------------------------- UNet visualizer


_UNIT_X, _UNIT_Y, _BOX_W, _BOX_H = 42.0, 17.0, 36.0, 34.0


def _layout() -> tuple[Any, float, float]:
    """(place(block) -> (x, y) of its box, width, height) of the UNet drawing."""
    positions = unet_positions()
    positions[TIME_EMBED], positions[OUT] = (26.5, -2.0), (26.5, -7.5)  # apart enough for their labels and values
    min_x = min(x for x, _ in positions.values())
    max_y = max(y for _, y in positions.values())
    width = (max(x for x, _ in positions.values()) - min_x) * _UNIT_X + _BOX_W + 16
    height = (max_y - min(y for _, y in positions.values())) * _UNIT_Y + _BOX_H + 70

    def place(block: str) -> tuple[float, float]:
        x, y = positions[block]
        return (x - min_x) * _UNIT_X + 8, (max_y - y) * _UNIT_Y + 16

    return place, width, height


def unet_html(current: Recipe | RecipeN | None, best: Recipe | RecipeN | None, family: str | None = None, *, title: str = "") -> str:
    """An SVG of the UNet's blocks: in each box the current candidate's weight (left bar) and the best's (right bar).

    Bars fill from the bottom: empty = model A (0), full = model B (1); the
    numbers under a box are the current (blue) and best (orange) weights.
    Blocks the architecture lacks are dashed and marked "absent". N-model
    recipes are drawn by ``unet_shares_html``.
    """
    if isinstance(current, RecipeN) or isinstance(best, RecipeN):
        return unet_shares_html(current if isinstance(current, RecipeN) else None, best if isinstance(best, RecipeN) else None,
                                family, title=title)
    present = set(present_blocks(family)) if family else set(BLOCKS)
    box_w, box_h = _BOX_W, _BOX_H
    place, width, height = _layout()

    parts = _svg_start(width, height, "block weights")
    for block in BLOCKS:
        x, y = place(block)
        name = html.escape(block.replace("TIME_EMBED", "TIME"))
        middle = x + box_w / 2
        if block not in present:
            parts.extend(_absent_block(x, y, name))
            continue
        parts.append(f'<g data-block="{html.escape(block)}">')
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{box_w}" height="{box_h}" fill="none" stroke="#777"/>')
        for offset, recipe, color, role in ((0.0, current, _CURRENT_COLOR, "current"), (box_w / 2, best, _BEST_COLOR, "best")):
            weight = recipe.weights.get(block) if recipe is not None else None
            if weight is None:
                continue
            bar = box_h * weight
            parts.append(
                f'<rect data-role="{role}" data-weight="{format_weight(weight)}" x="{x + offset + 1:.1f}" y="{y + box_h - bar:.1f}" '
                f'width="{box_w / 2 - 2:.1f}" height="{bar:.1f}" fill="{color}" opacity="0.85"><title>{html.escape(block)} {role}: {format_weight(weight)}</title></rect>'
            )
        parts.append(f'<text class="mbw-t" x="{middle:.1f}" y="{y - 3:.1f}" text-anchor="middle">{name}</text>')
        for line, (recipe, color) in enumerate(((current, _CURRENT_COLOR), (best, _BEST_COLOR))):
            if recipe is not None and block in recipe.weights:
                parts.append(f'<text class="mbw-v" x="{middle:.1f}" y="{y + box_h + 11 + line * 11:.1f}" text-anchor="middle" fill="{color}">'
                             f'{_short_weight(recipe.weights[block])}</text>')
        parts.append("</g>")
    legend_y = height - 6
    parts.append(f'<rect x="8" y="{legend_y - 10:.1f}" width="11" height="11" fill="{_CURRENT_COLOR}"/>')
    parts.append(f'<text class="mbw-l" x="24" y="{legend_y:.1f}">current candidate</text>')
    parts.append(f'<rect x="150" y="{legend_y - 10:.1f}" width="11" height="11" fill="{_BEST_COLOR}"/>')
    parts.append(f'<text class="mbw-l" x="166" y="{legend_y:.1f}">best so far</text>')
    parts.append(f'<text class="mbw-l" x="270" y="{legend_y:.1f}">bar height = weight of model B (empty = A, full = B)</text>')
    if best is not None and best.base is not None:
        parts.append(f'<text class="mbw-l" x="{width - 8:.1f}" y="{legend_y:.1f}" text-anchor="end">BASE (text encoder) best: {format_weight(best.base)}</text>')
    parts.append("</svg>")
    heading = f"<div><b>{html.escape(title)}</b></div>" if title else ""
    return f'<div class="mbw-unet">{heading}{"".join(parts)}</div>'



def _svg_start(width: float, height: float, label: str) -> list[str]:
    """The opening tag and styles of a UNet view's SVG."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'style="width:100%;height:auto" role="img" aria-label="{html.escape(label)}">',
        '<style>.mbw-t{font:bold 11px sans-serif;fill:currentColor}.mbw-v{font:11px monospace}.mbw-l{font:12px sans-serif;fill:currentColor}</style>',
    ]


def _absent_block(x: float, y: float, name: str) -> list[str]:
    """A dashed, labelled box for a block the model family does not have."""
    middle = x + _BOX_W / 2
    return [
        f'<rect x="{x:.1f}" y="{y:.1f}" width="{_BOX_W}" height="{_BOX_H}" fill="none" stroke="#9e9e9e" stroke-dasharray="3,2"/>',
        f'<text class="mbw-t" x="{middle:.1f}" y="{y - 3:.1f}" text-anchor="middle" opacity="0.45">{name}</text>',
        f'<text class="mbw-v" x="{middle:.1f}" y="{y + _BOX_H / 2 + 4:.1f}" text-anchor="middle" fill="#9e9e9e">absent</text>',
    ]

def unet_shares_html(current: RecipeN | None, best: RecipeN | None, family: str | None = None, *, title: str = "",
                     models: Sequence[str] = ()) -> str:
    """The UNet of an N-model mix: each box holds the current candidate's shares (left) and the best's (right).

    Each half is a stack from the bottom: model 1's share, then model 2's, ...
    (one colour per model, heights sum to the box). Under a box: the model
    with the largest share in the best recipe (``2:0.45``). ``models`` names
    the models in the legend (default: the recipes' labels).
    """
    present = set(present_blocks(family)) if family else set(BLOCKS)
    place, width, height = _layout()
    shown = best or current
    n = shown.n_models if shown is not None else 0
    names = list(models) or (list(shown.models) if shown is not None else [])
    parts = _svg_start(width, height, "share of each model per block")
    for block in BLOCKS:
        x, y = place(block)
        name = html.escape(block.replace("TIME_EMBED", "TIME"))
        middle = x + _BOX_W / 2
        if block not in present:
            parts.extend(_absent_block(x, y, name))
            continue
        parts.append(f'<g data-block="{html.escape(block)}">')
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{_BOX_W}" height="{_BOX_H}" fill="none" stroke="#777"/>')
        for offset, recipe, role in ((0.0, current, "current"), (_BOX_W / 2, best, "best")):
            if recipe is None or block not in recipe.shares:
                continue
            bottom = y + _BOX_H
            for index, share in enumerate(recipe.shares[block]):
                bar = _BOX_H * share
                bottom -= bar
                parts.append(
                    f'<rect data-role="{role}" data-model="{index + 1}" data-share="{format_weight(share)}" x="{x + offset + 1:.1f}" '
                    f'y="{bottom:.1f}" width="{_BOX_W / 2 - 2:.1f}" height="{bar:.1f}" fill="{MODEL_COLORS[index]}" opacity="0.85">'
                    f'<title>{html.escape(block)} {role}: model {index + 1} {format_weight(share)}</title></rect>'
                )
        parts.append(f'<text class="mbw-t" x="{middle:.1f}" y="{y - 3:.1f}" text-anchor="middle">{name}</text>')
        if shown is not None and block in shown.shares:
            top = max(range(n), key=lambda i: shown.shares[block][i])
            parts.append(f'<text class="mbw-v" x="{middle:.1f}" y="{y + _BOX_H + 11:.1f}" text-anchor="middle" fill="{MODEL_COLORS[top]}">'
                         f'{top + 1}:{_short_weight(shown.shares[block][top])}</text>')
        parts.append("</g>")
    legend_y = height - 6
    x = 8.0
    for index, label in enumerate(names[:n]):
        parts.append(f'<rect x="{x:.0f}" y="{legend_y - 10:.1f}" width="11" height="11" fill="{MODEL_COLORS[index]}"/>')
        text = f"{index + 1}: {label}"
        parts.append(f'<text class="mbw-l" x="{x + 16:.0f}" y="{legend_y:.1f}">{html.escape(text)}</text>')
        x += 30 + 7 * min(len(text), 28)
    parts.append(f'<text class="mbw-l" x="{width - 8:.1f}" y="{legend_y:.1f}" text-anchor="end">'
                 'left: current candidate, right: best; stacked from model 1 at the bottom; under a box: the largest share</text>')
    parts.append("</svg>")
    heading = f"<div><b>{html.escape(title)}</b></div>" if title else ""
    return f'<div class="mbw-unet">{heading}{"".join(parts)}</div>'


def _short_weight(value: float) -> str:
    """A weight in at most 4 characters (0.35, .125 -> 0.12, 1)."""
    return format_weight(round(value, 2))


# --------------------------------------------------------------------------- images


def display_image(image: Image.Image, min_side: int = MIN_DISPLAY_SIDE) -> Image.Image:
    """``image`` as an RGB picture a browser can show: float/16-bit modes scaled to 8 bits, tiny images enlarged."""
    picture = image
    if picture.mode in ("F", "I", "I;16"):
        low, high = picture.getextrema()
        scale = 255.0 / (high - low) if high > low else 0.0
        picture = picture.point(lambda v: (v - low) * scale).convert("L")
    if picture.mode not in ("RGB", "RGBA", "L"):
        picture = picture.convert("RGB")
    if min(picture.size) < min_side:
        factor = -(-min_side // max(1, min(picture.size)))
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.NEAREST)
    return picture


def gallery_items(images: Sequence[GeneratedImage], payload_scores: Mapping[str, float] | None = None) -> list[tuple[Image.Image, str]]:
    """(picture, caption) pairs: payload, image number, seed and the payload's mean score."""
    scores = payload_scores or {}
    items = []
    for item in images:
        score = scores.get(item.payload.name)
        caption = f"{item.payload.key} #{item.index} · seed {item.seed}" + (f" · score {score:.4g}" if score is not None else "")
        items.append((display_image(item.image), caption))
    return items


_STATUS_MARKS = {"ok": "#1f77b4", "cached": "#9e9e9e", "abandoned": "#ff7f0e", "screened": "#8c564b", "rescore": "#2ca02c"}


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def convergence_svg(rows: Sequence[Any], *, higher_is_better: bool = True) -> str:
    """The convergence chart as SVG: a dot per evaluation (colour by status), the running best, the returned recipe.

    ``rows`` are ``live.LiveRow``\\ s or ``history.HistoryRow``\\ s (``index``, ``status``, ``score``).

    Drawn as text in a few milliseconds, so the live view can redraw it after
    every evaluation (a matplotlib PNG takes 0.3-2 s of CPU the search needs).
    Failed evaluations are red ticks on the x axis.
    """
    width, height = 640.0, 280.0
    left, right, top, bottom = 56.0, 12.0, 14.0, 34.0
    points = [(n, r) for n, r in enumerate(rows, start=1)]
    scored = [(n, r.score) for n, r in points if r.score is not None and r.status != "failed"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height:.0f}" style="width:100%;max-width:{width:.0f}px;height:auto" '
             'role="img" aria-label="convergence">',
             '<style>.mbw-a{font:10px sans-serif;fill:currentColor}</style>']
    plot_w, plot_h = width - left - right, height - top - bottom
    if not scored:
        parts.append(f'<text class="mbw-a" x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle">no scores yet</text></svg>')
        return f'<div class="mbw-convergence">{"".join(parts)}</div>'
    ys = [s for _, s in scored]
    low, high = min(ys), max(ys)
    pad = (high - low) * 0.08 or max(abs(high) * 0.05, 0.05)
    low, high = low - pad, high + pad
    count = max(len(points), 2)

    def sx(n: float) -> float:
        return left + 8 + (n - 1) / (count - 1) * (plot_w - 16)

    def sy(v: float) -> float:
        return top + (high - v) / (high - low) * plot_h

    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999" stroke-width="0.6"/>')
    for tick in _ticks(low, high):
        y = sy(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#999" stroke-opacity="0.25"/>')
        parts.append(f'<text class="mbw-a" x="{left - 4}" y="{y + 3:.1f}" text-anchor="end">{tick:.4g}</text>')
    for tick in _ticks(1, count, 7):
        if float(tick).is_integer():
            x = sx(tick)
            parts.append(f'<text class="mbw-a" x="{x:.1f}" y="{top + plot_h + 14:.1f}" text-anchor="middle">{int(tick)}</text>')
    parts.append(f'<text class="mbw-a" x="{left + plot_w / 2:.0f}" y="{height - 4:.0f}" text-anchor="middle">evaluation</text>')
    label = "score" + ("" if higher_is_better else " (lower is better)")
    parts.append(f'<text class="mbw-a" transform="translate(12 {top + plot_h / 2:.0f}) rotate(-90)" text-anchor="middle">{label}</text>')
    sign = 1.0 if higher_is_better else -1.0
    best: float | None = None
    path: list[str] = []
    for n, row in points:
        if row.status == "ok" and row.score is not None and (best is None or sign * row.score > sign * best):
            best = row.score
        if best is not None and row.status != "selected":
            command = "M" if not path else "H"
            path.append(f"{command}{sx(n):.1f}" + (f" {sy(best):.1f}" if command == "M" else "") + f" V{sy(best):.1f}")
    if path:
        parts.append(f'<path data-role="best" d="{" ".join(path)}" fill="none" stroke="#d62728" stroke-width="1.8"/>')
    for n, row in points:
        x = sx(n)
        if row.status == "failed" or row.score is None:
            if row.status != "selected":
                parts.append(f'<line data-status="failed" x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h - 8:.1f}" y2="{top + plot_h:.1f}" stroke="#d62728" stroke-width="2"/>')
            continue
        y = sy(row.score)
        if row.status == "selected":
            parts.append(f'<path data-status="selected" d="M{x:.1f} {y - 7:.1f} L{x + 2.2:.1f} {y - 2:.1f} L{x + 7:.1f} {y - 2:.1f} L{x + 3:.1f} {y + 1.5:.1f} '
                         f'L{x + 4.5:.1f} {y + 7:.1f} L{x:.1f} {y + 3.6:.1f} L{x - 4.5:.1f} {y + 7:.1f} L{x - 3:.1f} {y + 1.5:.1f} L{x - 7:.1f} {y - 2:.1f} '
                         f'L{x - 2.2:.1f} {y - 2:.1f} Z" fill="#ffbf00" stroke="#333" stroke-width="0.6"><title>returned recipe: {row.score:.4g}</title></path>')
            continue
        color = _STATUS_MARKS.get(row.status, "#333")
        parts.append(f'<circle data-status="{html.escape(row.status)}" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}" fill-opacity="0.8">'
                     f'<title>evaluation {row.index} ({html.escape(row.status)}): {row.score:.4g}</title></circle>')
    parts.append("</svg>")
    legend = " · ".join(f'<span style="color:{c}">●</span> {s}' for s, c in _STATUS_MARKS.items())
    legend += ' · <span style="color:#d62728">━</span> best so far · <span style="color:#d62728">|</span> failed · <span style="color:#ffbf00">★</span> returned'
    return f'<div class="mbw-convergence">{"".join(parts)}<div style="font-size:11px">{legend}</div></div>'


def history_table(rows: Sequence[LiveRow], limit: int | None = None) -> list[list[Any]]:
    """Rows for the history table, newest first (``limit`` keeps the newest ones)."""
    shown = list(rows)[-limit:] if limit else list(rows)
    table = []
    for row in reversed(shown):
        table.append([
            row.index,
            row.phase,
            f"{row.status} ({row.rung} rung)" if row.rung else row.status,
            "" if row.score is None else round(row.score, 6),
            "★" if row.is_new_best else "",
            round(row.seconds, 2),
            row.reason,
        ])
    return table


# --------------------------------------------------------------------------- the whole live view


@dataclass
class LiveView:
    """New values for the live components; ``None`` leaves a component unchanged."""

    status: str | None = None
    unet: str | None = None
    latest: list[tuple[Image.Image, str]] | None = None
    best: list[tuple[Image.Image, str]] | None = None
    convergence: str | None = None
    history: list[list[Any]] | None = None
    rating: "RatingView | None" = None
    seen: dict[str, int] = field(default_factory=dict)


@dataclass
class RatingView:
    """The human-rating panel: shown with images and ``count`` sliders on ``low..high``, or hidden."""

    visible: bool
    request_id: int = 0
    images: list[tuple[Image.Image, str]] = field(default_factory=list)
    count: int = 0
    low: int = 1
    high: int = 10
    message: str = ""


def rating_view(pending: PendingRating | None, max_sliders: int) -> RatingView:
    if pending is None:
        return RatingView(False)
    items = [(display_image(i.image), f"image {n + 1}: {i.payload.key} · {i.prompt[:80]}") for n, i in enumerate(pending.images)]
    count = len(pending.images)
    extra = f" Rate images beyond {max_sliders} in the text box." if count > max_sliders else ""
    return RatingView(True, pending.request_id, items, count, pending.low, pending.high,
                      f"Rate each image from {pending.low} (worst) to {pending.high} (best), then submit.{extra}")


def render_live(state: LiveState, seen: Mapping[str, int] | None = None, *, now: float | None = None, max_sliders: int = 16) -> LiveView:
    """The view of ``state``: only the parts whose version differs from ``seen`` (all of them when ``seen`` is empty)."""
    seen = dict(seen or {})
    changed = {part for part, version in state.versions.items() if seen.get(part) != version}
    view = LiveView(status=status_line(state, now), seen=dict(state.versions))
    if changed & {"current", "best", "final"}:
        view.unet = unet_html(state.current, state.shown_best, state.family)
    if "latest" in changed:
        view.latest = gallery_items(state.latest_images, state.latest_payload_scores)
    if changed & {"best", "final"}:
        view.best = gallery_items(state.best_images, state.best_payload_scores)
    if "rows" in changed:
        view.convergence = convergence_svg(state.rows, higher_is_better=state.higher_is_better)
        view.history = history_table(state.rows)
    if "rating" in changed:
        view.rating = rating_view(state.rating, max_sliders)
    return view


__all__ = [
    "HISTORY_HEADERS",
    "LiveView",
    "RatingView",
    "convergence_svg",
    "display_image",
    "gallery_items",
    "history_table",
    "rating_view",
    "render_live",
    "unet_html",
    "unet_shares_html",
]
