"""Where the runtime merger keeps models A and B, what that costs, and reusable staging buffers.

Three placements (``mode``) trade device memory for speed; ``auto`` picks one
from the free device memory:

* ``device``: A and B on the model's device; one ``lerp`` kernel per block
  writes straight into the live weights. Fastest; 2 extra model copies there.
* ``stream``: A on the device, B in (pinned) CPU memory, copied to the device
  one block at a time into a reused staging buffer. 1 extra copy + the
  largest block on the device; results identical to ``device``.
* ``cpu``: A and B in (pinned) CPU memory; ``lerp`` runs on the CPU into a
  reused pinned buffer that is copied to the device. No extra device memory.

On a CPU-only host the live model is in RAM and all three are the same: A and
B are two extra copies in RAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import RuntimeMergeError

MODES: tuple[str, ...] = ("auto", "device", "stream", "cpu")

#: Device memory ``auto`` leaves free for image generation (activations, VAE decode).
DEFAULT_HEADROOM_BYTES = 3 * 2**30

#: dtypes ``torch.lerp`` computes in; other live dtypes (fp8) are merged in fp16 and converted on write.
LERP_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

CPU = torch.device("cpu")


@dataclass(frozen=True)
class MemoryCost:
    """Extra memory a placement needs beyond the live model itself, in bytes."""

    mode: str
    device_bytes: int
    cpu_bytes: int

    def describe(self) -> str:
        return f"{self.mode}: {self.device_bytes / 2**30:.2f} GiB on the device, {self.cpu_bytes / 2**30:.2f} GiB in RAM"


def compute_dtype_for(live_dtype: torch.dtype) -> torch.dtype:
    """The dtype A and B are stored and merged in for live weights of ``live_dtype``."""
    return live_dtype if live_dtype in LERP_DTYPES else torch.float16


def memory_cost(
    mode: str,
    unet_bytes: int,
    largest_block_bytes: int,
    *,
    on_accelerator: bool = True,
    separate_restore_bytes: int = 0,
) -> MemoryCost:
    """Extra memory of ``mode`` for a UNet of ``unet_bytes`` at its live dtype.

    ``separate_restore_bytes``: blocks whose live weights differ from A need a
    restore copy of the original weights, which is kept in RAM.
    """
    if mode not in MODES or mode == "auto":
        raise RuntimeMergeError(f"unknown placement mode {mode!r}; use one of {', '.join(MODES[1:])}")
    if not on_accelerator:
        return MemoryCost(mode, 0, 2 * unet_bytes + separate_restore_bytes)
    if mode == "device":
        return MemoryCost(mode, 2 * unet_bytes, separate_restore_bytes)
    if mode == "stream":
        return MemoryCost(mode, unet_bytes + largest_block_bytes, unet_bytes + separate_restore_bytes)
    return MemoryCost(mode, 0, 2 * unet_bytes + 2 * largest_block_bytes + separate_restore_bytes)


def choose_mode(
    requested: str,
    device: torch.device,
    unet_bytes: int,
    largest_block_bytes: int,
    *,
    free_bytes: int | None = None,
    headroom_bytes: int = DEFAULT_HEADROOM_BYTES,
) -> str:
    """The placement to use: ``requested`` unless it is ``auto``.

    ``auto`` takes the fastest placement whose device memory fits in the free
    device memory minus ``headroom_bytes``: ``device``, then ``stream``, then
    ``cpu``. On the CPU every placement is the same, and ``device`` is returned.
    """
    if requested not in MODES:
        raise RuntimeMergeError(f"unknown placement mode {requested!r}; use one of {', '.join(MODES)}")
    if requested != "auto":
        return requested
    if device.type == "cpu":
        return "device"
    if free_bytes is None:
        free_bytes = free_device_bytes(device)
    budget = free_bytes - headroom_bytes
    for mode in ("device", "stream"):
        if memory_cost(mode, unet_bytes, largest_block_bytes).device_bytes <= budget:
            return mode
    return "cpu"


def free_device_bytes(device: torch.device) -> int:
    """Free memory on ``device``, counting memory PyTorch has cached but not used as free."""
    if device.type != "cuda":
        raise ValueError(f"free memory is only known for CUDA devices, not {device}")
    free, _total = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free + cached)


def accelerator_present() -> bool:
    """True when CUDA is usable, so CPU-side buffers should be pinned for fast async copies."""
    return torch.cuda.is_available()


def empty_store(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A flat buffer for A, B or a restore copy; CPU buffers are pinned when CUDA is present."""
    pin = device.type == "cpu" and accelerator_present()
    return torch.empty(numel, dtype=dtype, device=device, pin_memory=pin)


class StagingBuffers:
    """Flat scratch buffers reused across blocks and applies (no per-apply allocation).

    ``get(device, dtype, numel, role)`` returns a view of at least ``numel``
    elements. CPU buffers that feed asynchronous copies to the device come in
    two slots guarded by CUDA events, so the CPU never overwrites a buffer
    whose copy is still in flight.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[torch.device, torch.dtype, str], torch.Tensor] = {}
        self._events: dict[tuple[torch.device, torch.dtype, str], object] = {}

    def get(self, device: torch.device, dtype: torch.dtype, numel: int, role: str, capacity: int = 0) -> torch.Tensor:
        """``numel`` elements of the ``role`` buffer, allocated once at ``capacity`` (the largest segment)."""
        key = (device, dtype, role)
        self.wait(key)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = empty_store(max(numel, capacity), dtype, device)
            self._buffers[key] = buffer
        return buffer[:numel]

    def record(self, device: torch.device, dtype: torch.dtype, role: str, stream_device: torch.device) -> None:
        """Mark that an asynchronous copy out of the ``role`` buffer was queued on ``stream_device``."""
        if stream_device.type != "cuda":
            return
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(stream_device))
        self._events[(device, dtype, role)] = event

    def wait(self, key: tuple[torch.device, torch.dtype, str]) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.synchronize()  # type: ignore[attr-defined]

    @property
    def nbytes(self) -> dict[str, int]:
        """Bytes held, by device type."""
        held: dict[str, int] = {}
        for (device, _dtype, _role), buffer in self._buffers.items():
            held[device.type] = held.get(device.type, 0) + buffer.numel() * buffer.element_size()
        return held

    def clear(self) -> None:
        for key in list(self._events):
            self.wait(key)
        self._buffers.clear()
