"""``MultiMerger``: an N-model block mix (2-5 sources) set on a live UNet in place, and restored exactly.

The N-source sibling of ``merger.RuntimeMerger``, built from the same pieces:
the live parameters become views into one flat buffer per block
(``layout``), the sources are opened and checked against the live UNet
(``sources``), and their flat stores are placed as ``placement`` decides.
``apply(recipe_n)`` writes each changed block with ``merge.mix.chain_mix``,
the very function the offline mix uses, over chunks of the flat buffers (fp32
scratch of ``chunk_elements``), so on the same device the live weights equal
the offline mix bit for bit. ``restore()`` copies the original weights back
bit-exactly; leaving a ``with`` block restores and closes.

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

Host changes: before each write, every parameter is checked to be the object
and storage the merger set up; if the host replaced or moved one, ``apply``
refuses with an error saying to close this merger and make a new one (the
two-model merger's automatic repair is not implemented here).
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from ..blocks import ModelArch, block_of_unet_key, check_same_architecture
from ..errors import IdenticalModelsError, RecipeError, RuntimeMergeError
from ..merge.mix import chain_mix, chain_plan
from ..recipe_n import MAX_MODELS, MIN_MODELS, RecipeN
from .layout import Slot, assign_offsets, bitwise_equal
from .memory import MemoryPlan, available_ram_bytes, check_fits
from .merger import ApplyStats, holding_merge_lock, _collect_slots, _copy_into, _main_device, _normal_tensor_mode, _slot_matches, _synchronize, _version_of
from .placement import CPU, DEFAULT_HEADROOM_BYTES, MODES, MemoryCost, StagingBuffers, compute_dtype_for, empty_store, free_device_bytes
from .sources import ModelSource, OpenedModel, _same_file, check_fits_live, live_architecture, open_model

log = logging.getLogger(__name__)

#: Elements per chunk of the fp32 scratch the chain runs in (16 MiB per scratch buffer).
CHUNK_ELEMENTS = 1 << 22


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
    cost = memory_cost_n(mode, n_sources, unet_bytes, element_bytes=element, chunk_elements=chunk_elements,
                         on_accelerator=device.type != "cpu", separate_restore_bytes=0 if first_is_live else unet_bytes)
    free_device = free_device_bytes(device) if device.type == "cuda" else None
    return MemoryPlan(cost, max(block_bytes.values()), device, available_ram_bytes(), free_device)


@dataclass(eq=False)
class MultiSegment:
    """The slots of one block sharing device and dtype: the live buffer and one flat store per source."""

    block: str
    slots: list[Slot]
    numel: int
    live: torch.Tensor
    stores: list[torch.Tensor]
    original: torch.Tensor | None = None
    identical: bool = field(default=False)  #: every source holds the same values here


class MultiMerger:
    """Sets ``sum_i share_i * model_i`` per block on a live UNet; see the module docstring.

    ``sources``: 2-5 models (path, ``Checkpoint`` or state dict) in the
    recipe's order; the first may be ``None`` when the live weights are model
    1. ``key_map``, ``mode``, ``device``, ``headroom_bytes``, ``allow_pickle``
    as for ``RuntimeMerger``.
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
        self.lock = threading.Lock()
        self._holder: int | None = None
        self._unet = unet
        self._closed = False
        self._staging = StagingBuffers()
        self._chunk = int(chunk_elements)
        self.n_sources = len(sources)
        self._first_is_live = sources[0] is None
        self._current: RecipeN | None = None

        slots = _collect_slots(unet, key_map)
        live_shapes = {s.key: s.shape for s in slots}
        self.arch: ModelArch = live_architecture(live_shapes)
        for slot in slots:
            slot.block = block_of_unet_key(slot.key, self.arch.family)
        self.blocks: tuple[str, ...] = self.arch.blocks
        opened: list[OpenedModel | None] = []
        try:
            for index, source in enumerate(sources):
                opened.append(None if source is None else open_model(source, f"model {index + 1}", allow_pickle=allow_pickle))
            _refuse_repeated(opened)
            for model in opened:
                if model is not None:
                    check_same_architecture(self.arch, model.arch, "the live model", model.label)
                    check_fits_live(model, live_shapes, self.arch)
            self.device = torch.device(device) if device is not None else _main_device(slots)
            self.unet_bytes = sum(s.numel * s.param.element_size() for s in slots)  # type: ignore[union-attr]
            element = max(s.param.element_size() for s in slots)  # type: ignore[union-attr]
            self.mode = choose_mode_n(mode, self.device, self.n_sources, self.unet_bytes, element_bytes=element, headroom_bytes=headroom_bytes)
            self._store_devices = _store_devices(self.mode, self.device, self.n_sources)
            self.plan = plan_n(self.mode, self.device, self.n_sources, slots, chunk_elements=self._chunk, first_is_live=self._first_is_live)
            log.info("runtime mix of %d models: %s", self.n_sources, self.plan.describe())
            check_fits(self.plan)
            with _normal_tensor_mode():
                self._segments = self._build_segments(slots, opened)
        finally:
            for model in opened:
                if model is not None:
                    model.close()
        self._by_block: dict[str, list[MultiSegment]] = {b: [] for b in self.blocks}
        for seg in self._segments:
            self._by_block[seg.block].append(seg)
        self.identical_blocks = tuple(b for b in self.blocks if all(seg.identical for seg in self._by_block[b]))
        if len(self.identical_blocks) == len(self.blocks):
            self._segments = []
            raise IdenticalModelsError("all models have identical UNet weights: every mix gives the same model; pick different models")
        with _normal_tensor_mode():
            for seg in self._segments:
                _adopt(seg)
        self._state: dict[str, object] = {b: None for b in self.blocks}  # None: the original weights
        log.info("runtime mix of %d models ready: %s, %s", self.n_sources, self.arch.label, self.memory.describe())

    # ------------------------------------------------------------------ building

    def _build_segments(self, slots: list[Slot], opened: list[OpenedModel | None]) -> list[MultiSegment]:
        groups: dict[tuple[str, torch.device, torch.dtype], list[Slot]] = {}
        for slot in slots:
            groups.setdefault((slot.block, slot.param.device, slot.param.dtype), []).append(slot)  # type: ignore[union-attr]
        segments = []
        for (block, device, dtype), members in groups.items():
            numel = assign_offsets(members)
            cdtype = compute_dtype_for(dtype)
            stores = []
            for model, where in zip(opened, self._store_devices):
                store = empty_store(numel, cdtype, where)
                for slot in members:
                    value = slot.param if model is None else model.get(slot.key).reshape(slot.shape)
                    slot.view(store).copy_(value)  # type: ignore[arg-type]
                stores.append(store)
            original = None
            if opened[0] is not None and not all(_slot_matches(s, s.param, stores[0]) for s in members):  # type: ignore[arg-type]
                original = empty_store(numel, dtype, CPU)
                for slot in members:
                    slot.view(original).copy_(slot.param)  # type: ignore[arg-type]
            identical = all(bitwise_equal(stores[0], other) for other in stores[1:])
            placeholder = torch.empty(0, dtype=dtype, device=device)
            segments.append(MultiSegment(block, members, numel, placeholder, stores, original, identical))
        return segments

    # ------------------------------------------------------------------ public API

    @property
    def current(self) -> RecipeN | None:
        """The recipe now applied, or None while the live weights are the original ones."""
        return self._current

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def memory(self) -> MemoryCost:
        """Extra memory held now: the source stores, restore copies and scratch, beyond the live model."""
        device_bytes = cpu_bytes = 0
        for seg in self._segments:
            for store in [*seg.stores, seg.original]:
                if store is None:
                    continue
                size = store.numel() * store.element_size()
                if store.device.type == "cpu":
                    cpu_bytes += size
                else:
                    device_bytes += size
        for kind, size in self._staging.nbytes.items():
            if kind == "cpu":
                cpu_bytes += size
            else:
                device_bytes += size
        return MemoryCost(self.mode, device_bytes, cpu_bytes)

    def apply(self, recipe: RecipeN) -> ApplyStats:
        """Set every block to its mix of the sources; writes only blocks whose shares changed."""
        if not isinstance(recipe, RecipeN):
            raise RecipeError(f"the runtime mix needs an N-model recipe (RecipeN), got {type(recipe).__name__}")
        if recipe.n_models != self.n_sources:
            raise RecipeError(f"{recipe.source}: is a recipe for {recipe.n_models} models; this mix has {self.n_sources}")
        recipe = recipe.for_family(self.arch.family)
        with self._locked("apply()"):
            self._ensure_open()
            start = time.perf_counter()
            targets = {b: recipe.shares[b] for b in self.blocks}
            stats = self._write(targets, start)
            self._current = recipe
            return stats

    def restore(self) -> ApplyStats:
        """Put the original live weights back, bit-exactly."""
        with self._locked("restore()"):
            self._ensure_open()
            return self._restore_locked()

    @contextmanager
    def generating(self) -> Iterator["MultiMerger"]:
        """Hold the merge lock while a generation uses the weights: ``apply`` waits until it ends."""
        with self._locked("generating()"):
            yield self

    def close(self) -> None:
        """Restore the original weights, give each parameter its own storage again, free the sources."""
        if self._closed:
            return
        with self._locked("close()"):
            try:
                self._restore_locked()
            finally:
                with _normal_tensor_mode():
                    for seg in self._segments:
                        for slot in seg.slots:
                            param = slot.current()
                            if param is not None and param is slot.param and param.data_ptr() == slot.ptr:
                                param.data = param.data.clone(memory_format=torch.preserve_format)
                self._segments = []
                self._by_block = {b: [] for b in self.blocks}
                self._staging.clear()
                self._closed = True

    def __enter__(self) -> "MultiMerger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.memory.describe()
        return f"<MultiMerger {self.n_sources} models, {self.arch.label} {state}>"

    # ------------------------------------------------------------------ writing

    def _restore_locked(self) -> ApplyStats:
        stats = self._write({b: None for b in self.blocks}, time.perf_counter())
        self._current = None
        return stats

    def _write(self, targets: Mapping[str, object], start: float) -> ApplyStats:
        changed = [b for b in self.blocks if self._state[b] != targets[b]]
        self._check_host(changed)
        nbytes = 0
        devices: set[torch.device] = set()
        with _normal_tensor_mode():
            for block in changed:
                target = targets[block]
                for seg in self._by_block[block]:
                    if target is None:
                        nbytes += _copy_into(seg.live, seg.original if seg.original is not None else seg.stores[0])
                    else:
                        nbytes += self._mix_segment(seg, _chain(target))  # type: ignore[arg-type]
                    devices.update(t.device for t in (seg.live, *seg.stores) if t.device.type == "cuda")
                self._state[block] = target
        _synchronize(devices)
        return ApplyStats(time.perf_counter() - start, tuple(changed), nbytes)

    def _mix_segment(self, seg: MultiSegment, chain: tuple[float, ...]) -> int:
        """``seg.live`` := the chain mix of its stores, chunk by chunk; bytes read + written."""
        compute = seg.stores[0].device
        begin, steps = chain_plan(chain)
        needed = {begin, *(i for i, _ in steps)}
        direct = seg.live.device == compute and seg.live.dtype == seg.stores[0].dtype
        nbytes = 0
        for offset in range(0, seg.numel, self._chunk):
            size = min(self._chunk, seg.numel - offset)
            inputs = []
            for index, store in enumerate(seg.stores):
                part = store.narrow(0, offset, size)
                if index in needed and part.device != compute:
                    staged = self._staging.get(compute, part.dtype, size, f"src{index}", self._chunk)
                    nbytes += _copy_into(staged, part)
                    part = staged
                inputs.append(part)
            acc = self._staging.get(compute, torch.float32, size, "acc", self._chunk)
            tmp = self._staging.get(compute, torch.float32, size, "tmp", self._chunk)
            live = seg.live.narrow(0, offset, size)
            if direct:
                chain_mix(inputs, chain, live, acc, tmp)
            else:
                role = f"out{(offset // self._chunk) % 2}"
                out = self._staging.get(compute, seg.stores[0].dtype, size, role, self._chunk)
                chain_mix(inputs, chain, out, acc, tmp)
                nbytes += _copy_into(live, out)
                self._staging.record(compute, out.dtype, role, live.device)
            nbytes += (len(needed) + 1) * size * seg.stores[0].element_size()
        return nbytes

    def _check_host(self, blocks: Sequence[str]) -> None:
        for block in blocks:
            for seg in self._by_block[block]:
                for slot in seg.slots:
                    param = slot.current()
                    if param is not slot.param or param is None or param.data_ptr() != slot.ptr:
                        raise RuntimeMergeError(
                            f"the host replaced or moved parameter {slot.name!r} under the runtime mix; "
                            "close this merger and create a new one for the model as it is now"
                        )

    # ------------------------------------------------------------------ locking

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeMergeError("the runtime mix is closed; create a new one to merge again")

    def _locked(self, what: str) -> AbstractContextManager[None]:
        return holding_merge_lock(self, what)


