"""``RuntimeMerger``: set block-merge weights on a live UNet in place, fast, and put it back exactly.

The merger owns the live UNet's parameter storage while it is open: every
parameter becomes a view into one flat buffer per block (Parameter objects
keep their identity; only ``param.data`` is re-pointed), and models A and B
are held in flat buffers of the same layout. Parameters the host made in
inference mode (Forge builds its models under ``torch.inference_mode()``)
cannot be re-pointed at a normal tensor: every later forward pass would
raise ``Inference tensors do not track version counter``. The module gets a
new normal Parameter for each of them instead (same name, attributes and
``requires_grad``), and ``close()`` gives it back an inference Parameter
holding the original values, so the host's model ends as it began. ``apply(recipe)`` then runs one
``torch.lerp(A, B, w, out=live)`` per changed block (a plain copy for weights
0 and 1, which makes them bit-exact copies of A or B) at the live dtype.

**Block mixes of 3-5 models.** ``model_b`` may be a sequence of models (B,
then models 3..N); ``apply`` then takes an N-model ``RecipeN`` and writes each
changed block with ``merge.mix.chain_mix`` (the function the offline mix
uses, in fp32, rounded once to the live dtype), so the live weights equal the
offline mix bit for bit on the same device. Everything below (locking, host
changes, inference-mode Parameters, exact restore, ``abandon``) is the same
code for two models and for N.

Contracts:

* **Locking.** ``apply``, ``restore``, ``resync`` and ``close`` take
  ``merger.lock``; generators hold it around a generation with
  ``with merger.generating(): ...``, so weights never change under a running
  generation. Calling ``apply`` inside ``generating()`` on the same thread is
  an error (it would deadlock), not a wait.
* **Host changes.** Before writing, the merger checks that every parameter is
  still the object it set up, at the storage it set up, unwritten since
  (PyTorch's version counter). Parameters the host replaced, moved
  (``.to()``, ``--medvram``/``--lowvram`` offload) or re-typed (``.half()``)
  get fresh views; values the host wrote in place (a merged-in LoRA) are
  overwritten by the next write of their block. When the host wrote every
  parameter, or changed values in every block (it loaded another
  checkpoint), the merger takes the live values as the new original weights
  (and as A when A is the live model). Host adapters that know better call
  ``resync(reload=True/False)`` themselves, and pass ``on_write`` to hear
  which parameters were written (A1111's LoRA backups must be reset after an
  edit). Writes through ``param.data``, and to parameters made in inference
  mode, leave no version trace: only ``resync()`` (which compares values)
  sees them.
* **UNet only.** The text encoder (BASE) and the VAE are not merged at run
  time; a recipe's BASE weight is ignored here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..blocks import ModelArch, block_of_unet_key, check_same_architecture
from ..errors import ArchitectureMismatchError, IdenticalModelsError, RecipeError, RuntimeMergeError
from ..merge.mix import chain_mix, chain_plan
from ..recipe import Recipe
from ..recipe_n import MAX_MODELS, RecipeN, chain_of
from .layout import Segment, Slot, assign_offsets, bitwise_equal, dense_stride, strided_view
from .placement import (
    CPU,
    DEFAULT_HEADROOM_BYTES,
    LERP_DTYPES,
    MemoryCost,
    StagingBuffers,
    choose_mode,
    compute_dtype_for,
    empty_store,
)
from . import memory as _memory
from .memory import release_memory
from .sources import ModelSource, OpenedModel, check_fits_live, live_architecture, open_model, refuse_same_source

log = logging.getLogger(__name__)

#: Elements per chunk of the fp32 scratch a mix's chain runs in (16 MiB per scratch buffer).
CHUNK_ELEMENTS = 1 << 22

#: ``on_write(parameter_names)``: called after the merger wrote these live parameters.
WriteCallback = Callable[[Sequence[str]], None]


class _State:
    """Sentinels for a block's contents besides a merge weight."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


ORIGINAL = _State("ORIGINAL")  #: the live weights the merger found (when they differ from A)
DIRTY = _State("DIRTY")  #: the host changed the values; unknown until written again


@dataclass(frozen=True)
class ApplyStats:
    """What one ``apply``/``restore`` did: wall seconds, blocks written, bytes read + written.

    ``resynced``: blocks the host had changed (repaired first); ``reloaded``:
    the host had loaded new weights, which became the original weights.
    """

    seconds: float
    blocks: tuple[str, ...]
    bytes: int
    resynced: tuple[str, ...] = ()
    reloaded: bool = False

    @property
    def bandwidth(self) -> float:
        """Bytes read + written per second."""
        return self.bytes / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class SyncReport:
    """What a check against the host's current parameters found and did."""

    rebuilt: tuple[str, ...] = ()  #: blocks whose parameters were replaced, moved or re-typed: views rebuilt
    dirty: tuple[str, ...] = ()  #: blocks whose values the host changed in place: rewritten on the next write
    reloaded: bool = False  #: the live values were taken as the new original weights

    @property
    def changed(self) -> bool:
        return bool(self.rebuilt or self.dirty or self.reloaded)


@contextmanager
def _normal_tensor_mode() -> Iterator[None]:
    """No autograd, and tensors made here are normal tensors even inside a host's inference_mode.

    Inference tensors cannot be changed in place outside inference mode, so
    the merger's buffers must never be inference tensors.
    """
    with torch.inference_mode(False), torch.no_grad():
        yield


