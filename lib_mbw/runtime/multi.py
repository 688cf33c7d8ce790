"""The memory of an N-model block mix (2-5 sources) on a live UNet, and ``MultiMerger``, the mix's constructor.

The mix itself is ``merger.RuntimeMerger`` with a list of models as its
second source (one implementation for two and for N models: exact restore,
resync after host changes, inference-mode Parameters, ``abandon``, the merge
lock). ``MultiMerger(unet, [model 1, ..., model N])`` builds one from the
models in the recipe's order. ``apply(recipe_n)`` writes each changed block
with ``merge.mix.chain_mix``, the very function the offline mix uses, over
chunks of the flat buffers (fp32 scratch of ``chunk_elements``), so on the
same device the live weights equal the offline mix bit for bit.

Placement (``memory_cost_n``; ``plan_n`` states it, and ``check_fits`` refuses a
mix that does not fit the memory free now, before anything is allocated), for N sources and a UNet of U bytes whose
largest block is L bytes, with C the fp32 chunk (16 MiB by default):

* ``device``: every source on the device: N x U device memory, chain on the device.
* ``stream``: source 1 on the device, the others in (pinned) RAM, copied to
  the device one chunk at a time: U + (N - 1) x chunk device memory, (N - 1) x U RAM.
* ``cpu``: every source in RAM, the chain runs on the CPU and each chunk is
  copied to the device: N x U RAM, nothing on the device beyond the model.

When source 1 is ``None`` the live weights are model 1: their snapshot is
both model 1 and the restore copy. Otherwise blocks whose live weights differ
from model 1 get a restore copy in RAM.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from ..errors import RuntimeMergeError
from ..recipe_n import MAX_MODELS, MIN_MODELS
from .layout import Slot
from .memory import MemoryPlan, available_ram_bytes
from .merger import CHUNK_ELEMENTS, RuntimeMerger
from .placement import DEFAULT_HEADROOM_BYTES, MODES, MemoryCost, free_device_bytes
from .sources import ModelSource


def memory_cost_n(
    mode: str,
    n_sources: int,
    unet_bytes: int,
    *,
    element_bytes: int = 2,
    chunk_elements: int = CHUNK_ELEMENTS,
    on_accelerator: bool = True,
    separate_restore_bytes: int = 0,
) -> MemoryCost:
    """Extra memory of ``mode`` for ``n_sources`` models and a UNet of ``unet_bytes`` (live dtype of ``element_bytes``).

    Scratch: two fp32 chunks where the chain runs, one staging chunk per
    streamed source, and (``cpu``) two output chunks at the live dtype.
    """
    if mode not in MODES or mode == "auto":
        raise RuntimeMergeError(f"unknown placement mode {mode!r}; use one of {', '.join(MODES[1:])}")
    chunk_fp32 = 2 * 4 * chunk_elements
    stores = n_sources * unet_bytes
    if not on_accelerator:
        return MemoryCost(mode, 0, stores + chunk_fp32 + separate_restore_bytes)
    if mode == "device":
        return MemoryCost(mode, stores + chunk_fp32, separate_restore_bytes)
    if mode == "stream":
        staging = (n_sources - 1) * element_bytes * chunk_elements
        return MemoryCost(mode, unet_bytes + chunk_fp32 + staging, stores - unet_bytes + separate_restore_bytes)
    return MemoryCost(mode, 0, stores + chunk_fp32 + 2 * element_bytes * chunk_elements + separate_restore_bytes)


def choose_mode_n(
    requested: str, device: torch.device, n_sources: int, unet_bytes: int, *, element_bytes: int = 2,
    free_bytes: int | None = None, headroom_bytes: int = DEFAULT_HEADROOM_BYTES,
) -> str:
    """``requested``, or for ``auto`` the fastest mode whose device memory fits (free minus ``headroom_bytes``)."""
    if requested not in MODES:
        raise RuntimeMergeError(f"unknown placement mode {requested!r}; use one of {', '.join(MODES)}")
    if requested != "auto":
        return requested
    if device.type == "cpu":
        return "device"
    budget = (free_bytes if free_bytes is not None else free_device_bytes(device)) - headroom_bytes
    for mode in ("device", "stream"):
        if memory_cost_n(mode, n_sources, unet_bytes, element_bytes=element_bytes).device_bytes <= budget:
            return mode
    return "cpu"


def plan_n(
    mode: str, device: torch.device, n_sources: int, slots: Sequence[Slot], *, chunk_elements: int = CHUNK_ELEMENTS,
    first_is_live: bool = True,
) -> MemoryPlan:
    """What a mix of ``n_sources`` over the live ``slots`` holds in ``mode`` (``memory_cost_n``) and what is free now.

    Without the live weights as model 1, a restore copy of the UNet in RAM is
    counted too (an upper bound: only blocks that differ from model 1 get one);
    the transient is one block's new live buffer while the merger takes over.
    """
    unet_bytes = sum(s.numel * s.param.element_size() for s in slots)  # type: ignore[union-attr]
    block_bytes: dict[str, int] = {}
    for s in slots:
        block_bytes[s.block] = block_bytes.get(s.block, 0) + s.numel * s.param.element_size()  # type: ignore[union-attr]
    element = max(s.param.element_size() for s in slots)  # type: ignore[union-attr]
    return plan_n_for(mode, device, n_sources, unet_bytes, max(block_bytes.values()), element,
                      chunk_elements=chunk_elements, first_is_live=first_is_live)


def plan_n_for(
    mode: str, device: torch.device, n_sources: int, unet_bytes: int, largest_block_bytes: int, element_bytes: int, *,
    chunk_elements: int = CHUNK_ELEMENTS, first_is_live: bool = True,
) -> MemoryPlan:
    """``plan_n`` from sizes: a UNet of ``unet_bytes`` whose largest block is ``largest_block_bytes``."""
    cost = memory_cost_n(mode, n_sources, unet_bytes, element_bytes=element_bytes, chunk_elements=chunk_elements,
                         on_accelerator=device.type != "cpu", separate_restore_bytes=0 if first_is_live else unet_bytes)
    free_device = free_device_bytes(device) if device.type == "cuda" else None
    return MemoryPlan(cost, largest_block_bytes, device, available_ram_bytes(), free_device)


class MultiMerger(RuntimeMerger):
    """Sets ``sum_i share_i * model_i`` per block on a live UNet: a ``RuntimeMerger`` over ``sources`` in order.

    ``sources``: 2-5 models (path, ``Checkpoint`` or state dict) in the
    recipe's order; the first may be ``None`` when the live weights are model
    1. ``key_map``, ``mode``, ``device``, ``headroom_bytes``, ``allow_pickle``
    and ``chunk_elements`` as for ``RuntimeMerger``.
    """

    def __init__(
        self,
        unet: nn.Module,
        sources: Sequence[ModelSource | None],
        *,
        key_map: Mapping[str, str] | None = None,
        mode: str = "auto",
        device: torch.device | str | None = None,
        headroom_bytes: int = DEFAULT_HEADROOM_BYTES,
        chunk_elements: int = CHUNK_ELEMENTS,
        allow_pickle: bool = False,
    ) -> None:
        if not MIN_MODELS <= len(sources) <= MAX_MODELS:
            raise RuntimeMergeError(f"a block mix takes {MIN_MODELS} to {MAX_MODELS} models, got {len(sources)}")
        if any(s is None for s in sources[1:]):
            raise RuntimeMergeError("only the first model may be None (the live weights); give every other model")
        others: list[ModelSource] = [s for s in sources[1:] if s is not None]
        super().__init__(unet, sources[0], others, key_map=key_map, mode=mode, device=device, headroom_bytes=headroom_bytes,
                         chunk_elements=chunk_elements, allow_pickle=allow_pickle)