def _chain(shares: tuple[float, ...]) -> tuple[float, ...]:
    from ..recipe_n import chain_of

    return chain_of(shares)


def _adopt(seg: MultiSegment) -> None:
    """Give ``seg`` a live buffer holding the host's current values and point its parameters into it."""
    device, dtype = seg.live.device, seg.live.dtype
    live = torch.empty(seg.numel, dtype=dtype, device=device)
    for slot in seg.slots:
        param = slot.current()
        assert param is not None
        slot.view(live).copy_(param)
        param.data = slot.view(live)
        slot.param = param
        slot.ptr = param.data_ptr()
        slot.version = _version_of(param)
    seg.live = live


def _store_devices(mode: str, device: torch.device, n: int) -> list[torch.device]:
    if device.type == "cpu" or mode == "cpu":
        return [CPU] * n
    if mode == "stream":
        return [device] + [CPU] * (n - 1)
    return [device] * n


def _refuse_repeated(opened: Sequence[OpenedModel | None]) -> None:
    """Refuse a model given twice (same object or same file), naming both places."""
    for i, x in enumerate(opened):
        for j in range(i + 1, len(opened)):
            y = opened[j]
            if x is None or y is None:
                continue
            same_file = x.path is not None and y.path is not None and (x.path == y.path or _same_file(x.path, y.path))
            if x.source is y.source or same_file:
                raise IdenticalModelsError(
                    f"model {i + 1} and model {j + 1} are the same model ({x.path or 'the same object'}); "
                    "each model of a mix must be different"
                )
