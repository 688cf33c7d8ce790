"""Where scorer models run: device and dtype choice, and batching that backs off on out-of-memory.

Defaults: CUDA when available, else CPU; float16 on CUDA, float32 elsewhere.
Both can be overridden by name. ``run_in_batches`` runs a model over a whole
iteration's images in as few forward passes as memory allows: it starts with
the scorer's batch size, halves it on out-of-memory and remembers what
worked; only one image failing alone becomes ``EvaluationFailed``.
"""

from __future__ import annotations

import gc
from typing import Callable, Sequence, TypeVar

import torch

from ..errors import EvaluationFailed, ScorerError
from .checks import is_out_of_memory

T = TypeVar("T")

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

#: Images per forward pass when a scorer's ``batch_size`` is not set.
DEFAULT_BATCH = {"cuda": 32, "cpu": 8}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> CUDA if available else CPU; a named CUDA device must exist."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ScorerError(f"scorer device {device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ScorerError(
            f"scorer device {device!r} asked for, but CUDA is not available; use device 'cpu' or leave it unset"
        )
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` -> float16 on CUDA, float32 elsewhere; names as in ``DTYPES``."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ScorerError(f"scorer dtype {dtype} is not supported; use one of float32, float16, bfloat16")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ScorerError(f"scorer dtype {dtype!r} is not known; use one of float32, float16, bfloat16") from None


def default_batch_size(device: torch.device, batch_size: int | None) -> int:
    """The configured batch size, or the device's default; must be positive."""
    if batch_size is None:
        return DEFAULT_BATCH.get(device.type, DEFAULT_BATCH["cpu"])
    if batch_size < 1:
        raise ScorerError(f"scorer batch_size must be at least 1, got {batch_size}")
    return int(batch_size)


def release_memory(device: torch.device | None = None) -> None:
    """Collect garbage and give cached CUDA memory back to other users of the GPU."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or device.type == "cuda"):
        torch.cuda.empty_cache()


def run_in_batches(
    scorer: str,
    labels: Sequence[str],
    batch_size: int,
    forward: Callable[[int, int], list[T]],
    device: torch.device | None = None,
) -> tuple[list[T], int]:
    """``forward(start, stop)`` over consecutive slices of the items ``labels`` name.

    Returns the results and the batch size that worked. On out-of-memory the
    slice is retried at half the size; at one item it raises
    ``EvaluationFailed`` naming that item (``labels[start]``).
    """
    results: list[T] = []
    start, size = 0, max(1, batch_size)
    while start < len(labels):
        stop = min(len(labels), start + size)
        try:
            results.extend(forward(start, stop))
        except Exception as error:  # noqa: BLE001 - filtered to out-of-memory right below
            if not is_out_of_memory(error):
                raise
            release_memory(device)
            if size == 1:
                raise EvaluationFailed(
                    f"{scorer}: out of memory scoring {labels[start]} even one image at a time; "
                    "unload other models (or score on the CPU) and retry"
                ) from error
            size = max(1, size // 2)
            continue
        start = stop
    return results, size
