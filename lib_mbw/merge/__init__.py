"""Offline merging to a file: merge math, streaming safetensors I/O, metadata, hashes, verify, inspect.

Public API (stable; the search loop and the demo call ``merge_to_file``):

* ``merge_to_file(a, b, recipe, out, ...) -> MergeReport``: block-weighted merge of two models
  (weighted sum or add-difference) streamed to a new ``.safetensors`` file.
* ``uniform_to_file(models, out, ...) -> MergeReport``: the parameterless N-model mean.
* ``verify_file(path, ...) -> VerifyReport``: recompute a merged file from its recorded sources.
* ``inspect_models(paths, ...) -> InspectReport``: architecture, dtypes, per-block sizes, hashes, distances.
* ``methods``: the math (``weighted_sum``, ``add_difference``, ``mean``).
"""

from __future__ import annotations

from . import methods
from .engine import MergeProgress, MergeReport, merge_to_file, uniform_to_file
from .hashes import ModelHashes, model_hashes
from .plan import MergeSpec

__all__ = [
    "MergeProgress",
    "MergeReport",
    "MergeSpec",
    "ModelHashes",
    "merge_to_file",
    "methods",
    "model_hashes",
    "uniform_to_file",
]
