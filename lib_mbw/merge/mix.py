"""The math of the N-model block mix: one chain of weighted sums, shared by the offline merge and the runtime merger.

``chain_mix(inputs, chain, out, acc, tmp)`` computes
``r = inputs[0]; r = lerp(r, inputs[k], chain[k-1])`` for k = 1..N-1 in fp32
and stores ``r`` in ``out`` (rounded once to its dtype). A chain weight of 1
restarts the chain at that model and a weight of 0 skips it, so a block that
takes one model whole is a bit-exact copy of it at any dtype. Both callers
run this one function on the same values (per tensor offline, per flat block
buffer at run time; the math is elementwise), so on the same device the
results agree bit for bit.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def chain_plan(chain: Sequence[float]) -> tuple[int, list[tuple[int, float]]]:
    """The model the chain starts from and the (model index, weight) steps that change it.

    Everything before the last weight of 1 is overwritten by it, and weights of 0 change nothing.
    """
    start = 0
    for k, w in enumerate(chain, start=1):
        if w == 1.0:
            start = k
    return start, [(k, float(w)) for k, w in enumerate(chain, start=1) if k > start and w != 0.0]


def chain_mix(inputs: Sequence[Tensor], chain: Sequence[float], out: Tensor, acc: Tensor, tmp: Tensor) -> Tensor:
    """``out`` := the chain merge of ``inputs`` (same shape; any float dtype), computed in fp32.

    ``acc`` and ``tmp`` are fp32 scratch tensors of the inputs' shape (``tmp``
    is used only for non-fp32 inputs). Returns ``out``.
    """
    if len(chain) != len(inputs) - 1:
        raise ValueError(f"{len(inputs)} inputs need {len(inputs) - 1} chain weights, got {len(chain)}")
    start, steps = chain_plan(chain)
    if not steps:
        return out.copy_(inputs[start])
    acc.copy_(inputs[start])
    for index, weight in steps:
        source = inputs[index]
        if source.dtype != torch.float32:
            source = tmp.copy_(source)
        acc.lerp_(source, weight)
    return out.copy_(acc)
