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

import importlib
from typing import Any

#: public name -> submodule that defines it; imported on first use, so that
#: ``lib_mbw.merge.cli`` (and ``python -m lib_mbw --help``) does not load torch.
_EXPORTS = {
    "InspectReport": "inspect",
    "inspect_models": "inspect",
    "MergeProgress": "engine",
    "MergeReport": "engine",
    "merge_to_file": "engine",
    "uniform_to_file": "engine",
    "MergeSpec": "plan",
    "HashCache": "hashes",
    "ModelHashes": "hashes",
    "default_hash_cache": "hashes",
    "model_hashes": "hashes",
    "VerifyReport": "verify",
    "verify_file": "verify",
}

__all__ = sorted([*_EXPORTS, "methods"])


def __getattr__(name: str) -> Any:
    if name == "methods":
        return importlib.import_module(".methods", __name__)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
