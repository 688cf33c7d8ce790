"""Payloads: the txt2img jobs every candidate merge is judged on.

A payload is a JSON file with the settings WebUI users know (prompt, negative
prompt, steps, cfg scale, sampler, size, seed, batch size, clip skip) plus a
tally weight. Unknown fields are kept in ``extra`` and passed through to WebUI
generators.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Payload:
    """One txt2img job. ``name`` is the file stem; ``seed`` is fixed (never -1 inside a search)."""

    name: str
    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    scheduler: str = "Automatic"
    width: int = 512
    height: int = 512
    seed: int = 0
    batch_size: int = 1
    clip_skip: int = 1
    weight: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)
