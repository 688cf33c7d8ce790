"""The math of every merge method: one small typed function each, and nothing else.

Each function takes the tensors of one key and returns the merged tensor. The
arithmetic is done in fp32 whatever the input dtype; the result is fp32, or
the dtype of the ``out`` tensor the caller passes (rounded once).
Plumbing — which keys, which buffers, reading and writing — lives in
``engine``; this module is the single definition both the offline merge and
its ``verify`` use.

Weights are the fraction of model B: ``weighted_sum(a, b, 0)`` is A and
``weighted_sum(a, b, 1)`` is B. Those two shortcuts return the input object
itself, untouched, so a merge at weight 0 or 1 is bit-exact at any dtype.

How this relates to the runtime merger (``lib_mbw/runtime.py``), which calls
``torch.lerp(A, B, w)`` at the live model's dtype: for fp32 models both paths
run the same ``torch.lerp`` kernel on the same values and agree bit for bit.
For fp16/bf16 models torch's CPU ``lerp`` computes in fp32 internally ("opmath")
and rounds once, which equals ``weighted_sum`` here followed by rounding to that
dtype (tested in tests/test_merge_methods.py); on CUDA the kernel also computes
in fp32, so any difference is at most one unit in the last place of the stored
dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import Tensor


#: dtypes for which torch's ``lerp`` computes in fp32 internally ("opmath") and rounds the result once.
LERP_FP32_INSIDE: frozenset[torch.dtype] = frozenset({torch.float16, torch.bfloat16})


def _fp32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def _into(result: Tensor, out: Tensor | None) -> Tensor:
    """``result`` (fp32) stored in ``out`` (rounded once to its dtype), or ``result`` itself."""
    if out is None or out is result:
        return result
    return out.copy_(result)


def weighted_sum_shortcut(w: float) -> int | None:
    """Index of the input ``weighted_sum`` returns untouched at weight ``w`` (0 -> a, 1 -> b), else None."""
    return 0 if w == 0.0 else 1 if w == 1.0 else None


def weighted_sum(a: Tensor, b: Tensor, w: float, *, out: Tensor | None = None) -> Tensor:
    """``lerp(a, b, w)`` computed in fp32; w == 0 returns ``a`` and w == 1 returns ``b`` untouched.

    The result is fp32, or ``out``'s dtype (rounded once) when ``out`` is given.
    fp16/bf16 inputs with an ``out`` of their own dtype go through one fused
    ``torch.lerp`` at that dtype, which computes in fp32 inside and rounds
    once: the same bits as the fp32 path, five times faster on a CPU.
    """
    pick = weighted_sum_shortcut(w)
    if pick is not None:
        return (a, b)[pick]
    if out is not None and a.dtype == b.dtype == out.dtype and a.dtype in LERP_FP32_INSIDE:
        return torch.lerp(a, b, float(w), out=out)
    fp32_out = out if out is not None and out.dtype == torch.float32 else None
    return _into(torch.lerp(_fp32(a), _fp32(b), float(w), out=fp32_out), out)


def add_difference_shortcut(w: float) -> int | None:
    """Index of the input ``add_difference`` returns untouched at weight ``w`` (0 -> a), else None."""
    return 0 if w == 0.0 else None


def add_difference(a: Tensor, b: Tensor, c: Tensor, w: float, *, out: Tensor | None = None) -> Tensor:
    """``a + w * (b - c)`` in fp32 (the WebUI's "Add difference"); w == 0 returns ``a`` untouched."""
    if add_difference_shortcut(w) is not None:
        return a
    fp32_out = out if out is not None and out.dtype == torch.float32 else None
    diff = torch.sub(_fp32(b), _fp32(c), out=fp32_out)
    return _into(diff.mul_(float(w)).add_(_fp32(a)), out)


def mean(tensors: Iterable[Tensor], *, out: Tensor | None = None) -> Tensor:
    """The plain mean of n tensors: their sum accumulated in fp32 in the given order, divided by n.

    ``tensors`` may be a lazy iterable: each tensor is added before the next
    is requested, so a streaming caller can hand them over one at a time.
    This is what AstolfoMix's "uniform merge" computes with running weights
    1/x (merge the x-th model into the running result at weight 1/x), without
    the n - 1 intermediate roundings.
    """
    items = iter(tensors)
    try:
        first = next(items)
    except StopIteration:
        raise ValueError("mean of no tensors") from None
    acc = out if out is not None and out.dtype == torch.float32 else torch.empty(first.shape, dtype=torch.float32)
    acc.copy_(first)
    count = 1
    for t in items:
        acc.add_(t)
        count += 1
    return _into(acc.div_(count), out)


def no_shortcut(w: float) -> int | None:
    return None


@dataclass(frozen=True)
class MergeMethod:
    """A merge method: its name in recipes, on the command line and in the WebUI's metadata."""

    name: str
    cli_name: str
    webui_name: str
    models: int  #: number of input models (0 = any number >= 2)
    function: Callable[..., Tensor]
    #: weight -> index of the input the function returns untouched at that weight, or None
    shortcut: Callable[[float], int | None] = no_shortcut
    #: dtypes for which inputs and ``out`` may all be of that dtype without an fp32 copy first
    native_dtypes: frozenset[torch.dtype] = frozenset({torch.float32})


METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        MergeMethod(
            "weighted_sum", "weighted-sum", "Weighted sum", 2, weighted_sum, weighted_sum_shortcut,
            LERP_FP32_INSIDE | {torch.float32},
        ),
        MergeMethod("add_difference", "add-difference", "Add difference", 3, add_difference, add_difference_shortcut),
        MergeMethod("mean", "uniform", "Uniform", 0, mean),
    )
}


def method_by_cli_name(name: str) -> MergeMethod:
    """The method a command-line spelling (``weighted-sum``) or recipe name (``weighted_sum``) names."""
    for method in METHODS.values():
        if name in (method.cli_name, method.name):
            return method
    raise KeyError(name)