@contextmanager
def holding_merge_lock(merger: Any, what: str) -> Iterator[None]:
    """Hold ``merger.lock`` (recording the holder in ``merger._holder``); the holding thread may not take it again.

    Weights change between generations, never during one: a second take from the thread inside
    ``generating()`` is a bug in the caller, refused instead of deadlocking.
    """
    me = threading.get_ident()
    if merger._holder == me:
        raise RuntimeMergeError(
            f"{what} was called while this thread already holds the merge lock (inside generating()?); "
            "change merge weights between generations, never during one"
        )
    with merger.lock:
        merger._holder = me
        try:
            yield
        finally:
            merger._holder = None


class RuntimeMerger:
    """Merges models A and B block by block into a live UNet, in place; see the module docstring.

    ``unet``: the live UNet module; its parameter names are checkpoint UNet
    keys without prefix (A1111's ``sd_model.model.diffusion_model``), or
    ``key_map`` maps parameter names to those keys (diffusers).
    ``model_a``: path, ``Checkpoint``, state dict, or None when the live
    weights are A (the WebUI case: the snapshot of the live weights serves as
    A and as the restore copy). ``model_b``: path, ``Checkpoint`` or state dict;
    or a list of them (B and models 3..N, N <= 5) for a block mix of N models.
    ``mode``: ``auto``, ``device``, ``stream`` or ``cpu`` (see
    ``runtime.placement``; a mix's memory per mode is ``runtime.multi.memory_cost_n``);
    ``device``: where the model runs, for placement
    (default: where its parameters are). ``on_write``: called with the names
    of the parameters each ``apply``/``restore`` wrote. ``chunk_elements``: a
    mix runs its chain over chunks of this many elements (fp32 scratch).
    """

    def __init__(
        self,
        unet: nn.Module,
        model_a: ModelSource | None,
        model_b: ModelSource | Sequence[ModelSource],
        *,
        key_map: Mapping[str, str] | None = None,
        mode: str = "auto",
        device: torch.device | str | None = None,
        headroom_bytes: int = DEFAULT_HEADROOM_BYTES,
        on_write: WriteCallback | None = None,
        allow_pickle: bool = False,
        chunk_elements: int = CHUNK_ELEMENTS,
    ) -> None:
        self.lock = threading.Lock()
        self._chunk = int(chunk_elements)
        self._holder: int | None = None
        self._unet = unet
        self._on_write = on_write
        self._staging = StagingBuffers()
        self._closed = False
        self._current: Recipe | None = None
        self._a_is_live = model_a is None
        self._out_slot = 0
        others = list(model_b) if isinstance(model_b, (list, tuple)) else [model_b]
        if not 1 <= len(others) <= MAX_MODELS - 1:
            raise RuntimeMergeError(f"a runtime merge takes 2 to {MAX_MODELS} models, got {len(others) + 1}")
        #: how many models the merge mixes (2: A and B)
        self.n_sources = len(others) + 1

        slots = _collect_slots(unet, key_map)
        live_shapes = {s.key: s.shape for s in slots}
        self.arch: ModelArch = live_architecture(live_shapes)
        for slot in slots:
            slot.block = block_of_unet_key(slot.key, self.arch.family)
        self.blocks: tuple[str, ...] = self.arch.blocks

        opened: list[OpenedModel] = []
        try:
            first = "model A" if self.n_sources == 2 else "model 1"
            a = open_model(model_a, first, allow_pickle=allow_pickle) if model_a is not None else None
            if a is not None:
                opened.append(a)
            labels = ["model B"] if self.n_sources == 2 else [f"model {k}" for k in range(2, self.n_sources + 1)]
            for source, label in zip(others, labels):
                opened.append(open_model(source, label, allow_pickle=allow_pickle))
            b, more = opened[-len(others)], opened[len(opened) - len(others) + 1:]
            _refuse_repeated(opened, self.n_sources)
            if a is not None:
                check_same_architecture(a.arch, b.arch, a.label, b.label)
                check_fits_live(a, live_shapes, self.arch)
            for model in (b, *more):
                check_fits_live(model, live_shapes, self.arch)

            self.device = torch.device(device) if device is not None else _main_device(slots)
            self.unet_bytes = sum(s.numel * s.param.element_size() for s in slots)  # type: ignore[union-attr]
            block_bytes: dict[str, int] = {}
            for s in slots:
                block_bytes[s.block] = block_bytes.get(s.block, 0) + s.numel * s.param.element_size()  # type: ignore[union-attr]
            groups = _group_slots(slots)
            with _normal_tensor_mode():
                store_dtypes = {key: _store_dtype(members, key[2], a, [b, *more]) for key, members in groups.items()}
            store_bytes = sum(sum(s.numel for s in groups[key]) * dt.itemsize for key, dt in store_dtypes.items())
            largest = max(block_bytes.values())
            compact = any(dt != compute_dtype_for(key[2]) for key, dt in store_dtypes.items())
            if self.n_sources == 2:
                self.mode = choose_mode(mode, self.device, store_bytes, largest, headroom_bytes=headroom_bytes)
                # compact stores are widened into two staging buffers of the largest block for each lerp
                self.plan = _memory.plan_for(self.mode, self.device, store_bytes, largest, transient_bytes=largest * (3 if compact else 1))
            else:
                from .multi import choose_mode_n, plan_n  # the mix's memory model (multi imports this module)

                element = max(s.param.element_size() for s in slots)  # type: ignore[union-attr]
                self.mode = choose_mode_n(mode, self.device, self.n_sources, self.unet_bytes, element_bytes=element, headroom_bytes=headroom_bytes)
                self.plan = plan_n(self.mode, self.device, self.n_sources, slots, chunk_elements=self._chunk, first_is_live=a is None)
            self._a_device, self._b_device = _store_devices(self.mode, self.device)
            log.info("runtime merger: %s", self.plan.describe())
            _memory.check_fits(self.plan)
            with _normal_tensor_mode():
                self._segments = self._build_segments(groups, store_dtypes, a, b, more)
        finally:
            for model in opened:
                model.close()
        self._max_numel = max(seg.numel for seg in self._segments)
        self._by_block: dict[str, list[Segment]] = {blk: [] for blk in self.blocks}
        for seg in self._segments:
            self._by_block[seg.block].append(seg)
        self.identical_blocks: tuple[str, ...] = tuple(
            blk for blk in self.blocks if all(seg.identical for seg in self._by_block[blk])
        )
        if len(self.identical_blocks) == len(self.blocks):
            self._release_buffers()
            if self.n_sources > 2:
                raise IdenticalModelsError("all models of the mix have identical UNet weights: every mix gives the same model; pick different models")
            raise IdenticalModelsError(
                "model A and model B have identical UNet weights: every merge weight would give the same model "
                "and the same score; pick a different model B"
            )
        with _normal_tensor_mode():
            for seg in self._segments:
                self._adopt(seg, seg.live.device, seg.live.dtype)
        self._state: dict[str, float | _State] = {blk: self._restored_state(blk) for blk in self.blocks}
        log.info("runtime merger ready: %s, %s", self.arch.label, self.memory.describe())

    # ------------------------------------------------------------------ building

    def _build_segments(
        self,
        groups: Mapping[tuple[str, torch.device, torch.dtype], list[Slot]],
        store_dtypes: Mapping[tuple[str, torch.device, torch.dtype], torch.dtype],
        a: OpenedModel | None,
        b: OpenedModel,
        more: Sequence[OpenedModel] = (),
    ) -> list[Segment]:
        """Flat stores for A, B, models 3..N (and the restore copy) per block; the live parameters are not touched yet.

        The live buffers are made later, one block at a time (``_adopt``), so
        building never holds more than A, B and one block beyond the model.
        """
        segments = []
        for (block, device, dtype), members in groups.items():
            numel = assign_offsets(members)
            cdtype = store_dtypes[(block, device, dtype)]
            a_store = self._load_store(members, numel, a, cdtype, self._a_device)
            b_store = self._load_store(members, numel, b, cdtype, self._b_device)
            more_stores = tuple(self._load_store(members, numel, m, cdtype, self._b_device) for m in more)
            original = None
            if a is not None and not all(_slot_matches(slot, slot.param, a_store) for slot in members):  # type: ignore[arg-type]
                original = empty_store(numel, dtype, CPU)
                for slot in members:
                    slot.view(original).copy_(slot.param)  # type: ignore[arg-type]
            placeholder = torch.empty(0, dtype=dtype, device=device)  # replaced by _adopt
            identical = all(bitwise_equal(a_store, other) for other in (b_store, *more_stores))
            segments.append(Segment(block, members, numel, placeholder, a_store, b_store, original, identical, more_stores))
        return segments

    @staticmethod
    def _load_store(slots: list[Slot], numel: int, model: OpenedModel | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A flat store of ``model``'s tensors (the live parameters when ``model`` is None)."""
        store = empty_store(numel, dtype, device)
        for slot in slots:
            source = slot.param if model is None else model.get(slot.key).reshape(slot.shape)
            slot.view(store).copy_(source)  # type: ignore[arg-type]
        return store

    def _adopt(self, seg: Segment, device: torch.device, dtype: torch.dtype) -> None:
        """Give ``seg`` a new live buffer holding the host's current values and point its parameters into it.

        Parameter objects keep their identity, except inference-mode ones,
        which are replaced by normal Parameters (module docstring); the
        storage they held before is freed unless the host keeps another
        reference to it.
        """
        live = torch.empty(seg.numel, dtype=dtype, device=device)
        for slot in seg.slots:
            param = slot.current()
            assert param is not None
            view = slot.view(live)
            view.copy_(param)
            if _tracks_versions(param):
                param.data = view
            else:
                param = _put_parameter(slot, param, view)
                slot.inference = True
            slot.param = param
            slot.ptr = param.data_ptr()
            slot.version = _version_of(param)
        seg.live = live

    # ------------------------------------------------------------------ public API

    @property
    def current(self) -> Recipe | None:
        """The recipe now applied, or None while the live weights are the original ones."""
        return self._current

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def memory(self) -> MemoryCost:
        """Extra memory the merger holds now (A, B, restore copies, staging), beyond the live model."""
        device_bytes = cpu_bytes = 0
        for seg in getattr(self, "_segments", []):
            for store in (*seg.sources, seg.original):
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
        return MemoryCost(getattr(self, "mode", "?"), device_bytes, cpu_bytes)

    def apply(self, recipe: Recipe | RecipeN) -> ApplyStats:
        """Set the live UNet to ``lerp(A, B, w)`` (an N-model mix for a ``RecipeN``) per block; writes only blocks
        whose weights changed."""
        with self._locked("apply()"):
            self._ensure_open()
            start = time.perf_counter()
            if isinstance(recipe, RecipeN):
                recipe = self._check_recipe_n(recipe)
                targets: dict[str, float | tuple[float, ...] | _State] = {
                    blk: chain_of(recipe.shares[blk]) for blk in self.blocks
                }
                changed = [blk for blk in self.blocks if self._state[blk] != targets[blk]]
                stats = self._write_targets(targets, changed, start)
            else:
                recipe = self._check_recipe(recipe)
                known = Recipe({blk: w for blk, w in self._state.items() if isinstance(w, float)}, source="applied weights")
                changed = recipe.changed_blocks(known)
                stats = self._write_targets(recipe.weights, changed, start)
            self._current = recipe
            return stats

    def restore(self) -> ApplyStats:
        """Put the original live weights back, bit-exactly."""
        with self._locked("restore()"):
            self._ensure_open()
            return self._restore_locked()

    def resync(self, reload: bool | None = None) -> SyncReport:
        """Re-check every parameter against the host's module now (call after the host changed weights).

        ``reload=True``: the host loaded new weights; they become the original
        weights (and A, when A is the live model). ``reload=False``: whatever the
        host did, its values are disposable; changed blocks are rewritten on the
        next ``apply``. ``None``: decide from what changed (see module docstring).
        """
        with self._locked("resync()"):
            self._ensure_open()
            return self._sync(reload=reload, full_walk=True)

    @contextmanager
    def generating(self) -> Iterator["RuntimeMerger"]:
        """Hold the merge lock while a generation uses the weights: ``apply`` waits until it ends."""
        with self._locked("generating()"):
            yield self

    def close(self, restore: bool = True) -> None:
        """Restore the original weights, free A and B, give each parameter its own storage again.

        ``restore=False`` keeps the live values as they are (the host loaded
        weights of its own under the merger).

        A and B are freed before the parameters get their own storage, one
        segment at a time, so closing never holds more than the model and one
        block beyond it; the freed memory is then returned to the system
        (``runtime.memory.release_memory``).
        """
        if self._closed:
            return
        with self._locked("close()"):
            try:
                if restore:
                    self._restore_locked()
            finally:
                try:
                    self._release_stores()
                    self._unview()
                finally:
                    self._release_buffers()
                    self._closed = True
        release_memory()

    def abandon(self) -> None:
        """Let go of a UNet the host has replaced, without writing to it: free A, B and the staging buffers.

        For hosts that load a checkpoint into a new model object (Forge):
        restoring or unviewing the discarded module would spend time and a
        model's worth of memory on weights nobody uses.
        """
        if self._closed:
            return
        with self._locked("abandon()"):
            self._release_stores()
            self._release_buffers()
            self._closed = True
        release_memory()

    def __enter__(self) -> "RuntimeMerger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else self.memory.describe()
        return f"<RuntimeMerger {self.arch.label} {state}>"

    # ------------------------------------------------------------------ locking

    def _locked(self, what: str) -> AbstractContextManager[None]:
        return holding_merge_lock(self, what)

    def _ensure_open(self) -> None:
        if self._closed:
            raise RuntimeMergeError("the runtime merger is closed; create a new one to merge again")

    def _check_recipe(self, recipe: Recipe) -> Recipe:
        if not isinstance(recipe, Recipe):
            raise RecipeError(f"apply() needs a Recipe or an N-model recipe (RecipeN), got {type(recipe).__name__}")
        if self.n_sources != 2:
            raise RecipeError(
                f"{recipe.source}: is a two-model recipe; this mix has {self.n_sources} models and takes "
                "an N-model recipe (RecipeN)"
            )
        if recipe.method != "weighted_sum":
            raise RecipeError(
                f"{recipe.source}: the runtime merge does weighted sums only (lerp of A and B), not {recipe.method!r}"
            )
        return recipe.for_family(self.arch.family)

    def _check_recipe_n(self, recipe: RecipeN) -> RecipeN:
        if recipe.n_models != self.n_sources:
            raise RecipeError(f"{recipe.source}: is a recipe for {recipe.n_models} models; this mix has {self.n_sources}")
        return recipe.for_family(self.arch.family)

    # ------------------------------------------------------------------ writing

    def _restored_state(self, block: str) -> float | tuple[float, ...] | _State:
        """A block's state after a restore: weight 0 when the original weights are A's, else ORIGINAL."""
        return 0.0 if all(seg.original is None for seg in self._by_block[block]) else ORIGINAL

    def _restore_locked(self) -> ApplyStats:
        start = time.perf_counter()
        targets = {blk: self._restored_state(blk) for blk in self.blocks}
        changed = [blk for blk in self.blocks if self._state[blk] != targets[blk]]
        stats = self._write_targets(targets, changed, start, restoring=True)
        self._current = None
        return stats

    def _write_targets(
        self, targets: Mapping[str, float | tuple[float, ...] | _State], first: Sequence[str], start: float,
        restoring: bool = False,
    ) -> ApplyStats:
        """Bring every block to its target, checking each block against the host just before writing it.

        Blocks in ``first`` (the changed ones) go first; the check of the others
        then overlaps the device's work. A block the host changed sends the
        whole model through ``_sync`` (the rare slow path), after which blocks
        it marked dirty are rewritten too.
        """
        order = list(first) + [blk for blk in self.blocks if blk not in first]
        written: list[str] = []
        names: list[str] = []
        nbytes = 0
        reports: list[SyncReport] = []
        devices: set[torch.device] = set()
        with _normal_tensor_mode():
            i = 0
            while i < len(order):
                block = order[i]
                if _block_touched(self._by_block[block]):
                    _synchronize(devices)
                    report = self._sync(reload=None, full_walk=False)
                    reports.append(report)
                    if report.reloaded and restoring:
                        targets = {blk: self._restored_state(blk) for blk in self.blocks}
                    i = 0  # states may have changed anywhere: walk again (blocks at their target are skipped)
                    continue
                target = targets[block]
                if self._state[block] != target:
                    for seg in self._by_block[block]:
                        nbytes += self._write_segment(seg, target)
                        names.extend(slot.name for slot in seg.slots)
                        devices.update(t.device for t in (seg.live, *seg.sources) if t.device.type == "cuda")
                    self._state[block] = target
                    if block not in written:
                        written.append(block)
                i += 1
        _synchronize(devices)
        self._notify(names)
        resynced = tuple(dict.fromkeys(blk for r in reports for blk in r.rebuilt + r.dirty))
        blocks = tuple(blk for blk in self.blocks if blk in written)
        reloaded = any(r.reloaded for r in reports)
        return ApplyStats(time.perf_counter() - start, blocks, nbytes, resynced, reloaded)

    def _write_segment(self, seg: Segment, target: float | tuple[float, ...] | _State) -> int:
        """One segment's live values := target; bytes read + written."""
        if target is ORIGINAL:
            return _copy_into(seg.live, seg.original if seg.original is not None else seg.a)
        if isinstance(target, tuple):
            return self._mix_segment(seg, target)
        assert isinstance(target, float)
        if target == 0.0:
            return _copy_into(seg.live, seg.a)
        if target == 1.0:
            return _copy_into(seg.live, seg.b)
        compute = seg.a.device
        wide = _lerp_dtype(seg)
        nbytes = 0
        a, b = seg.a, seg.b
        if b.device != compute or b.dtype != wide:
            staged = self._staging.get(compute, wide, seg.numel, "b", self._max_numel)
            nbytes += _copy_into(staged, b)
            b = staged
        if a.dtype != wide:  # compact store: merge at the live precision
            staged = self._staging.get(compute, wide, seg.numel, "a", self._max_numel)
            nbytes += _copy_into(staged, a)
            a = staged
        if seg.live.device == compute and seg.live.dtype == wide:
            torch.lerp(a, b, target, out=seg.live)
            return nbytes + 3 * seg.numel * a.element_size()
        role = f"out{self._out_slot}"
        self._out_slot ^= 1
        out = self._staging.get(compute, wide, seg.numel, role, self._max_numel)
        torch.lerp(a, b, target, out=out)
        nbytes += 3 * seg.numel * a.element_size() + _copy_into(seg.live, out)
        self._staging.record(compute, wide, role, seg.live.device)
        return nbytes

    def _mix_segment(self, seg: Segment, chain: tuple[float, ...]) -> int:
        """One segment's live values := the chain mix of its sources (``merge.mix.chain_mix``); bytes read + written.

        The chain runs where A's store is, in fp32, over chunks of ``chunk_elements``; sources kept elsewhere
        (``stream``) are staged one chunk at a time, and a result computed away from the live weights (``cpu``)
        goes through two alternating output chunks.
        """
        compute = seg.a.device
        begin, steps = chain_plan(chain)
        needed = {begin, *(index for index, _ in steps)}
        capacity = min(self._chunk, self._max_numel)
        direct = seg.live.device == compute
        nbytes = 0
        for offset in range(0, seg.numel, self._chunk):
            size = min(self._chunk, seg.numel - offset)
            inputs = []
            for index, store in enumerate(seg.sources):
                part = store.narrow(0, offset, size)
                if index in needed and part.device != compute:
                    staged = self._staging.get(compute, part.dtype, size, f"src{index}", capacity)
                    nbytes += _copy_into(staged, part)
                    part = staged
                inputs.append(part)
            acc = self._staging.get(compute, torch.float32, size, "acc", capacity)
            tmp = self._staging.get(compute, torch.float32, size, "tmp", capacity)
            live = seg.live.narrow(0, offset, size)
            nbytes += (len(needed) + 1) * size * seg.a.element_size()
            if direct:
                chain_mix(inputs, chain, live, acc, tmp)
                continue
            role = f"out{self._out_slot}"
            self._out_slot ^= 1
            out = self._staging.get(compute, seg.live.dtype, size, role, capacity)
            chain_mix(inputs, chain, out, acc, tmp)
            nbytes += _copy_into(live, out)
            self._staging.record(compute, seg.live.dtype, role, seg.live.device)
        return nbytes

    def _notify(self, names: list[str]) -> None:
        if self._on_write is not None and names:
            self._on_write(names)

    # ------------------------------------------------------------------ host changes

    def _sync(self, reload: bool | None, full_walk: bool) -> SyncReport:
        """Compare the slots with the host's parameters now and repair what changed (module docstring).

        The fast check (``full_walk=False``) looks at identity, storage and
        version counters and compares values only in blocks where those
        changed. ``full_walk`` (``resync()``) also finds submodules the host
        swapped and compares the values of every block, which catches writes
        through ``param.data`` too.
        """
        if full_walk:
            self._refresh_modules()
        touched: dict[str, list[tuple[Slot, str]]] = {}
        for seg in self._segments:
            for slot in seg.slots:
                kind = _slot_change(slot)
                if kind is not None:
                    touched.setdefault(seg.block, []).append((slot, kind))
        if not touched and not full_walk and not reload:
            return SyncReport()
        with _normal_tensor_mode():
            if full_walk:
                candidates = {blk: [s for seg in self._by_block[blk] for s in seg.slots] for blk in self.blocks}
            else:
                candidates = {blk: [s for s, _ in items] for blk, items in touched.items()}
            value_changed = {blk for blk, slots in candidates.items() if self._values_differ(blk, slots)}
            if reload is None:
                every_param = sum(map(len, touched.values())) == sum(len(seg.slots) for seg in self._segments)
                reload = bool(value_changed) and (every_param or len(value_changed) == len(self.blocks))
            rebuilt = tuple(blk for blk in self.blocks if any(kind != "written" for _, kind in touched.get(blk, ())))
            for block in rebuilt:
                self._rebuild_block(block)
            for items in touched.values():
                for slot, _kind in items:
                    slot.version = _version_of(slot.param)  # type: ignore[arg-type]
            if reload:
                self._resnapshot()
                log.warning("the live UNet holds new weights: they are now the weights restore() returns to")
                return SyncReport(rebuilt, (), True)
            dirty = tuple(blk for blk in self.blocks if blk in value_changed)
            for block in dirty:
                self._state[block] = DIRTY
            if dirty:
                log.info("the host changed weights of %s in place; they are rewritten on the next apply", ", ".join(dirty))
            return SyncReport(rebuilt, dirty, False)

    def _refresh_modules(self) -> None:
        """Find each slot's module again by name (the host may have swapped whole submodules)."""
        modules = dict(self._unet.named_modules())
        for seg in self._segments:
            for slot in seg.slots:
                module = modules.get(slot.module_name)
                if module is None or not isinstance(module._parameters.get(slot.attr), nn.Parameter):  # noqa: SLF001
                    raise RuntimeMergeError(
                        f"the live UNet no longer has parameter {slot.name!r}; the host rebuilt the model: "
                        "close this merger and create a new one for the new model"
                    )
                slot.module = module

    def _values_differ(self, block: str, slots: list[Slot]) -> bool:
        """Whether the host's current values of ``slots`` differ from what the merger last left there."""
        state = self._state[block]
        if state is DIRTY:
            return True
        for seg in self._by_block[block]:
            members = [s for s in slots if any(s is t for t in seg.slots)]
            if not members:
                continue
            expected = self._expected_values(seg, state)
            for slot in members:
                current = slot.current()
                if current is None:
                    return True
                want = slot.view(expected).to(device=current.device, dtype=current.dtype)
                if not bitwise_equal(current.detach(), want):
                    return True
        return False

    def _expected_values(self, seg: Segment, state: float | tuple[float, ...] | _State) -> torch.Tensor:
        if state is ORIGINAL:
            return seg.original if seg.original is not None else seg.a
        if isinstance(state, tuple):
            inputs = [store.to(seg.a.device) for store in seg.sources]
            acc = torch.empty(seg.numel, dtype=torch.float32, device=seg.a.device)
            tmp = torch.empty_like(acc)
            return chain_mix(inputs, state, torch.empty_like(acc), acc, tmp)
        assert isinstance(state, float)
        if state == 0.0:
            return seg.a
        if state == 1.0:
            return seg.b
        wide = _lerp_dtype(seg)
        return torch.lerp(seg.a.to(wide), seg.b.to(device=seg.a.device, dtype=wide), state)

    def _rebuild_block(self, block: str) -> None:
        """New flat buffers for a block from the host's current parameters; A/B/original follow the new layout."""
        old_segments = self._by_block[block]
        old_of: dict[int, tuple[Segment, int, tuple[int, ...]]] = {}
        for seg in old_segments:
            for slot in seg.slots:
                old_of[id(slot)] = (seg, slot.offset, slot.stride)
        groups: dict[tuple[torch.device, torch.dtype], list[Slot]] = {}
        for seg in old_segments:
            for slot in seg.slots:
                param = slot.current()
                if param is None:
                    raise RuntimeMergeError(
                        f"the live UNet no longer has parameter {slot.name!r}; close this merger and create a new one"
                    )
                if tuple(param.shape) != slot.shape:
                    raise ArchitectureMismatchError(
                        f"the host changed the shape of {slot.name!r} from {slot.shape} to {tuple(param.shape)}; "
                        "close this merger and create a new one for the new model"
                    )
                groups.setdefault((param.device, param.dtype), []).append(slot)
        new_segments = []
        for (device, dtype), members in groups.items():
            reusable = _reusable(old_segments, members, dtype)
            for slot in members:
                slot.stride = dense_stride(slot.current())  # type: ignore[arg-type]
            numel = assign_offsets(members)
            if reusable is not None and all(old_of[id(s)][1:] == (s.offset, s.stride) for s in members):
                seg = Segment(
                    block, members, numel, reusable.live, reusable.a, reusable.b, reusable.original, reusable.identical, reusable.more
                )
            else:
                seg = self._regather(block, members, numel, old_of, compute_dtype_for(dtype), dtype)
            self._adopt(seg, device, dtype)
            new_segments.append(seg)
        self._segments = [s for s in self._segments if s.block != block] + new_segments
        self._by_block[block] = new_segments
        self._max_numel = max(seg.numel for seg in self._segments)

    @staticmethod
    def _regather(
        block: str,
        members: list[Slot],
        numel: int,
        old_of: Mapping[int, tuple[Segment, int, tuple[int, ...]]],
        cdtype: torch.dtype,
        live_dtype: torch.dtype,
    ) -> Segment:
        """Copy A/B/original elements from the old segments into stores of a new layout."""
        first = old_of[id(members[0])][0]
        a = empty_store(numel, cdtype, first.a.device)
        b = empty_store(numel, cdtype, first.b.device)
        more = tuple(empty_store(numel, cdtype, store.device) for store in first.more)
        needs_original = any(old_of[id(s)][0].original is not None for s in members)
        original = empty_store(numel, live_dtype, CPU) if needs_original else None
        for slot in members:
            old_seg, old_offset, old_stride = old_of[id(slot)]

            def old_view(flat: torch.Tensor) -> torch.Tensor:
                return strided_view(flat, old_offset, slot.shape, old_stride)

            slot.view(a).copy_(old_view(old_seg.a))
            slot.view(b).copy_(old_view(old_seg.b))
            for new_store, old_store in zip(more, old_seg.more):
                slot.view(new_store).copy_(old_view(old_store))
            if original is not None:
                source = old_seg.original if old_seg.original is not None else old_seg.a
                slot.view(original).copy_(old_view(source))
        placeholder = torch.empty(0, dtype=live_dtype)  # replaced by _adopt
        identical = all(bitwise_equal(a, other) for other in (b, *more))
        return Segment(block, members, numel, placeholder, a, b, original, identical, more)

    def _resnapshot(self) -> None:
        """The live values become the original weights (and A, when A is the live model)."""
        for seg in self._segments:
            if self._a_is_live:
                if seg.a.dtype != seg.live.dtype and not _fits_dtype(seg.live, seg.a.dtype):
                    seg.a = empty_store(seg.numel, compute_dtype_for(seg.live.dtype), seg.a.device)  # no longer compact
                seg.a.copy_(seg.live)
                seg.original = None
                seg.identical = all(bitwise_equal(seg.a, other) for other in (seg.b, *seg.more))
            elif bitwise_equal(seg.a.to(device=seg.live.device, dtype=seg.live.dtype), seg.live):
                seg.original = None
            else:
                seg.original = empty_store(seg.numel, seg.live.dtype, CPU)
                seg.original.copy_(seg.live)
        if self._a_is_live and all(seg.identical for seg in self._segments) and self.n_sources > 2:
            raise IdenticalModelsError(
                "the host loaded weights identical to every other model of the mix into the live model, which is "
                "model 1: every mix would give the same model; stop the search and pick different models"
            )
        if self._a_is_live and all(seg.identical for seg in self._segments):
            raise IdenticalModelsError(
                "the host loaded weights identical to model B into the live model, which is model A: "
                "every merge weight would give the same model; stop the search and pick a different model B"
            )
        self._state = {blk: self._restored_state(blk) for blk in self.blocks}
        self._current = None

    # ------------------------------------------------------------------ closing

    def _release_stores(self) -> None:
        """Free A, B, the restore copies and the staging buffers (the live buffers stay)."""
        empty = torch.empty(0)
        for seg in self._segments:
            seg.a = seg.b = empty
            seg.more = ()
            seg.original = None
        self._staging.clear()

    def _unview(self) -> None:
        """Give every parameter still viewing a merger buffer its own storage (no shared-storage surprises).

        One segment at a time: its flat buffer is freed as soon as its last
        parameter has moved out. Parameters the host made in inference mode
        get an inference Parameter again.
        """
        for seg in self._segments:
            for slot in seg.slots:
                param = slot.current()
                if param is None or param is not slot.param or param.data_ptr() != slot.ptr:
                    continue
                if slot.inference:
                    with torch.inference_mode():
                        _put_parameter(slot, param, param.detach().clone(memory_format=torch.preserve_format))
                else:
                    with _normal_tensor_mode():
                        param.data = param.data.clone(memory_format=torch.preserve_format)
                slot.param = None
            seg.live = torch.empty(0)

    def _release_buffers(self) -> None:
        self._segments = []
        self._by_block = {blk: [] for blk in getattr(self, "blocks", ())}
        self._staging.clear()


# ---------------------------------------------------------------------- memory before building


def plan_for_checkpoint(
    path: str | os.PathLike[str], element_bytes: int, n_sources: int, mode: str, device: torch.device | str,
    headroom_bytes: int = DEFAULT_HEADROOM_BYTES,
) -> _memory.MemoryPlan:
    """The memory plan of a mix of ``n_sources`` (3-5) models on a live UNet shaped like ``path``'s, before building it.

    For hosts that must state (and check) the memory before the live model is theirs to touch: the numbers of
    ``runtime.multi.plan_n`` (what the merger checks when it is built), from the file's UNet shapes at the live
    element size, with the live weights as model 1.
    """
    from ..checkpoint import open_checkpoint
    from .multi import choose_mode_n, plan_n_for

    device = torch.device(device)
    block_numel: dict[str, int] = {}
    with open_checkpoint(path) as ckpt:
        arch = ckpt.arch
        for key in ckpt.unet_keys():
            block = block_of_unet_key(key[len(arch.unet_prefix):], arch.family)
            numel = 1
            for d in ckpt.shapes[key]:
                numel *= int(d)
            block_numel[block] = block_numel.get(block, 0) + numel
    if not block_numel:
        raise RuntimeMergeError(f"{path}: has no UNet weights to merge")
    unet_bytes = sum(block_numel.values()) * element_bytes
    largest = max(block_numel.values()) * element_bytes
    chosen = choose_mode_n(mode, device, n_sources, unet_bytes, element_bytes=element_bytes, headroom_bytes=headroom_bytes)
    return plan_n_for(chosen, device, n_sources, unet_bytes, largest, element_bytes)


# ---------------------------------------------------------------------- helpers


def _group_slots(slots: list[Slot]) -> dict[tuple[str, torch.device, torch.dtype], list[Slot]]:
    """Slots by (block, device, dtype): each group becomes one segment."""
    groups: dict[tuple[str, torch.device, torch.dtype], list[Slot]] = {}
    for slot in slots:
        param = slot.param
        assert param is not None
        groups.setdefault((slot.block, param.device, param.dtype), []).append(slot)
    return groups


def _fits_dtype(values: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether ``values`` survive a round trip through ``dtype`` bit for bit."""
    values = values.detach()
    return bitwise_equal(values.to(dtype).to(values.dtype), values)


def _store_dtype(members: list[Slot], live_dtype: torch.dtype, a: OpenedModel | None, others: Sequence[OpenedModel]) -> torch.dtype:
    """The dtype the sources of a segment (A, and ``others``: B, models 3..N) are stored in: fp16 for fp32 live weights that come from fp16 files, else the
    compute dtype. Lossless (an fp16 value widened to fp32 and back is the same bits), and half the memory: a
    CPU WebUI runs fp16 checkpoints in fp32."""
    cdtype = compute_dtype_for(live_dtype)
    if live_dtype != torch.float32:
        return cdtype
    compact = torch.float16
    for model in others if a is None else (a, *others):
        prefix = model.arch.unet_prefix
        if any(model.checkpoint.dtypes.get(prefix + s.key) != compact for s in members):
            return cdtype
    if a is None and not all(_fits_dtype(s.param, compact) for s in members):  # type: ignore[arg-type]
        return cdtype
    return compact


def _lerp_dtype(seg: Segment) -> torch.dtype:
    """The dtype a segment's merge is computed in: the live dtype where lerp supports it, else the store's."""
    return seg.live.dtype if seg.live.dtype in LERP_DTYPES and seg.live.dtype.itemsize >= seg.a.dtype.itemsize else seg.a.dtype


def _collect_slots(unet: nn.Module, key_map: Mapping[str, str] | None) -> list[Slot]:
    """Every parameter of ``unet`` with its module, attribute and checkpoint key."""
    slots: list[Slot] = []
    seen: set[int] = set()
    for module_name, module in unet.named_modules():
        for attr, param in module._parameters.items():  # noqa: SLF001
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{attr}" if module_name else attr
            key = key_map.get(name, name) if key_map is not None else name
            slots.append(
                Slot(name, key, "", module_name, module, attr, tuple(param.shape), dense_stride(param), param.numel(), param=param)
            )
    if not slots:
        raise RuntimeMergeError("the live UNet module has no parameters")
    keys = {s.key for s in slots}
    if "input_blocks.0.0.weight" not in keys:
        sample = ", ".join(s.key for s in slots[:3])
        raise ArchitectureMismatchError(
            f"the live module's parameters are not named like a checkpoint's UNet keys (first: {sample}); "
            "pass the UNet module itself (A1111: sd_model.model.diffusion_model) or a key_map from parameter "
            "names to UNet keys such as input_blocks.0.0.weight"
        )
    if key_map is not None and len(keys) != len(slots):
        raise ArchitectureMismatchError("key_map maps two live parameters to the same UNet key")
    return slots


def _refuse_repeated(opened: Sequence[OpenedModel], n_sources: int) -> None:
    """Refuse a model given twice (same object or same file), before any tensor is read."""
    if n_sources == 2:
        if len(opened) == 2:
            refuse_same_source(opened[0], opened[1])
        return
    for i, x in enumerate(opened):
        for y in opened[i + 1:]:
            try:
                refuse_same_source(x, y)
            except IdenticalModelsError:
                where = f" ({x.path})" if x.path is not None else " (the same object)"
                raise IdenticalModelsError(
                    f"{x.role} and {y.role} are the same model{where}; each model of a mix must be different"
                ) from None


def _main_device(slots: list[Slot]) -> torch.device:
    """The device holding most of the live UNet's bytes."""
    by_device: dict[torch.device, int] = {}
    for slot in slots:
        param = slot.param
        assert param is not None
        by_device[param.device] = by_device.get(param.device, 0) + slot.numel * param.element_size()
    return max(by_device, key=by_device.__getitem__)


def _store_devices(mode: str, device: torch.device) -> tuple[torch.device, torch.device]:
    """Where A and B live for ``mode`` when the model runs on ``device``."""
    if device.type == "cpu" or mode == "cpu":
        return CPU, CPU
    if mode == "stream":
        return device, CPU
    return device, device


def _block_touched(segments: list[Segment]) -> bool:
    return any(_slot_change(slot) is not None for seg in segments for slot in seg.slots)


def _synchronize(devices: set[torch.device]) -> None:
    for device in devices:
        torch.cuda.synchronize(device)


def _copy_into(dst: torch.Tensor, src: torch.Tensor) -> int:
    """``dst.copy_(src)``, asynchronous when it can be; bytes read + written."""
    dst.copy_(src, non_blocking=dst.device.type == "cuda")
    return dst.numel() * (dst.element_size() + src.element_size())


def _slot_change(slot: Slot) -> str | None:
    """How the host changed a slot's parameter since the last check: replaced, moved, written, or None."""
    param = slot.module._parameters.get(slot.attr)  # noqa: SLF001
    if param is not slot.param:
        return "replaced"
    if param.data_ptr() != slot.ptr:
        return "moved"
    if _version_of(param) != slot.version:
        return "written"
    return None


def _tracks_versions(param: torch.Tensor) -> bool:
    """Whether ``param`` has a version counter, so its ``.data`` may be re-pointed at a normal tensor.

    Inference tensors have none; neither has a Parameter made in inference
    mode whose ``.data`` was already re-pointed (it fails in every forward).
    """
    try:
        param._version  # noqa: B018 - the access itself is the test
    except RuntimeError:
        return False
    return True


def _put_parameter(slot: Slot, old: nn.Parameter, data: torch.Tensor) -> nn.Parameter:
    """Install a new Parameter over ``data`` under ``slot``'s name, keeping ``old``'s flag and attributes.

    An inference tensor when called inside ``torch.inference_mode()``, else a normal one.
    """
    new = nn.Parameter(data, requires_grad=old.requires_grad)
    new.__dict__.update(old.__dict__)
    slot.module._parameters[slot.attr] = new  # noqa: SLF001 - same effect as setattr, without hooks
    return new


def _version_of(param: torch.Tensor) -> int:
    """PyTorch's in-place write counter, or -1 for a parameter made in inference mode (it has none)."""
    try:
        return param._version
    except RuntimeError:
        return -1


def _slot_matches(slot: Slot, param: torch.Tensor, store: torch.Tensor) -> bool:
    """Whether ``param`` holds bit for bit the store's values converted to its dtype."""
    return bitwise_equal(param.detach(), slot.view(store).to(device=param.device, dtype=param.dtype))


def _reusable(old_segments: list[Segment], members: list[Slot], live_dtype: torch.dtype) -> Segment | None:
    """The old segment whose stores can serve ``members`` unchanged: same slots in order, and stores at the compute
    dtype of ``live_dtype`` or (compact stores) a live dtype that did not change."""
    for seg in old_segments:
        same_slots = len(seg.slots) == len(members) and all(x is y for x, y in zip(seg.slots, members))
        if same_slots and (seg.a.dtype == compute_dtype_for(live_dtype) or seg.live.dtype == live_dtype):
            return seg
    return None
